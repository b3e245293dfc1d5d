"""Checkpoints: safe loading (weights_only), corrupt files named, resume falls back past them."""

import shutil

import pytest
import torch
import yaml
from conftest import tiny_config_in

from vlpbench.checkpoint import CheckpointError, read_checkpoint
from vlpbench.cli import main
from vlpbench.rundir import RunDir


class CreatesFileWhenUnpickled:
    """A crafted pickle: unpickling it calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 4-step tiny run with checkpoints at steps 2 and 4; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_config_in(root)
    cfg["train"].update(checkpoint_every=2, keep_checkpoints=5)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    (run_dir,) = (root / "runs" / "tiny").iterdir()
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return RunDir(copy)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_checkpoint_loads_with_weights_only_and_holds_config_and_tokenizer(run_copy):
    state = torch.load(run_copy.latest_checkpoint(), weights_only=True)  # plain containers and tensors only
    assert state["format"] == "vlpbench-checkpoint/2" and state["step"] == 4
    assert isinstance(state["config"], str) and isinstance(state["tokenizer"], str)
    assert read_checkpoint(run_copy.latest_checkpoint())["config"]["name"] == "tiny"


def test_first_format_with_config_as_a_dict_still_reads(run_copy, tmp_path):
    state = torch.load(run_copy.latest_checkpoint(), weights_only=True)
    state["config"] = read_checkpoint(run_copy.latest_checkpoint())["config"]
    del state["format"]
    torch.save(state, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt")["config"]["name"] == "tiny"


def test_crafted_pickle_is_refused_by_eval_and_resume_and_runs_nothing(run_copy, tmp_path, capsys):
    marker = tmp_path / "created_by_unpickling"
    evil = tmp_path / "downloaded.pt"
    torch.save({"step": 1, "model": CreatesFileWhenUnpickled(marker), "config": "{}", "tokenizer": ""}, evil)
    assert main(["eval", str(evil), "--ann", "x.json"]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "refused" in err and "could run code" in err
    # as the only checkpoint of a run, --resume refuses it too
    for old in run_copy.checkpoint_paths():
        old.unlink()
    shutil.copy(evil, run_copy.checkpoints / "step_00000004.pt")
    assert main(["run", "--resume", str(run_copy.path)]) == 2
    err = capsys.readouterr().err
    assert "step_00000004.pt: refused" in err and "no readable checkpoint" in err
    assert not marker.exists()


def test_bare_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "created_by_unpickling"
    evil = tmp_path / "legacy.pt"
    torch.save(CreatesFileWhenUnpickled(marker), evil, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a checkpoint.*bare pickle"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_eval_of_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("name: tiny\ntrain: {steps: 3}\n")
    assert main(["eval", str(config), "--ann", "x.json"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not a checkpoint" in err and "text file starting 'name: tiny'" in err
    assert "Traceback" not in err
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match="not a vlpbench checkpoint"):
        read_checkpoint(plain)


def test_eval_of_a_run_with_a_truncated_checkpoint_names_the_file(run_copy, capsys):
    newest = run_copy.latest_checkpoint()
    truncate(newest)
    assert main(["eval", str(run_copy.path), "--ann", "x.json"]) == 2
    err = capsys.readouterr().err
    assert f"{newest}: truncated or corrupt checkpoint" in err


def test_resume_falls_back_past_a_truncated_newest_checkpoint(run_copy, capsys):
    newest = run_copy.latest_checkpoint()
    truncate(newest)
    assert main(["run", "--resume", str(run_copy.path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: skipping {newest}: truncated or corrupt checkpoint" in out
    assert "renamed the unreadable step_00000004.pt to step_00000004.pt.corrupt; resuming from step_00000002.pt" in out
    assert "resuming" in out and "from step 2" in out
    assert newest.with_name("step_00000004.pt.corrupt").is_file()
    assert read_checkpoint(run_copy.latest_checkpoint())["step"] == 4  # retrained from step 2
