"""The shared masked-autoencoder pieces: token removal, order restoration, the decoder, the
masked-patch loss, and region maps."""

import math

import pytest
import torch

from vlpbench.config import AugmentConfig
from vlpbench.data.transforms import NO_AUGMENTATION, ImageTransform
from vlpbench.losses import masked_patch_mse, patchify
from vlpbench.masking import patch_region, random_patch_masking, random_token_masking
from vlpbench.zoo.decoder import MaskedDecoder, restore_positions


def test_token_masking_keeps_cls_never_pad_and_the_configured_count():
    attention = torch.tensor([[1] * 9 + [0] * 3, [1] * 5 + [0] * 7, [1] * 12])
    mask = random_token_masking(attention, 0.5, torch.Generator().manual_seed(0))
    kept_per_row = mask.kept_valid.sum(1).tolist()
    assert kept_per_row == [1 + 4, 1 + 2, 1 + 5]  # [CLS] + int(n * 0.5) of the n = 8, 4, 11 tokens after it
    assert mask.keep_idx.shape == (3, 6) and (mask.keep_idx[:, 0] == 0).all()
    kept_positions = torch.where(mask.kept_valid, mask.keep_idx, -1)
    for row in range(3):
        kept = set(kept_positions[row].tolist()) - {-1}
        masked = set(torch.nonzero(mask.mask[row]).flatten().tolist())
        real = set(range(int(attention[row].sum())))
        assert kept.isdisjoint(masked) and kept | masked == real, "every real token is kept or masked, pads neither"


def test_restore_positions_puts_identity_coded_states_back_in_place():
    patches = random_patch_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(1))
    kept = patches.keep_idx.float()[..., None] + 1.0  # each kept state carries its position + 1
    restored = restore_positions(kept, patches.restore_idx, torch.zeros(1))[..., 0]
    expected = torch.where(patches.mask, 0.0, torch.arange(16).float() + 1.0)
    assert torch.equal(restored, expected)

    attention = torch.tensor([[1] * 7 + [0], [1] * 4 + [0] * 4])
    tokens = random_token_masking(attention, 0.5, torch.Generator().manual_seed(2))
    kept = tokens.keep_idx.float()[..., None] + 1.0
    restored = restore_positions(kept, tokens.restore_idx, torch.zeros(1), tokens.kept_valid)[..., 0]
    is_kept = attention.bool() & ~tokens.mask
    assert torch.equal(restored, torch.where(is_kept, torch.arange(8).float() + 1.0, 0.0))


def test_decoder_predicts_every_position_in_order_and_selected_positions_only():
    torch.manual_seed(0)
    decoder = MaskedDecoder(in_width=8, width=16, depth=1, num_heads=2, num_positions=9, out_dim=5, prefix_tokens=1)
    patches = random_patch_masking(3, 9, 0.5)
    kept = torch.randn(3, 1 + 4, 8)
    full = decoder(kept, patches.restore_idx)
    assert full.shape == (3, 9, 5)
    selected = decoder(kept, patches.restore_idx, positions=patches.mask)
    torch.testing.assert_close(selected, full[patches.mask])


def test_decoder_context_is_attended_and_its_padding_ignored():
    torch.manual_seed(0)
    decoder = MaskedDecoder(8, 16, 1, 2, num_positions=4, out_dim=3, prefix_tokens=1, context_width=6)
    patches = random_patch_masking(1, 4, 0.5)
    kept, context = torch.randn(1, 3, 8), torch.randn(1, 3, 6)
    context_mask = torch.tensor([[1, 1, 0]])
    out = decoder(kept, patches.restore_idx, context=context, context_mask=context_mask)
    changed_pad = context.clone()
    changed_pad[0, 2] += 5.0
    torch.testing.assert_close(decoder(kept, patches.restore_idx, context=changed_pad, context_mask=context_mask), out)
    changed_real = context.clone()
    changed_real[0, 0] += 5.0
    assert not torch.allclose(decoder(kept, patches.restore_idx, context=changed_real, context_mask=context_mask), out)


def test_patchify_is_the_vit_patch_order():
    image = torch.arange(2 * 4 * 4, dtype=torch.float).reshape(1, 2, 4, 4)
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 8)
    # patch 1 is the top-right 2x2 block; values are (row, col, channel) ordered
    assert patches[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def test_masked_patch_mse_is_the_mean_over_selected_patches_and_ignores_the_rest():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    weight = torch.tensor([[True, True, False]])
    # per patch: (1 + 1) / 2 = 1 and (4 + 0) / 2 = 2; mean over the two selected patches = 1.5
    assert masked_patch_mse(pred, target, weight).item() == pytest.approx(1.5)
    target[0, 2] = -100.0
    assert masked_patch_mse(pred, target, weight).item() == pytest.approx(1.5)
    assert masked_patch_mse(pred, target, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_norm_pix_normalises_each_target_patch():
    target = torch.tensor([[[1.0, 3.0]]])  # mean 2, unbiased variance 2 -> normalised (-1/sqrt2, 1/sqrt2)
    loss = masked_patch_mse(torch.zeros(1, 1, 2), target, torch.ones(1, 1, dtype=torch.bool), norm_pix=True)
    assert loss.item() == pytest.approx(0.5, rel=1e-4)


def test_region_map_follows_the_boxes_and_the_geometry():
    transform = ImageTransform(8)
    region = transform.region([[0, 0, 8, 8]], (16, 16), NO_AUGMENTATION)  # top-left quarter of a 16 px image
    assert region.shape == (8, 8) and region[:4, :4].all() and region.sum() == 16
    assert transform.region(None, (16, 16), NO_AUGMENTATION).all(), "no boxes: the whole image is the region"
    flipped = ImageTransform(8, AugmentConfig(hflip=True))
    generator = torch.Generator().manual_seed(0)
    aug = next(a for a in (flipped.draw((16, 16), generator) for _ in range(50)) if a.flip)  # a flipped draw
    assert flipped.region([[0, 0, 8, 8]], (16, 16), aug)[:4, 4:].sum() == 16
    assert patch_region(region[None], 4).tolist() == [[True, False, False, False]]


def test_kept_counts_match_the_papers_sequence_lengths():
    # LightVLP Sec. 4.1: 256 patches and 32 tokens at 50% / 50% give 128 + 16 encoder inputs
    assert random_patch_masking(1, 256, 0.5).keep_idx.shape[1] == 128
    tokens = random_token_masking(torch.ones(1, 33, dtype=torch.long), 0.5)
    assert tokens.kept_valid.sum().item() - 1 == 16 and math.isclose(tokens.mask.sum().item(), 16)
