"""Reading run directories: the one reader of a run's state, config and results, which the
launcher, ``vlpbench status``, ``summary``, ``report`` and ``vlpbench.results`` all use.

A run's state comes from its directory: ``results.json`` (done), the run's claim held by a
process (running: ``RunDir.claim``), ``failed.json`` (failed), ``job.json`` (submitted to Slurm:
submitit asks the scheduler), a checkpoint (resumable) or nothing yet (new). Nothing here imports
torch or builds a model: reading a sweep of finished runs costs file reads only.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vlpbench.config import ConfigError
from vlpbench.io import CorruptFileError, read_json
from vlpbench.rundir import RunDir, describe_holder

SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
# a directory holding one of these is a run directory (a planned run has at least job.json)
RUN_MARKS = ("config.yaml", "job.json", "failed.json")


def read_optional_json(path: Path) -> dict | None:
    """The file's JSON, or None when it is absent or unreadable (a state file being written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def slurm_state(job: dict) -> str:
    """The scheduler's state of a submitted job (via submitit, which reads sacct/squeue)."""
    import submitit
    return submitit.SlurmJob(folder=job["folder"], job_id=job["job_id"]).state


def slurm_run_state(job: dict) -> dict | None:
    """The run state of a Slurm job from its ``job.json`` (``executors.Slurm`` writes it): pending,
    requeued, running, or failed when it ended without results; None once it completed."""
    state = slurm_state(job)
    if state in SLURM_WAITING:
        return {"state": "requeued" if state.startswith("REQUEUE") else "pending", "job_id": job["job_id"]}
    if state in SLURM_RUNNING:
        return {"state": "running", "job_id": job["job_id"]}
    if state not in ("COMPLETED", "UNKNOWN"):  # ended without results.json: killed, out of memory, ...
        return {"state": "failed", "error": f"Slurm job {job['job_id']} ended {state}",
                "log_tail": _tail(Path(job["folder"]) / f"{job['job_id']}_0_log.err")}
    return None


# an executor that hands runs to a scheduler: its state reader, by the name job.json records
# (here, not in vlpbench.executors, so that reading a run's state imports no torch)
SCHEDULER_STATES = {"slurm": slurm_run_state}


def is_finished(results: dict | None) -> bool:
    """Training and every evaluation it planned are done, and none failed."""
    return bool(results and results.get("complete") and not results.get("pending")
                and "retrieval_error" not in results)


def is_done(run_dir: Path) -> bool:
    return is_finished(read_optional_json(Path(run_dir) / "results.json"))


def results_problem(run_dir: Path) -> str | None:
    """Why ``results.json`` cannot be read (the run then counts as unfinished), or None."""
    error = read_results_if_any(run_dir)[1]
    return f"{error}; the run counts as unfinished and resumes from its checkpoint" if error else None


def run_state(run_dir: Path) -> dict:
    """``{"state": ..., ...}`` of one run directory; ``failed`` adds the error, ``running`` the process."""
    run_dir = Path(run_dir)
    if is_done(run_dir):
        return {"state": "done"}
    holder = RunDir(run_dir).holder()
    if holder is not None:
        return {"state": "running", "detail": describe_holder(holder)}
    failed = read_optional_json(run_dir / "failed.json")
    if failed:
        return {"state": "failed", "error": failed.get("error"), "log_tail": failed.get("log_tail", [])}
    job = read_optional_json(run_dir / "job.json")
    scheduled = SCHEDULER_STATES[job["executor"]](job) if job and job.get("executor") in SCHEDULER_STATES else None
    if scheduled is not None:
        return scheduled
    problem = {"detail": detail} if (detail := results_problem(run_dir)) else {}
    if RunDir(run_dir).latest_checkpoint() is not None:
        return {"state": "resumable", **problem}
    return {"state": "new", **problem}


def _tail(path: Path, lines: int = 5) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def run_dirs(folder: str | Path) -> list[Path]:
    """The run directories under ``folder`` (a sweep or experiment directory), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such sweep or experiment directory")
    return sorted(p for p in folder.iterdir() if p.is_dir() and any((p / m).is_file() for m in RUN_MARKS))


def planned_run_ids(folder: Path) -> list[str] | None:
    """The run ids a sweep's ``sweep.json`` plans, in its order (None: no plan there)."""
    plan = read_optional_json(Path(folder) / "sweep.json")
    return [r["run_id"] for r in plan["runs"]] if plan else None


def folder_status(folder: Path, planned: list[str] | None = None) -> list[dict]:
    """A row per run: the planned ones (``planned``, else ``sweep.json``), then any other run
    directory under ``folder``."""
    folder = Path(folder)
    names = list(planned if planned is not None else planned_run_ids(folder) or [])
    if folder.is_dir():
        names += [p.name for p in run_dirs(folder) if p.name not in names]
    return [{"run_id": name, **run_state(folder / name)} for name in names]


def read_run_config(run_dir: Path) -> dict:
    """The run's resolved config as saved in ``config.yaml`` (a mapping)."""
    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the run's config ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected the run's resolved config (a mapping)")
    return config


def read_finished_results(run_dir: Path) -> dict:
    """``results.json`` of a finished run; ``FileNotFoundError`` saying what is missing otherwise."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json (the run has not finished)")
    results = read_json(path)
    if not isinstance(results, dict) or not is_finished(results):
        raise FileNotFoundError(f"{path}: the run has not finished training and evaluation")
    return results


def read_results_if_any(run_dir: Path) -> tuple[dict | None, str | None]:
    """(``results.json``, None), (None, why it cannot be read), or (None, None) when there is none."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None, None
    try:
        return read_json(path), None
    except CorruptFileError as exc:
        return None, str(exc)
