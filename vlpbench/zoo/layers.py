"""Transformer blocks on ``F.scaled_dot_product_attention`` for the text and fusion encoders.

Why our own blocks: in transformers 5.x a BertLayer with cross-attention only builds with
``is_decoder=True``, which makes its self-attention causal, while ALBEF's multimodal encoder is
bidirectional. The blocks below follow BERT's post-LayerNorm layout exactly, so BERT checkpoints
load into them by parameter name (see ``vlpbench.zoo.text.hf_bert_to_vlpbench``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padding_mask_to_attn_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] with 1 = real token  ->  boolean [B, 1, 1, L] with True = may be attended."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query/key/value projections (BERT layout).

    ``kv_width`` differs from ``width`` for cross-attention to another modality.
    """

    def __init__(self, width: int, num_heads: int, kv_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        kv_width = kv_width or width
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)
        self.out = nn.Linear(width, width)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split_heads(self.query(x)), self._split_heads(self.key(context)), self._split_heads(self.value(context))
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).flatten(2))


class PostNormResidual(nn.Module):
    """BERT's ``LayerNorm(x + Dropout(sublayer(x)))``."""

    def __init__(self, width: int, dropout: float, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(update))


class TransformerBlock(nn.Module):
    """A bidirectional BERT layer; with ``cross_width`` it also cross-attends to another modality.

    Order as in ALBEF's multimodal encoder: self-attention, cross-attention, feed-forward.
    """

    def __init__(self, width: int, num_heads: int, ffn_width: int, dropout: float = 0.1,
                 cross_width: int | None = None, eps: float = 1e-12):
        super().__init__()
        self.self_attn = MultiHeadAttention(width, num_heads, dropout=dropout)
        self.self_attn_post = PostNormResidual(width, dropout, eps)
        self.cross_attn = MultiHeadAttention(width, num_heads, kv_width=cross_width, dropout=dropout) if cross_width else None
        self.cross_attn_post = PostNormResidual(width, dropout, eps) if cross_width else None
        self.ffn_in = nn.Linear(width, ffn_width)
        self.ffn_out = nn.Linear(ffn_width, width)
        self.ffn_post = PostNormResidual(width, dropout, eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.self_attn_post(x, self.self_attn(x, attn_mask=attn_mask))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("a fusion block needs the other modality's states (context)")
            x = self.cross_attn_post(x, self.cross_attn(x, context, attn_mask=context_mask))
        return self.ffn_post(x, self.ffn_out(F.gelu(self.ffn_in(x))))
