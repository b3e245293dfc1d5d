"""FLOP-matched training: ``train.flop_budget`` gives every method the steps that spend the same compute."""

import pytest

from vlpbench.budget import apply_flop_budget, steps_for_budget
from vlpbench.config import config_from_dict

LIGHTVLP = {"name": "lightvlp", "embed_dim": 32, "queue_size": 16, "cross_layers": 2, "decoder_layers": 1,
            "decoder_width": 32, "decoder_heads": 2, "image_mask_ratio": 0.75, "text_mask_ratio": 0.5}


def test_each_method_gets_the_steps_its_per_sample_cost_allows(tiny_config):
    budget = 2e-4  # PFLOP
    albef = config_from_dict({**tiny_config, "train": {**tiny_config["train"], "flop_budget": budget}})
    lightvlp = config_from_dict({**tiny_config, "method": LIGHTVLP, "train": {**tiny_config["train"],
                                                                            "flop_budget": budget}})
    for cfg in (albef, lightvlp):
        steps, gflops = steps_for_budget(cfg)
        spent = steps * cfg.train.batch_size * gflops * 1e9 / 1e15
        assert spent == pytest.approx(budget, rel=0.5 / steps + 1e-6)  # within half a step of the budget
    albef_steps, albef_cost = steps_for_budget(albef)
    lightvlp_steps, lightvlp_cost = steps_for_budget(lightvlp)
    assert lightvlp_cost < albef_cost and lightvlp_steps > albef_steps  # cheaper steps: more of them
    assert apply_flop_budget(albef, log=lambda *a: None).train.steps == albef_steps


def test_without_a_budget_the_steps_stay(tiny_config):
    cfg = config_from_dict(tiny_config)
    assert apply_flop_budget(cfg, log=lambda *a: None) is cfg
