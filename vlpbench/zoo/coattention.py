"""Co-attention fusion (METER; ViLTA Sec. 3.1): two towers, one per modality. In every layer each
tower runs self-attention, cross-attention to the other tower's states of the previous layer,
and a feed-forward block, so text attends to the image and the image attends to the text."""

from __future__ import annotations

import torch
from torch import nn

from vlpbench.zoo.layers import TransformerBlock, mean_head_scores, padding_mask_to_attn_mask


class CoAttentionFusion(nn.Module):
    def __init__(self, text_width: int, image_width: int, layers: int, num_heads: int, dropout: float = 0.0,
                 eps: float = 1e-12, pre_norm: bool = False):
        super().__init__()

        def tower(width: int, other: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(width, num_heads, 4 * width, dropout, cross_width=other, eps=eps,
                                                  pre_norm=pre_norm) for _ in range(layers))

        self.text_layers, self.image_layers = tower(text_width, image_width), tower(image_width, text_width)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                image_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused (text states, image states); masks are [B, L] with 1 = a real token."""
        to_text, to_image = padding_mask_to_attn_mask(text_mask), padding_mask_to_attn_mask(image_mask)
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            text, image = (text_layer(text, attn_mask=to_text, context=image, context_mask=to_image),
                           image_layer(image, attn_mask=to_image, context=text, context_mask=to_text))
        return text, image

    def image_cls_saliency(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                           layer: int = -2) -> torch.Tensor:
        """[B, L]: the image [CLS] query over the text keys in the image tower's cross-attention of
        layer ``layer`` (head-averaged, EPIC Eq. 8)."""
        index = layer % len(self.image_layers)
        to_text = padding_mask_to_attn_mask(text_mask)
        for text_layer, image_layer in zip(self.text_layers[:index], self.image_layers[:index]):
            text, image = (text_layer(text, attn_mask=to_text, context=image),
                           image_layer(image, context=text, context_mask=to_text))
        block = self.image_layers[index]
        image = block.self_attn_post(image, lambda h: block.self_attn(h))
        query = block.cross_attn_post.norm(image) if block.cross_attn_post.pre_norm else image
        return mean_head_scores(block.cross_attn, query[:, 0], text, text_mask)
