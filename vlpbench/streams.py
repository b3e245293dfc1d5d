"""Common random numbers: one random stream per purpose within each training step.

The trainer seeds torch from (seed, step[, micro-batch]) before every step (``vlpbench.train``).
``stream(purpose, device)`` derives from that seed a generator of its own for one purpose (patch
masks, token masks, MLM masks, ITM negative images, ...), so that two configurations run with one
seed draw the same numbers for every purpose they share: a configuration that draws more or fewer
for one purpose (another mask ratio, a method that masks and one that does not, dropout on
sequences of another length) shifts no other purpose's draws. A purpose is drawn once per
forward pass; one asked for twice in a pass gets the same numbers, so callers name each use.

Dropout draws from torch's global generator, seeded per step as before (``F.dropout`` takes no
generator); the data order and augmentations have streams of their own (``vlpbench.train``).

Initial weights: a method builds each of its parts with ``init_part(name, build, ...)``, which
initialises that part from a stream of (seed, "init", name). A part two configurations both build
starts identical, whatever parts either builds before it (an optional decoder, a second queue).
"""

from __future__ import annotations

import hashlib
from typing import Callable, TypeVar

import torch

Part = TypeVar("Part")


def derived_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (the same parts, the same seed)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def stream(purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` for ``purpose``, determined by the seed torch was last seeded with."""
    return torch.Generator(device=device).manual_seed(derived_seed(torch.initial_seed(), purpose))


def init_part(name: str, build: Callable[..., Part], *args, **kwargs) -> Part:
    """``build(*args, **kwargs)`` with torch's global generator seeded from (seed, "init", ``name``);
    afterwards the global generator continues as if the part had drawn nothing."""
    seed = torch.initial_seed()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "init", name))
        return build(*args, **kwargs)
