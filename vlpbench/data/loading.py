"""From a pre-training dataset to the batches one process trains on, resumable at any batch.

Two kinds of source feed the trainer: a map-style dataset (random access by index: the ALBEF
JSON records), batched here by ``ResumableBatchSampler``; and a stream (``BatchStream``:
webdataset shards, ``vlpbench.data.shards``), which batches itself. Either way the batches a
process sees are a function of (seed, batch number, rank, world size, workers), so a resumed run
continues exactly where a checkpoint left it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class LoaderPlan:
    """Where one process's batches start and how they are split."""
    batch_size: int       # the global batch (one micro-batch of all processes)
    seed: int
    start_batch: int = 0  # global batches already consumed (a resumed run's step x grad_accum_steps)
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    pin_memory: bool = False

    @property
    def rank_batch_size(self) -> int:
        return self.batch_size // self.world_size


@runtime_checkable
class BatchStream(Protocol):
    """A source without random access that yields its own collated batches."""

    def __len__(self) -> int:
        """Samples per epoch."""

    def batches(self, collate: Callable, plan: LoaderPlan) -> Iterator:
        """Endless batches of ``plan.rank_batch_size`` samples, from batch ``plan.start_batch`` on."""


class ResumableBatchSampler(Sampler):
    """Endless epochs of shuffled, full batches, starting at any batch number.

    Yields lists of ``(index, augmentation_seed)`` keys for ``PretrainDataset``; with several
    processes, each yields its contiguous share of the same global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.num_items, self.batch_size, self.seed, self.start_batch = num_items, batch_size, seed, start_batch
        self.batches_per_epoch = num_items // batch_size
        self.shard = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        while True:
            epoch, within = divmod(batch, self.batches_per_epoch)
            order = self.epoch_order(epoch)
            for b in range(within, self.batches_per_epoch):
                indices = order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
                base = (self.seed * 1_000_003 + batch) * self.batch_size
                yield [(i, base + k) for k, i in enumerate(indices)][self.shard]  # this process's share
                batch += 1


def training_batches(dataset: Dataset | BatchStream, collate: Callable, plan: LoaderPlan) -> Iterator:
    """This process's batches of ``dataset``, from ``plan.start_batch`` on."""
    if isinstance(dataset, BatchStream):
        return dataset.batches(collate, plan)
    sampler = ResumableBatchSampler(len(dataset), plan.batch_size, plan.seed, plan.start_batch, plan.rank,
                                    plan.world_size)
    return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=plan.num_workers,
                           pin_memory=plan.pin_memory, persistent_workers=plan.num_workers > 0))
