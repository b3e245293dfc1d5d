"""Running a sweep's runs: in this process, N at a time (submitit's LocalExecutor), or on Slurm
(a submitit job array). What state each run is in, ``vlpbench.runs`` reads from its directory.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

from vlpbench import distributed
from vlpbench.budget import apply_flop_budget, with_steps
from vlpbench.config import ConfigError, config_differences, config_from_dict
from vlpbench.errors import UserError
from vlpbench.experiment import EvaluationError, run_experiment
from vlpbench.io import read_json, write_json
from vlpbench.pipeline import runtime_device
from vlpbench.rundir import RunBusyError, RunDir
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


def start_runs(sweep: Sweep, runs: list[SweepRun], wait: bool = True, log=print) -> list:
    """Run ``runs`` with the sweep's ``launcher``: as Slurm jobs (waited for when ``wait``; the
    submitted jobs are returned), ``launcher.jobs`` local processes at a time, or one after another here."""
    write_plan(sweep)
    if sweep.launcher.executor == "slurm":
        jobs = submit_slurm(sweep, runs, log)
        for job in jobs if wait else ():
            job.wait()
        return jobs
    if sweep.launcher.jobs > 1:
        run_local_jobs(sweep, runs, log)
    else:
        run_here(sweep, runs, log)
    return []


def run_here(sweep: Sweep, runs: list[SweepRun], log=print) -> None:
    """One run after another in this process; a failed run is recorded and the sweep goes on, a
    run another process is training is skipped, and a stop request (a signal) ends the sweep
    once the current run has checkpointed."""
    for i, run in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {run.run_id}: {sweep.run_dir(run)}")
        try:
            execute(run.config.model_dump(mode="json"), str(sweep.run_dir(run)))
        except RunBusyError as exc:
            log(f"  {run.run_id} skipped: {exc}")
        except EvaluationError as exc:
            log(f"  {run.run_id}: {exc}")
        except Exception as exc:  # failed.json records it; the other runs still run
            log(f"  {run.run_id} failed: {type(exc).__name__}: {exc}")
        if stop_requested():
            log(f"stopped on a signal after {run.run_id} checkpointed; {len(runs) - i} runs not started. "
                "Run the sweep again to resume.")
            return


def submitit_folder(sweep: Sweep, executor: str) -> Path:
    """One submitit folder per cluster instance: a fresh Slurm restarts job ids at 1, so a folder
    shared across instances could hand back another job's result."""
    return sweep.directory / "submitit" / ("local" if executor == "local" else f"slurm-{slurm_instance()}")


def slurm_instance() -> str:
    """The cluster's name and its controller's boot time: one id per Slurm instance."""
    import subprocess
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"launcher.executor slurm: cannot reach Slurm (scontrol show config: {exc})") from exc
    if out.returncode:
        raise ConfigError(f"launcher.executor slurm: scontrol show config failed: {out.stderr.strip()}")
    fields = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)}
    booted = "".join(ch for ch in fields.get("BOOT_TIME", "") if ch.isdigit())
    return f"{fields.get('ClusterName', 'cluster')}-{booted}"


def run_local_jobs(sweep: Sweep, runs: list[SweepRun], log=print, poll_s: float = 2.0) -> None:
    """``launcher.jobs`` runs at a time, each a process of submitit's LocalExecutor (its output in
    the sweep's submitit folder) with an equal share of this machine's cores."""
    import submitit
    jobs_at_once = sweep.launcher.jobs
    executor = submitit.LocalExecutor(folder=submitit_folder(sweep, "local"))
    executor.update_parameters(timeout_min=60 * 24 * 365)  # local runs have no time limit
    threads = max(1, (os.cpu_count() or 1) // jobs_at_once)
    queue, live = list(runs), []
    while queue or live:
        live = [(run, job) for run, job in live if not job.done()]
        while queue and len(live) < jobs_at_once:
            run = queue.pop(0)
            job = executor.submit(RunJob(run.config.model_dump(mode="json"), str(sweep.run_dir(run)), threads))
            log(f"started {run.run_id} (local job {job.job_id}, {threads} threads)")
            live.append((run, job))
        time.sleep(poll_s)


def submit_slurm(sweep: Sweep, runs: list[SweepRun], log=print) -> list:
    """Submit the runs as one Slurm job array; each run directory gets ``job.json``."""
    import submitit
    s = sweep.launcher.slurm
    folder = submitit_folder(sweep, "slurm")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_requeues)
    executor.update_parameters(
        nodes=s.nodes, gpus_per_node=s.gpus_per_node, tasks_per_node=max(1, s.gpus_per_node),
        timeout_min=s.timeout_min, slurm_array_parallelism=s.array_parallelism, name=sweep.name,
        **{f"slurm_{k}": v for k, v in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                                        ("constraint", s.constraint)) if v is not None},
        **({"cpus_per_task": s.cpus_per_task} if s.cpus_per_task else {}),
        **({"mem_gb": s.mem_gb} if s.mem_gb else {}),
        **({"slurm_additional_parameters": s.additional_parameters} if s.additional_parameters else {}))
    with executor.batch():
        jobs = [executor.submit(RunJob(run.config.model_dump(mode="json"), str(sweep.run_dir(run))))
                for run in runs]
    for run, job in zip(runs, jobs):
        write_json(sweep.run_dir(run) / "job.json", {"executor": "slurm", "job_id": job.job_id, "folder": str(folder)})
        log(f"submitted {run.run_id}: Slurm job {job.job_id}")
    return jobs
