"""Checkpoint files: written so that they load with ``torch.load(..., weights_only=True)``.

A checkpoint holds only tensors and plain containers: ``step``, ``model`` and ``optimizer``
state dicts, and the resolved ``config`` and ``tokenizer`` as JSON strings. Loading never
unpickles arbitrary objects, so a crafted file cannot run code, and every failure names the
file and says what was expected.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from vlpbench.errors import UserError
from vlpbench.io import save_torch

FORMAT = "vlpbench-checkpoint/2"
REQUIRED_KEYS = ("step", "model", "config", "tokenizer")
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used, phrased for the user."""


def save_checkpoint(path: Path, step: int, model: dict, optimizer: dict, config: dict, tokenizer_json: str,
                    weight_average: dict | None = None) -> None:
    """``weight_average``: the running average of the weights (``eval.ema``), which a resume continues."""
    save_torch(path, {"format": FORMAT, "step": step, "model": model, "optimizer": optimizer,
                      "config": json.dumps(config), "tokenizer": tokenizer_json,
                      **({"weight_average": weight_average} if weight_average is not None else {})})


def read_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict:
    """The checkpoint at ``path`` with ``config`` decoded to a dict; ``CheckpointError`` otherwise.

    Reads the current format and the first one (``config`` stored as a dict), both tensors and
    plain containers only.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith(ZIP_MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint: expected a .pt file written by `vlpbench run` "
                              f"(a torch zip archive), got {_describe(head)}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: corrupt checkpoint ({_key_line(exc)})") from None
        raise CheckpointError(f"{path}: refused: the file holds objects other than tensors and plain containers, "
                              "and loading them could run code. vlpbench checkpoints never do; do not load this "
                              f"file. ({_key_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: "
                              f"{_key_line(exc)})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: a torch file, but not a vlpbench checkpoint (no {missing}); expected one "
                              "written by `vlpbench run` under <run dir>/checkpoints/")
    if isinstance(state["config"], str):
        try:
            state["config"] = json.loads(state["config"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: its config is not JSON ({exc}); expected the resolved config "
                                  "`vlpbench run` stores") from None
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its config is a {type(state['config']).__name__}, expected a mapping")
    state["file"] = str(path)
    return state


def load_weights(module: torch.nn.Module, weights: dict, path: Path | str) -> None:
    """``module.load_state_dict(weights)``, strict; a mismatch is a ``CheckpointError`` naming the
    file and the first keys (a checkpoint whose config does not describe its weights)."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({' '.join(lines[1:3])[:400] or lines[0][:400]})") from None


def _key_line(exc: BaseException) -> str:
    """The line of torch's long message that says what was wrong (which global, which record)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    line = next((line for line in lines if "unsupported global" in line.lower()), lines[0])
    return line.split(". ")[0][:300]  # the first sentence; torch goes on to explain how to allow-list the object


def _describe(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(b"\x80"):
        return "a bare pickle (not the zip archive torch.save writes)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file"
    return f"a text file starting {text.strip().splitlines()[0][:40]!r}" if text.strip() else "a blank text file"
