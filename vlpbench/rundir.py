"""Run directories: ``<output_dir>/<experiment>/<run-id>/`` with the resolved config, the
environment, metrics, results and checkpoints. Every file is written atomically.

Importing this module imports no torch (the checkpoint and environment methods do, when called),
so that reading a run's state and results (``vlpbench.runs``) stays light."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from vlpbench.config import ExperimentConfig, config_to_yaml, load_config
from vlpbench.errors import UserError
from vlpbench.io import write_json, write_text

if TYPE_CHECKING:
    import torch

PACKAGES = ("vlpbench", "torch", "torchvision", "timm", "transformers", "tokenizers", "pydantic", "numpy", "Pillow",
            "safetensors", "fvcore", "ptflops", "pandas", "submitit")
_CHECKPOINT = re.compile(r"^step_(\d+)\.pt$")
CLAIM_FILE = "claim.lock"


class RunBusyError(UserError, RuntimeError):
    """Another process holds the run's claim: it is training (or evaluating) that run now."""


def git_revision() -> str | None:
    """The revision of the checkout vlpbench runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict:
    import torch
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
        "git_revision": git_revision(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(), "command": sys.argv,
    }


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "a process that has not yet written its name"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, cfg: ExperimentConfig, run_id: str | None = None) -> "RunDir":
        """A new run directory: ``run_id`` names it (a sweep's runs), by default the time it starts."""
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        run = cls(Path(cfg.output_dir) / cfg.name / run_id)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text(run.path / "config.yaml", config_to_yaml(cfg))
        return run

    @classmethod
    def latest(cls, output_dir: str, name: str) -> "RunDir":
        """The newest run of experiment ``name`` that has a checkpoint (runs that never saved one
        cannot be resumed and are passed over)."""
        folder = Path(output_dir) / name
        runs = [cls(p) for p in folder.glob("*") if (p / "config.yaml").is_file()]
        resumable = [run for run in runs if run.checkpoint_paths()]
        if not resumable:
            others = f" ({len(runs)} run directories there have no checkpoint)" if runs else ""
            raise FileNotFoundError(f"no run of experiment {name!r} under {folder} has a checkpoint to resume{others}")
        # creation order: config.yaml is written once, when the run is created (run ids made in
        # the same second differ only by a random suffix)
        return max(resumable, key=lambda run: ((run.path / "config.yaml").stat().st_mtime_ns, run.path.name))

    def config(self) -> ExperimentConfig:
        return load_config(self.path / "config.yaml")

    @contextlib.contextmanager
    def claim(self, tries: int = 40):
        """Hold the run's exclusive claim while the block runs: an ``flock`` on ``claim.lock``,
        which the OS releases when this process ends, however it ends. A run whose claim another
        process holds raises ``RunBusyError`` naming that process. (A look at the claim by
        ``holder`` takes it for microseconds, so a claim is retried for ``tries`` x 25 ms.)"""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / CLAIM_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            for _ in range(tries):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.025)
            else:
                raise RunBusyError(f"{self.path}: already running in another process ({describe_holder(self.holder())})")
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            try:
                yield self
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the claim

    def holder(self) -> dict | None:
        """Who holds the run's claim (pid, host, since when), or None when no process does."""
        try:
            fd = os.open(self.path / CLAIM_FILE, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 4096).decode(errors="replace")
                try:
                    return json.loads(text)
                except ValueError:  # the holder is between truncating and writing its name
                    return {}
            return None
        finally:
            os.close(fd)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_env(self, device: torch.device, resumed_at: int | None = None) -> None:
        """``env.json`` for the first session; a resumed session adds ``env_resumed_at_<step>.json``."""
        name = "env.json" if resumed_at is None else f"env_resumed_at_{resumed_at:08d}.json"
        write_json(self.path / name, environment(device))

    def write_results(self, results: dict) -> None:
        write_json(self.path / "results.json", results)

    @staticmethod
    def checkpoint_step(path: Path) -> int:
        return int(_CHECKPOINT.match(path.name)[1])

    def checkpoint_paths(self) -> list[Path]:
        found = [(int(m[1]), p) for p in self.checkpoints.glob("step_*.pt") if (m := _CHECKPOINT.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        paths = self.checkpoint_paths()
        return paths[-1] if paths else None

    def read_latest_checkpoint(self, map_location: torch.device | str = "cpu", log=print) -> dict | None:
        """The newest readable checkpoint (None if there is none at all).

        Newer files that cannot be read (truncated by a crash, corrupt) are passed over with a
        warning naming each and why, and renamed to ``<name>.corrupt`` once an older one has
        loaded, so they are neither tried again nor taken for the latest. If none can be read,
        nothing is renamed and the error lists them all.
        """
        from vlpbench.checkpoint import CheckpointError, read_checkpoint
        unreadable = []
        for path in reversed(self.checkpoint_paths()):
            try:
                state = read_checkpoint(path, map_location)
            except CheckpointError as exc:
                log(f"warning: skipping {exc}")
                unreadable.append((path, exc))
                continue
            for bad, _ in unreadable:
                bad.rename(bad.with_name(bad.name + ".corrupt"))
                log(f"warning: renamed the unreadable {bad.name} to {bad.name}.corrupt; resuming from {path.name}")
            return state
        if unreadable:
            raise CheckpointError(f"{self.path}: no readable checkpoint: " + "; ".join(str(e) for _, e in unreadable))
        return None

    def save_checkpoint(self, step: int, keep: int, **state) -> Path:
        from vlpbench.checkpoint import save_checkpoint
        path = self.checkpoints / f"step_{step:08d}.pt"
        save_checkpoint(path, step, **state)
        for old in self.checkpoint_paths()[:-keep]:
            old.unlink()
        return path

    def mark_failed(self, error: BaseException) -> None:
        """``failed.json``: why the last session stopped with an error, and the checkpoint a resume
        would start from (none: the run never saved one and cannot be resumed)."""
        latest = self.latest_checkpoint()
        trace = "".join(traceback.format_exception(error)).strip().splitlines()
        write_json(self.failed_file, {"error": f"{type(error).__name__}: {error}", "log_tail": trace[-6:],
                                      "latest_checkpoint": latest.name if latest else None,
                                      "time": time.strftime("%Y-%m-%d %H:%M:%S")})

    @property
    def failed_file(self) -> Path:
        return self.path / "failed.json"

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric lines logged after ``after_step`` (a resumed run logs them again)."""
        if not self.metrics_file.is_file():
            return
        kept = [line for line in self.metrics_file.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= after_step]
        write_text(self.metrics_file, "".join(line + "\n" for line in kept))
