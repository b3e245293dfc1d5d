"""The Python API, used as a notebook would: build, train, save, reload, evaluate, tabulate."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

import vlpbench
from vlpbench.config import ConfigError


@pytest.fixture
def trained(tiny_config):
    """ALBEF built with ``create_method`` and trained 3 steps in place by ``run``."""
    built = vlpbench.create_method(tiny_config, train__steps=3)
    return built, vlpbench.run(built, log=lambda _: None)


def forward_outputs(built) -> dict[str, torch.Tensor]:
    images = [Image.new("RGB", (40, 30), color) for color in ("red", "navy")]
    batch = built.batch(images, ["a red square", "a blue square"])
    with built.no_grad() as method:
        image = method.encode_image(batch.images)
        text = method.encode_text(batch.input_ids, batch.attention_mask)
        return {"input_ids": batch.input_ids, "pixels": batch.images, "image": method.image_embedding(image), "text": method.text_embedding(text),
                "match": method.match_score(text, batch.attention_mask, image.states)}


def test_a_method_built_trained_saved_and_reloaded_gives_identical_outputs(trained):
    built, loaded = trained
    assert loaded.state == "done" and loaded.results["train"]["steps"] == 3
    assert loaded.config.model_dump() == built.config.model_dump()
    before, after = forward_outputs(built), forward_outputs(loaded)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert built.method.training and not loaded.method.training  # no_grad() restored each mode


def test_evaluate_scores_a_run_as_its_results_do(trained):
    built, loaded = trained
    again = vlpbench.evaluate(loaded.path, device="cpu")
    assert again["itm"] == pytest.approx(loaded.results["retrieval"]["itm"])
    assert again["itc"] == pytest.approx(loaded.results["retrieval"]["itc"])
    gate = vlpbench.evaluate(built, task="gate", device="cpu", max_pairs=8, batch_size=4)
    assert gate["method"] == "albef" and sum(gate["num_pairs"].values()) == 8


def test_results_load_tabulates_the_run(trained):
    _, loaded = trained
    table = vlpbench.results.load(loaded.path.parent)
    row = table.set_index("run_id").loc[loaded.path.name]
    assert row["state"] == "done" and row["train.steps"] == 3
    assert row["retrieval.itm.r_mean"] == pytest.approx(loaded.results["retrieval"]["itm"]["r_mean"])


def test_overrides_take_the_command_lines_keys(tiny_config):
    cfg = vlpbench.api.experiment_config(tiny_config, ["train.lr=0.5"], method__queue_size=8)
    assert (cfg.train.lr, cfg.method.queue_size) == (0.5, 8)
    with pytest.raises(ConfigError, match="queue_sise"):
        vlpbench.api.experiment_config(tiny_config, method__queue_sise=8)
    with pytest.raises(ConfigError, match="neither an experiment file nor a registered method"):
        vlpbench.create_method("albeff")
    with pytest.raises(ConfigError, match="task 'vqa'"):
        vlpbench.evaluate(None, task="vqa")


def test_importing_vlpbench_imports_no_torch():
    code = "import sys, vlpbench; assert vlpbench.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
