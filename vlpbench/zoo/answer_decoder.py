"""ALBEF's answer decoder for VQA (Sec. 5, Fig. 3a): BERT blocks with causal self-attention that
cross-attend to the fused image-question states and predict the answer token by token, from
[CLS] (start of sequence) to [SEP] (end). It starts from the pre-trained fusion blocks, word
embeddings and MLM head wherever their shapes fit (``init_from``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlpbench.zoo.layers import TransformerBlock
from vlpbench.zoo.text import MLMHead, TextEmbeddings, TextPreset


class AnswerDecoder(nn.Module):
    def __init__(self, preset: TextPreset, layers: int, context_width: int):
        super().__init__()
        p = preset
        self.embeddings = TextEmbeddings(p)
        self.blocks = nn.ModuleList(
            TransformerBlock(p.width, p.num_heads, p.ffn_width, p.dropout, cross_width=context_width,
                             eps=p.layer_norm_eps, pre_norm=p.pre_norm) for _ in range(layers))
        self.final_norm = nn.LayerNorm(p.width, eps=p.layer_norm_eps) if p.pre_norm else nn.Identity()
        self.head = MLMHead(p)

    def init_from(self, embeddings: nn.Module, head: nn.Module, blocks: nn.ModuleList) -> tuple[int, int]:
        """Copy every tensor whose name and shape match from the pre-trained word/position
        embeddings, MLM head and fusion ``blocks`` (the i-th decoder block from the i-th block);
        returns (tensors copied, tensors in the decoder). The rest keeps its random initialisation."""
        copied = 0
        for own, source in [(self.embeddings, embeddings), (self.head, head), *zip(self.blocks, blocks)]:
            theirs = source.state_dict()
            fitting = {k: v for k, v in theirs.items() if k in own.state_dict() and own.state_dict()[k].shape == v.shape}
            own.load_state_dict(fitting, strict=False)
            copied += len(fitting)
        return copied, len(self.state_dict())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, vocab]: at position t, the distribution of token t + 1."""
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        self_mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        to_context = context_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids)
        for block in self.blocks:
            x = block(x, attn_mask=self_mask, context=context, context_mask=to_context)
        return self.head(self.final_norm(x), self.embeddings.word.weight)

    def token_log_likelihoods(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: torch.Tensor,
                              context_mask: torch.Tensor) -> torch.Tensor:
        """[B, L - 1]: log p(token t | tokens < t) for t = 1 .. L-1, zero at padding."""
        logits = self(input_ids, attention_mask, context, context_mask)[:, :-1].float()
        log_p = F.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return log_p * attention_mask[:, 1:]

    def first_token_log_probs(self, start_id: int, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """[B, vocab]: the distribution of the first answer token after [CLS]."""
        start = torch.full((context.shape[0], 1), start_id, dtype=torch.long, device=context.device)
        logits = self(start, torch.ones_like(start), context, context_mask)[:, 0].float()
        return F.log_softmax(logits, dim=-1)


def rank_candidates(first_token_log_probs: torch.Tensor, k: int, sequence_scores) -> torch.Tensor:
    """ALBEF's answer ranking: keep each question's ``k`` candidates whose first token is most
    likely, score those by their full-sequence log-likelihood and return the best candidate's index.

    first_token_log_probs: [Q, A] log p(first token of candidate a | question q);
    sequence_scores(question_idx [N], candidate_idx [N]) -> [N] full-sequence log-likelihoods.
    """
    top = first_token_log_probs.topk(min(k, first_token_log_probs.shape[1]), dim=1).indices  # [Q, k]
    questions = torch.arange(top.shape[0], device=top.device).repeat_interleave(top.shape[1])
    scores = sequence_scores(questions, top.reshape(-1)).view_as(top)
    return top.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
