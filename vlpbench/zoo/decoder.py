"""The lightweight MAE-style decoder shared by the masked-autoencoder methods (LightVLP, VLMAE).

As facebookresearch/mae's ``forward_decoder``: project the encoder's kept states to the decoder
width, put a learnable mask token at every removed position, restore the original order, add
learnable position embeddings, run a few Transformer blocks and predict each position's target
(pixels of a patch, or a token id). VLMAE appends the text states as extra tokens (``context``)
that the image positions attend to; only the restored positions are predicted.
"""

from __future__ import annotations

import torch
from torch import nn

from vlpbench.zoo.layers import TransformerBlock, padding_mask_to_attn_mask


def restore_positions(kept: torch.Tensor, restore_idx: torch.Tensor, fill: torch.Tensor,
                      kept_valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K, D] states in keep order -> [B, N, D] in position order, ``fill`` [D] at removed positions.

    ``restore_idx`` un-shuffles a length-N sequence whose first K entries are the kept ones;
    ``kept_valid`` [B, K] marks row padding among them (rows that kept fewer), which also gets ``fill``.
    """
    batch, num_kept, width = kept.shape
    fill = fill.reshape(1, 1, width).to(kept.dtype).expand(batch, 1, width)
    if kept_valid is not None:
        kept = torch.where(kept_valid[..., None], kept, fill)
    full = torch.cat([kept, fill.expand(batch, restore_idx.shape[1] - num_kept, width)], dim=1)
    return torch.gather(full, 1, restore_idx[..., None].expand(-1, -1, width))


class MaskedDecoder(nn.Module):
    """``depth`` pre-LN Transformer blocks of ``width`` over the restored sequence.

    ``prefix_tokens``: leading kept tokens that are not part of the masked sequence (a ViT's CLS);
    ``num_positions``: the longest masked sequence (patches, or text positions including [CLS]).
    """

    def __init__(self, in_width: int, width: int, depth: int, num_heads: int, num_positions: int, out_dim: int,
                 prefix_tokens: int = 0, context_width: int | None = None):
        super().__init__()
        self.prefix_tokens = prefix_tokens
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, prefix_tokens + num_positions, width))
        self.context_embed = nn.Linear(context_width, width) if context_width else None
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, 4 * width, dropout=0.0, eps=1e-6, pre_norm=True)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, kept: torch.Tensor, restore_idx: torch.Tensor, kept_valid: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions [B, N, out_dim] for every position of the masked sequence, in position order,
        or [M, out_dim] for the M positions where ``positions`` [B, N] is true (a large output
        layer, e.g. a vocabulary, then runs on those only).

        kept: [B, prefix + K, in_width] encoder output, prefix tokens first; padding_mask: [B, N]
        (1 = real position) for sequences with padding; context: [B, C, context_width] extra tokens
        with context_mask [B, C].
        """
        x = self.embed(kept)
        prefix, body = x[:, :self.prefix_tokens], x[:, self.prefix_tokens:]
        x = torch.cat([prefix, restore_positions(body, restore_idx, self.mask_token, kept_valid)], dim=1)
        length = x.shape[1]
        x = x + self.pos_embed[:, :length]
        attn_mask = self._attention_mask(x, padding_mask, context, context_mask)
        if context is not None:
            x = torch.cat([x, self.context_embed(context)], dim=1)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        x = x[:, self.prefix_tokens:length]
        return self.head(self.norm(x if positions is None else x[positions]))

    def _attention_mask(self, x: torch.Tensor, padding_mask: torch.Tensor | None, context: torch.Tensor | None,
                        context_mask: torch.Tensor | None) -> torch.Tensor | None:
        if padding_mask is None and context_mask is None:
            return None
        batch, length = x.shape[:2]
        own = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        if padding_mask is not None:
            own[:, self.prefix_tokens:] = padding_mask.bool()
        parts = [own]
        if context is not None:
            parts.append(torch.ones(context.shape[:2], dtype=torch.bool, device=x.device) if context_mask is None
                         else context_mask.bool())
        return padding_mask_to_attn_mask(torch.cat(parts, dim=1))
