import torch
from conftest import train_on_one_batch

from vlpbench.config import config_from_dict
from vlpbench.masking import random_patch_masking
from vlpbench.method import Batch, Progress
from vlpbench.pipeline import build_method
from vlpbench.zoo import train_wordpiece

PROGRESS = Progress(step=5, steps_per_epoch=10)
MINI = dict(name="vlmae", embed_dim=32, queue_size=16, decoder_layers=1, decoder_width=32, decoder_heads=4)


def make(tiny_config, **method):
    tiny_config["method"] = {**MINI, **method}
    cfg = config_from_dict(tiny_config)
    tok = train_wordpiece(["a red circle on the left", "a big blue box at the top right"] * 10, vocab_size=60)
    return build_method(cfg, tok), tok


def batch(tok, regions=None, n=4):
    ids, mask = tok(["a red circle", "a blue box at the top right", "a big circle on the left", "a box"][:n], 16)
    regions = torch.ones(n, 32, 32, dtype=torch.bool) if regions is None else regions
    return Batch(torch.randn(n, 3, 32, 32), ids, mask, regions)


def test_all_five_losses_sum_and_the_image_encoder_sees_half_the_patches(tiny_config):
    method, tok = make(tiny_config)
    seen = []
    method.visual_encoder.vit.blocks.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    out = method(batch(tok), PROGRESS)
    torch.testing.assert_close(out["loss"], sum(out[k] for k in ("loss_rmim", "loss_ifr", "loss_itc", "loss_itm",
                                                                 "loss_mlm")))
    assert seen == [1 + 8], "the online image encoder runs once, on [CLS] + 8 of 16 patches"


def test_rmim_ignores_patches_outside_the_region_and_visible_patches(tiny_config):
    method, tok = make(tiny_config)
    regions = torch.zeros(4, 32, 32, dtype=torch.bool)
    regions[:, :16, :16] = True  # the top-left 2x2 of the 4x4 patch grid
    b = batch(tok, regions)
    torch.manual_seed(0)
    patches = random_patch_masking(4, 16, 0.5)
    image = method.visual_encoder(b.images, patches.keep_idx)
    text = method.encode_text(b.input_ids, b.attention_mask)
    loss = method.rmim_loss(image, text, b, patches)
    changed = b.images.clone()
    changed[:, :, 16:, :] += 3.0  # the bottom half is outside the region
    visible = ~patches.mask.view(4, 4, 4)
    pixel_visible = visible.repeat_interleave(8, 1).repeat_interleave(8, 2)
    changed[:, :, :16, :16] += 3.0 * pixel_visible[:, None, :16, :16]  # visible patches inside the region
    altered = Batch(changed, b.input_ids, b.attention_mask, regions)
    torch.testing.assert_close(method.rmim_loss(image, text, altered, patches), loss)
    whole, _ = make(tiny_config, mim="image")
    whole.load_state_dict(method.state_dict())
    assert not torch.allclose(whole.rmim_loss(image, text, altered, patches), whole.rmim_loss(image, text, b, patches))


def test_ifr_target_carries_no_gradient(tiny_config):
    method, tok = make(tiny_config, mim="none")
    out = method(batch(tok), PROGRESS)
    out["loss_ifr"].backward()
    assert method.visual_encoder.vit.cls_token.grad is not None
    assert all(p.grad is None for p in method.teacher.parameters())
    assert out["loss_ifr"].grad_fn is not None


def test_table6_baseline_has_neither_reconstruction_nor_ifr(tiny_config):
    method, tok = make(tiny_config, mim="none", ifr=False)
    out = method(batch(tok), PROGRESS)
    assert set(k for k in out if k.startswith("loss_")) == {"loss_itc", "loss_itm", "loss_mlm"}
    assert not hasattr(method, "image_decoder")


def test_a_few_steps_reduce_the_loss(tiny_config):
    method, tok = make(tiny_config)
    losses = train_on_one_batch(method, batch(tok), PROGRESS)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_mlm_distillation_mixes_in_the_momentum_model_as_albef(tiny_config):
    plain, tok = make(tiny_config)
    distilled, _ = make(tiny_config, distill_mlm=True)
    distilled.load_state_dict(plain.state_dict())
    b = batch(tok)
    image = plain.visual_encoder(b.images)
    full = plain.teacher["visual_encoder"](b.images)
    torch.manual_seed(0)
    expected = plain.mlm_loss(image, full, b, alpha=0.4)
    torch.manual_seed(0)
    assert torch.equal(distilled.mlm_loss(image, full, b, alpha=0.0), expected)  # alpha 0: the one-hot loss
    torch.manual_seed(0)
    mixed = distilled.mlm_loss(image, full, b, alpha=0.4)
    assert not torch.isclose(mixed, expected)
    mixed.backward()
    assert all(p.grad is None for p in distilled.teacher.parameters())
