import json
import math

import pytest
import torch
from conftest import train_on_one_batch

import vlpbench
from vlpbench.analysis import roc_auc
from vlpbench.cli import main
from vlpbench.config import config_from_dict
from vlpbench.experiment import run_experiment
from vlpbench.method import Batch, Progress
from vlpbench.pipeline import build_method
from vlpbench.report import Cell, RunRecord
from vlpbench.rundir import RunDir
from vlpbench.zoo import train_wordpiece

PROGRESS = Progress(step=5, steps_per_epoch=10)
MINI = dict(name="lightvlp", embed_dim=32, queue_size=16, cross_layers=1, decoder_layers=1, decoder_width=32,
            decoder_heads=4)


def make(tiny_config, **method):
    tiny_config["method"] = {**MINI, **method}
    cfg = config_from_dict(tiny_config)
    tok = train_wordpiece(["a red circle on the left", "a big blue box at the top right"] * 10, vocab_size=60)
    return build_method(cfg, tok), tok


def batch(tok, n=4):
    ids, mask = tok(["a red circle", "a blue box at the top right", "a big circle on the left", "a box"][:n], 16)
    return Batch(torch.randn(n, 3, 32, 32), ids, mask, torch.ones(n, 32, 32, dtype=torch.bool))


def test_all_four_losses_sum_and_backpropagate(tiny_config):
    method, tok = make(tiny_config)
    out = method(batch(tok), PROGRESS)
    parts = ("loss_mir", "loss_mtr", "loss_itc", "loss_itm")
    torch.testing.assert_close(out["loss"], sum(out[k] for k in parts))
    out["loss"].backward()
    for module in (method.gate_head, method.image_decoder, method.text_decoder, method.vision_proj, method.image_cross):
        assert all(p.grad is not None for p in module.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())


def test_encoders_receive_exactly_the_kept_tokens(tiny_config):
    method, tok = make(tiny_config, image_mask_ratio=0.75, text_mask_ratio=0.5)
    seen = {}
    def record(name, value):
        seen.setdefault(name, value)  # the first call is the online encoder's (a hook returning None keeps outputs)
    method.visual_encoder.vit.blocks.register_forward_hook(lambda m, i, o: record("image", i[0].shape))
    method.text.embeddings.register_forward_hook(lambda m, i, o: record("text", (i[0].clone(), i[1].clone())))
    b = batch(tok)
    torch.manual_seed(0)
    patches, tokens = method.mask_inputs(b)
    torch.manual_seed(0)
    method(b, PROGRESS)
    assert seen["image"][1] == 1 + 16 // 4, "[CLS] + the 4 kept of 16 patches"
    ids, positions = seen["text"]
    assert torch.equal(positions, tokens.keep_idx)
    assert torch.equal(ids, torch.gather(b.input_ids, 1, tokens.keep_idx))
    lengths = b.attention_mask.sum(1)
    assert tokens.kept_valid.sum(1).tolist() == [1 + int((n - 1) * 0.5) for n in lengths.tolist()]


def test_gate_false_passes_exactly_the_cross_representation(tiny_config):
    method, _ = make(tiny_config, gate=False)
    uni, cross, logit = torch.randn(2, 3, 32), torch.randn(2, 3, 32), torch.tensor([-3.0, 4.0])
    assert torch.equal(method.gated_output(uni, cross, logit), cross)
    gated, _ = make(tiny_config)
    p = torch.sigmoid(logit)[:, None, None]
    torch.testing.assert_close(gated.gated_output(uni, cross, logit), (1 - p) * uni + p * cross)


def test_gate_itm_loss_is_the_cross_entropy_of_p_over_the_pair_and_two_negatives(tiny_config):
    method, tok = make(tiny_config)
    with torch.no_grad():
        method.gate_head.weight.zero_()
        method.gate_head.bias.fill_(math.log(0.5))  # p = sigmoid(ln 1/2) = 1/3 for every pair
    out = method(batch(tok), PROGRESS)
    expected = -(math.log(1 / 3) + 2 * math.log(2 / 3)) / 3  # one positive, two negatives per pair
    assert out["loss_itm"].item() == pytest.approx(expected, rel=1e-5)
    assert out["gate_p"].item() == pytest.approx(1 / 3, rel=1e-5)


def test_ablation_switches_drop_their_losses(tiny_config):
    tiny_config["eval"]["retrieval"]["k_test"] = "all"
    method, tok = make(tiny_config, mir=False, itc=False)
    out = method(batch(tok), PROGRESS)
    assert set(k for k in out if k.startswith("loss_")) == {"loss_mtr", "loss_itm"}
    assert not hasattr(method, "teacher")
    with pytest.raises(Exception, match="k_test"):
        make(tiny_config | {"eval": {"retrieval": {"k_test": 4}}}, itc=False)


def test_a_few_steps_reduce_the_loss(tiny_config):
    method, tok = make(tiny_config, image_mask_ratio=0.5)
    losses = train_on_one_batch(method, batch(tok), PROGRESS)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_roc_auc_counts_ties_as_half():
    # pairs (positive, negative): 3>1, 3>2, 2>1 win; 2=2 ties -> (3 + 0.5) / 4
    assert roc_auc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.875)
    assert roc_auc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 0.0


def test_gate_command_reports_auc_and_p_per_noise_kind(tiny_config, tmp_path, capsys):
    tiny_config["method"] = dict(MINI)
    tiny_config["data"]["embedded"]["noisy_fraction"] = 0.5
    tiny_config["eval"]["retrieval"]["enabled"] = False
    cfg = config_from_dict(tiny_config)
    run = RunDir.create(cfg)
    run_experiment(cfg, run, log=lambda *_: None)
    out = tmp_path / "gate.json"
    assert main(["gate", str(run.path), "--max-pairs", "20", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sum(result["num_pairs"].values()) == 20 and result["num_pairs"]["clean"] < 20
    assert 0.0 <= result["auc"]["clean_vs_noisy"] <= 1.0
    assert all(0.0 <= q["q10"] <= q["median"] <= q["q90"] <= 1.0 for q in result["p"].values())
    assert "ROC AUC clean vs noisy" in capsys.readouterr().out


@pytest.mark.parametrize("cross_layers", [1, 3])
def test_match_score_is_the_gate_logit_of_the_full_cross_stacks(tiny_config, cross_layers):
    # match_score runs the last layer for the image [CLS] only; interact runs every token of both sides
    method, tok = make(tiny_config, cross_layers=cross_layers)
    method.eval()
    b = batch(tok)
    text = method.encode_text(b.input_ids, b.attention_mask)
    image = method.encode_image(b.images).states
    torch.testing.assert_close(method.match_score(text, b.attention_mask, image),
                               method.interact(image, text, b.attention_mask)[2], rtol=1e-5, atol=1e-6)


def test_a_run_records_its_gate_and_a_report_plots_it_without_a_model(tiny_config, tmp_path, monkeypatch):
    tiny_config["method"] = dict(MINI)
    tiny_config["data"]["embedded"]["noisy_fraction"] = 0.5
    tiny_config["eval"]["gate_pairs"] = 20
    cfg = config_from_dict(tiny_config)
    run = RunDir.create(cfg)
    recorded = run_experiment(cfg, run, log=lambda *_: None)["gate"]
    assert sum(sum(counts) for counts in recorded["p_histogram"].values()) == 20
    assert all(len(counts) == 20 for counts in recorded["p_histogram"].values())
    again = vlpbench.evaluate(run.path, task="gate", device="cpu", max_pairs=20)  # from the final checkpoint
    assert again["p_histogram"] == recorded["p_histogram"] and again["auc"] == pytest.approx(recorded["auc"])

    from vlpbench import pipeline, report_writer
    monkeypatch.setattr(pipeline, "load_trained", lambda *a: pytest.fail("the report loaded a model"))
    record = RunRecord(run.path.name, run.path, {}, 0, "done", json.loads((run.path / "results.json").read_text()))
    run_id, histogram = report_writer.recorded_gate([Cell({}, [record])])
    assert (run_id, histogram) == (run.path.name, recorded["p_histogram"])
    assert report_writer.plots.gate_histogram(histogram, "t", tmp_path / "gate.png").is_file()
