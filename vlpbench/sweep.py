"""Sweeps: an experiment file's ``sweep:`` section expanded into one run per combination.

    sweep:
      grid: {method.image_mask_ratio: [0.25, 0.5, 0.75]}   # every combination of these lists
      zip:  {train.lr: [1e-4, 3e-4], train.min_lr: [1e-5, 3e-5]}  # these lists side by side
      seeds: [0, 1, 2]                                      # every combination again per seed
    launcher:
      executor: local            # or slurm (vlpbench.executors)
      slurm: {partition: ..., gpus_per_node: 1, timeout_min: 240}

A run's id is made from its overrides (``image_mask_ratio=0.5,seed=1``), so running the sweep again
maps every combination to the same run directory, ``<output_dir>/<name>/<run id>/``: finished
runs are skipped, runs with a checkpoint resume, and ``--rerun failed`` retries the failed ones.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from vlpbench.config import (ConfigError, ExperimentConfig, StrictModel, config_from_dict, format_validation_error,
                             read_experiment)

MAX_RUN_ID = 120
MAX_SWEEP_RUNS = 10_000  # a larger grid is refused unless --max-runs allows it (each run is validated)


class SweepConfig(StrictModel):
    grid: dict[str, list[Any]] = {}
    zip: dict[str, list[Any]] = {}
    seeds: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "SweepConfig":
        for section, lists in (("grid", self.grid), ("zip", self.zip)):
            for key, values in lists.items():
                if not values:
                    raise ValueError(f"{section}.{key}: expected a non-empty list of values")
        if len({len(v) for v in self.zip.values()}) > 1:
            lengths = ", ".join(f"{k}: {len(v)}" for k, v in self.zip.items())
            raise ValueError(f"zip: the lists must have one length (got {lengths})")
        repeated = set(self.grid) & set(self.zip)
        if self.seeds is not None:
            repeated |= {"seed"} & (set(self.grid) | set(self.zip))
            if not self.seeds or len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds: expected distinct seeds (got {self.seeds})")
        if repeated:
            raise ValueError(f"keys swept twice: {sorted(repeated)}")
        return self


class SlurmConfig(StrictModel):
    """submitit's Slurm parameters (``slurm_<name>``); ``additional_parameters`` go to sbatch as is."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(60, ge=1)
    array_parallelism: int = Field(256, ge=1)
    constraint: str | None = None
    additional_parameters: dict[str, Any] = {}
    # requeues after preemption or time limit before a run counts as failed (submitit's max_num_timeout)
    max_requeues: int = Field(3, ge=0)


class LauncherConfig(StrictModel):
    executor: Literal["local", "slurm"] = "local"
    jobs: int = Field(1, ge=1)  # local: runs at a time
    slurm: SlurmConfig = SlurmConfig()


@dataclass(frozen=True)
class SweepRun:
    run_id: str
    overrides: tuple[str, ...]  # the sweep's own (the command line's -o come first)
    config: ExperimentConfig


@dataclass(frozen=True)
class Sweep:
    experiment: Path
    overrides: tuple[str, ...]  # -o from the command line, applied to every run
    name: str
    directory: Path
    runs: list[SweepRun]
    launcher: LauncherConfig

    def run_dir(self, run: SweepRun) -> Path:
        return self.directory / run.run_id

    def seed_groups(self) -> dict[str, list[Path]]:
        """The run directories grouped by configuration (overrides other than the seed)."""
        groups: dict[str, list[Path]] = {}
        for run in self.runs:
            label = ",".join(o for o in run.overrides if not o.startswith("seed=")) or self.name
            groups.setdefault(label, []).append(self.run_dir(run))
        return groups


def run_count(sweep: SweepConfig) -> int:
    """How many runs the sweep expands to, counted without expanding it."""
    grid = math.prod(len(values) for values in sweep.grid.values())
    zipped = len(next(iter(sweep.zip.values()))) if sweep.zip else 1
    return grid * zipped * (len(sweep.seeds) if sweep.seeds is not None else 1)


def combinations(sweep: SweepConfig) -> list[list[tuple[str, Any]]]:
    """(key, value) pairs of every run: grid product x zipped rows x seeds, in file order."""
    grid = [[(key, v) for v in values] for key, values in sweep.grid.items()]
    length = len(next(iter(sweep.zip.values()))) if sweep.zip else 1
    zipped = [[(key, values[i]) for key, values in sweep.zip.items()] for i in range(length)]
    seeds = [[("seed", s)] for s in sweep.seeds] if sweep.seeds is not None else [[]]
    return [[*cell, *row, *seed] for cell in itertools.product(*grid)
            for row in zipped for seed in seeds]


def _value_text(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:  # a whole section (a method): named by its name
        return _value_text(value["name"])
    text = "-".join(map(_value_text, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest trailing part that no other key of the sweep ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                out[key] = tail
                break
    return out


def run_id(pairs: list[tuple[str, Any]], names: dict[str, str]) -> str:
    """``key=value,...`` with short keys; too long an id keeps its start and gains a hash of the whole."""
    if not pairs:
        return "default"
    text = ",".join(f"{names[k]}={_value_text(v)}" for k, v in pairs)
    if len(text) <= MAX_RUN_ID:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{text[:MAX_RUN_ID - 11]}~{digest}"


def read_sections(path: Path, overrides: list[str] = ()) -> tuple[dict, SweepConfig | None, LauncherConfig]:
    """The experiment (without its ``sweep`` and ``launcher`` sections) and those two, validated."""
    raw = read_experiment(path, list(overrides))
    parsed = []
    for section, model in (("sweep", SweepConfig), ("launcher", LauncherConfig)):
        value = raw.pop(section, None)
        try:
            parsed.append(None if value is None else model.model_validate(value))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{path}: {section}", model)) from None
    return raw, parsed[0], parsed[1] or LauncherConfig()


def load_sweep(path: str | Path, overrides: list[str] = (), seeds: list[int] | None = None,
               executor: str | None = None, jobs: int | None = None, max_runs: int = MAX_SWEEP_RUNS) -> Sweep | None:
    """The expanded sweep of an experiment file (None if it has no ``sweep`` and no ``seeds``).

    Every run's config is validated here, so a bad value fails before anything runs, naming the run;
    a sweep of more than ``max_runs`` runs is refused before it is expanded.
    """
    path = Path(path)
    raw, sweep_cfg, launcher = read_sections(path, overrides)
    if seeds is not None:
        sweep_cfg = (sweep_cfg or SweepConfig()).model_copy(update={"seeds": list(seeds)})
    if sweep_cfg is None:
        return None
    launcher = launcher.model_copy(update={k: v for k, v in (("executor", executor), ("jobs", jobs)) if v})
    if run_count(sweep_cfg) > max_runs:
        raise ConfigError(f"{path}: sweep: {run_count(sweep_cfg):,} runs, more than {max_runs:,}; pass --max-runs "
                          f"{run_count(sweep_cfg)} if you mean it")
    pairs_of_runs = combinations(sweep_cfg)
    names = short_keys([k for k, _ in pairs_of_runs[0]])
    runs, seen = [], {}
    for pairs in pairs_of_runs:
        rid = run_id(pairs, names)
        if rid in seen:
            raise ConfigError(f"{path}: sweep: two runs would share the directory {rid!r}: {seen[rid]} and "
                              f"{pairs}; make the values distinct as text (e.g. 0.5 and '0.5' are one id)")
        seen[rid] = pairs
        own = tuple(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for k, v in pairs)
        try:
            cfg = config_from_dict(yaml.safe_load(yaml.safe_dump(raw)), source=str(path),
                                   overrides=[*overrides, *own])
        except ConfigError as exc:
            raise ConfigError(f"sweep run {rid}: {exc}") from None
        runs.append(SweepRun(rid, own, cfg))
    first = runs[0].config
    return Sweep(path, tuple(overrides), first.name, Path(first.output_dir) / first.name, runs, launcher)


def format_plan(sweep: Sweep, states: dict[str, str] | None = None, runs: list[SweepRun] | None = None) -> str:
    """What ``--dry-run`` prints: each run's id, overrides, steps and (if known) what running it
    would do. ``runs``: the sweep's runs with their FLOP budgets resolved (``launch.plan``)."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep.directory}",
             f"executor: {describe_launcher(sweep.launcher)}"]
    if sweep.overrides:
        lines.append("every run: " + " ".join(f"-o {o}" for o in sweep.overrides))
    width = max(len(r.run_id) for r in sweep.runs)
    for run in runs or sweep.runs:
        state = f"  [{states[run.run_id]}]" if states else ""
        steps = run.config.train.steps
        budget = "" if run.config.train.flop_budget is None else (
            f"  ({steps} steps)" if steps else "  (steps counted when it starts)")
        lines.append(f"  {run.run_id:<{width}}  {' '.join(run.overrides)}{budget}{state}")
    return "\n".join(lines)


def describe_launcher(launcher: LauncherConfig) -> str:
    if launcher.executor == "local":
        return f"local, {launcher.jobs} run(s) at a time"
    settings = {k: v for k, v in launcher.slurm.model_dump().items() if v not in (None, {}, [])}
    return "slurm (submitit job array), " + ", ".join(f"{k}={v}" for k, v in settings.items())
