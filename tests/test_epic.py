import math

import pytest
import torch
from conftest import train_on_one_batch

from vlpbench.methods.epic import sample_without_replacement
from vlpbench.config import ConfigError, config_from_dict
from vlpbench.experiment import run_experiment
from vlpbench.method import Batch, Progress
from vlpbench.pipeline import build_method
from vlpbench.rundir import RunDir
from vlpbench.zoo import TextTokenizer, train_wordpiece

PROGRESS = Progress(step=5, steps_per_epoch=10)
CAPTIONS = ["a red circle on the left", "a big blue box at the top right", "there is a green star",
            "two shapes: a small white triangle and a yellow disk"]
ALBEF = {"name": "albef", "embed_dim": 32, "queue_size": 16}
QUIET = dict(log=lambda *_: None)


def make(tiny_config, tok=None, **epic):
    tiny_config["method"] = {"name": "epic", "base": ALBEF, "masking": "random", **epic}
    tiny_config["model"]["unimodal"] = {"text_steps": 2, "batch_size": 8}
    cfg = config_from_dict(tiny_config)
    tok = tok or train_wordpiece(CAPTIONS * 5, vocab_size=80)
    return build_method(cfg, tok), tok, cfg


def batch(tok):
    ids, mask = tok(CAPTIONS, 16)
    return Batch(torch.randn(4, 3, 32, 32), ids, mask)


def test_mask_count_is_ceil_of_ratio_times_eligible_tokens(tiny_config):
    method, tok, _ = make(tiny_config)
    b = batch(tok)
    positions = method.masking_positions(b)
    eligible = method.eligible(b.input_ids, b.attention_mask)
    expected = [math.ceil(0.35 * n) for n in eligible.sum(1).tolist()]
    assert positions.sum(1).tolist() == expected and not (positions & ~eligible).any()


def test_masking_follows_the_saliency_weights():
    torch.manual_seed(0)
    weights = torch.tensor([[0.0, 0.1, 0.2, 0.7, 0.0]]).repeat(20000, 1)
    chosen = sample_without_replacement(weights, torch.ones(20000, dtype=torch.long))
    frequency = chosen.float().mean(0)
    torch.testing.assert_close(frequency, weights[0], atol=0.015, rtol=0)
    two = sample_without_replacement(weights[:50], torch.full((50,), 2))
    assert (two.sum(1) == 2).all() and not two[:, [0, 4]].any(), "without replacement, never a zero-weight token"


def test_consistency_labels_are_exactly_the_changed_positions(tiny_config):
    method, tok, _ = make(tiny_config, replacement="random")
    b = batch(tok)
    positions = method.masking_positions(b)
    corrupted, loss_gen = method.inconsistent_tokens(b, positions)
    changed = corrupted != b.input_ids
    assert loss_gen is None and not (changed & ~positions).any()
    with torch.no_grad():
        method.consistency_head.weight.zero_()
        method.consistency_head.bias.fill_(1.0)  # every token scored consistent with p = sigmoid(1)
    real = b.attention_mask.bool()
    n_changed, n_real = int(changed[real].sum()), int(real.sum())
    expected = ((n_real - n_changed) * math.log1p(math.exp(-1.0)) + n_changed * math.log1p(math.exp(1.0))) / n_real
    assert method.consistency_loss(b, corrupted, changed).item() == pytest.approx(expected, rel=1e-5)


def test_epic_on_albef_keeps_albefs_losses_when_lambda_is_zero(tiny_config):
    epic, tok, _ = make(tiny_config, consistency_weight=0.0)
    tiny_config["method"] = ALBEF
    plain = build_method(config_from_dict(tiny_config), tok)
    plain.load_state_dict(epic.base.state_dict())
    b = batch(tok)
    torch.manual_seed(7)
    a = epic(b, PROGRESS)
    torch.manual_seed(7)
    p = plain(b, PROGRESS)
    for key in ("loss_itc", "loss_itm", "loss_mlm"):
        torch.testing.assert_close(a[key], p[key])
    torch.testing.assert_close(a["loss"], p["loss"] + a["loss_gen"])


def test_generator_is_fine_tuned_or_fixed(tiny_config):
    tuned, tok, _ = make(tiny_config)
    out = tuned(batch(tok), PROGRESS)
    out["loss"].backward()
    assert tuned.generator.embeddings.word.weight.grad is not None and "loss_gen" in out
    fixed, _, _ = make(tiny_config, generator="fixed")
    out = fixed(batch(tok), PROGRESS)
    out["loss"].backward()
    assert all(p.grad is None for p in fixed.generator.parameters()) and "loss_gen" not in out


def test_a_few_steps_reduce_the_loss(tiny_config):
    method, tok, _ = make(tiny_config)
    losses = train_on_one_batch(method, batch(tok), PROGRESS)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_saliency_teacher_is_required_and_loaded_from_a_trained_run(tiny_config, tmp_path):
    tiny_config["method"] = {"name": "epic", "base": "albef", "replacement": "random"}
    with pytest.raises(ConfigError, match="saliency_teacher"):
        config_from_dict(tiny_config)
    tiny_config["method"] = dict(ALBEF)
    tiny_config["eval"]["retrieval"]["enabled"] = False
    teacher_cfg = config_from_dict(tiny_config)
    teacher_run = RunDir.create(teacher_cfg)
    run_experiment(teacher_cfg, teacher_run, **QUIET)
    folder = str(tmp_path / "runs" / "tiny")
    with pytest.raises(ValueError, match="another tokenizer"):
        make(tiny_config, masking="saliency", saliency_teacher=folder)
    tok = TextTokenizer.load(teacher_run.path / "tokenizer.json")
    method, tok, _ = make(tiny_config, tok, masking="saliency", saliency_teacher=folder)
    b = batch(tok)
    saliency = method.saliency_model[0].token_saliency(b.input_ids, b.attention_mask, b.images)
    torch.testing.assert_close(saliency.sum(1), torch.ones(4))
    assert (saliency[~b.attention_mask.bool()] == 0).all()
    assert method.masking_positions(b).any()


def test_epic_runs_through_the_shared_pipeline(tiny_config):
    tiny_config["method"] = {"name": "epic", "base": ALBEF, "masking": "random", "replacement": "random"}
    cfg = config_from_dict(tiny_config)
    results = run_experiment(cfg, RunDir.create(cfg), **QUIET)
    assert 0.0 <= results["retrieval"]["itm"]["r_mean"] <= 100.0 and results["retrieval"]["itc"] is not None


def test_epic_composes_with_vilta_too(tiny_config):
    tiny_config["eval"]["retrieval"] = {"k_test": "all"}
    method, tok, cfg = make(tiny_config, base={"name": "vilta", "fusion_layers": 1})
    assert not cfg.method.capabilities().contrastive_embedding
    out = method(batch(tok), PROGRESS)
    assert {"loss_mlm", "loss_itm", "loss_consistency", "loss_gen"} <= set(out)
    out["loss"].backward()
    assert method.consistency_head.weight.grad is not None


def test_a_base_without_fused_text_states_is_refused_at_config_load(tiny_config, monkeypatch):
    from vlpbench.config import Capabilities
    from vlpbench.methods.albef import ALBEFConfig
    monkeypatch.setattr(ALBEFConfig, "declared", Capabilities(fusion=False))  # a base that declares no fusion
    with pytest.raises(ConfigError, match="method.base: 'albef' exposes no fused text token states"):
        make(tiny_config)
