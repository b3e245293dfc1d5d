"""Every shipped experiment file validates; `mini` experiments share every setting but the method."""

from pathlib import Path

import pytest
import yaml

from vlpbench.config import config_from_dict, load_config, read_yaml_with_base

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
MINI = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if (yaml.safe_load(p.read_text()) or {}).get("base") == "mini_base.yaml")


@pytest.mark.parametrize("path", sorted(p for p in EXPERIMENTS.rglob("*.yaml") if p.name != "mini_base.yaml"),
                         ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_file_validates(path):
    assert load_config(path).name


@pytest.mark.parametrize("path", MINI, ids=lambda p: p.name)
def test_mini_experiments_change_only_the_method(path):
    cfg = load_config(path)
    base = read_yaml_with_base(EXPERIMENTS / "mini_base.yaml")
    reference = config_from_dict({**base, "name": cfg.name, "method": read_yaml_with_base(path)["method"]})
    assert cfg == reference, "a mini experiment may set only name and method; the rest is mini_base.yaml's"


def test_mini_budget_settings():
    cfg = load_config(EXPERIMENTS / "albef_mini.yaml")
    assert cfg.data.embedded.num_test_images >= 1000 and cfg.eval.every_steps
    assert cfg.model.unimodal.text_steps > 0 and cfg.model.unimodal.vision_steps > 0
