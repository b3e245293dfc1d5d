"""Momentum (EMA) teachers and the feature queues of MoCo-style contrastive learning."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to be updated only by ``ema_update``."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(students: list[nn.Module], teachers: list[nn.Module], momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` over all parameters, in one
    fused pass (``lerp``: teacher + (1 - momentum) * (student - teacher))."""
    student_params = [p for m in students for p in m.parameters()]
    teacher_params = [p for m in teachers for p in m.parameters()]
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)


def momentum_teacher(student: nn.Module, names: tuple[str, ...]) -> nn.ModuleDict:
    """Frozen copies of the student's submodules ``names``, kept in step by ``update_teacher``."""
    return nn.ModuleDict({name: momentum_copy(getattr(student, name)) for name in names})


def update_teacher(student: nn.Module, teacher: nn.ModuleDict, momentum: float) -> None:
    """One EMA step of every teacher module towards the student's submodule of the same name."""
    ema_update([getattr(student, name) for name in teacher], list(teacher.values()), momentum)


@torch.no_grad()
def gather_from_all_processes(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (ALBEF fills the queue with the global batch)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class FeatureQueue(nn.Module):
    """A FIFO ring buffer of L2-normalised features, ``size`` rows of ``dim``.

    Starts with random unit vectors, as ALBEF does, so the first steps already see ``size``
    negatives. The queue and pointer are buffers: they are saved and restored with checkpoints.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor) -> None:
        """Overwrite the oldest rows with ``feats`` (wrapping around the end)."""
        feats = gather_from_all_processes(feats)
        if feats.shape[0] > self.size:
            feats = feats[-self.size:]
        rows = (self.ptr + torch.arange(feats.shape[0], device=feats.device)) % self.size
        self.features[rows] = feats.to(self.features.dtype)
        self.ptr.copy_((self.ptr + feats.shape[0]) % self.size)
