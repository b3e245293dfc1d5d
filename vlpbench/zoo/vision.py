"""Vision Transformers from timm, with MAE-style removal of masked patches before the blocks."""

from __future__ import annotations

from typing import NamedTuple

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from vlpbench.zoo.presets import VISION_PRESETS
from vlpbench.zoo.weights import PretrainedWeightsError, load_state_dict_from, load_with_report


class VisionOutput(NamedTuple):
    states: torch.Tensor  # [B, 1 + kept patches, width], CLS first
    cls: torch.Tensor     # [B, width]


class VisionEncoder(nn.Module):
    """A timm ``VisionTransformer`` run so that only the kept patches enter the blocks."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        if not vit.has_class_token or vit.num_prefix_tokens != 1 or vit.no_embed_class:
            raise ValueError("VisionEncoder needs a ViT with one class token that has its own position embedding")
        self.vit = vit
        self.width = vit.embed_dim
        self.num_patches = vit.patch_embed.num_patches

    def forward(self, images: torch.Tensor, keep_idx: torch.Tensor | None = None) -> VisionOutput:
        """``keep_idx`` [B, K] selects the patches to encode (masked ones never reach the blocks)."""
        vit = self.vit
        patches = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        if keep_idx is not None:
            patches = torch.gather(patches, 1, keep_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        x = vit.norm_pre(vit.pos_drop(torch.cat([cls, patches], dim=1)))
        x = vit.norm(vit.blocks(x))
        return VisionOutput(states=x, cls=x[:, 0])

    @property
    def image_size(self) -> int:
        return self.vit.patch_embed.img_size[0]

    @property
    def grid_size(self) -> int:
        return self.vit.patch_embed.grid_size[0]

    def set_image_size(self, size: int) -> None:
        """Take ``size`` x ``size`` images from now on: the patch-position embeddings are resampled
        (bicubic) to the new grid, the [CLS] embedding kept, as for ALBEF's fine-tuning at 384 px
        after pre-training at 256. The same size changes nothing."""
        if size % self.vit.patch_embed.patch_size[0]:
            raise ValueError(f"image size {size} is not a multiple of the patch size "
                             f"{self.vit.patch_embed.patch_size[0]}")
        if size != self.image_size:
            self.vit.set_input_size(img_size=(size, size))
            self.num_patches = self.vit.patch_embed.num_patches


def create_vision_encoder(preset: str, pretrained: str | None = None, image_size: int | None = None,
                          **overrides) -> VisionEncoder:
    """Build a ViT from a named preset with random weights; ``pretrained`` loads a local file,
    directory or hub name (position embeddings are resampled to ``image_size``); ``load_report``
    then says what the file filled (``vlpbench.zoo.weights``)."""
    if preset not in VISION_PRESETS:
        raise KeyError(f"unknown vision preset {preset!r}; known: {sorted(VISION_PRESETS)}")
    p = VISION_PRESETS[preset]
    kwargs = {**p.overrides, **overrides, "img_size": image_size or p.image_size, "num_classes": 0}
    vit = timm.create_model(p.arch, pretrained=False, **kwargs)
    encoder = VisionEncoder(vit)
    encoder.load_report = None
    if pretrained:
        state = checkpoint_filter_fn(load_state_dict_from(pretrained, kind="vision"), vit)
        if not any(k in vit.state_dict() for k in state):
            raise PretrainedWeightsError(f"pretrained vision weights {pretrained!r} contain no ViT parameters we "
                                         "recognise")
        encoder.load_report = load_with_report(vit, state, pretrained, "vision")
    return encoder
