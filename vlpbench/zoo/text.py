"""BERT-family text encoders split into text-only layers and fusion layers (ALBEF, Sec. 3.1).

The first ``text_layers`` blocks encode text alone; the last ``fusion_layers`` blocks add
cross-attention to image states. ALBEF-base initialises the 6 text layers from BERT-base layers
0-5 and the 6 fusion layers from layers 6-11; cross-attention starts random. Weights load from a
Hugging Face BERT checkpoint (directory, file or hub name) by parameter name.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from vlpbench.zoo.layers import TransformerBlock, mean_head_scores, padding_mask_to_attn_mask
from vlpbench.zoo.presets import TEXT_PRESETS, TextPreset
from vlpbench.zoo.weights import PretrainedWeightsError, load_state_dict_from, load_with_report


class TextEmbeddings(nn.Module):
    def __init__(self, p: TextPreset):
        super().__init__()
        self.word = nn.Embedding(p.vocab_size, p.width)
        self.position = nn.Embedding(p.max_positions, p.width)
        self.token_type = nn.Embedding(2, p.width)
        self.norm = nn.LayerNorm(p.width, eps=p.layer_norm_eps)
        self.drop = nn.Dropout(p.dropout)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``position_ids`` [B, L]: each token's place in the full caption (tokens may have been removed)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) if position_ids is None else position_ids
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        return self.drop(self.norm(x))


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder matrix is the word-embedding matrix (tied), passed in."""

    def __init__(self, p: TextPreset):
        super().__init__()
        self.transform = nn.Linear(p.width, p.width)
        self.norm = nn.LayerNorm(p.width, eps=p.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(p.vocab_size))

    def forward(self, states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.transform(states))), word_embeddings, self.bias)


class BertTextModel(nn.Module):
    """Text encoder + multimodal (fusion) encoder + MLM head, as one BERT."""

    def __init__(self, preset: TextPreset, image_width: int | None):
        super().__init__()
        self.preset = preset
        self.width = preset.width
        p = preset
        self.embeddings = TextEmbeddings(p)
        self.text_layers = nn.ModuleList(
            TransformerBlock(p.width, p.num_heads, p.ffn_width, p.dropout, eps=p.layer_norm_eps, pre_norm=p.pre_norm)
            for _ in range(p.text_layers))
        self.fusion_layers = nn.ModuleList(
            TransformerBlock(p.width, p.num_heads, p.ffn_width, p.dropout, cross_width=image_width, eps=p.layer_norm_eps,
                             pre_norm=p.pre_norm)
            for _ in range(p.fusion_layers))
        # pre-LN stacks end in a LayerNorm (post-LN blocks already end normalised)
        self.text_norm = nn.LayerNorm(p.width, eps=p.layer_norm_eps) if p.pre_norm else nn.Identity()
        self.fusion_norm = nn.LayerNorm(p.width, eps=p.layer_norm_eps) if p.pre_norm else nn.Identity()
        self.mlm_head = MLMHead(p)
        self.apply(lambda module: _init_bert_weights(module, p.init_std))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    position_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids, position_ids)
        mask = padding_mask_to_attn_mask(attention_mask)
        for layer in self.text_layers:
            x = layer(x, attn_mask=mask)
        return self.text_norm(x)

    def fuse(self, text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor,
             image_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask, ctx_mask = text_states, padding_mask_to_attn_mask(attention_mask), padding_mask_to_attn_mask(image_mask)
        for layer in self.fusion_layers:
            x = layer(x, attn_mask=mask, context=image_states, context_mask=ctx_mask)
        return self.fusion_norm(x)

    def cls_saliency(self, text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor,
                     layer: int = -2) -> torch.Tensor:
        """[B, L]: how the fused [CLS] query attends over the text keys in fusion layer ``layer``'s
        self-attention (head-averaged, EPIC Eq. 8). ALBEF's fusion has no image-side query over
        text, so the multimodal [CLS] (what ITM reads) stands in for the image [CLS]."""
        index = layer % len(self.fusion_layers)
        x, mask, ctx_mask = text_states, padding_mask_to_attn_mask(attention_mask), None
        for block in self.fusion_layers[:index]:
            x = block(x, attn_mask=mask, context=image_states, context_mask=ctx_mask)
        block = self.fusion_layers[index]
        h = block.self_attn_post.norm(x) if block.self_attn_post.pre_norm else x
        return mean_head_scores(block.self_attn, h[:, 0], h, attention_mask)

    def encode_text_only(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """All layers as one text-only BERT (fusion layers without their cross-attention), as the
        BERT that initialises ALBEF's text and fusion layers is trained (uni-modal pre-training),
        and as LightVLP's uni-modal text encoder (built with ``image_width=None``: no cross-attention)."""
        x = self.encode_text(input_ids, attention_mask, position_ids)
        mask = padding_mask_to_attn_mask(attention_mask)
        for layer in self.fusion_layers:
            x = layer(x, attn_mask=mask, text_only=True)
        return self.fusion_norm(x)

    def mlm_logits(self, fused_states: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(fused_states, self.embeddings.word.weight)


def _init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) for weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_HF_LAYER_PARTS = {
    "attention.self.query": "self_attn.query", "attention.self.key": "self_attn.key",
    "attention.self.value": "self_attn.value", "attention.output.dense": "self_attn.out",
    "attention.output.LayerNorm": "self_attn_post.norm",
    "crossattention.self.query": "cross_attn.query", "crossattention.self.key": "cross_attn.key",
    "crossattention.self.value": "cross_attn.value", "crossattention.output.dense": "cross_attn.out",
    "crossattention.output.LayerNorm": "cross_attn_post.norm",
    "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_post.norm",
}
_HF_OTHER = {
    "embeddings.word_embeddings": "embeddings.word", "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type", "embeddings.LayerNorm": "embeddings.norm",
    "cls.predictions.transform.dense": "mlm_head.transform", "cls.predictions.transform.LayerNorm": "mlm_head.norm",
}
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def hf_bert_to_vlpbench(state_dict: dict[str, torch.Tensor], text_layers: int,
                        layers: int | None = None) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT (or BertForMaskedLM / ALBEF xbert) state dict to ours.

    Layer i < text_layers goes to ``text_layers.i``, the rest to ``fusion_layers.(i - text_layers)``;
    with ``layers``, layers from that index on are dropped (a preset that keeps the lower layers).
    Keys we have no place for (pooler, NSP head, position_ids) are dropped.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("bert.").removeprefix("text_encoder.")
        if key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
            out["mlm_head.bias"] = value
            continue
        match = _LAYER_KEY.match(key)
        if match:
            index, part, kind = int(match[1]), match[2], match[3]
            if part in _HF_LAYER_PARTS and (layers is None or index < layers):
                stack = "text_layers" if index < text_layers else "fusion_layers"
                local = index if index < text_layers else index - text_layers
                out[f"{stack}.{local}.{_HF_LAYER_PARTS[part]}.{kind}"] = value
            continue
        stem, _, kind = key.rpartition(".")
        if stem in _HF_OTHER:
            out[f"{_HF_OTHER[stem]}.{kind}"] = value
    return out


def create_text_model(preset: str, image_width: int | None, pretrained: str | None = None, **overrides) -> BertTextModel:
    """Build a text+fusion BERT from a named preset, optionally loading BERT weights;
    ``image_width=None`` builds it without cross-attention (a text-only BERT).

    ``pretrained`` is a local file or directory, or a hub name (needs network), holding a Hugging
    Face BERT or a vlpbench text model's state dict (uni-modal pre-training). Missing keys
    (cross-attention, or everything when loading a smaller checkpoint) keep their random init;
    the returned model's ``load_report`` lists them.
    """
    if preset not in TEXT_PRESETS:
        raise KeyError(f"unknown text preset {preset!r}; known: {sorted(TEXT_PRESETS)}")
    p = replace(TEXT_PRESETS[preset], **overrides)
    model = BertTextModel(p, image_width)
    model.load_report = None
    if pretrained:
        state = load_state_dict_from(pretrained, kind="text")
        dropped = []  # checkpoint layers above the preset's (it keeps the lower ones)
        if not any(k.startswith("text_layers.") for k in state):  # a Hugging Face BERT, not a vlpbench text model
            if p.pre_norm:
                raise PretrainedWeightsError(f"pretrained text weights {pretrained!r} are a post-LN BERT; they do not "
                                             "fit a pre_norm text model (pre_norm is for models trained from scratch)")
            layers = p.text_layers + p.fusion_layers
            found = {int(m[1]) for k in state if (m := _LAYER_KEY.match(k.removeprefix("bert.")))}
            dropped = sorted(found - set(range(layers)))
            state = hf_bert_to_vlpbench(state, p.text_layers, layers)
        _check_shapes(model, state, pretrained)
        model.load_report = {**load_with_report(model, state, pretrained, "text"), "dropped_layers": dropped}
    return model


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise PretrainedWeightsError(f"pretrained text weights {source!r} do not fit the preset: " + "; ".join(bad[:5]))
    if not any(k in own for k in state):
        raise PretrainedWeightsError(f"pretrained text weights {source!r} contain no BERT parameters we recognise")
