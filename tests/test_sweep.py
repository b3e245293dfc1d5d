"""Sweeps: expansion and run ids, the local executor's idempotence, status, and the results store."""

import json
import multiprocessing

import pytest
import yaml

from vlpbench import results, runs
from vlpbench.cli import main
from vlpbench.config import ConfigError, config_from_dict
from vlpbench.rundir import RunDir
from vlpbench.sweep import MAX_RUN_ID, SweepConfig, combinations, load_sweep, run_id, short_keys


def write_sweep(tmp_path, cfg: dict, sweep: dict, launcher: dict | None = None):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**cfg, "sweep": sweep, **({"launcher": launcher} if launcher else {})}))
    return path


def test_grid_zip_and_seeds_expand_to_every_combination_in_file_order():
    sweep = SweepConfig(grid={"a.x": [1, 2], "b.y": ["p", "q"]}, zip={"c.u": [7, 8], "c.v": [70, 80]}, seeds=[0, 1, 2])
    runs = combinations(sweep)
    assert len(runs) == 2 * 2 * 2 * 3
    assert runs[0] == [("a.x", 1), ("b.y", "p"), ("c.u", 7), ("c.v", 70), ("seed", 0)]
    assert runs[1][-1] == ("seed", 1) and runs[3][2:4] == [("c.u", 8), ("c.v", 80)]
    assert runs[-1] == [("a.x", 2), ("b.y", "q"), ("c.u", 8), ("c.v", 80), ("seed", 2)]


def test_run_ids_are_short_readable_and_unambiguous():
    names = short_keys(["method.alpha", "train.alpha", "method.image_mask_ratio", "seed"])
    assert names == {"method.alpha": "method.alpha", "train.alpha": "train.alpha",
                     "method.image_mask_ratio": "image_mask_ratio", "seed": "seed"}
    assert run_id([("method.image_mask_ratio", 0.5), ("seed", 1)], names) == "image_mask_ratio=0.5,seed=1"
    assert run_id([("method.alpha", [1, 2])], names) == "method.alpha=1-2"
    long_pairs = [("method.image_mask_ratio", "x" * 200)]
    long_id = run_id(long_pairs, names)
    assert len(long_id) == MAX_RUN_ID and long_id != run_id([("method.image_mask_ratio", "x" * 201)], names)


@pytest.mark.parametrize("sweep, message", [
    ({"zip": {"a.b": [1, 2], "a.c": [1]}}, "zip: the lists must have one length"),
    ({"grid": {"a.b": []}}, "grid.a.b: expected a non-empty list"),
    ({"grid": {"seed": [1, 2]}, "seeds": [0]}, "keys swept twice: ['seed']"),
    ({"grids": {}}, "sweep: grids: unknown key"),
])
def test_bad_sweep_sections_name_the_file_and_key(tiny_config, tmp_path, sweep, message):
    with pytest.raises(ConfigError, match="sweep.yaml") as err:
        load_sweep(write_sweep(tmp_path, tiny_config, sweep))
    assert message in str(err.value)


def test_a_bad_swept_value_names_the_run_before_anything_runs(tiny_config, tmp_path):
    path = write_sweep(tmp_path, tiny_config, {"grid": {"method.queue_size": [16, -1]}})
    with pytest.raises(ConfigError, match=r"sweep run queue_size=-1: .*method.queue_size"):
        load_sweep(path)


def test_dry_run_prints_runs_and_executor_and_creates_nothing(tiny_config, tmp_path, capsys):
    launcher = {"executor": "slurm", "slurm": {"partition": "debug", "gpus_per_node": 2, "timeout_min": 30}}
    path = write_sweep(tmp_path, tiny_config, {"grid": {"method.queue_size": [16, 32]}, "seeds": [0, 1]}, launcher)
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "queue_size=32,seed=1  method.queue_size=32 seed=1  [new]" in out
    assert "slurm (submitit job array), " in out and "partition=debug" in out and "gpus_per_node=2" in out
    assert not (tmp_path / "runs").exists()


def test_local_sweep_is_idempotent_and_reruns_only_failed_runs(tiny_config, tmp_path, capsys):
    path = write_sweep(tmp_path, tiny_config, {"seeds": [0, 1]})
    assert main(["run", str(path)]) == 0
    sweep = load_sweep(path)
    first, second = (sweep.run_dir(r) for r in sweep.runs)
    assert [d.name for d in (first, second)] == ["seed=0", "seed=1"]
    assert all(runs.is_done(d) for d in (first, second))
    summary = json.loads((sweep.directory / "summary.json").read_text())
    assert summary["tiny"]["seeds"] == [0, 1]

    # again: nothing to do, nothing rewritten
    stamp = (first / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    assert "to start: 0 of 2 runs (2 done)" in capsys.readouterr().out
    assert (first / "results.json").stat().st_mtime_ns == stamp

    # a failed run waits for --rerun failed, which starts it alone
    (second / "results.json").unlink()
    RunDir(second).mark_failed(RuntimeError("node lost"))
    assert main(["run", str(path)]) == 1
    assert "to start: 0 of 2 runs (1 done, 1 failed)" in capsys.readouterr().out
    assert main(["status", str(sweep.directory)]) == 0
    assert "seed=1  failed     RuntimeError: node lost" in capsys.readouterr().out
    assert main(["run", str(path), "--rerun", "failed"]) == 0
    out = capsys.readouterr().out
    assert "to start: 1 of 2 runs" in out and "[1/1] seed=1" in out
    assert runs.is_done(second) and (first / "results.json").stat().st_mtime_ns == stamp
    steps = [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the failed attempt's lines were not kept twice


def test_an_interrupted_sweep_run_resumes_from_its_checkpoint(tiny_config, tmp_path, capsys):
    tiny_config["train"].update(steps=4, checkpoint_every=2)
    path = write_sweep(tmp_path, tiny_config, {"seeds": [3]})
    run = load_sweep(path).runs[0]
    run_dir = tmp_path / "runs" / "tiny" / "seed=3"
    cfg = config_from_dict(run.config.model_dump(mode="json"))
    from vlpbench.experiment import run_experiment
    run_experiment(cfg, RunDir.create(cfg, run_id="seed=3"), stop_at=2)
    assert runs.run_state(run_dir)["state"] == "resumable"
    assert main(["run", str(path)]) == 0
    assert json.loads((run_dir / "results.json").read_text())["train"]["steps_this_session"] == 2
    assert (run_dir / "env_resumed_at_00000002.json").is_file()


def test_a_run_stopped_during_evaluation_is_not_done_and_resumes_to_evaluate(tiny_config, tmp_path, capsys):
    tiny_config["train"].update(steps=2, checkpoint_every=2)
    path = write_sweep(tmp_path, tiny_config, {"seeds": [3]})
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny" / "seed=3"
    finished = json.loads((run_dir / "results.json").read_text())
    assert finished["pending"] == [] and "retrieval" in finished and runs.is_done(run_dir)
    stopped = {k: v for k, v in finished.items() if k != "retrieval"}  # what a kill during evaluation leaves
    RunDir(run_dir).write_results({**stopped, "pending": ["retrieval"]})
    assert runs.run_state(run_dir)["state"] == "resumable"
    assert main(["run", str(path)]) == 0
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["pending"] == [] and "r_mean" in resumed["retrieval"]["itm"]
    assert resumed["train"] == finished["train"]  # no step trained again: the first session's timing stays


def test_changed_sweep_file_does_not_silently_reuse_a_run_directory(tiny_config, tmp_path, capsys):
    path = write_sweep(tmp_path, tiny_config, {"seeds": [0]})
    sweep = load_sweep(path)
    RunDir.create(sweep.runs[0].config, run_id="seed=0")
    tiny_config["train"]["lr"] = 5e-4
    path = write_sweep(tmp_path, tiny_config, {"seeds": [0]})
    assert main(["run", str(path)]) == 2
    assert "seed=0 (new): train.lr: 0.001 -> 0.0005" in capsys.readouterr().err
    assert not (sweep.run_dir(sweep.runs[0]) / "metrics.jsonl").exists()  # nothing trained


def test_a_finished_run_is_not_reused_by_a_sweep_rerun_with_another_override(tiny_config, tmp_path, capsys):
    """Issue 20.1: a re-run with -o train.steps=3 read every run as done and rewrote summary.json."""
    path = write_sweep(tmp_path, tiny_config, {"seeds": [0, 1]})
    assert main(["run", str(path)]) == 0
    sweep = load_sweep(path)
    summary = (sweep.directory / "summary.json").read_text()
    stamps = [(sweep.run_dir(r) / "results.json").stat().st_mtime_ns for r in sweep.runs]
    capsys.readouterr()
    assert main(["run", str(path), "-o", "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "2 run directories" in err
    assert "seed=0 (done): train.steps: 4 -> 3" in err and "seed=1 (done): train.steps: 4 -> 3" in err
    assert (sweep.directory / "summary.json").read_text() == summary
    assert [(sweep.run_dir(r) / "results.json").stat().st_mtime_ns for r in sweep.runs] == stamps
    assert main(["run", str(path), "-o", "train.steps=3", "-o", "name=tiny_3steps"]) == 0  # a new name: new runs


def _write_one_run(args) -> None:
    cfg_dict, index = args
    cfg = config_from_dict(cfg_dict)
    run = RunDir.create(cfg, run_id=f"seed={index}")
    for step in range(5):
        run.write_results({"experiment": cfg.name, "complete": step == 4, "train": {"steps": step},
                           "retrieval": {"itm": {"r_mean": float(index)}}})


def test_results_store_keeps_every_run_of_32_concurrent_writers(tiny_config, tmp_path):
    with multiprocessing.get_context("fork").Pool(32) as pool:
        pool.map(_write_one_run, [(tiny_config, i) for i in range(32)])
    frame = results.load(tmp_path / "runs" / "tiny")
    assert len(frame) == 32
    assert sorted(frame["retrieval.itm.r_mean"]) == [float(i) for i in range(32)]
    assert set(frame["state"]) == {"done"} and set(frame["train.steps"]) == {4}
    assert set(frame["config.method.queue_size"]) == {16}


def test_local_executor_runs_n_at_a_time_through_submitit(tiny_config, tmp_path, capsys):
    path = write_sweep(tmp_path, tiny_config, {"seeds": [0, 1]}, {"executor": "local", "jobs": 2})
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "started seed=0 (local job" in out and "started seed=1 (local job" in out
    sweep = load_sweep(path)
    assert all(runs.is_done(sweep.run_dir(r)) for r in sweep.runs)
    logs = list((sweep.directory / "submitit" / "local").glob("*_log.out"))
    assert len(logs) == 2
    assert main(["status", str(path)]) == 0
    assert "2 runs: 2 done" in capsys.readouterr().out
