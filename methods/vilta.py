"""ViLTA: textual augmentation for VLP (Sec. 3, Eq. 1-4) -- MLM at a 50% ratio with
cross-distillation soft labels, and ITM with synthetic hard negatives.

Architecture (Sec. 3.1, METER-style): a ViT, a language encoder (the zoo's text model run
text-only) and a co-attention multimodal encoder (``vlpbench.zoo.coattention``); ITM reads the
concatenated [CLS] states of both towers. No ITC: retrieval ranks every pair by ITM.

- Cross-distillation (Eq. 2-3): a frozen copy of the pre-trained language encoder with its MLM head
  reads the unmasked caption; its distribution q at each masked position is the soft label.
  Loss = alpha * CE(one-hot, p) + (1 - alpha) * KL(q || p). The copy is made when the method is
  built, i.e. from the pre-trained weights (the `mini` uni-modal warm start or
  ``model.text.pretrained``); a config check refuses to distil from random weights.
- Synthetic hard negatives (Sec. 3.3): per caption one content word (``content_words``, see
  ``vlpbench.wordroles``) is masked; the current language encoder's distribution p_m at the mask
  and the teacher's q_m at that position give p_n = p_m / q_m (normalised, the original token and
  special tokens excluded); the sampled word replaces the original. ``negatives``: ``dynamic``
  (every step, the default), ``pregenerated`` (p_m from the frozen initial encoder and randomness
  keyed by the caption, so each caption always gets the same negative: the same as generating
  all negatives once before training), ``in_batch`` (another caption of the batch).
- Choices the paper leaves open: MLM masks with [MASK] only (``mlm_mask_fraction`` 1.0, as Sec.
  3.2 describes); each image gets one negative text; the negative's word is sampled, not the
  arg-max of p_n. ``random_image_negatives`` (default true): the base model's (METER's) random
  negatives stay -- each caption is also paired with another image of the batch -- so ITM sees B
  positives and 2B negatives, as ALBEF's. The paper describes the synthetic negative as the
  negative of each pair and does not say whether METER's are dropped; with synthetic negatives
  alone, ITM never sees an unrelated pair and cannot rank retrieval candidates (at `mini`, 5.6
  r_mean against chance 2.6, one seed).

Table 4 rows: MLM (``itm: false, cross_distill: false``), MLM+ITM (``negatives: in_batch,
cross_distill: false``: random negatives on both sides), MLM+ITM_hard (``cross_distill: false``), MLM_distill+ITM
(``negatives: in_batch``), ViLTA (defaults). Table 6: ``negatives``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlpbench.config import Capabilities, MethodConfig
from vlpbench.losses import sample_itm_negatives
from vlpbench.masking import mask_tokens_for_mlm
from vlpbench.method import Batch, FusedPair, Progress, VLPMethod
from vlpbench.momentum import momentum_copy
from vlpbench.registry import register_method
from vlpbench.streams import init_part, stream
from vlpbench.wordroles import content_token_mask
from vlpbench.zoo import create_text_model, create_vision_encoder
from vlpbench.zoo.coattention import CoAttentionFusion
from vlpbench.zoo.vision import VisionOutput


class ViLTAConfig(MethodConfig):
    """Defaults are ViLTA_base's objectives (Sec. 3-4.1)."""
    name: Literal["vilta"] = "vilta"
    tiny = {"fusion_layers": 2, "cross_distill": False, "negatives": "in_batch"}
    fusion_layers: int = Field(6, ge=1)
    mlm_probability: float = Field(0.5, gt=0.0, lt=1.0)
    mlm_mask_fraction: float = Field(1.0, ge=0.0, le=1.0)
    mlm_random_fraction: float = Field(0.0, ge=0.0, le=1.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the one-hot MLM loss (Eq. 3)
    cross_distill: bool = True
    itm: bool = True
    negatives: Literal["dynamic", "pregenerated", "in_batch"] = "dynamic"
    random_image_negatives: bool = True  # METER's negatives stay beside the synthetic ones (open in the paper)
    content_words: Literal["embedded", "pos"] = "embedded"

    def cross_attention_layers(self, experiment) -> int:
        return self.fusion_layers

    def itm_positive_fraction(self) -> float | None:
        """B positives, B negative captions and, with random_image_negatives, B negative images."""
        if not self.itm:
            return None
        return 1 / 3 if self.random_image_negatives else 1 / 2

    # with itm: false the matching head still scores pairs, untrained (Table 4's MLM row: chance)
    declared = Capabilities(contrastive_embedding=False, saliency=True)

    def uses_teacher(self) -> bool:
        return self.cross_distill or (self.itm and self.negatives != "in_batch")

    def check(self, experiment, at: str = "method") -> list[str]:
        problems = super().check(experiment, at)
        text, unimodal = experiment.model.text, experiment.model.unimodal
        if self.uses_teacher() and not (text.pretrained or unimodal.text_steps):
            problems.append(f"{at}: cross-distillation and synthetic negatives need a pre-trained language model as "
                            "teacher; set model.text.pretrained or model.unimodal.text_steps (a random teacher is "
                            "not a teacher)")
        if self.content_words == "embedded" and experiment.data.pretrain is not None:
            problems.append(f"{at}.content_words: 'embedded' is the embedded generator's lexicon; with "
                            "data.pretrain set, use 'pos'")
        if self.mlm_mask_fraction + self.mlm_random_fraction > 1.0:
            problems.append(f"{at}.mlm_mask_fraction + {at}.mlm_random_fraction: must not exceed 1")
        return problems


def negative_word_distribution(p_m: torch.Tensor, q_m: torch.Tensor, original: torch.Tensor,
                               excluded: torch.Tensor) -> torch.Tensor:
    """ViLTA's p_n proportional to p_m / q_m over the vocabulary, without the original token and the
    ``excluded`` ids (specials); rows [B, V]."""
    ratio = p_m / q_m.clamp_min(1e-12)
    ratio[:, excluded] = 0.0
    ratio.scatter_(1, original[:, None], 0.0)
    return ratio / ratio.sum(1, keepdim=True).clamp_min(1e-30)


def keyed_uniform(keys: torch.Tensor, count: int) -> torch.Tensor:
    """[B, count] uniforms in (0, 1) that depend only on each row's integer key (a counter-based
    hash), so a caption gets the same draws in every epoch."""
    x = keys[:, None] * 0x9E3779B1 + torch.arange(1, count + 1, device=keys.device) * 0x85EBCA77
    for shift, multiplier in ((15, 0x2C1B3C6D), (12, 0x297A2D39), (15, 0x1B873593)):
        x = (x ^ (x >> shift)) * multiplier % (1 << 32)
    return ((x % (1 << 24)).double() + 0.5) / (1 << 24)


def caption_keys(input_ids: torch.Tensor) -> torch.Tensor:
    """A per-row integer key of the token ids (a polynomial hash)."""
    powers = torch.full((input_ids.shape[1],), 1_000_003, device=input_ids.device).cumprod(0) % (1 << 31)
    return (input_ids * powers).sum(1) % (1 << 31)


def sample_rows(weights: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
    """One index per row from non-negative ``weights``: multinomial, or Gumbel-max on given uniforms."""
    if uniforms is None:
        return torch.multinomial(weights.float(), 1, generator=stream("vilta_negatives", weights.device)).squeeze(1)
    gumbel = -torch.log(-torch.log(uniforms))
    return (weights.double().log() + gumbel).argmax(1)


@register_method
class ViLTA(VLPMethod):
    name = "vilta"
    config_class = ViLTAConfig

    def __init__(self, config: ViLTAConfig, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self.visual_encoder = init_part("visual_encoder", create_vision_encoder, model.vision.preset,
                                        model.vision.pretrained, model.vision.image_size)
        self.text = init_part("text", create_text_model, model.text.preset, None, model.text.pretrained,
                              vocab_size=tokenizer.vocab_size, **model.text.preset_overrides())
        p = self.text.preset
        self.fusion = init_part("fusion", CoAttentionFusion, self.text.width, self.visual_encoder.width,
                                config.fusion_layers, p.num_heads, p.dropout, p.layer_norm_eps)
        self.itm_head = init_part("itm_head", nn.Linear, self.text.width + self.visual_encoder.width, 2)
        if config.uses_teacher():
            self.language_teacher = momentum_copy(self.text).eval()  # frozen at the pre-trained weights
        self.register_buffer("special_ids", torch.tensor(tokenizer.special_ids), persistent=False)
        self.register_buffer("content_tokens", content_token_mask(tokenizer, config.content_words), persistent=False)

    def train(self, mode: bool = True) -> "ViLTA":
        """The frozen teacher always runs without dropout: its soft labels are a fixed function of the text."""
        super().train(mode)
        if self.config.uses_teacher():
            self.language_teacher.eval()
        return self

    # ---- evaluation interface (no contrastive embedding: retrieval ranks all pairs by ITM) ----
    def encode_image(self, images: torch.Tensor) -> VisionOutput:
        return self.visual_encoder(images)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text.encode_text_only(input_ids, attention_mask)

    def match_score(self, text_states, attention_mask, image_states) -> torch.Tensor:
        return self.itm_logits(text_states, attention_mask, image_states)[:, 1]

    def match_logits(self, text_states, attention_mask, image_states) -> torch.Tensor:
        return self.itm_logits(text_states, attention_mask, image_states)

    def fuse(self, text_states, attention_mask, image_states) -> FusedPair:
        """Both towers' [CLS] states, concatenated, are the pooled pair (as ITM reads them)."""
        text, image = self.fusion(text_states, attention_mask, image_states)
        return FusedPair(text, torch.cat([text[:, 0], image[:, 0]], dim=-1))

    @property
    def fused_width(self) -> int:
        return self.text.width + self.visual_encoder.width

    def fusion_blocks(self) -> nn.ModuleList:
        return self.fusion.text_layers

    def token_saliency(self, input_ids, attention_mask, images) -> torch.Tensor:
        """EPIC Eq. 8 exactly: the image [CLS] query over the text keys, penultimate co-attention layer."""
        return self.fusion.image_cls_saliency(self.encode_text(input_ids, attention_mask), attention_mask,
                                              self.encode_image(images).states)

    def itm_logits(self, text_states, attention_mask, image_states) -> torch.Tensor:
        return self.itm_head(self.fuse(text_states, attention_mask, image_states).cls)

    # ---- pre-training ----
    def forward(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        cfg = self.config
        image = self.visual_encoder(batch.images)
        teacher_states = None
        if cfg.uses_teacher():  # the frozen language model reads the unmasked caption
            with torch.no_grad():
                teacher_states = self.language_teacher.encode_text_only(batch.input_ids, batch.attention_mask)
        losses = {"loss_mlm": self.mlm_loss(image, batch, teacher_states)}
        if cfg.itm:
            losses["loss_itm"] = self.itm_loss(image, batch, *self.negative_texts(batch, teacher_states))
        losses["loss"] = sum(losses.values())
        return losses

    def mlm_loss(self, image: VisionOutput, batch: Batch, teacher_states: torch.Tensor | None) -> torch.Tensor:
        """Eq. 1, or with cross-distillation Eq. 3: alpha * CE + (1 - alpha) * KL(q || p)."""
        cfg, tok = self.config, self.tokenizer
        masked = mask_tokens_for_mlm(batch.input_ids, tok.vocab_size, tok.mask_id, [tok.pad_id, tok.cls_id],
                                     cfg.mlm_probability, cfg.mlm_mask_fraction, cfg.mlm_random_fraction)
        positions = masked.labels != -100
        if not positions.any():
            return image.states.sum() * 0.0
        text_states = self.text.encode_text_only(masked.input_ids, batch.attention_mask)
        fused_text, _ = self.fusion(text_states, batch.attention_mask, image.states)
        log_p = F.log_softmax(self.text.mlm_logits(fused_text[positions]).float(), dim=-1)
        loss = F.nll_loss(log_p, masked.labels[positions])
        if not cfg.cross_distill:
            return loss
        with torch.no_grad():
            q = F.softmax(self.language_teacher.mlm_logits(teacher_states[positions]).float(), dim=-1)
        distill = F.kl_div(log_p, q, reduction="batchmean")
        return cfg.alpha * loss + (1 - cfg.alpha) * distill

    @torch.no_grad()
    def negative_texts(self, batch: Batch, teacher_states: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, L] of one negative caption per image (Sec. 3.3 or in-batch)."""
        ids, mask = batch.input_ids, batch.attention_mask
        if self.config.negatives == "in_batch":
            _, other = sample_itm_negatives(None, None, len(ids), False, ids.device, self.batch_matches(batch))
            return ids[other], mask[other]
        keyed = self.config.negatives == "pregenerated"
        uniforms = keyed_uniform(caption_keys(ids), 2) if keyed else None
        candidates = self.content_tokens[ids] & mask.bool()
        candidates[:, 0] = False
        fallback = mask.bool() & ~torch.isin(ids, self.special_ids)  # captions without a content word
        candidates = torch.where(candidates.any(1, keepdim=True), candidates, fallback)
        position = self._draw(candidates.double(), uniforms, 0)
        rows = torch.arange(len(ids), device=ids.device)
        masked_ids = ids.clone()
        masked_ids[rows, position] = self.tokenizer.mask_id
        encoder = self.language_teacher if keyed else self.text  # pregenerated: the initial encoder
        p_m = F.softmax(encoder.mlm_logits(encoder.encode_text_only(masked_ids, mask)[rows, position]).float(), -1)
        q_m = F.softmax(self.language_teacher.mlm_logits(teacher_states[rows, position]).float(), dim=-1)
        p_n = negative_word_distribution(p_m, q_m, ids[rows, position], self.special_ids)
        negative = ids.clone()
        negative[rows, position] = self._draw(p_n, uniforms, 1)
        return negative, mask

    @staticmethod
    def _draw(weights: torch.Tensor, uniforms: torch.Tensor | None, column: int) -> torch.Tensor:
        if uniforms is None:
            return sample_rows(weights, None)
        keyed = keyed_uniform((uniforms[:, column] * (1 << 24)).long(), weights.shape[1])
        return sample_rows(weights, keyed)

    def itm_loss(self, image: VisionOutput, batch: Batch, negative_ids: torch.Tensor,
                 negative_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 4 over the B positive pairs, the B (image, negative caption) pairs and, with
        ``random_image_negatives``, the B (other image of the batch, caption) pairs."""
        bs = len(batch)
        masks = torch.cat([batch.attention_mask, negative_mask])
        texts = self.text.encode_text_only(torch.cat([batch.input_ids, negative_ids]), masks)
        images = torch.cat([image.states, image.states])
        if self.config.random_image_negatives:
            neg_image, _ = sample_itm_negatives(None, None, bs, False, images.device, self.batch_matches(batch))
            texts, masks = torch.cat([texts, texts[:bs]]), torch.cat([masks, batch.attention_mask])
            images = torch.cat([images, image.states[neg_image]])
        logits = self.itm_logits(texts, masks, images)
        labels = (torch.arange(len(logits), device=logits.device) < bs).long()
        return F.cross_entropy(logits.float(), labels)
