"""Planning and running a sweep's runs: which to start, their FLOP budgets resolved, and one
run's execution under its claim (``execute``, ``RunJob``); where they run is ``vlpbench.executors``.
What state each run is in, ``vlpbench.runs`` reads from its directory.

A run is trained only under its claim, taken at the moment it starts and held until it ends, so
two copies of one sweep never train the same run: the second finds the claim held and skips it.
A sweep whose run directories hold another config than the sweep now resolves is refused before
anything runs, finished runs included, naming each run and the keys that differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

from vlpbench import distributed
from vlpbench.budget import apply_flop_budget, with_steps
from vlpbench.config import ConfigError, config_differences, config_from_dict
from vlpbench.errors import UserError
from vlpbench.experiment import run_experiment
from vlpbench.io import read_json, write_json
from vlpbench.pipeline import runtime_device
from vlpbench.rundir import RunDir
from vlpbench.runs import is_done, read_run_config, run_state
from vlpbench.sweep import Sweep, SweepRun
from vlpbench.train import clear_stop, request_stop, stop_requested

def execute(config: dict, run_dir: str) -> dict:
    """Run (or continue) one run of a sweep in this process, under the run's claim, and return
    its results (``RunBusyError`` if another process holds the claim). ``config`` comes from
    ``plan``, which has turned its FLOP budget, if any, into steps.

    A finished run returns its results untouched; a run directory from an earlier attempt is
    resumed from its latest checkpoint, and must hold the same resolved config.
    """
    run_dir = Path(run_dir)
    # a data-parallel run's processes all get here; process 0 holds the claim for them
    with RunDir(run_dir).claim() if distributed.is_main() else contextlib.nullcontext():
        if is_done(run_dir):  # finished by another process between the plan and the claim
            return read_json(run_dir / "results.json")
        try:
            run, cfg = _open_run(config, run_dir)
        except Exception as exc:
            RunDir(run_dir).mark_failed(exc)
            raise
        resume = run.latest_checkpoint() is not None
        if not resume:
            run.truncate_metrics(0)  # lines an earlier attempt logged before it failed
        return run_experiment(cfg, run, resume=resume)


def _open_run(config: dict, run_dir: Path) -> tuple[RunDir, object]:
    cfg = config_from_dict(config, source=f"{run_dir} (sweep run)")
    if cfg.train.steps is None:  # the plan could not count it (resolve_budget)
        cfg = apply_flop_budget(cfg)
    if not (run_dir / "config.yaml").is_file():
        return RunDir.create(cfg, run_id=run_dir.name), cfg
    differences = recorded_differences(run_dir, cfg)
    if differences:
        raise ConfigError(f"{run_dir}: started with another config than the sweep now gives it "
                          f"({'; '.join(differences[:5])}); remove the run directory or restore the sweep file")
    return RunDir(run_dir), cfg


def recorded_differences(run_dir: Path, cfg) -> list[str]:
    """The keys whose value in the run directory's ``config.yaml`` differs from ``cfg``."""
    try:
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError as exc:
        return [f"config.yaml does not parse ({str(exc).splitlines()[0]})"]
    return config_differences(recorded if isinstance(recorded, dict) else {}, cfg.model_dump(mode="json"))


def resolve_budget(sweep: Sweep, run: SweepRun) -> SweepRun:
    """``run`` with its ``train.flop_budget`` turned into steps: those its run directory recorded
    under the same budget (a started run continues as it began, whatever a recount gives now), or
    counted (once per configuration). A new run whose count needs what does not exist yet (EPIC's
    saliency teacher) is left unresolved: it is counted when it starts, and fails there if it must."""
    cfg = run.config
    if cfg.train.flop_budget is None:
        return run
    run_dir = sweep.run_dir(run)
    try:
        recorded = read_run_config(run_dir).get("train", {}) if (run_dir / "config.yaml").is_file() else {}
    except ConfigError:  # check_recorded_configs names the unreadable file
        recorded = {}
    if recorded.get("flop_budget") == cfg.train.flop_budget and isinstance(recorded.get("steps"), int):
        return dataclasses.replace(run, config=with_steps(cfg, recorded["steps"]))
    try:
        return dataclasses.replace(run, config=apply_flop_budget(cfg, log=lambda _: None))
    except (UserError, OSError):  # raised again, and recorded, when the run starts
        return dataclasses.replace(run, config=with_steps(cfg, None))


def check_recorded_configs(sweep: Sweep, runs: list[SweepRun]) -> None:
    """Refuse a sweep whose existing run directories (finished or not) hold another config than
    the sweep now resolves for them: their results would be reported under the wrong settings."""
    clashes = []
    for run in runs:
        run_dir = sweep.run_dir(run)
        if (run_dir / "config.yaml").is_file():
            differences = recorded_differences(run_dir, run.config)
            if differences:
                clashes.append(f"  {run.run_id} ({run_state(run_dir)['state']}): " + "; ".join(differences[:5]))
    if clashes:
        raise ConfigError(f"sweep {sweep.name}: {len(clashes)} run directories under {sweep.directory} hold another "
                          "config than the sweep now resolves, so their results are not this sweep's:\n"
                          + "\n".join(clashes) + "\nRemove those run directories, restore the sweep file and "
                          "overrides, or give the sweep another name (-o name=...)")


@dataclass
class RunJob:
    """One sweep run as a submitit job. On preemption or at the time limit submitit calls
    ``checkpoint``: the job is requeued as itself and resumes from the run's latest checkpoint."""
    config: dict
    run_dir: str
    threads: int | None = None

    def __call__(self) -> dict:
        # a Slurm task uses the CPUs it was given, not every core of the node
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0))
        if threads:
            import torch
            torch.set_num_threads(threads)
        clear_stop()
        warning = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        submitit_handler, warned = signal.getsignal(warning), []
        if callable(submitit_handler):
            # preemption or time limit: finish the step and checkpoint it, then let submitit requeue
            # (its handler alone would requeue mid-step, losing the steps since the last checkpoint)
            signal.signal(warning, lambda signum, frame: (warned.append(signum), request_stop()))
        distributed.initialize(runtime_device(config_from_dict(self.config).train))  # a multi-task job: DDP
        results = execute(self.config, self.run_dir)
        if warned and stop_requested() and not is_done(Path(self.run_dir)):
            submitit_handler(warning, None)  # calls checkpoint() below, requeues, exits
        return results

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(RunJob(self.config, self.run_dir, self.threads))


class Plan(NamedTuple):
    todo: list[SweepRun]     # the runs to start now
    states: dict[str, str]   # every run's state, by run id
    runs: list[SweepRun]     # every run, its FLOP budget resolved


def plan(sweep: Sweep, rerun_failed: bool = False) -> Plan:
    """The runs to start now, their FLOP budgets resolved, and every run's state: done, running and
    pending runs are left alone; failed runs wait for ``--rerun failed``, which then starts only them."""
    runs = [resolve_budget(sweep, run) for run in sweep.runs]
    check_recorded_configs(sweep, runs)
    states = {run.run_id: run_state(sweep.run_dir(run))["state"] for run in runs}
    wanted = {"failed"} if rerun_failed else {"new", "resumable"}
    return Plan([run for run in runs if states[run.run_id] in wanted], states, runs)


def write_plan(sweep: Sweep) -> None:
    """``sweep.json`` in the sweep directory: every planned run, so status lists runs not yet started."""
    write_json(sweep.directory / "sweep.json", {
        "experiment": str(sweep.experiment), "overrides": list(sweep.overrides),
        "launcher": sweep.launcher.model_dump(), "runs": [{"run_id": r.run_id, "overrides": list(r.overrides)}
                                                          for r in sweep.runs]})
