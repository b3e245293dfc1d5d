"""Process-level speed settings of a training run: the CPU allocator and compiled blocks.

Both are measured by ``vlpbench bench`` (docs/speed-and-memory.md), not assumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch
from timm.models.vision_transformer import Block as VitBlock
from torch import nn

from vlpbench.zoo.layers import TransformerBlock

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"))


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process for reuse.

    By default glibc serves every large tensor with a fresh ``mmap`` and returns it on free, so
    each training step faults many of its activation and gradient pages in again. With mmap off
    and trimming off, a step reuses the previous step's pages (``albef_mini``: 1,262 instead of
    8,122 page faults per step, 0.66 instead of 0.71 s; ALBEF ``base``: ~10,000 instead of
    ~110,000, 0.13 instead of 0.5 CPU-s in the kernel, set by environment variables). Peak
    memory is unchanged; the resident set no longer shrinks between steps. Returns whether the
    setting applied (glibc Linux only).
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_free_memory() -> None:
    """Return the process's free heap memory to the OS now (glibc ``malloc_trim``), e.g. before a
    benchmark worker waits while the others take their turns."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


BLOCK_TYPES = (VitBlock, TransformerBlock)


def compile_blocks(model: nn.Module) -> int:
    """``torch.compile`` every transformer block of ``model`` in place; returns how many.

    Blocks, not the whole method: a block is pure tensor code that Inductor fuses (bias + GELU,
    dropout, residual + LayerNorm, forward and backward), while the methods' masking, sampling and
    queue code stays eager. Blocks of one class share compiled code; shapes that change between
    batches (text length, kept tokens) compile once more as dynamic shapes.
    """
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    blocks = [m for m in model.modules() if isinstance(m, BLOCK_TYPES)]
    for block in blocks:
        block.compile()
    return len(blocks)
