"""Masking for both modalities: MAE-style patch masking and BERT-style MLM token masking."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlpbench.streams import stream


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
    generator = generator or stream("patch_mask", device)
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :keep] = False
    return PatchMask(keep_idx=shuffle[:, :keep], restore_idx=restore, mask=torch.gather(mask, 1, restore))


class TokenMask(NamedTuple):
    """Removal of text tokens (LightVLP Sec. 3.1). Captions differ in length, so each row keeps its
    own number of tokens; rows are padded to the longest kept row and ``kept_valid`` marks the
    real ones. [CLS] is always kept first, [PAD] is never kept."""
    keep_idx: torch.Tensor     # [B, K] positions to encode: [CLS] first, then kept tokens in random order
    kept_valid: torch.Tensor   # [B, K] bool, True = a kept token (False = row padding)
    restore_idx: torch.Tensor  # [B, L] un-shuffles the [B, L] sequence ``keep_idx`` begins back to positions
    mask: torch.Tensor         # [B, L] bool, True = a removed (masked) token


def random_token_masking(attention_mask: torch.Tensor, mask_ratio: float,
                         generator: torch.Generator | None = None) -> TokenMask:
    """Remove ``n - int(n * (1 - mask_ratio))`` of the ``n`` real tokens after [CLS] in each row."""
    batch, length = attention_mask.shape
    real = attention_mask.bool()
    generator = generator or stream("token_mask", attention_mask.device)
    noise = torch.rand(batch, length, device=attention_mask.device, generator=generator)
    noise[:, 0] = -1.0                    # [CLS] sorts first
    noise = noise.masked_fill(~real, 2.0)  # [PAD] sorts last
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    kept_per_row = 1 + ((real.sum(1) - 1) * (1.0 - mask_ratio)).long()  # [CLS] + int(n * (1 - ratio))
    kept_sorted = torch.arange(length, device=attention_mask.device) < kept_per_row[:, None]
    width = int(kept_per_row.max())
    mask = ~torch.gather(kept_sorted, 1, restore) & real
    return TokenMask(shuffle[:, :width], kept_sorted[:, :width], restore, mask)


def patch_region(region: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, H, W] pixel region (True = inside) -> [B, N] patches that overlap it, row-major."""
    covered = F.max_pool2d(region[:, None].float(), patch_size)
    return covered.flatten(1) > 0


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
    generator = generator or stream("mlm_mask", device)
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
