"""Masking for both modalities: MAE-style patch masking and BERT-style MLM token masking."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PatchMask(NamedTuple):
    keep_idx: torch.Tensor     # [B, K] patch indices that are encoded, in random order
    restore_idx: torch.Tensor  # [B, N] un-shuffles [kept, masked] back to patch order
    mask: torch.Tensor         # [B, N] bool, True = masked (removed)


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1.0 - mask_ratio))


def random_patch_masking(batch: int, num_patches: int, mask_ratio: float, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> PatchMask:
    """Keep ``int(N * (1 - mask_ratio))`` random patches per image (MAE's argsort-of-noise)."""
    keep = num_kept_patches(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :keep] = False
    return PatchMask(keep_idx=shuffle[:, :keep], restore_idx=restore, mask=torch.gather(mask, 1, restore))


class MaskedTokens(NamedTuple):
    input_ids: torch.Tensor  # corrupted ids fed to the model
    labels: torch.Tensor     # original id at masked positions, -100 elsewhere


def mask_tokens_for_mlm(input_ids: torch.Tensor, vocab_size: int, mask_id: int, never_mask_ids: list[int],
                        probability: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1,
                        generator: torch.Generator | None = None) -> MaskedTokens:
    """BERT masking: choose tokens with ``probability``; of those, ``mask_fraction`` become [MASK],
    ``random_fraction`` a random id, the rest stay unchanged. Ids in ``never_mask_ids`` (PAD, CLS)
    are never chosen."""
    device = input_ids.device
    chosen = torch.rand(input_ids.shape, device=device, generator=generator) < probability
    chosen &= ~torch.isin(input_ids, torch.tensor(never_mask_ids, device=device))
    labels = input_ids.masked_fill(~chosen, -100)
    action = torch.rand(input_ids.shape, device=device, generator=generator)
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=device, generator=generator)
    corrupted = input_ids.masked_fill(to_mask, mask_id)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return MaskedTokens(corrupted, labels)
