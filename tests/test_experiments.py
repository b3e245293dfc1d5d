"""Every shipped experiment file validates; `mini` experiments share every setting but the method."""

from pathlib import Path

import pytest
import yaml

from vlpbench.config import config_from_dict, load_config, read_yaml_with_base

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def inherits_mini_base(path: Path) -> bool:
    while (base := (yaml.safe_load(path.read_text()) or {}).get("base")) is not None:
        path = (path.parent / base).resolve()
        if path == (EXPERIMENTS / "mini_base.yaml").resolve():
            return True
    return False


def is_sweep(path: Path) -> bool:
    return "sweep" in read_yaml_with_base(path)


# single-run mini experiments; a sweep (an ablation, compare_methods) changes what it sweeps and its protocol
MINI = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if inherits_mini_base(p) and not is_sweep(p))


OVERLAYS = ("mini_base.yaml", "paper_scale.yaml")  # shared settings other files build on, not experiments


@pytest.mark.parametrize("path", sorted(p for p in EXPERIMENTS.rglob("*.yaml") if p.name not in OVERLAYS),
                         ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_file_validates(path):
    assert load_config(path).name


@pytest.mark.parametrize("path", MINI, ids=lambda p: p.name)
def test_mini_experiments_change_only_the_method(path):
    cfg = load_config(path)
    base = read_yaml_with_base(EXPERIMENTS / "mini_base.yaml")
    raw = {**base, "name": cfg.name, "method": read_yaml_with_base(path)["method"]}
    raw["downstream"] = {**raw["downstream"], "tasks": cfg.downstream.tasks}  # which tasks follow pre-training
    if cfg.eval.retrieval.k_test == "all":  # allowed (on a subset) for methods without a contrastive embedding only
        assert not cfg.method.capabilities().contrastive_embedding
        protocol = {"k_test": "all", "max_images": cfg.eval.retrieval.max_images, "fold_images": None}
        raw["eval"] = {**raw["eval"], "retrieval": {**raw["eval"]["retrieval"], **protocol}}
    assert cfg == config_from_dict(raw), "a mini experiment may set only name, method and downstream.tasks; the rest is mini_base.yaml's"


def test_mini_budget_settings():
    cfg = load_config(EXPERIMENTS / "albef_mini.yaml")
    assert cfg.data.embedded.num_test_images >= 1000 and cfg.eval.every_steps
    assert cfg.model.unimodal.text_steps > 0 and cfg.model.unimodal.vision_steps > 0


@pytest.mark.parametrize("name", ["albef_mini", "lightvlp_mini", "vlmae_mini", "vilta_mini", "epic_mini", "quickstart"])
def test_one_override_puts_an_experiment_at_paper_scale(name):
    cfg = load_config(EXPERIMENTS / f"{name}.yaml", ["scale=base"])
    assert cfg.scale == "base" and cfg.model.vision.preset == "vit_base" and cfg.model.text.preset == "bert_base"
    assert cfg.eval.ema is None and cfg.eval.retrieval.fold_images is None  # mini v2's, not the papers'
    assert cfg.train.min_lr > 0
    assert cfg.model.unimodal.text_steps == 0 and cfg.model.text.pretrained == "bert-base-uncased"
    assert cfg.train.batch_size >= 512 and cfg.name == load_config(EXPERIMENTS / f"{name}.yaml").name


def test_a_sweep_keeps_its_own_protocol_at_paper_scale():
    from vlpbench.sweep import load_sweep
    sweep = load_sweep(EXPERIMENTS / "albef_ablation.yaml", ["scale=base"])
    assert len(sweep.runs) == 15 and sweep.runs[0].config.model.vision.preset == "vit_base"
    assert sweep.runs[0].config.eval.retrieval.k_test == "all"  # the ablation's, over the preset's 256


def test_an_unknown_scale_names_the_ones_there_are():
    from vlpbench.config import ConfigError
    with pytest.raises(ConfigError, match=r"scale: 'huge' is not one of this experiment's scales: \['base', 'mini'\]"):
        load_config(EXPERIMENTS / "albef_mini.yaml", ["scale=huge"])
