"""Every registered method, built from its config class's ``tiny`` keys (timm's pattern): a new file
in methods/ is tested here without being listed anywhere."""

import json
import math

import pytest
from conftest import REGISTERED_METHODS, tiny_method

import vlpbench
from vlpbench.config import Capabilities, config_from_dict
from vlpbench.method import VLPMethod
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
    if not get_method(name).config_class(**tiny_config["method"]).capabilities().contrastive_embedding:
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


# each capability and the methods a class must define to offer it
CAPABILITY_METHODS = {"contrastive_embedding": ("image_embedding", "text_embedding"), "matching": ("match_score",),
                      "fusion": ("fuse", "fused_width", "match_logits"), "saliency": ("token_saliency",),
                      "gate": ("match_probability",)}


@pytest.mark.parametrize("name", REGISTERED_METHODS)
def test_a_methods_declared_capabilities_are_what_its_class_implements(name):
    """Declared, not probed: but a declaration the class does not back would fail deep in a run."""
    method_class = get_method(name)
    declared = method_class.config_class.declared
    for capability, functions in CAPABILITY_METHODS.items():
        if getattr(declared, capability) and name != "epic":  # (EPIC passes its base's through)
            missing = [f for f in functions if getattr(method_class, f) is getattr(VLPMethod, f)]
            assert not missing, f"{name} declares {capability} but does not define {missing}"


def test_capabilities_follow_a_configurations_switches():
    albef, lightvlp = get_method("albef").config_class, get_method("lightvlp").config_class
    assert albef(name="albef").capabilities() == Capabilities(single_stream=True, saliency=True)
    row1 = albef(name="albef", itc=False, itm_hard_negatives=False, distill_itc=False, distill_mlm=False)
    assert not row1.capabilities().contrastive_embedding  # ALBEF Table 1 row 1: ranks every pair by ITM
    no_itc = lightvlp(name="lightvlp", itc=False).capabilities()
    assert (no_itc.contrastive_embedding, no_itc.matching, no_itc.gate) == (False, True, True)
    epic = get_method("epic").config_class(name="epic", base="vilta")
    assert epic.capabilities() == Capabilities(contrastive_embedding=False)  # the base's, no saliency of its own
    assert epic.itm_positive_fraction() == 1 / 3 and lightvlp(name="lightvlp", itm=False).itm_positive_fraction() is None
