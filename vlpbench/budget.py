"""FLOP-matched training: ``train.flop_budget`` (PFLOP) turned into the steps that spend it.

The cost of a step is what ``vlpbench flops`` counts for the experiment's method (forward and
backward, attention included, per sample, on random weights) times the samples per optimizer
step, so every method of a comparison trains on the same compute whatever its per-step cost.
"""

from __future__ import annotations

from vlpbench.config import ExperimentConfig


def steps_for_budget(cfg: ExperimentConfig) -> tuple[int, float]:
    """(steps, GFLOPs per sample) of ``cfg`` under its ``train.flop_budget``."""
    from vlpbench.flops import Convention, count_experiment
    per_sample = count_experiment(cfg, 2, cross_check=False).per_sample(Convention())
    samples = cfg.train.flop_budget * 1e15 / per_sample
    return max(1, round(samples / (cfg.train.batch_size * cfg.train.grad_accum_steps))), per_sample / 1e9


def apply_flop_budget(cfg: ExperimentConfig, log=print) -> ExperimentConfig:
    """``cfg`` with ``train.steps`` set from ``train.flop_budget`` (unchanged without a budget)."""
    if cfg.train.flop_budget is None:
        return cfg
    steps, gflops = steps_for_budget(cfg)
    log(f"train.flop_budget {cfg.train.flop_budget} PFLOP at {gflops:.3f} GFLOP per sample: {steps} steps "
        f"of {cfg.train.batch_size * cfg.train.grad_accum_steps} samples")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps})})
