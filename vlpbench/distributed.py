"""Data-parallel training: one code path for 1 process, torchrun, and Slurm tasks under submitit.

The process group comes from the environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT, or submitit's ``JobEnvironment`` (global rank, number of tasks, local
rank, and the first node of the job as the rendezvous host, which ALBEF's and LAVIS' launchers
leave unset under Slurm). On CUDA the group has two backends, ``cpu:gloo,cuda:nccl``: NCCL
moves CUDA tensors, and a CPU tensor (an object broadcast) still has a backend instead of failing
under NCCL alone. Every collective here takes its tensors on the process's training device.
``train.batch_size`` is the global batch: each of the N processes takes its 1/N share, and the
queues receive the all-gathered features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Rendezvous:
    rank: int
    world_size: int
    local_rank: int
    address: str
    port: int


def rendezvous_from_environment() -> Rendezvous | None:
    """torchrun's variables, else a multi-task submitit job's; None for a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Rendezvous(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                          env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SUBMITIT_FOLDER" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        import submitit
        job = submitit.JobEnvironment()
        port = 20000 + int("".join(ch for ch in str(job.job_id) if ch.isdigit()) or 0) % 20000
        return Rendezvous(job.global_rank, job.num_tasks, job.local_rank, job.hostnames[0], port)
    return None


_device = torch.device("cpu")  # the device this process trains on (``initialize``)


def initialize(device: torch.device) -> Rendezvous | None:
    """Join the process group the environment describes (once); None when running alone."""
    global _device
    found = rendezvous_from_environment()
    if found is None or found.world_size == 1 or dist.is_initialized():
        return found
    _device = device
    if device.type == "cuda":
        torch.cuda.set_device(found.local_rank)
        _device = torch.device("cuda", found.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", rank=found.rank,
                            world_size=found.world_size, init_method=f"tcp://{found.address}:{found.port}")
    return found


def device() -> torch.device:
    """The device of this process's collectives: the one it trains on."""
    return _device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def any_process(flag: bool) -> bool:
    """True on every process if it is true on any (e.g. a stop request one of them received)."""
    if not active():
        return flag
    value = torch.tensor(float(flag), device=_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(method: nn.Module) -> nn.Module:
    """DDP over ``method`` when several processes train it. Buffers are synchronised once, at the
    start, not every step: the queues are then filled identically on every process from
    all-gathered features. Unused parameters are looked for because some objectives leave parts
    of a method idle in a step (at the cost of one graph traversal per step)."""
    if not active():
        return method
    return nn.parallel.DistributedDataParallel(method, forward_sync_buffers=False, find_unused_parameters=True)


def mean_across_processes(values: dict[str, torch.Tensor | float]) -> dict[str, torch.Tensor | float]:
    """Per key, the mean over processes (one all-reduce for all keys)."""
    if not active() or not values:
        return values
    keys = list(values)
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=_device).reshape(()) for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, (stacked / dist.get_world_size()).unbind()))


def broadcast_from_main(obj):
    """Process 0's ``obj`` on every process (e.g. the run directory it created)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
