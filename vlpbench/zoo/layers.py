"""Transformer blocks on ``F.scaled_dot_product_attention`` for the text and fusion encoders.

Why our own blocks: in transformers 5.x a BertLayer with cross-attention only builds with
``is_decoder=True``, which makes its self-attention causal, while ALBEF's multimodal encoder is
bidirectional. The blocks below follow BERT's post-LayerNorm layout exactly, so BERT checkpoints
load into them by parameter name (see ``vlpbench.zoo.text.hf_bert_to_vlpbench``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
        self.recorded: list[torch.Tensor] | None = None  # see record_attention

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split_heads(self.query(x)), self._split_heads(self.key(context)), self._split_heads(self.value(context))
        dropout = self.dropout if self.training else 0.0
        if self.recorded is not None:
            y = self._explicit_attention(q, k, v, attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).flatten(2))

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Attention with its probabilities [B, heads, queries, keys] kept in ``recorded`` (Grad-CAM
        reads them and their gradient); the same result as the fused kernel, without dropout."""
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = scores.softmax(dim=-1)
        self.recorded.append(probs)
        return probs @ v


@contextmanager
def record_attention(attention: MultiHeadAttention) -> Iterator[list[torch.Tensor]]:
    """Within the block, ``attention`` computes its probabilities explicitly and appends them (one
    tensor per call) to the yielded list, so that their gradient can be taken (Grad-CAM)."""
    attention.recorded = []
    try:
        yield attention.recorded
    finally:
        attention.recorded = None


class PostNormResidual(nn.Module):
    """A residual branch: BERT's post-LN ``LayerNorm(x + Dropout(f(x)))``, or with ``pre_norm``
    ``x + Dropout(f(LayerNorm(x)))``, which trains from scratch more readily (the stack then
    needs a final LayerNorm). The name stays for checkpoint compatibility."""

    def __init__(self, width: int, dropout: float, eps: float, pre_norm: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(sublayer(self.norm(x)))
        return self.norm(x + self.drop(sublayer(x)))


class TransformerBlock(nn.Module):
    """A bidirectional BERT layer; with ``cross_width`` it also cross-attends to another modality.

    Order as in ALBEF's multimodal encoder: self-attention, cross-attention, feed-forward.
    ``self_attention: false`` gives LightVLP's cross Transformer (Eq. 4: cross-attention, feed-forward).
    """

    def __init__(self, width: int, num_heads: int, ffn_width: int, dropout: float = 0.1,
                 cross_width: int | None = None, eps: float = 1e-12, pre_norm: bool = False,
                 self_attention: bool = True):
        super().__init__()
        self.self_attn = MultiHeadAttention(width, num_heads, dropout=dropout) if self_attention else None
        self.self_attn_post = PostNormResidual(width, dropout, eps, pre_norm) if self_attention else None
        self.cross_attn = MultiHeadAttention(width, num_heads, kv_width=cross_width, dropout=dropout) if cross_width else None
        self.cross_attn_post = PostNormResidual(width, dropout, eps, pre_norm) if cross_width else None
        self.ffn_in = nn.Linear(width, ffn_width)
        self.ffn_out = nn.Linear(ffn_width, width)
        self.ffn_post = PostNormResidual(width, dropout, eps, pre_norm)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, text_only: bool = False) -> torch.Tensor:
        """``text_only`` skips the cross-attention of a fusion block (uni-modal pre-training)."""
        if self.self_attn is not None:
            x = self.self_attn_post(x, lambda h: self.self_attn(h, attn_mask=attn_mask))
        if self.cross_attn is not None and not text_only:
            if context is None:
                raise ValueError("a fusion block needs the other modality's states (context)")
            x = self.cross_attn_post(x, lambda h: self.cross_attn(h, context, attn_mask=context_mask))
        return self.ffn_post(x, lambda h: self.ffn_out(F.gelu(self.ffn_in(h))))


def mean_head_scores(attention: MultiHeadAttention, query_states: torch.Tensor, key_states: torch.Tensor,
                     key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """EPIC Eq. 8: softmax over keys of the head-averaged dot products q_k K_k^T of one query.

    query_states [B, W] (e.g. a [CLS] state), key_states [B, L, W'] as they enter ``attention``;
    key_mask [B, L] (1 = real) keeps padding at zero weight. Returns [B, L].
    """
    q = attention._split_heads(attention.query(query_states[:, None]))   # [B, H, 1, d]
    k = attention._split_heads(attention.key(key_states))                # [B, H, L, d]
    scores = (q @ k.transpose(-1, -2)).mean(dim=1)[:, 0].float()        # [B, L]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool(), float("-inf"))
    return scores.softmax(dim=-1)
