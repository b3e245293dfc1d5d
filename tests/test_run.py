import json

import torch
import yaml

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


def test_resume_equals_uninterrupted(tiny_config):
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

    a = torch.load(full.latest_checkpoint(), weights_only=False)
    b = torch.load(interrupted.latest_checkpoint(), weights_only=False)
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (interrupted.path / "env.json").is_file() and (interrupted.path / "env_resumed_at_00000003.json").is_file()
    steps = [json.loads(line)["step"] for line in interrupted.metrics_file.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    def losses(run):
        return [json.loads(line)["loss"] for line in run.metrics_file.read_text().splitlines()]
    assert losses(full) == losses(interrupted)
