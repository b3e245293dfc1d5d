"""Losses shared by the methods: contrastive (ITC), matching (ITM) negatives, MLM, distillation and
masked-patch reconstruction (MAE / LightVLP MIR / VLMAE RMIM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlpbench.momentum import FeatureQueue
from vlpbench.streams import stream


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


def negative_sampling_weights(sim: torch.Tensor | None, batch: int, hard: float,
                              device: torch.device | str | None = None,
                              positives: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch sampling weights for ITM negatives; the positive (diagonal) always has weight 0.

    ``hard`` is the share of hard negatives, in [0, 1] (a bool reads as 0 or 1): 1 draws from
    ``softmax(sim)`` (ALBEF's contrastive hard negatives), 0 uniformly over the other pairs, and a
    share in between from their mixture (each negative hard with that probability). A small floor
    keeps every row samplable when softmax underflows. ``positives`` [B, B] (pairs of the same
    image) also get weight 0, except in a row where nothing else is left, which then falls back to
    the diagonal's complement.
    """
    hard = float(hard)
    if not 0.0 <= hard <= 1.0:
        raise ValueError(f"hard: the share of hard negatives must lie in [0, 1], got {hard}")
    if hard == 0.0:
        weights = torch.ones(batch, batch, device=device).fill_diagonal_(0.0)
    else:
        weights = (F.softmax(sim.float(), dim=1) + 1e-9).fill_diagonal_(0.0)
        if hard < 1.0:  # each row a distribution first, then the two mixed; off the diagonal, uniform is 1/(B-1)
            weights = hard * weights / weights.sum(1, keepdim=True) + (1.0 - hard) / (batch - 1)
            weights.fill_diagonal_(0.0)
    if positives is None:
        return weights
    kept = weights.masked_fill(positives, 0.0)
    return torch.where(kept.sum(1, keepdim=True) > 0, kept, weights)


@torch.no_grad()
def matching_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, B] True where pair j matches pair i: the same image or scene (``image_ids``), or an identical
    caption (then pair i's caption describes pair j's image too); the diagonal is True."""
    tokens = input_ids * attention_mask
    matches = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
    if image_ids is not None:
        matches |= image_ids[:, None] == image_ids[None, :]
    return matches


def false_negative_count(matches: torch.Tensor) -> torch.Tensor:
    """How many ordered pairs of different batch items match (logged as ``false_negative_pairs``)."""
    return (matches.sum() - len(matches)).float()


def sample_negatives(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row drawn from the row's weights (vectorised multinomial)."""
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def momentum_contrastive_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, image_feat_m: torch.Tensor,
                              text_feat_m: torch.Tensor, image_queue: FeatureQueue, text_queue: FeatureQueue,
                              temp: torch.Tensor | float, alpha: float = 0.0, distill: bool = False,
                              matches: torch.Tensor | None = None):
    """ITC against the momentum features of the batch and the queues (ALBEF Eq. 1, 2, 6; LightVLP
    Eq. 3, 9; VLMAE Eq. 3, 4), then the momentum features are enqueued. Only the in-batch diagonal
    is positive, or with ``matches`` [B, B] (``matching_pairs``) every matching in-batch pair, the
    target mass shared equally among them; with ``distill`` the targets mix in the momentum
    similarities (weight ``alpha``).

    Returns the loss and the student's similarities [B, B + queue] (the first B columns are the
    batch), from which ITM samples its hard negatives.
    """
    with torch.no_grad():
        image_feat_all = torch.cat([image_feat_m, image_queue.features])
        text_feat_all = torch.cat([text_feat_m, text_queue.features])
        one_hot = torch.eye(len(image_feat), image_feat_all.shape[0], device=image_feat.device)
        if matches is not None:
            one_hot[:, :len(image_feat)] = matches.float() / matches.sum(1, keepdim=True)
        teacher_i2t = teacher_t2i = None
        if distill:
            teacher_i2t = image_feat_m @ text_feat_all.T / temp
            teacher_t2i = text_feat_m @ image_feat_all.T / temp
    sim_i2t = image_feat @ text_feat_all.T / temp
    sim_t2i = text_feat @ image_feat_all.T / temp
    loss = contrastive_loss(sim_i2t, sim_t2i, distillation_targets(one_hot, teacher_i2t, alpha),
                            distillation_targets(one_hot, teacher_t2i, alpha))
    image_queue.enqueue(image_feat_m)
    text_queue.enqueue(text_feat_m)
    return loss, sim_i2t, sim_t2i


@torch.no_grad()
def sample_itm_negatives(sim_i2t: torch.Tensor | None, sim_t2i: torch.Tensor | None, batch: int, hard: float,
                         device: torch.device | str,
                         positives: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each pair, a negative image for its text and a negative text for its image (ALBEF Sec.
    3.3, LightVLP Sec. 3.4): a share ``hard`` of them from the in-batch contrastive similarities,
    the rest uniform (``negative_sampling_weights``); never a pair marked in ``positives`` [B, B]."""
    def draw(sim, purpose):
        return sample_negatives(negative_sampling_weights(sim[:, :batch] if hard else None, batch, hard, device,
                                                          positives), stream(purpose, device))
    return draw(sim_t2i, "itm_negative_images"), draw(sim_i2t, "itm_negative_texts")


def multi_positive_contrastive_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, positives: torch.Tensor,
                                    temp: torch.Tensor | float) -> torch.Tensor:
    """In-batch ITC where every pair in ``positives`` [B, B] (image i, text j: the same image) is a
    positive with probability 1 / #positives of its row (ALBEF Sec. 5, retrieval fine-tuning)."""
    sim = image_feat @ text_feat.T / temp
    targets = positives.float()
    return contrastive_loss(sim, sim.T, targets / targets.sum(1, keepdim=True),
                            targets.T / targets.T.sum(1, keepdim=True))


def itm_pairs(text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor,
              neg_image: torch.Tensor, neg_text: torch.Tensor):
    """The 3B ITM pairs in one batch: the B positives, each text with its negative image, each image
    with its negative text; returns (texts, masks, images, labels), labels 1 for the positives."""
    bs = len(text_states)
    texts = torch.cat([text_states, text_states, text_states[neg_text]])
    masks = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
    images = torch.cat([image_states, image_states[neg_image], image_states])
    labels = torch.cat([torch.ones(bs), torch.zeros(2 * bs)]).long().to(text_states.device)
    return texts, masks, images, labels


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             alpha: float = 0.0) -> torch.Tensor:
    """ALBEF Eq. 3 / 7, given the logits [M, V] of the M masked positions only and their targets [M]."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return soft_cross_entropy(logits, distillation_targets(one_hot, teacher_logits, alpha))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, patch_size**2 * C], patches in row-major order (a ViT's token order)."""
    batch, channels, height, width = images.shape
    h, w = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, h, patch_size, w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, h * w, patch_size * patch_size * channels)


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                     norm_pix: bool = False) -> torch.Tensor:
    """Mean squared error per patch, averaged over the patches where ``weight`` [B, N] is true.

    LightVLP Eq. 7 / MAE: ``weight`` = the masked patches; VLMAE Eq. 1 (RMIM): masked patches inside
    the caption's region. ``norm_pix``: the target is each patch normalised by its own mean and
    variance (MAE's variant). Zero (with a graph) when no patch is selected.
    """
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
    weight = weight.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)
