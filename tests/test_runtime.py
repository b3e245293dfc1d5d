"""Process-level speed settings: the CPU allocator and compiled transformer blocks."""

import platform

import pytest
import torch
from torch import nn

from vlpbench.runtime import compile_blocks, keep_freed_memory, release_free_memory
from vlpbench.zoo.layers import TransformerBlock


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_keeping_freed_memory_applies_on_glibc():
    # the effect is measured, not asserted (docs/speed-and-memory.md: page faults per step)
    assert keep_freed_memory() is True
    release_free_memory()


def test_compiled_blocks_compute_what_eager_blocks_compute():
    model = nn.Sequential(TransformerBlock(32, 4, 64, dropout=0.0), TransformerBlock(32, 4, 64, dropout=0.0))
    x = torch.randn(2, 5, 32, requires_grad=True)
    eager_out = model(x)
    eager_grad, = torch.autograd.grad(eager_out.square().sum(), x)
    assert compile_blocks(model) == 2
    out = model(x)
    grad, = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-5)
