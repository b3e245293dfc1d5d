"""Losses shared by the methods: contrastive (ITC), matching (ITM) negatives, MLM and distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``H(targets, softmax(logits))``; targets are rows of probabilities."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def distillation_targets(one_hot: torch.Tensor, teacher_logits: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Momentum-distillation targets ``(1 - alpha) * y + alpha * softmax(teacher)``.

    ``H((1-a)y + a q, p) = (1-a) H(y, p) + a KL(q || p) + a H(q)``: the last term has no gradient
    with respect to the student, so training on these targets optimises ALBEF's Eq. 6 / 7.
    """
    if teacher_logits is None or alpha == 0.0:
        return one_hot
    return (1.0 - alpha) * one_hot + alpha * F.softmax(teacher_logits, dim=-1)


def contrastive_loss(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, targets_i2t: torch.Tensor,
                     targets_t2i: torch.Tensor) -> torch.Tensor:
    """ALBEF Eq. 2: the mean of the image-to-text and text-to-image cross-entropies."""
    return 0.5 * (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i))


def negative_sampling_weights(sim: torch.Tensor | None, batch: int, hard: bool,
                              device: torch.device | str | None = None) -> torch.Tensor:
    """In-batch sampling weights for ITM negatives; the positive (diagonal) always has weight 0.

    ``hard``: proportional to ``softmax(sim)`` (ALBEF's contrastive hard negatives); otherwise
    uniform over the other pairs. A small floor keeps every row samplable when softmax underflows.
    """
    if hard:
        weights = F.softmax(sim.float(), dim=1) + 1e-9
    else:
        weights = torch.ones(batch, batch, device=device)
    return weights.fill_diagonal_(0.0)


def sample_negatives(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row drawn from the row's weights (vectorised multinomial)."""
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             alpha: float = 0.0) -> torch.Tensor:
    """ALBEF Eq. 3 / 7, given the logits [M, V] of the M masked positions only and their targets [M]."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return soft_cross_entropy(logits, distillation_targets(one_hot, teacher_logits, alpha))
