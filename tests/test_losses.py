import math

import pytest
import torch
import torch.nn.functional as F

from vlpbench.losses import (contrastive_loss, distillation_targets, false_negative_count, matching_pairs, mlm_loss,
                             momentum_contrastive_loss, negative_sampling_weights, sample_itm_negatives,
                             sample_negatives)
from vlpbench.momentum import FeatureQueue


def test_contrastive_loss_hand_value():
    # 2 images x 2 texts; positives on the diagonal.
    sim = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    eye = torch.eye(2)
    expected_i2t = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(math.e / (math.e + 1))) / 2
    loss = contrastive_loss(sim, sim.T, eye, eye)
    assert abs(loss.item() - expected_i2t) < 1e-6


def test_distillation_with_alpha_zero_is_the_plain_loss():
    logits = torch.randn(6, 10)
    teacher = torch.randn(6, 10)
    targets = torch.randint(10, (6,))
    plain = F.cross_entropy(logits, targets)
    torch.testing.assert_close(mlm_loss(logits, targets, teacher, alpha=0.0), plain)
    one_hot = F.one_hot(targets, 10).float()
    torch.testing.assert_close(distillation_targets(one_hot, teacher, 0.0), one_hot)


def test_distillation_targets_mix_teacher_softmax():
    one_hot = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0]])  # softmax = [0.5, 0.5]
    torch.testing.assert_close(distillation_targets(one_hot, teacher, 0.4), torch.tensor([[0.8, 0.2]]))


def test_distilled_mlm_gradient_equals_eq7_gradient():
    """(1-a) CE + a KL(q||p): KL differs from CE on q by q's entropy, which has no gradient."""
    logits = torch.randn(5, 7, requires_grad=True)
    teacher, targets, alpha = torch.randn(5, 7), torch.randint(7, (5,)), 0.4
    ours = mlm_loss(logits, targets, teacher, alpha)
    q = F.softmax(teacher, -1)
    eq7 = (1 - alpha) * F.cross_entropy(logits, targets) + alpha * F.kl_div(F.log_softmax(logits, -1), q,
                                                                             reduction="batchmean")
    g1, = torch.autograd.grad(ours, logits)
    g2, = torch.autograd.grad(eq7, logits)
    torch.testing.assert_close(g1, g2)


def test_hard_negatives_never_return_the_positive_and_follow_the_weights():
    sim = torch.tensor([[5.0, 1.0, 2.0, 0.0],
                        [0.0, 5.0, 0.0, 3.0],
                        [1.0, 1.0, 5.0, 1.0],
                        [2.0, 0.0, 0.0, 5.0]])
    weights = negative_sampling_weights(sim, 4, hard=True)
    assert torch.all(weights.diagonal() == 0)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_negatives(weights, gen) for _ in range(20000)])  # [draws, rows]
    assert not (draws == torch.arange(4)).any()
    for row in range(4):
        freq = torch.bincount(draws[:, row], minlength=4).float() / draws.shape[0]
        expected = weights[row] / weights[row].sum()
        assert torch.allclose(freq, expected, atol=0.015), (row, freq, expected)


def test_uniform_negatives_without_hard_mining():
    weights = negative_sampling_weights(None, 3, hard=False)
    assert weights.tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def test_a_share_of_hard_negatives_mixes_the_two_distributions():
    # row 0: softmax over [0, ln 3, 0] is [1/5, 3/5, 1/5]; without the diagonal [0, 3/4, 1/4];
    # uniform is [0, 1/2, 1/2]; half of each: [0, 5/8, 3/8]
    sim = torch.tensor([[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    weights = negative_sampling_weights(sim, 3, hard=0.5)
    row = weights[0] / weights[0].sum()
    assert torch.allclose(row, torch.tensor([0.0, 0.625, 0.375]), atol=1e-6)
    assert torch.equal(negative_sampling_weights(sim, 3, hard=0.0), negative_sampling_weights(None, 3, hard=False))
    with pytest.raises(ValueError, match=r"share of hard negatives must lie in \[0, 1\], got 1.5"):
        negative_sampling_weights(sim, 3, hard=1.5)


def test_hard_negative_share_ramps_linearly_over_the_warmup():
    from vlpbench.methods.albef import ALBEFConfig
    ramp = ALBEFConfig(itm_hard_negative_warmup_steps=200)
    assert [ramp.hard_negative_share(step) for step in (0, 50, 200, 400)] == [0.0, 0.25, 1.0, 1.0]
    assert ALBEFConfig().hard_negative_share(0) == 1.0  # the papers: hard from the first step


def test_hard_negative_weights_survive_softmax_underflow():
    sim = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]])
    weights = negative_sampling_weights(sim, 2, hard=True)
    assert sample_negatives(weights).tolist() == [1, 0]


# ---- false negatives (issue 21.5) on a constructed batch ----

def test_matching_pairs_are_the_same_image_or_an_identical_caption():
    # pairs 0 and 2 show one image; pairs 1 and 3 have the same caption (padding ignored)
    ids = torch.tensor([[1, 5, 6, 0], [1, 7, 0, 0], [1, 8, 9, 2], [1, 7, 0, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    matches = matching_pairs(ids, mask, torch.tensor([10, 11, 10, 12]))
    assert matches.tolist() == [[True, False, True, False], [False, True, False, True],
                                [True, False, True, False], [False, True, False, True]]
    assert false_negative_count(matches).item() == 4.0  # (0, 2), (2, 0), (1, 3), (3, 1)


def test_matching_pairs_are_never_itm_negatives_and_share_the_itc_target():
    matches = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    sim = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # hard sampling would pick them
    for _ in range(20):
        neg_image, neg_text = sample_itm_negatives(sim, sim, 3, True, "cpu", matches)
        assert neg_image.tolist()[:2] == [2, 2] and neg_text.tolist()[:2] == [2, 2]
    feats = F.normalize(torch.randn(3, 4), dim=1)
    image_queue, text_queue = FeatureQueue(3, 4), FeatureQueue(3, 4)
    image_q, text_q = image_queue.features.clone(), text_queue.features.clone()  # before enqueueing
    loss, *_ = momentum_contrastive_loss(feats, feats, feats, feats, image_queue, text_queue, temp=1.0,
                                         matches=matches)
    targets = torch.cat([matches.float() / matches.sum(1, keepdim=True), torch.zeros(3, 3)], dim=1)

    def cross_entropy(sim):
        return -(targets * sim.log_softmax(1)).sum(1).mean()
    expected = 0.5 * (cross_entropy(feats @ torch.cat([feats, text_q]).T) +
                      cross_entropy(feats @ torch.cat([feats, image_q]).T))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
