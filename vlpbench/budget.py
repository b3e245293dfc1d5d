"""Training compute: what a run's step costs, and ``train.flop_budget`` (PFLOP) turned into the
steps that spend it.

The cost of a step is what ``vlpbench flops`` counts for the experiment's method (forward and
backward, attention included, per sample, on random weights) times the samples per optimizer
step, so every method of a comparison trains on the same compute whatever its per-step cost.
The budget is resolved once, where a run is planned (``vlpbench run``, its dry run, a sweep's
plan, ``vlpbench.run``); every run records its compute in ``results.json`` (``compute_record``),
which reports read instead of counting again.
"""

from __future__ import annotations

import functools
import json

from vlpbench.config import ExperimentConfig


def gflops_per_sample(cfg: ExperimentConfig) -> float:
    """Training GFLOPs per sample of ``cfg``'s method, counted once per configuration and process
    (the count depends on neither the run's name nor its steps)."""
    key = {**cfg.model_dump(mode="json"), "name": "flops", "output_dir": "."}
    key["train"]["steps"] = 1
    return _count(json.dumps(key, sort_keys=True))


@functools.cache
def _count(config_json: str) -> float:
    from vlpbench.config import config_from_dict
    from vlpbench.flops import Convention, count_experiment
    cfg = config_from_dict(json.loads(config_json), source="(the configuration whose FLOPs are counted)")
    return count_experiment(cfg, 2, cross_check=False).per_sample(Convention()) / 1e9


def samples_per_step(cfg: ExperimentConfig) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum_steps


def steps_for_budget(cfg: ExperimentConfig) -> tuple[int, float]:
    """(steps, GFLOPs per sample) of ``cfg`` under its ``train.flop_budget``."""
    gflops = gflops_per_sample(cfg)
    return max(1, round(cfg.train.flop_budget * 1e6 / gflops / samples_per_step(cfg))), gflops


def apply_flop_budget(cfg: ExperimentConfig, log=print) -> ExperimentConfig:
    """``cfg`` with ``train.steps`` set from ``train.flop_budget`` (unchanged without a budget)."""
    if cfg.train.flop_budget is None:
        return cfg
    steps, gflops = steps_for_budget(cfg)
    log(f"train.flop_budget {cfg.train.flop_budget} PFLOP at {gflops:.3f} GFLOP per sample: {steps} steps "
        f"of {samples_per_step(cfg)} samples")
    return with_steps(cfg, steps)


def with_steps(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps})})


def compute_record(cfg: ExperimentConfig) -> dict:
    """A resolved run's training compute, as ``results.json`` records it."""
    gflops = gflops_per_sample(cfg)
    return {"gflops_per_sample": gflops, "samples_per_step": samples_per_step(cfg), "steps": cfg.train.steps,
            "train_pflop": gflops * samples_per_step(cfg) * cfg.train.steps / 1e6,
            "flop_budget": cfg.train.flop_budget}
