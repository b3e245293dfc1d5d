"""Grad-CAM on a method's text-to-image cross-attention (ALBEF Sec. 6.4, after Selvaraju et al.):
where in the image the matching score's evidence lies, and the box scoring of weakly-supervised
grounding built on it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlpbench.config import ConfigError
from vlpbench.method import VLPMethod
from vlpbench.zoo.layers import record_attention


def cross_attention_gradcam(method: VLPMethod, images: torch.Tensor, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor, layer: int, key: str = "gradcam_layer") -> torch.Tensor:
    """[B, grid, grid] heat maps: the attention probabilities of cross-attention layer ``layer``
    times their positive gradient of the matching score (``match_score``), averaged over heads and
    the caption's real tokens; the image [CLS] key is dropped, the patches keep their grid order."""
    attentions = method.cross_attentions()
    if not -len(attentions) <= layer < len(attentions):
        raise ConfigError(f"{key}: {layer}, but {method.name!r} has {len(attentions)} text-to-image cross-attention "
                          f"layers (0..{len(attentions) - 1})")
    with torch.enable_grad(), record_attention(attentions[layer]) as recorded:
        image = method.encode_image(images)
        text = method.encode_text(input_ids, attention_mask)
        score = method.match_score(text, attention_mask, image.states).sum()
        # a layer the score never reads may not even run (LightVLP's last text-side layer)
        grad = torch.autograd.grad(score, recorded[-1], allow_unused=True)[0] if recorded else None
    if grad is None:
        raise ConfigError(f"{key}: cross-attention layer {layer} of {method.name!r} does not influence its matching "
                          "score (its output reaches no later layer the score reads); choose an earlier layer")
    probs = recorded[-1].detach()  # [B, heads, text tokens, 1 + patches]
    cam = (probs * grad.clamp(min=0))[..., 1:].mean(dim=1)  # [B, tokens, patches]
    real = attention_mask[:, :, None].to(cam.dtype)
    cam = (cam * real).sum(dim=1) / real.sum(dim=1)
    grid = math.isqrt(cam.shape[-1])
    return cam.view(-1, grid, grid)


def upsample(heat_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A [grid, grid] map resized (bilinear) to an image's [height, width] pixels."""
    return F.interpolate(heat_map[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def box_scores(heat_map: torch.Tensor, boxes: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """ALBEF's proposal score: the heat map summed over each [x, y, w, h] pixel box, divided by
    the box's area ** alpha; pixels ``int(x) .. int(x + w) - 1`` (clipped to the map) count."""
    height, width = heat_map.shape
    integral = F.pad(heat_map.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    x0 = boxes[:, 0].long().clamp(0, width)
    y0 = boxes[:, 1].long().clamp(0, height)
    x1 = (boxes[:, 0] + boxes[:, 2]).long().clamp(0, width)
    y1 = (boxes[:, 1] + boxes[:, 3]).long().clamp(0, height)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = (boxes[:, 2] * boxes[:, 3]).double().clamp_min(1e-12)
    return (total / area ** alpha).float()


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each [x, y, w, h] box of ``boxes`` [N, 4] with ``box`` [4]."""
    left = torch.maximum(boxes[:, 0], box[0])
    top = torch.maximum(boxes[:, 1], box[1])
    right = torch.minimum(boxes[:, 0] + boxes[:, 2], box[0] + box[2])
    bottom = torch.minimum(boxes[:, 1] + boxes[:, 3], box[1] + box[3])
    inter = (right - left).clamp_min(0) * (bottom - top).clamp_min(0)
    union = boxes[:, 2] * boxes[:, 3] + box[2] * box[3] - inter
    return inter / union.clamp_min(1e-12)
