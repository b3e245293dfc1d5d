import torch

from vlpbench.masking import mask_tokens_for_mlm, random_patch_masking
from vlpbench.zoo import create_vision_encoder


def test_patch_masking_keeps_exactly_the_requested_number():
    m = random_patch_masking(batch=5, num_patches=64, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert m.keep_idx.shape == (5, 16)
    assert m.mask.sum(dim=1).tolist() == [48] * 5
    # the kept indices are exactly the unmasked patches, each once
    for row in range(5):
        assert sorted(m.keep_idx[row].tolist()) == torch.nonzero(~m.mask[row]).flatten().tolist()


def test_restore_index_unshuffles():
    m = random_patch_masking(batch=3, num_patches=10, mask_ratio=0.5, generator=torch.Generator().manual_seed(1))
    patches = torch.arange(10).expand(3, 10)
    kept = torch.gather(patches, 1, m.keep_idx)
    shuffled = torch.cat([kept, torch.full((3, 5), -1)], dim=1)
    restored = torch.gather(shuffled, 1, m.restore_idx)
    assert torch.equal(restored == -1, m.mask)
    assert torch.equal(restored[~m.mask], patches[~m.mask])


def test_vision_encoder_output_has_kept_length():
    encoder = create_vision_encoder("vit_mini", image_size=32).eval()  # 4x4 = 16 patches
    images = torch.randn(2, 3, 32, 32)
    m = random_patch_masking(2, encoder.num_patches, 0.5)
    out = encoder(images, keep_idx=m.keep_idx)
    assert out.states.shape == (2, 1 + 8, encoder.width)
    assert torch.equal(out.cls, out.states[:, 0])
    assert encoder(images).states.shape == (2, 1 + 16, encoder.width)


def test_vision_encoder_with_all_patches_kept_in_order_equals_timm_forward():
    encoder = create_vision_encoder("vit_mini", image_size=32).eval()
    images = torch.randn(2, 3, 32, 32)
    keep_all = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(encoder(images, keep_idx=keep_all).states, encoder.vit.forward_features(images))


def test_mlm_masking_statistics():
    pad, cls, mask_id, vocab = 0, 2, 4, 1000
    ids = torch.randint(5, vocab, (4000, 40))
    ids[:, 0] = cls
    ids[:, 30:] = pad
    out = mask_tokens_for_mlm(ids, vocab, mask_id, [pad, cls], generator=torch.Generator().manual_seed(0))
    chosen = out.labels != -100
    eligible = (ids != pad) & (ids != cls)
    assert not chosen[~eligible].any(), "PAD and CLS are never masked"
    rate = chosen.sum().item() / eligible.sum().item()
    assert abs(rate - 0.15) < 0.003
    assert torch.equal(out.labels[chosen], ids[chosen])
    n = chosen.sum().item()
    as_mask = (out.input_ids[chosen] == mask_id).sum().item() / n
    unchanged = (out.input_ids[chosen] == ids[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.01
    # random replacements land on the original id with probability 1/vocab
    assert abs(unchanged - (0.1 + 0.1 / vocab)) < 0.01
    assert abs(1 - as_mask - unchanged - 0.1) < 0.01
    assert torch.equal(out.input_ids[~chosen], ids[~chosen])
