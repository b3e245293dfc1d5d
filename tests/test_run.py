import json
import os
import stat

import pytest
import torch
import yaml

from vlpbench.checkpoint import read_checkpoint
from vlpbench.cli import main
from vlpbench.config import config_from_dict
from vlpbench.experiment import run_experiment
from vlpbench.rundir import RunDir

QUIET = dict(log=lambda *_: None)


def test_end_to_end_smoke_run_writes_a_valid_run_directory(tiny_config, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(path), "-o", "train.steps=3"]) == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 3
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and "git_revision" in env and env["device"] == "cpu"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["loss"] > 0 and "loss_itc" in m and "samples_per_s" in m for m in metrics)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train"]["steps"] == 3
    for key in ("txt_r1", "img_r1", "r_mean"):
        assert 0.0 <= results["retrieval"]["itm"][key] <= 100.0
    assert results["retrieval"]["num_texts"] == 5 * results["retrieval"]["num_images"] == 30
    assert results["skipped_records"]["total"] == 0
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000003.pt"]
    assert "TR@1" in capsys.readouterr().out

    # bring-your-own data: evaluate the trained run on another ALBEF-format file with unseen words
    data = next((tmp_path / "data").iterdir())
    records = json.loads((data / "retrieval_test.json").read_text())
    records[0]["caption"][0] = "an astonishing aubergine zeppelin"
    (tmp_path / "byo.json").write_text(json.dumps(records))
    out_file = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--ann", str(tmp_path / "byo.json"), "--image-root", str(data),
                 "--k-test", "3", "--output", str(out_file)]) == 0
    assert json.loads(out_file.read_text())["num_texts"] == 30


def test_config_error_exits_with_message(tiny_config, tmp_path, capsys):
    tiny_config["method"]["queue_size"] = 17
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "method.queue_size" in err


@pytest.mark.parametrize("ema", [None, 0.5])
def test_resume_equals_uninterrupted(tiny_config, ema):
    tiny_config["eval"]["ema"] = ema  # the weight average is checkpointed and continued too
    tiny_config["train"].update(steps=6, checkpoint_every=3, keep_checkpoints=5)
    tiny_config["data"]["augment"] = {"crop_scale_min": 0.6, "hflip": True}
    tiny_config["eval"]["retrieval"]["enabled"] = False
    cfg = config_from_dict(tiny_config)

    full = RunDir.create(cfg)
    run_experiment(cfg, full, **QUIET)

    interrupted = RunDir.create(cfg)
    assert run_experiment(cfg, interrupted, stop_at=3, **QUIET)["complete"] is False
    assert [p.name for p in interrupted.checkpoint_paths()] == ["step_00000003.pt"]
    run_experiment(cfg, interrupted, resume=True, **QUIET)

    a = read_checkpoint(full.latest_checkpoint())
    b = read_checkpoint(interrupted.latest_checkpoint())
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (interrupted.path / "env.json").is_file() and (interrupted.path / "env_resumed_at_00000003.json").is_file()
    steps = [json.loads(line)["step"] for line in interrupted.metrics_file.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    def losses(run):
        return [json.loads(line)["loss"] for line in run.metrics_file.read_text().splitlines()]
    assert losses(full) == losses(interrupted)


def write_experiment(tmp_path, cfg, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_dirs(tmp_path):
    folder = tmp_path / "runs" / "tiny"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("stop_at", ["0", "-1", "5"])
def test_stop_at_outside_1_to_steps_is_refused_before_anything_is_built(tiny_config, tmp_path, capsys, stop_at):
    path = write_experiment(tmp_path, tiny_config)  # train.steps 4
    assert main(["run", str(path), "--stop-at", stop_at]) == 2
    assert f"--stop-at {stop_at}: expected a step from 1 to train.steps (4)" in capsys.readouterr().err
    assert run_dirs(tmp_path) == [] and not (tmp_path / "data").exists()


def test_resume_with_stop_at_not_after_the_checkpoint_is_refused(tiny_config, tmp_path, capsys):
    tiny_config["eval"]["retrieval"]["enabled"] = False
    path = write_experiment(tmp_path, tiny_config)
    assert main(["run", str(path), "--stop-at", "2"]) == 0
    (run_dir,) = run_dirs(tmp_path)
    assert main(["run", "--resume", str(run_dir), "--stop-at", "2"]) == 2
    assert "already has a checkpoint at step 2" in capsys.readouterr().err
    assert main(["run", "--resume", str(run_dir), "--stop-at", "3"]) == 0
    assert read_checkpoint(RunDir(run_dir).latest_checkpoint())["step"] == 3


def test_failed_start_is_marked_and_resume_latest_skips_it(tiny_config, tmp_path, capsys):
    tiny_config["eval"]["retrieval"]["enabled"] = False
    path = write_experiment(tmp_path, tiny_config)
    assert main(["run", str(path), "--stop-at", "2"]) == 0
    missing = tmp_path / "missing.json"
    assert main(["run", str(path), "-o", f"data.pretrain={{ann: {missing}}}"]) == 2
    resumable, stub = sorted(run_dirs(tmp_path), key=lambda d: not (d / "checkpoints" / "step_00000002.pt").is_file())
    failed = json.loads((stub / "failed.json").read_text())
    assert "annotation file not found" in failed["error"] and failed["latest_checkpoint"] is None
    capsys.readouterr()
    assert main(["run", str(path), "--resume", "latest"]) == 0
    assert f"resuming {resumable} from step 2" in capsys.readouterr().out
    assert read_checkpoint(RunDir(resumable).latest_checkpoint())["step"] == 4
    assert not (resumable / "failed.json").exists()


def test_resume_latest_without_any_checkpoint_says_so(tiny_config, tmp_path, capsys):
    tiny_config["data"]["pretrain"] = {"ann": str(tmp_path / "missing.json")}
    path = write_experiment(tmp_path, tiny_config)
    assert main(["run", str(path)]) == 2
    assert main(["run", str(path), "--resume", "latest"]) == 2
    assert "has a checkpoint to resume (1 run directories there have no checkpoint)" in capsys.readouterr().err


@pytest.mark.parametrize("umask, file_mode", [(0o022, 0o644), (0o002, 0o664)])
def test_run_directory_files_follow_the_umask(tiny_config, tmp_path, umask, file_mode):
    path = write_experiment(tmp_path, tiny_config)
    old = os.umask(umask)
    try:
        assert main(["run", str(path), "-o", "train.steps=2"]) == 0
    finally:
        os.umask(old)
    (run_dir,) = run_dirs(tmp_path)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"config.yaml", "env.json", "tokenizer.json", "metrics.jsonl", "results.json", "step_00000002.pt"} <= {
        p.name for p in files}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(file_mode) for p in files}


def test_device_and_precision_this_machine_lacks_fail_at_config_time(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_experiment(tmp_path, tiny_config)
    assert main(["run", str(path), "-o", "train.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.device: 'cuda', but this machine has no usable CUDA device")
    assert len(err.strip().splitlines()) == 1
    assert main(["run", str(path), "-o", "train.precision=bf16"]) == 2
    assert capsys.readouterr().err.startswith("error: train.precision: bf16 is supported on CUDA only")
    assert run_dirs(tmp_path) == [] and not (tmp_path / "data").exists()


def two_image_retrieval_file(tmp_path):
    data = next((tmp_path / "data").iterdir())
    records = json.loads((data / "retrieval_test.json").read_text())[:2]
    for r in records:
        r["caption"] = r["caption"][:1]
    small = tmp_path / "two_images.json"
    small.write_text(json.dumps(records))
    return small, data


def test_tiny_test_sets_evaluate_in_run_and_eval(tiny_config, tmp_path, capsys):
    assert main(["data", str(write_experiment(tmp_path, tiny_config))]) == 0
    small, data = two_image_retrieval_file(tmp_path)
    tiny_config["data"]["retrieval_test"] = {"ann": str(small), "image_root": str(data)}
    assert main(["run", str(write_experiment(tmp_path, tiny_config)), "-o", "train.steps=2"]) == 0
    (run_dir,) = run_dirs(tmp_path)
    retrieval = json.loads((run_dir / "results.json").read_text())["retrieval"]
    assert retrieval["num_texts"] == 2 and retrieval["chance"]["txt_r1"] == 50.0
    assert retrieval["itm"]["txt_r5"] == retrieval["itc"]["img_r10"] == 100.0
    assert main(["eval", str(run_dir), "--ann", str(small), "--image-root", str(data)]) == 0
    assert "zero-shot retrieval on 2 images / 2 texts" in capsys.readouterr().out


def test_eval_arguments_and_skips_speak_the_command_line(tiny_config, tmp_path, capsys):
    path = write_experiment(tmp_path, tiny_config)
    assert main(["run", str(path), "-o", "train.steps=1", "-o", "eval.retrieval.enabled=false"]) == 0
    (run_dir,) = run_dirs(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--ann", "x.json", "--k-test", "0"]) == 2
    assert capsys.readouterr().err == "error: --k-test: expected an integer >= 1 or 'all' (got 0)\n"
    small, data = two_image_retrieval_file(tmp_path)
    records = json.loads(small.read_text()) + [{"image": "nowhere.png", "caption": ["lost"]}]
    small.write_text(json.dumps(records))
    args = ["eval", str(run_dir), "--ann", str(small), "--image-root", str(data)]
    assert main(args) == 2
    assert "(pass --on-bad-record skip to skip and count such records)" in capsys.readouterr().err
    assert main(args + ["--on-bad-record", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"skipped 1 bad records: {small}: image file is missing: 1 (e.g. {small}: record 2" in out


def test_failed_evaluation_keeps_the_training_result(tiny_config, tmp_path, monkeypatch, capsys):
    from vlpbench import experiment

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(experiment, "evaluate_retrieval", broken)
    assert main(["run", str(write_experiment(tmp_path, tiny_config)), "-o", "train.steps=2"]) == 1
    assert "training finished and is checkpointed, but retrieval evaluation failed" in capsys.readouterr().err
    (run_dir,) = run_dirs(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["complete"] is True and results["train"]["steps"] == 2
    assert results["retrieval_error"]["error"] == "RuntimeError: evaluation exploded"
    assert RunDir(run_dir).latest_checkpoint().name == "step_00000002.pt"
    assert not (run_dir / "failed.json").exists()


def test_learning_curve_is_logged_at_the_configured_steps_and_survives_resume(tiny_config):
    tiny_config["train"].update(steps=5, checkpoint_every=2)
    tiny_config["eval"].update(every_steps=2, curve_images=4)
    cfg = config_from_dict(tiny_config)

    def curve(run):
        lines = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
        return [(m["step"], m["curve_itc_r_mean"]) for m in lines if "curve_itc_r_mean" in m]

    full = RunDir.create(cfg)
    results = run_experiment(cfg, full, **QUIET)
    steps = [step for step, _ in curve(full)]
    assert steps == [2, 4, 5]  # every 2 steps, and the last step
    assert all(0.0 <= value <= 100.0 for _, value in curve(full))
    assert results["train"]["curve_seconds"] >= 0.0

    interrupted = RunDir.create(cfg)
    run_experiment(cfg, interrupted, stop_at=3, **QUIET)
    run_experiment(cfg, interrupted, resume=True, **QUIET)
    assert curve(interrupted) == curve(full)


def test_tensorboard_event_files_mirror_the_metrics_and_nothing_changes_without_it(tiny_config, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = config_from_dict(tiny_config)
    run = RunDir.create(cfg)
    run_experiment(cfg, run, log=lambda *a: None)
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    losses = [json.loads(line)["loss"] for line in run.metrics_file.read_text().splitlines()]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(losses)
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails, as without the package
    run = RunDir.create(cfg.model_copy(update={"name": "tiny_no_tb"}))
    run_experiment(cfg, run, log=lambda *a: None)
    assert not (run.path / "tensorboard").exists() and run.metrics_file.is_file()


def test_the_weight_average_follows_its_decay_and_is_what_the_final_checkpoint_holds(tiny_config):
    from vlpbench.train import WeightAverage
    weight = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        weight.weight.fill_(1.0)
    average = WeightAverage(weight, decay=0.5)
    for value, expected in ((3.0, 2.0), (5.0, 3.5)):  # a <- 0.5 a + 0.5 w
        with torch.no_grad():
            weight.weight.fill_(value)
        average.update()
        assert average.state_dict()["weight"].item() == expected
    tiny_config["eval"]["ema"] = 0.5
    tiny_config["eval"]["retrieval"]["enabled"] = False
    tiny_config["train"].update(steps=4, checkpoint_every=3, keep_checkpoints=5)
    cfg = config_from_dict(tiny_config)
    run = RunDir.create(cfg)
    run_experiment(cfg, run, **QUIET)
    step3, step4 = (read_checkpoint(p) for p in run.checkpoint_paths())
    assert step4["model"].keys() >= step4["weight_average"].keys()
    for name, averaged in step4["weight_average"].items():  # the final checkpoint's weights are the average
        assert torch.equal(step4["model"][name], averaged), name
    moved = [n for n, a in step4["weight_average"].items() if not torch.equal(a, step3["model"][n])]
    assert moved  # and it moved on from step 3
