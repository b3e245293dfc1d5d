"""Can a method's matching head fit one fixed batch? Trains the tests' tiny model of a method on 8
distinct captions (random images) with ITM alone (no masks, ITC and the method's other objectives
off, uniform negatives) and prints its ITM loss every 25 steps, at each learning rate given. A head
that stays at the prior (0.6365) here cannot learn matching at that learning rate at all.

    python reports/measure/itm_fit_one_batch.py lightvlp --lr 1e-3 3e-4
    python reports/measure/itm_fit_one_batch.py albef --lr 1e-3 3e-4"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import tiny_config_in, tiny_method  # noqa: E402  (the tests' tiny configuration)

from vlpbench.config import config_from_dict  # noqa: E402
from vlpbench.method import Batch, Progress  # noqa: E402
from vlpbench.pipeline import build_method  # noqa: E402
from vlpbench.zoo import train_wordpiece  # noqa: E402

CAPTIONS = ["a red circle on the left", "a blue square at the top", "a green star in the middle",
            "a yellow triangle right", "two red squares at the bottom", "a blue circle and a green star",
            "a small yellow circle", "a large blue star"]
# each method with only its ITM objective (where its config can switch the others off)
ITM_ONLY = {"albef": {"itc": False, "itm_hard_negatives": False, "distill_itc": False, "distill_mlm": False},
            "lightvlp": {"itc": False, "mir": False, "mtr": False, "image_mask_ratio": 0.0, "text_mask_ratio": 0.0}}


def itm_losses(name: str, lr: float, steps: int) -> list[float]:
    tokenizer = train_wordpiece(CAPTIONS * 5, vocab_size=120)
    torch.manual_seed(0)
    ids, mask = tokenizer(CAPTIONS, 16)
    batch = Batch(torch.randn(8, 3, 32, 32), ids, mask, torch.ones(8, 32, 32, dtype=torch.bool), torch.arange(8))
    cfg = tiny_config_in(Path(tempfile.gettempdir()) / "itm_fit_one_batch")  # builds a model only: no files
    cfg["method"] = {**tiny_method(name), **ITM_ONLY.get(name, {})}
    cfg["train"]["batch_size"] = 8
    cfg["eval"]["retrieval"]["k_test"] = "all"
    method = build_method(config_from_dict(cfg), tokenizer)
    optimizer = torch.optim.AdamW(method.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        out = method(batch, Progress(step, 10))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.after_optimizer_step()
        losses.append(out["loss_itm"].item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=sorted(ITM_ONLY))
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    for lr in args.lr:
        losses = itm_losses(args.method, lr, args.steps)
        print(f"{args.method} lr {lr:g}: ITM loss every 25 steps " + " ".join(f"{v:.3f}" for v in losses[::25])
              + f", last {losses[-1]:.3f}")


if __name__ == "__main__":
    main()
