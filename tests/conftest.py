import copy

import pytest
import torch

from vlpbench.registry import available_methods, get_method

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"embedded": {"num_pretrain_images": 24, "captions_per_image": 1, "num_test_images": 6,
                          "image_size": 32, "max_objects": 3}, "max_text_len": 24},
    "model": {"vision": {"preset": "vit_mini", "image_size": 32}, "text": {"preset": "bert_mini", "vocab_size": 200}},
    "method": {"name": "albef", "embed_dim": 32, "queue_size": 16},
    "train": {"steps": 4, "batch_size": 4, "lr": 1.0e-3, "warmup_steps": 1, "log_every": 1},
    "eval": {"retrieval": {"k_test": 4, "batch_size": 8}},
}


# every registered method: a test parametrized over it covers a new method without listing it
REGISTERED_METHODS = available_methods()


def tiny_method(name: str) -> dict:
    """The ``method:`` block of registered method ``name`` at its tiny configuration."""
    return {"name": name, **copy.deepcopy(get_method(name).config_class.tiny)}


def tiny_config_in(root):
    """A config dict for a seconds-long run whose data and runs live under ``root``."""
    cfg = copy.deepcopy(TINY)
    cfg["data"]["embedded"]["root"] = str(root / "data")
    cfg["output_dir"] = str(root / "runs")
    return cfg


@pytest.fixture
def tiny_config(tmp_path):
    return tiny_config_in(tmp_path)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def train_on_one_batch(method, batch, progress, steps: int = 12) -> list[float]:
    """Losses of ``steps`` AdamW steps on one batch, alternating two fixed random draws (masks,
    negatives), so that a decrease is the model's learning and not a luckier draw."""
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        torch.manual_seed(step % 2)
        loss = method(batch, progress)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step()
        losses.append(loss.item())
    return losses
