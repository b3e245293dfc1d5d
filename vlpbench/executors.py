"""Executors: where a sweep's runs run, behind one interface, chosen by ``launcher.executor``.

``submit(runs)`` starts the runs and returns the handles of those still going when it returns
(``wait()`` on each to block). An executor that hands runs to a scheduler writes each run's
``job.json`` (its name, the job id), and the scheduler's view of such a run is read back by
``vlpbench.runs.SCHEDULER_STATES[name]``, which imports no torch, so that ``vlpbench status``
and reports read run states without this module. A new executor is one class here, its name in
``EXECUTORS``, its settings in ``LauncherConfig``, and, if it uses a scheduler, its state reader there.
"""

from __future__ import annotations

import abc
import os
import time
from typing import ClassVar

from vlpbench.config import ConfigError
from vlpbench.experiment import EvaluationError
from vlpbench.io import write_json
from vlpbench.launch import RunJob, execute, write_plan
from vlpbench.rundir import RunBusyError
from vlpbench.sweep import Sweep, SweepRun
from vlpbench.train import stop_requested


class Executor(abc.ABC):
    name: ClassVar[str]

    def __init__(self, sweep: Sweep):
        self.sweep, self.launcher = sweep, sweep.launcher

    @abc.abstractmethod
    def submit(self, runs: list[SweepRun], log=print) -> list:
        """Start ``runs``; the handles of those still going when this returns."""

    def job(self, run: SweepRun, threads: int | None = None) -> RunJob:
        return RunJob(run.config.model_dump(mode="json"), str(self.sweep.run_dir(run)), threads)


class Local(Executor):
    """``launcher.jobs`` runs at a time on this machine: one after another in this process, or as
    processes of submitit's LocalExecutor (output in the sweep's submitit folder), each with an
    equal share of the cores. A failed run is recorded and the sweep goes on; a run another process
    is training is skipped; a stop request (a signal) ends the sweep once the current run has
    checkpointed."""
    name = "local"

    def submit(self, runs: list[SweepRun], log=print) -> list:
        if self.launcher.jobs > 1:
            self.run_processes(runs, log)
        else:
            self.run_here(runs, log)
        return []

    def run_here(self, runs: list[SweepRun], log=print) -> None:
        for i, run in enumerate(runs, 1):
            log(f"[{i}/{len(runs)}] {run.run_id}: {self.sweep.run_dir(run)}")
            try:
                execute(run.config.model_dump(mode="json"), str(self.sweep.run_dir(run)))
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

    def run_processes(self, runs: list[SweepRun], log=print, poll_s: float = 2.0) -> None:
        import submitit
        jobs_at_once = self.launcher.jobs
        executor = submitit.LocalExecutor(folder=self.sweep.directory / "submitit" / "local")
        executor.update_parameters(timeout_min=60 * 24 * 365)  # local runs have no time limit
        threads = max(1, (os.cpu_count() or 1) // jobs_at_once)
        queue, live = list(runs), []
        while queue or live:
            live = [(run, job) for run, job in live if not job.done()]
            while queue and len(live) < jobs_at_once:
                run = queue.pop(0)
                job = executor.submit(self.job(run, threads))
                log(f"started {run.run_id} (local job {job.job_id}, {threads} threads)")
                live.append((run, job))
            time.sleep(poll_s)


class Slurm(Executor):
    """One Slurm job array (submitit); each run directory gets ``job.json``. Preempted or timed-out
    jobs requeue themselves and resume from the run's latest checkpoint (``RunJob.checkpoint``)."""
    name = "slurm"

    def submit(self, runs: list[SweepRun], log=print) -> list:
        import submitit
        s = self.launcher.slurm
        # one folder per cluster instance: a fresh Slurm restarts job ids at 1, so a folder shared
        # across instances could hand back another job's result
        folder = self.sweep.directory / "submitit" / f"slurm-{slurm_instance()}"
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_requeues)
        executor.update_parameters(
            nodes=s.nodes, gpus_per_node=s.gpus_per_node, tasks_per_node=max(1, s.gpus_per_node),
            timeout_min=s.timeout_min, slurm_array_parallelism=s.array_parallelism, name=self.sweep.name,
            **{f"slurm_{k}": v for k, v in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                                            ("constraint", s.constraint)) if v is not None},
            **({"cpus_per_task": s.cpus_per_task} if s.cpus_per_task else {}),
            **({"mem_gb": s.mem_gb} if s.mem_gb else {}),
            **({"slurm_additional_parameters": s.additional_parameters} if s.additional_parameters else {}))
        with executor.batch():
            jobs = [executor.submit(self.job(run)) for run in runs]
        for run, job in zip(runs, jobs):
            write_json(self.sweep.run_dir(run) / "job.json",
                       {"executor": self.name, "job_id": job.job_id, "folder": str(folder)})
            log(f"submitted {run.run_id}: Slurm job {job.job_id}")
        return jobs


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


EXECUTORS: dict[str, type[Executor]] = {cls.name: cls for cls in (Local, Slurm)}


def start_runs(sweep: Sweep, runs: list[SweepRun], wait: bool = True, log=print) -> list:
    """Write the sweep's plan and start ``runs`` with its ``launcher.executor``; with ``wait``,
    return when every run has ended, else return the handles of runs still going."""
    write_plan(sweep)
    jobs = EXECUTORS[sweep.launcher.executor](sweep).submit(runs, log)
    for job in jobs if wait else ():
        job.wait()
    return [] if wait else jobs
