"""Sweeps on a real Slurm (scripts/slurm_localhost.sh start): a job array, and a requeued job.

Skipped, with the reason, where no Slurm controller answers; with VLPBENCH_REQUIRE_SLURM=1 (set
by .ci/run, which starts one) a missing Slurm fails instead.
"""

import json
import os
import subprocess
import time

import pytest
import yaml

from vlpbench import runs
from vlpbench.cli import main
from vlpbench.sweep import load_sweep


def slurm_problem() -> str | None:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no Slurm here ({exc}); start one with scripts/slurm_localhost.sh start"
    if ping.returncode or "UP" not in ping.stdout:
        return f"Slurm controller not answering: {ping.stdout.strip() or ping.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _slurm():
    problem = slurm_problem()
    if problem and os.environ.get("VLPBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"VLPBENCH_REQUIRE_SLURM=1 but {problem}")
    if problem:
        pytest.skip(problem)


def slurm_sweep(tmp_path, cfg: dict, seeds: list[int]):
    cfg["sweep"] = {"seeds": seeds}
    cfg["launcher"] = {"executor": "slurm", "slurm": {"cpus_per_task": 1, "timeout_min": 30, "array_parallelism": 2}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_sweep_runs_on_slurm_as_one_job_array(tiny_config, tmp_path, capsys):
    path = slurm_sweep(tmp_path, tiny_config, [0, 1, 2, 3])
    assert main(["run", str(path), "--wait"]) == 0
    sweep = load_sweep(path)
    jobs = [json.loads((sweep.run_dir(r) / "job.json").read_text())["job_id"] for r in sweep.runs]
    assert len({job.split("_")[0] for job in jobs}) == 1 and sorted(j.split("_")[1] for j in jobs) == list("0123")
    for run in sweep.runs:
        results = json.loads((sweep.run_dir(run) / "results.json").read_text())
        assert results["complete"] and results["train"]["steps"] == tiny_config["train"]["steps"]
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    assert "4 runs: 4 done" in capsys.readouterr().out
    assert main(["run", str(path)]) == 0  # nothing left to submit
    assert "to start: 0 of 4 runs (4 done)" in capsys.readouterr().out


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)


def test_a_requeued_job_resumes_and_finishes_with_the_right_step_count(tiny_config, tmp_path):
    tiny_config["train"].update(steps=300, checkpoint_every=25, log_every=25)
    path = slurm_sweep(tmp_path, tiny_config, [0])
    assert main(["run", str(path)]) == 0
    sweep = load_sweep(path)
    run_dir = sweep.run_dir(sweep.runs[0])
    job_id = json.loads((run_dir / "job.json").read_text())["job_id"]
    wait_until(lambda: (run_dir / "checkpoints" / "step_00000050.pt").is_file(), 180, "a checkpoint")
    assert not runs.is_done(run_dir)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    wait_until(lambda: runs.is_done(run_dir), 300, "the requeued job to finish")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train"]["steps"] == 300 and results["train"]["steps_this_session"] < 300
    assert list(run_dir.glob("env_resumed_at_*.json"))
    # the requeue's SIGTERM checkpoints the step in progress, where the resumed session starts
    (resumed,) = [int(p.stem.split("_")[-1]) for p in run_dir.glob("env_resumed_at_*.json")]
    assert results["train"]["steps_this_session"] == 300 - resumed and resumed >= 50
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and set(range(25, 301, 25)) <= set(steps) <= {*range(25, 301, 25), resumed}


def test_a_preempted_job_checkpoints_the_step_it_is_on_and_resumes_there(tiny_config, tmp_path):
    """Slurm's warning signal (submitit: USR2, before the time limit or on preemption) ends the
    current step, checkpoints it, and requeues: the resumed session starts at that step."""
    tiny_config["train"].update(steps=400, checkpoint_every=1000, log_every=25, keep_checkpoints=10)
    path = slurm_sweep(tmp_path, tiny_config, [0])
    assert main(["run", str(path)]) == 0
    sweep = load_sweep(path)
    run_dir = sweep.run_dir(sweep.runs[0])
    job_id = json.loads((run_dir / "job.json").read_text())["job_id"]
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.is_file() and "\"step\": 50," in metrics.read_text(), 180, "step 50")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    wait_until(lambda: runs.is_done(run_dir), 300, "the requeued job to finish")
    resumed = [int(p.stem.split("_")[-1]) for p in run_dir.glob("env_resumed_at_*.json")]
    assert len(resumed) == 1 and 50 <= resumed[0] < 400
    assert (run_dir / "checkpoints" / f"step_{resumed[0]:08d}.pt").is_file()  # a checkpoint at that very step
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train"]["steps"] == 400 and results["train"]["steps_this_session"] == 400 - resumed[0]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)) and set(range(25, 401, 25)) <= set(steps)
