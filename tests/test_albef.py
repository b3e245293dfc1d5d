import pytest
import torch

from vlpbench.config import config_from_dict
from vlpbench.method import Batch, Progress
from vlpbench.pipeline import build_method
from vlpbench.zoo import train_wordpiece


def make(tiny_config, **method):
    tiny_config["method"].update(method)
    cfg = config_from_dict(tiny_config)
    tok = train_wordpiece(["a red circle on the left", "a big blue box at the top right"] * 10, vocab_size=60)
    return cfg, build_method(cfg, tok), tok


def batch(tok, n=4):
    ids, mask = tok(["a red circle", "a blue box at the top", "a big circle on the left", "a box"][:n], 16)
    return Batch(torch.randn(n, 3, 32, 32), ids, mask)


PROGRESS = Progress(step=5, steps_per_epoch=10)


def test_full_albef_computes_all_losses_and_backpropagates(tiny_config):
    _, method, tok = make(tiny_config)
    out = method(batch(tok), PROGRESS)
    assert {"loss", "loss_itc", "loss_itm", "loss_mlm"} <= set(out)
    assert all(torch.isfinite(out[k]) for k in ("loss_itc", "loss_itm", "loss_mlm"))
    torch.testing.assert_close(out["loss"], out["loss_itc"] + out["loss_itm"] + out["loss_mlm"])
    out["loss"].backward()
    assert method.vision_proj.weight.grad is not None and method.itm_head.weight.grad is not None
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.image_queue.ptr.item() == 4, "the batch's momentum features were enqueued"


def test_table1_row1_has_no_itc_and_no_teacher(tiny_config):
    tiny_config["eval"]["retrieval"]["k_test"] = "all"
    _, method, tok = make(tiny_config, itc=False, itm_hard_negatives=False, distill_itc=False, distill_mlm=False)
    out = method(batch(tok), PROGRESS)
    assert "loss_itc" not in out and not hasattr(method, "teacher") and not hasattr(method, "image_queue")


def test_alpha_ramps_over_the_first_epoch(tiny_config):
    _, method, _ = make(tiny_config)  # alpha 0.4; arguments: step, steps per epoch
    assert method.config.alpha_at(0, 10) == 0.0
    assert abs(method.config.alpha_at(5, 10) - 0.2) < 1e-12
    assert method.config.alpha_at(15, 10) == 0.4
    _, method, _ = make(tiny_config, alpha_warmup_steps=2)
    assert method.config.alpha_at(1, 10) == pytest.approx(0.2)


def test_momentum_distillation_with_alpha_zero_equals_plain_losses(tiny_config):
    _, with_mod, tok = make(tiny_config, alpha=0.0)
    _, plain, _ = make(tiny_config, distill_itc=False, distill_mlm=False)
    plain.load_state_dict(with_mod.state_dict())
    b = batch(tok)
    torch.manual_seed(3)
    a = with_mod(b, PROGRESS)
    torch.manual_seed(3)
    p = plain(b, PROGRESS)
    for key in ("loss_itc", "loss_itm", "loss_mlm"):
        torch.testing.assert_close(a[key], p[key])


def test_temperature_is_clamped(tiny_config):
    _, method, tok = make(tiny_config)
    with torch.no_grad():
        method.temp.fill_(5.0)
    method(batch(tok), PROGRESS)
    assert method.temp.item() == 0.5


def test_momentum_teacher_follows_the_student_after_a_step(tiny_config):
    _, method, _ = make(tiny_config, momentum=0.5)
    with torch.no_grad():
        method.vision_proj.weight.fill_(1.0)
        method.teacher["vision_proj"].weight.fill_(0.0)
    method.after_optimizer_step()
    assert torch.allclose(method.teacher["vision_proj"].weight, torch.tensor(0.5))
