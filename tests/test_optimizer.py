"""Parameter groups: weight decay for matrices only, and ``train.lr_scale`` by parameter name."""

import pytest

import vlpbench
from vlpbench.config import ConfigError
from vlpbench.train import parameter_groups


def one_adam_step(tiny_config, **keys):
    """The trained-minus-initial weights after one AdamW step at lr 1e-3 without decay or warm-up."""
    built = vlpbench.create_method(tiny_config, train__steps=1, train__lr=1e-3, train__warmup_steps=0,
                                   train__weight_decay=0.0, eval__ema=None, **keys)
    before = {name: p.detach().clone() for name, p in built.method.named_parameters()}
    vlpbench.run(built, log=lambda _: None)
    return {name: (p.detach() - before[name]).abs().max().item() for name, p in built.method.named_parameters()}


def test_lr_scale_multiplies_the_step_of_the_parameters_it_names(tiny_config):
    # Adam's first step moves every weight with a non-zero gradient by lr * g / |g| = lr exactly
    moved = one_adam_step(tiny_config, train__lr_scale={"itm_head.*": 4.0, "text.fusion_layers.*.cross_attn.*": 0.5})
    assert moved["itm_head.weight"] == pytest.approx(4e-3, rel=1e-3)
    assert moved["itm_head.bias"] == pytest.approx(4e-3, rel=1e-3)
    assert moved["text.fusion_layers.0.cross_attn.query.weight"] == pytest.approx(5e-4, rel=1e-3)
    assert moved["text.fusion_layers.0.ffn_in.weight"] == pytest.approx(1e-3, rel=1e-3)


def test_without_lr_scale_two_groups_split_by_weight_decay(tiny_config):
    built = vlpbench.create_method(tiny_config)
    groups = parameter_groups(built.method, built.config.train)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(built.config.train.weight_decay, 1.0), (0.0, 1.0)]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim < 2 for p in groups[1]["params"])
    trainable = [p for p in built.method.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_an_lr_scale_pattern_that_names_no_parameter_is_refused(tiny_config):
    built = vlpbench.create_method(tiny_config, train__steps=1, train__lr_scale={"itm_haed.*": 2.0})
    with pytest.raises(ConfigError, match=r"train.lr_scale: \['itm_haed.\*'\] match no trainable parameter"):
        vlpbench.run(built, log=lambda _: None)
