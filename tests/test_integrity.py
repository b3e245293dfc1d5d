"""Issue 20: a result never belongs to another configuration than the one it names (no reuse,
pooling, double training or overwriting), interrupted work is kept, and bad input gets one line."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from vlpbench import executors, launch, runs
from vlpbench.checkpoint import CheckpointError, read_checkpoint
from vlpbench.cli import main
from vlpbench.config import ConfigError, config_from_dict
from vlpbench.data.datasets import SkipReport, load_image_captions
from vlpbench.experiment import run_experiment
from vlpbench.io import DiskFullError, save_torch
from vlpbench.rundir import RunDir
from vlpbench.sweep import load_sweep
from vlpbench.zoo.vision import create_vision_encoder

QUIET = dict(log=lambda *_: None)
REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def sweep_file(tmp_path, cfg: dict, sweep: dict, **extra) -> Path:
    return write_yaml(tmp_path / "sweep.yaml", {**cfg, "sweep": sweep, **extra})


def finished_run(cfg: dict, run_id: str, r_mean: float) -> RunDir:
    """A run directory as a finished run leaves it, with a hand-set result (nothing trained)."""
    run = RunDir.create(config_from_dict(cfg), run_id=run_id)
    run.write_results({"experiment": cfg["name"], "run_dir": str(run.path), "complete": True, "pending": [],
                       "train": {"steps": 4, "seconds": 1.0},
                       "retrieval": {"itm": {"r_mean": r_mean, "txt_r1": 1.0, "img_r1": 1.0}, "itc": None,
                                     "k_test": 4}})
    return run


# ---- 2: an exclusive claim, taken when a run starts ----

HOLD_CLAIM = "import sys, time; from vlpbench.rundir import RunDir\nwith RunDir(sys.argv[1]).claim():\n" \
             "    print('held', flush=True); time.sleep(120)"


def test_a_run_another_process_trains_is_skipped_not_trained_twice(tiny_config, tmp_path, capsys):
    """Issue 20.2: a second copy of a sweep took run 2, and the first trained it again later."""
    sweep = load_sweep(sweep_file(tmp_path, tiny_config, {"seeds": [0, 1]}))
    todo = launch.plan(sweep).todo  # both runs planned while nobody holds them
    busy = sweep.run_dir(sweep.runs[1])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state = runs.run_state(busy)
        assert state["state"] == "running" and f"pid {holder.pid}" in state["detail"]
        executors.Local(sweep).run_here(todo)  # the claim is checked when each run starts, not when planned
        out = capsys.readouterr().out
        assert "seed=1 skipped" in out and f"already running in another process (pid {holder.pid}" in out
        assert runs.is_done(sweep.run_dir(sweep.runs[0]))
        assert not (busy / "metrics.jsonl").exists() and not (busy / "failed.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert runs.run_state(busy)["state"] == "new"  # the OS released the dead holder's claim


# ---- 3: downstream settings changed after a task trained ----

def test_downstream_with_changed_settings_is_refused_unless_restarted(tiny_config, tmp_path, capsys):
    task = {"train": {"steps": 2, "batch_size": 4, "lr": 1e-4, "log_every": 1}, "data": {"max_test_records": 6},
            "eval_batch_size": 4}
    cfg = {**tiny_config, "downstream": {"tasks": ["snli_ve"], "snli_ve": task}}
    config = config_from_dict(cfg)
    run = RunDir.create(config)
    run_experiment(config, run, **QUIET)
    task_dir = run.path / "downstream" / "snli_ve"
    before = (task_dir / "results.json").read_text()
    assert main(["downstream", str(run.path), "-o", "downstream.snli_ve.train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert str(task_dir) in err and "snli_ve.train.steps: 2 -> 3" in err and "--restart" in err
    assert (task_dir / "results.json").read_text() == before
    assert yaml.safe_load((task_dir / "config.yaml").read_text())["snli_ve"]["train"]["steps"] == 2
    assert main(["downstream", str(run.path), "-o", "downstream.snli_ve.train.steps=3", "--restart"]) == 0
    assert json.loads((task_dir / "results.json").read_text())["train"]["steps"] == 3
    steps = [json.loads(line)["step"] for line in (task_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # trained afresh, not resumed from the 2-step checkpoint


# ---- 4: summary pools one configuration ----

def test_summary_refuses_runs_of_different_configurations(tiny_config, capsys):
    """Issue 20.4: runs of two mask ratios printed '4 seeds [0, 1, 0, 1]' and one interval."""
    a = [finished_run({**tiny_config, "seed": s}, f"a{s}", 30.0 + s) for s in (0, 1)]
    other = {**tiny_config, "method": {**tiny_config["method"], "queue_size": 32}}
    b = [finished_run({**other, "seed": s}, f"b{s}", 40.0 + s) for s in (0, 1)]
    assert main(["summary", *(str(r.path) for r in a + b)]) == 2
    err = capsys.readouterr().err
    assert "method.queue_size: 16 -> 32" in err and "different configurations" in err
    assert main(["summary", *(str(r.path) for r in a), "--versus", *(str(r.path) for r in b)]) == 0
    out = capsys.readouterr().out
    assert "2 seeds [0, 1]" in out and "r_mean" in out
    # both sides are one experiment: the comparison names what separates them, versus -> runs
    assert "configuration, subtrahend -> minuend: method.queue_size: 32 -> 16" in out


# ---- 5: a report is not replaced by one with fewer finished runs ----

def test_report_keeps_a_report_with_more_finished_runs_unless_forced(tiny_config, tmp_path, capsys):
    report = {"flops": False, "metrics": {"retrieval.itm.r_mean": "R Mean"}}
    path = sweep_file(tmp_path, tiny_config, {"seeds": [0, 1]}, report=report)
    sweep = load_sweep(path)
    for i, run in enumerate(sweep.runs):
        finished_run(run.config.model_dump(mode="json"), run.run_id, 30.0 + i)
    out = tmp_path / "reports"
    assert main(["report", str(path), "--output", str(out)]) == 0
    page = (out / "tiny" / "report.md").read_text()
    assert "2 of 2 runs finished" in page
    shutil.rmtree(sweep.directory)  # the runs are on another machine
    assert main(["report", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "shows 2 finished runs, this one would show 0 of 2" in err and str(sweep.directory) in err
    assert (out / "tiny" / "report.md").read_text() == page
    assert main(["report", str(path), "--output", str(out), "--force"]) == 0
    assert "0 of 2 runs finished" in (out / "tiny" / "report.md").read_text()


def test_a_report_metric_no_run_has_is_named_with_the_nearest_keys(tiny_config, tmp_path, capsys):
    path = sweep_file(tmp_path, tiny_config, {"seeds": [0]},
                      report={"flops": False, "metrics": {"retrieval.itm.rmean": "R Mean"}})
    run = load_sweep(path).runs[0]
    finished_run(run.config.model_dump(mode="json"), run.run_id, 30.0)
    assert main(["report", str(path), "--output", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "report.metrics: 'retrieval.itm.rmean'" in err and "'retrieval.itm.r_mean'" in err


# ---- 7: pretrained weights load strictly, with a report ----

def test_pretrained_weights_beyond_the_expected_mismatch_are_refused_and_reported(tiny_config, tmp_path):
    """Issue 20.7: a CLIP ViT brings norm_pre (and QuickGELU) a plain timm ViT lacks; strict=False
    dropped such keys silently."""
    state = create_vision_encoder("vit_mini", image_size=32).vit.state_dict()
    state.update({"norm_pre.weight": torch.ones(128), "norm_pre.bias": torch.zeros(128)})
    save_file(state, str(tmp_path / "clip_like.safetensors"))
    cfg = {**tiny_config, "model": {**tiny_config["model"], "vision": {
        "preset": "vit_mini", "image_size": 32, "pretrained": str(tmp_path / "clip_like.safetensors")}}}
    config = config_from_dict(cfg)
    with pytest.raises(ConfigError, match=r"model.vision.pretrained: .*clip_like.safetensors does not fit .*"
                                          r"2 keys of the file have no place .*norm_pre.*allow_partial"):
        run_experiment(config, RunDir.create(config), **QUIET)
    cfg["model"]["vision"]["allow_partial"] = True
    config = config_from_dict({**cfg, "train": {**cfg["train"], "steps": 1}})
    run = RunDir.create(config)
    lines = []
    run_experiment(config, run, log=lines.append)
    (report,) = json.loads((run.path / "pretrained_load.json").read_text())
    assert sorted(report["unexpected"]) == ["norm_pre.bias", "norm_pre.weight"] and report["missing"] == []
    assert report["loaded"] == len(state) - 2
    assert any("model.vision.pretrained" in line and "2 unused (2 unexpectedly)" in line for line in lines)


def test_crafted_pretrained_file_is_a_one_line_error_naming_it(tiny_config, tmp_path, capsys):
    evil = tmp_path / "vit.pt"
    torch.save({"w": torch.ones(1), "x": RunsCodeWhenUnpickled()}, evil)
    cfg = {**tiny_config, "model": {**tiny_config["model"], "vision": {"preset": "vit_mini", "image_size": 32,
                                                                       "pretrained": str(evil)}}}
    assert main(["run", str(write_yaml(tmp_path / "exp.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert f"model.*.pretrained: {evil}: not loadable as weights (UnpicklingError" in err
    assert "Traceback" not in err


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return print, ("unpickled",)


# ---- signals: the step in progress is checkpointed, the run stays resumable ----

def test_sigterm_during_a_sweep_checkpoints_that_step_and_the_rerun_resumes_it(tiny_config, tmp_path, capsys):
    tiny_config["train"].update(steps=200, checkpoint_every=None, log_every=1)
    tiny_config["eval"]["retrieval"]["enabled"] = False
    path = sweep_file(tmp_path, tiny_config, {"seeds": [0, 1]})
    sweep = load_sweep(path)
    first, second = (sweep.run_dir(r) for r in sweep.runs)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "vlpbench.cli", "run", str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ((first / "metrics.jsonl").is_file() and len((first / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert time.time() < deadline and child.poll() is None, child.stdout.read() if child.poll() else "slow"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    output = child.communicate(timeout=120)[0]
    assert "SIGTERM: stopping after this step" in output and "1 runs not started" in output
    (checkpoint,) = RunDir(first).checkpoint_paths()
    stopped_at = RunDir.checkpoint_step(checkpoint)
    logged = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert 3 <= stopped_at < 200 and logged[-1] == stopped_at  # the step in progress, checkpointed
    assert runs.run_state(first)["state"] == "resumable" and not (first / "failed.json").exists()
    assert runs.run_state(second)["state"] == "new"
    assert main(["run", str(path)]) == 0
    results = json.loads((first / "results.json").read_text())
    assert results["complete"] and results["train"]["steps_this_session"] == 200 - stopped_at


# ---- a corrupt results.json is named and the run counts as unfinished ----

def test_a_truncated_results_json_is_named_and_the_run_resumes(tiny_config, tmp_path, capsys):
    tiny_config["train"].update(steps=2, checkpoint_every=2)
    path = sweep_file(tmp_path, tiny_config, {"seeds": [0]})
    assert main(["run", str(path)]) == 0
    run_dir = load_sweep(path).run_dir(load_sweep(path).runs[0])
    text = (run_dir / "results.json").read_text()
    (run_dir / "results.json").write_text(text[: len(text) // 2])
    assert main(["summary", str(run_dir)]) == 2
    assert f"{run_dir / 'results.json'}: not valid JSON" in capsys.readouterr().err
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resumable" in out and "results.json: not valid JSON" in out
    assert main(["run", str(path)]) == 0
    assert runs.is_done(run_dir) and json.loads((run_dir / "results.json").read_text())["retrieval"]


# ---- resuming a run whose config.yaml was edited ----

def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint(tiny_config, tmp_path, capsys):
    config = config_from_dict(tiny_config)
    run = RunDir.create(config)
    run_experiment(config, run, stop_at=2, **QUIET)
    edited = yaml.safe_load((run.path / "config.yaml").read_text())
    edited["train"]["lr"] = 5e-4
    write_yaml(run.path / "config.yaml", edited)
    assert main(["run", "--resume", str(run.path)]) == 2
    assert "differs from the config its checkpoint was trained with (train.lr: 0.001 -> 0.0005)" in \
        capsys.readouterr().err


# ---- checkpoints whose config is broken ----

def test_checkpoint_config_not_json_or_not_fitting_its_weights_names_the_file(tiny_config, tmp_path, capsys):
    config = config_from_dict(tiny_config)
    run = RunDir.create(config)
    run_experiment(config, run, stop_at=1, **QUIET)
    state = torch.load(run.latest_checkpoint(), weights_only=True)
    bad = tmp_path / "bad_config.pt"
    torch.save({**state, "config": "{not json"}, bad)
    with pytest.raises(CheckpointError, match=f"{bad}: its config is not JSON"):
        read_checkpoint(bad)
    other = json.loads(state["config"])
    other["method"]["embed_dim"] = 48
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**state, "config": json.dumps(other)}, mismatched)
    assert main(["eval", str(mismatched), "--ann", "x.json"]) == 2
    err = capsys.readouterr().err
    assert f"{mismatched}: its weights do not fit the model its config describes" in err and "size mismatch" in err


# ---- data that is odd but valid, or bad and skippable ----

def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header announces ``width`` x ``height`` pixels (no image data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_utf16_annotations_load_and_a_decompression_bomb_is_a_skippable_bad_record(tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    png_header_only(tmp_path / "bomb.png", 20000, 20000)
    records = [{"image": "red.png", "caption": "a red square é"}, {"image": "bomb.png", "caption": "a huge image"}]
    ann = tmp_path / "ann.json"
    ann.write_bytes(json.dumps(records, ensure_ascii=False).encode("utf-16"))
    skips = SkipReport()
    entries = load_image_captions([str(ann)], tmp_path, "skip", True, skips)
    assert [e.captions for e in entries] == [["a red square é"]]
    assert skips.total == 1 and "cannot be decoded" in skips.summary()


def test_a_full_disk_names_the_file_and_the_space(tmp_path, monkeypatch):
    def fill_then_fail(obj, f):
        f.write(b"x" * 3 * 2**20)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 vs 1109")
    monkeypatch.setattr(torch, "save", fill_then_fail)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(100, 100, 0))
    target = tmp_path / "checkpoints" / "step_00000010.pt"
    with pytest.raises(DiskFullError, match=rf"{target}: no space left to write it \(3.0 MiB were written .* "
                                            r"0.0 MiB free"):
        save_torch(target, {"w": torch.ones(1)})
    assert list(target.parent.iterdir()) == []  # no temporary file left behind


# ---- one-line errors at the command line ----

@pytest.mark.parametrize("argv, flag", [
    (["flops", "albef_base", "--batch-size", "0"], "--batch-size"),
    (["flops", "albef_base", "--batch-size", "-2"], "--batch-size"),
    (["flops", "albef_base", "--text-length", "0"], "--text-length"),
    (["gate", "run", "--batch-size", "0"], "--batch-size"),
    (["bench", "x", "--steps", "0"], "--steps"),
    (["bench", "x", "--rounds", "0"], "--rounds"),
    (["bench", "x", "--warmup", "-1"], "--warmup"),
    (["run", "x.yaml", "--jobs", "0"], "--jobs"),
    (["run", "x.yaml", "--jobs", "-1"], "--jobs"),
])
def test_numeric_flags_out_of_range_are_one_line_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err and "expected an integer of at least" in err


def test_flops_text_length_beyond_the_preset_is_refused(capsys):
    assert main(["flops", str(REPO / "experiments/albef_mini.yaml"), "--text-length", "100000"]) == 2
    assert "--text-length 100000: the bert_mini preset has 64 positions" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.steps=[1, 2", "override 'train.steps=[1, 2': the value is not plain YAML"),
    ("train.steps=!!python/object/apply:os.system ['true']", "the value is not plain YAML"),
    ("name=..", "name: '..' would put the runs outside output_dir"),
    ("name=a/b", "name: String should match pattern"),
])
def test_bad_overrides_and_names_are_one_line_errors(tiny_config, tmp_path, capsys, override, message):
    assert main(["run", str(write_yaml(tmp_path / "exp.yaml", tiny_config)), "-o", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_sweep_boundaries(tiny_config, tmp_path, capsys):
    path = sweep_file(tmp_path, tiny_config, {"grid": {"method.alpha": [0.5, "0.5"]}})
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "two runs would share the directory 'alpha=0.5'" in capsys.readouterr().err
    huge = sweep_file(tmp_path, tiny_config, {"grid": {"train.lr": list(range(1, 1001)),
                                                       "train.min_lr": [0.0] * 1000}})
    began = time.perf_counter()
    assert main(["run", str(huge), "--dry-run"]) == 2
    assert "1,000,000 runs, more than 10,000; pass --max-runs 1000000" in capsys.readouterr().err
    assert time.perf_counter() - began < 30
    path = sweep_file(tmp_path, tiny_config, {"seeds": [0]})
    assert main(["run", str(path), "--dry-run", "--seeds", "-1,2"]) == 0
    assert "seed=-1" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "no_such_sweep")]) == 2
    assert "no such sweep file or run folder" in capsys.readouterr().err


def test_downstream_config_boundaries(tiny_config):
    saved = {**tiny_config, "downstream": {"vqa": {"data": {"train": None}}}}
    cfg = config_from_dict(saved, overrides=["downstream.vqa.data.train.ann=[x.json]"])
    assert cfg.downstream.vqa.data.train.ann == ["x.json"]
    with pytest.raises(ConfigError, match=r"downstream.grounding.gradcam_layer: 2, but 'albef' builds 2 text-to-image "
                                          r"cross-attention layers here \(expected 0..1\)"):
        config_from_dict({**tiny_config, "downstream": {"tasks": ["grounding"]}})


def test_a_downstream_task_stopped_by_a_signal_is_checkpointed_not_evaluated(tiny_config, monkeypatch, capsys):
    from vlpbench import train
    task = {"train": {"steps": 3, "batch_size": 4, "lr": 1e-4, "log_every": 1}, "data": {"max_test_records": 6},
            "eval_batch_size": 4}
    config = config_from_dict({**tiny_config, "downstream": {"snli_ve": task}})
    run = RunDir.create(config)
    run_experiment(config, run, **QUIET)
    real_step = train.Trainer.train_step

    def step_then_signal(self, batches):
        logged = real_step(self, batches)
        train.request_stop()  # as the SIGTERM handler does
        return logged
    monkeypatch.setattr(train.Trainer, "train_step", step_then_signal)
    assert main(["downstream", str(run.path), "--tasks", "snli_ve"]) == 130
    assert "stopped: snli_ve stopped at step 1 of 3, checkpointed" in capsys.readouterr().err
    task_run = RunDir(run.path / "downstream" / "snli_ve")
    assert [p.name for p in task_run.checkpoint_paths()] == ["step_00000001.pt"]
    assert not (task_run.path / "results.json").exists()
    monkeypatch.setattr(train.Trainer, "train_step", real_step)
    assert main(["downstream", str(run.path), "--tasks", "snli_ve"]) == 0
    assert json.loads((task_run.path / "results.json").read_text())["train"]["steps_this_session"] == 2
