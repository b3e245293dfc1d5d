"""Every registered method, built from its config class's ``tiny`` keys (timm's pattern): a new file
in methods/ is tested here without being listed anywhere."""

import json
import math

import pytest
from conftest import REGISTERED_METHODS, tiny_method

from vlpbench.config import config_from_dict
import vlpbench
from vlpbench.experiment import run_experiment
from vlpbench.pipeline import data_sources
from vlpbench.registry import get_method
from vlpbench.rundir import RunDir


def test_every_registered_method_supplies_a_tiny_config_that_validates():
    for name in REGISTERED_METHODS:
        config_class = get_method(name).config_class
        assert config_class.tiny, f"{name}: its config class sets no `tiny` keys"
        assert config_class(**tiny_method(name)).name == name


@pytest.mark.parametrize("name", REGISTERED_METHODS)
def test_every_method_pretrains_evaluates_and_its_checkpoint_scores_the_same(tiny_config, name):
    tiny_config["method"] = tiny_method(name)
    if not get_method(name).config_class(**tiny_config["method"]).has_contrastive_embedding():
        tiny_config["eval"]["retrieval"]["k_test"] = "all"  # ITM over every pair: no ITC candidates
    tiny_config["train"]["steps"] = 2
    cfg = config_from_dict(tiny_config)
    run = RunDir.create(cfg)
    results = run_experiment(cfg, run, log=lambda *a: None)

    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert results["complete"] and len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    ranked = results["retrieval"]["itm"] or results["retrieval"]["itc"]
    assert 0.0 <= ranked["r_mean"] <= 100.0 and results["retrieval"]["num_images"] == 6

    # the final checkpoint rebuilds the method that was evaluated: the same retrieval numbers
    test = data_sources(cfg)["retrieval_test"]
    again = vlpbench.evaluate(run.path, test.ann_files, image_root=test.image_root, device="cpu",
                              **cfg.eval.retrieval.model_dump())
    assert again["itm"] == results["retrieval"]["itm"] and again["itc"] == results["retrieval"]["itc"]
