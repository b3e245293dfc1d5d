import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vlpbench.cli import main
from vlpbench.config import config_from_dict
from vlpbench.flops import Convention, _native_mha_macs, _sdpa_macs, count_experiment, count_forward
from vlpbench.zoo.layers import TransformerBlock
from vlpbench.zoo.vision import create_vision_encoder


def test_transformer_layer_flops_equal_the_analytic_count():
    width, ffn, length, context_length, batch = 64, 256, 10, 17, 3
    block = TransformerBlock(width, 4, ffn, dropout=0.0, cross_width=48).eval()
    x, context = torch.randn(batch, length, width), torch.randn(batch, context_length, 48)
    kinds = count_forward(block, x, context=context)
    # multiply-adds per token: q,k,v,out of self-attention 4 W^2; cross: q,out W^2 each, k,v from the
    # 48-wide context per context token; feed-forward 2 W F
    linear = batch * (length * (4 * width ** 2 + 2 * width ** 2 + 2 * width * ffn) + context_length * 2 * 48 * width)
    attention = batch * 2 * width * (length * length + length * context_length)  # QK^T and AV, both attentions
    assert kinds["linear"] == 2 * linear
    assert kinds["attention"] == 2 * attention


def test_fused_cpu_attention_is_priced_as_its_matmuls():
    q, k = torch.randn(2, 4, 9, 8, requires_grad=True), torch.randn(2, 4, 13, 8, requires_grad=True)
    with FlopCounterMode(display=False) as fused:
        F.scaled_dot_product_attention(q, k, k).sum().backward()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as written_out:  # attention as bmm
        F.scaled_dot_product_attention(q, k, k).sum().backward()
    assert fused.get_total_flops() == written_out.get_total_flops() > 0


def test_fvcore_handlers_count_sdpa_and_the_multihead_attention_fast_path():
    class Attend(nn.Module):
        def forward(self, q, k):
            return F.scaled_dot_product_attention(q, k, k)
    macs = fvcore_forward_macs(Attend(), (torch.randn(2, 4, 9, 8), torch.randn(2, 4, 13, 8)))
    assert macs == 2 * 2 * 4 * 9 * 13 * 8
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():  # the fast path fvcore reads as 0 without the handler
        macs = fvcore_forward_macs(mha, (x, x, x))
    assert macs == 2 * 7 * (4 * 32 * 32) + 2 * 2 * 7 * 7 * 32


def fvcore_forward_macs(module, inputs) -> int:
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(module, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs,
                           "aten::_native_multi_head_attention", _native_mha_macs)
    return analysis.total()


def test_masked_vision_encoder_flops_scale_with_kept_patches_exactly():
    encoder = create_vision_encoder("vit_mini", image_size=32).eval()  # 16 patches of 8x8, width 128, depth 4
    images = torch.randn(1, 3, 32, 32)
    width, depth, patches = 128, 4, 16
    for kept in (4, 8, 16):
        keep_idx = torch.arange(kept)[None]
        kinds = count_forward(encoder, images, keep_idx)
        # the patch projection sees every patch; each block 12 W^2 per token ([CLS] + kept)
        assert kinds["linear"] == 2 * (patches * 3 * 64 * width + depth * (kept + 1) * 12 * width ** 2)
        assert kinds["attention"] == 2 * depth * 2 * (kept + 1) ** 2 * width


@pytest.mark.parametrize("method", ["albef", "lightvlp", "vlmae"])
def test_fvcore_and_ptflops_agree_with_the_counter_on_each_method(tiny_config, method):
    tiny_config["method"] = {"name": method, "embed_dim": 32, "queue_size": 16}
    result = count_experiment(config_from_dict(tiny_config), batch_size=2)
    forward = Convention(multiply_adds=True, backward=False)
    assert result.fvcore_per_sample(forward) == pytest.approx(result.per_sample(forward), rel=0.005)
    assert result.ptflops / 2 == pytest.approx(result.linear_with_bias_macs(), rel=0.005)
    forward_flops = 2 * result.per_sample(forward)
    # backward ~2x the forward of what is trained; frozen teachers run forward only
    assert 2 * forward_flops < result.per_sample(Convention()) < 3 * forward_flops


def test_conventions_change_unit_passes_and_kinds(tiny_config):
    result = count_experiment(config_from_dict(tiny_config), batch_size=2, cross_check=False)
    flops = result.per_sample(Convention.parse("flops,forward"))
    assert result.per_sample(Convention.parse("macs,forward")) == flops / 2
    assert result.per_sample(Convention.parse("flops,forward,linear_only")) < flops
    with pytest.raises(ValueError, match="linear_only is a forward-pass convention"):
        Convention.parse("linear_only")
    with pytest.raises(ValueError, match="unknown word 'gflops'"):
        Convention.parse("gflops")


def test_flops_command_writes_the_convention_and_components(tiny_config, tmp_path, capsys):
    import json
    import yaml
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "flops.json"
    assert main(["flops", str(experiment), "--convention", "macs,forward", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["convention"] == "macs,forward,attention" and "multiply-adds" in rep["convention_text"]
    rows = {r["component"]: r for r in rep["components"]}
    assert rows["text.fusion_layers"]["calls"] == 2  # ITM (positives and negatives together), MLM
    assert math.isclose(sum(r["total"] for r in rep["components"]), rep["forward_per_sample"], rel_tol=1e-9)
    assert "cross-check: fvcore" in capsys.readouterr().out


def test_reproduce_lightvlp_table1_albef_cell_within_one_percent():
    from vlpbench.flops_tables import TABLES, count_cell
    table = TABLES["lightvlp_table1"]
    albef = next(c for c in table.cells if c.name == "ALBEF")
    counted = count_cell(table, albef).per_sample(table.convention) / 1e9
    assert counted == pytest.approx(135.9, rel=0.01)


def test_reproduce_vlmae_table8_albef_vlmae_and_their_ratio():
    from vlpbench.flops_tables import TABLES, count_cell
    table = TABLES["vlmae_table8"]
    albef, vlmae = (count_cell(table, c).per_sample(table.convention) / 1e9 for c in table.cells)
    assert albef == pytest.approx(60.5, rel=0.01)  # the calibration of the text length (16)
    assert vlmae == pytest.approx(49.6, rel=0.02)
    assert vlmae / albef == pytest.approx(0.820, rel=0.02)


def test_masked_layer_counts_are_exactly_linear_in_kept_tokens(tiny_config):
    """LightVLP Table 5's shape: without attention, a step's count is a + b * kept patches + c * kept tokens."""
    from vlpbench.flops_tables import linear_fit
    tiny_config["method"] = {"name": "lightvlp", "embed_dim": 32, "queue_size": 16, "decoder_width": 32,
                             "decoder_heads": 4, "decoder_layers": 1}
    points = []
    for image_ratio, text_ratio in ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.5, 0.5), (0.75, 0.75)):
        tiny_config["method"] |= {"image_mask_ratio": image_ratio, "text_mask_ratio": text_ratio}
        result = count_experiment(config_from_dict(tiny_config), 2, text_length=16, cross_check=False)
        kept = (16 - int(16 * image_ratio), 16 - int(16 * text_ratio))  # 16 patches; 16 tokens
        points.append((kept, result.per_sample(Convention.parse("flops,forward,linear_only"))))
    fit = linear_fit(points)
    assert fit["max_residual"] < 1e-6 * points[0][1]
    assert fit["image_slope"] > 0 and fit["text_slope"] > 0


def test_reproduce_reports_published_counted_and_relative_error_per_cell(tiny_config, tmp_path, monkeypatch):
    import yaml
    from vlpbench import flops_tables
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(tiny_config))
    convention = flops_tables.LINEAR_FORWARD_FLOPS
    counted = count_experiment(config_from_dict(tiny_config), 2, 16, cross_check=False).per_sample(convention) / 1e9
    table = flops_tables.Table("tiny", convention, 16, "16: test", (flops_tables.Cell("ALBEF", str(experiment),
                                                                                       published=2 * counted),))
    monkeypatch.setitem(flops_tables.TABLES, "tiny_table", table)
    rep = flops_tables.reproduce("tiny_table")
    (row,) = rep["rows"]
    assert rep["convention"] == "flops,forward,linear_only" and "per sample" in rep["convention_text"]
    assert row["cell"] == "ALBEF" and row["published"] == 2 * counted
    assert row["counted"] == pytest.approx(counted, abs=1e-3) and row["relative_error"] == pytest.approx(-0.5)
    with pytest.raises(KeyError, match="unknown table"):
        flops_tables.reproduce("no_such_table")


def test_a_plug_in_is_broken_down_into_its_base_method_and_its_own_parts(tiny_config):
    tiny_config["method"] = {"name": "epic", "base": {"name": "albef", "embed_dim": 32, "queue_size": 16},
                             "masking": "random"}
    tiny_config["model"]["unimodal"] = {"text_steps": 2, "batch_size": 8}
    result = count_experiment(config_from_dict(tiny_config), batch_size=2)
    forward = Convention(multiply_adds=True, backward=False)
    rows = {r["component"]: r for r in result.components(forward)}
    assert {"base.visual_encoder", "base.text.fusion_layers", "generator.text_layers", "consistency_head"} <= set(rows)
    assert rows["base.visual_encoder"]["calls"] == 2  # ALBEF's own pass, then EPIC's for the corrupted caption
    assert result.fvcore_per_sample(forward) == pytest.approx(result.per_sample(forward), rel=0.005)
