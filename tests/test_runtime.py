"""Process-level speed settings: the CPU allocator and compiled transformer blocks."""

import resource

import pytest
import torch
from torch import nn

from vlpbench.runtime import compile_blocks, keep_freed_memory, release_free_memory
from vlpbench.zoo.layers import TransformerBlock


def faults_to_fill(megabytes: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.empty(megabytes * 2**20 // 4)
    buffer.fill_(1.0)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not keep_freed_memory(), reason="needs glibc (Linux)")
def test_kept_memory_is_reused_without_faulting_pages_in_again():
    release_free_memory()
    first = faults_to_fill(64)   # fresh pages: one fault per page (or per huge page)
    again = faults_to_fill(64)   # the same pages, kept by the allocator
    assert first > 100 and again < first / 10


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
