"""ALBEF: Align before Fuse (Li et al., 2021) -- ITC over momentum queues, MLM, ITM with
contrastive hard negatives, and momentum distillation (MoD). Paper: Sec. 3, Eq. 1-7.

Choices the paper leaves open, taken from the authors' public implementation (salesforce/ALBEF):
- Temperature: a learnable scalar initialised to ``temp`` (0.07) and clamped in place to
  [``temp_min``, ``temp_max``] = [0.001, 0.5] at the start of every forward. Teacher
  similarities use the same temperature.
- Queues: hold momentum-encoder features, start as random unit vectors, are filled after the
  ITC loss with the features of the global batch (gathered from all processes), and
  ``queue_size`` must be divisible by the batch. Only the in-batch diagonal is positive.
- ITC with MoD trains on mixed targets ``(1 - alpha) y + alpha q`` (same gradient as Eq. 6).
- Alpha ramp: ``alpha * min(1, step / alpha_warmup_steps)``, with the ramp over the first epoch
  (steps_per_epoch optimizer steps) unless ``alpha_warmup_steps`` is set.
- Hard negatives: sampled from ``softmax`` of the student's in-batch similarities to the momentum
  features; the positive gets weight 0. With ``itm_hard_negatives: false`` (Table 1, rows 1-2)
  negatives are uniform over the other in-batch pairs.
- MLM: 15% of tokens, never [PAD] or [CLS] ([SEP] may be masked, as in the reference code);
  80% [MASK], 10% random id, 10% unchanged. The teacher predicts on the same corrupted text
  with the momentum image states.
- Momentum update (EMA 0.995) runs once per optimizer step, after it (the reference code runs
  it at the start of each forward, which is the same without gradient accumulation).

Table 1 rows (``experiments/albef_table1_*.yaml``): MLM+ITM (``itc: false``,
``itm_hard_negatives: false``, no distillation), +ITC, +ITM_hard, +ITC_MoD (``distill_itc``),
Full (+``distill_mlm``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlpbench.config import Capabilities, DistilledContrastConfig
from vlpbench.losses import false_negative_count, itm_pairs, mlm_loss, sample_itm_negatives
from vlpbench.masking import mask_tokens_for_mlm
from vlpbench.method import Batch, FusionEncoderMatching, Progress, VLPMethod
from vlpbench.registry import register_method
from vlpbench.zoo.vision import VisionOutput


class ALBEFConfig(DistilledContrastConfig):
    name: Literal["albef"] = "albef"
    tiny = {"embed_dim": 32, "queue_size": 16}
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    mlm_mask_fraction: float = Field(0.8, ge=0.0, le=1.0)
    mlm_random_fraction: float = Field(0.1, ge=0.0, le=1.0)
    itc: bool = True
    itm_hard_negatives: bool = True
    distill_itc: bool = True
    distill_mlm: bool = True

    declared = Capabilities(single_stream=True, saliency=True)

    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self.declared, contrastive_embedding=self.itc)

    def check(self, experiment, at: str = "method") -> list[str]:
        problems = super().check(experiment, at)
        if self.distill_itc and not self.itc:
            problems.append(f"{at}.distill_itc: needs {at}.itc: true")
        if self.itm_hard_negatives and not self.itc:
            problems.append(f"{at}.itm_hard_negatives: hard negatives come from ITC similarities; needs {at}.itc: true")
        if self.mlm_mask_fraction + self.mlm_random_fraction > 1.0:
            problems.append(f"{at}.mlm_mask_fraction + {at}.mlm_random_fraction: must not exceed 1")
        return problems


@register_method
class ALBEF(FusionEncoderMatching, VLPMethod):
    name = "albef"
    config_class = ALBEFConfig

    def __init__(self, config: ALBEFConfig, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self.build_fusion_model(model, tokenizer, config.embed_dim, config.temp)
        self.build_momentum_contrast(teacher=self.needs_teacher, queues=config.itc)

    @property
    def needs_teacher(self) -> bool:
        return self.config.itc or self.config.distill_mlm

    # ---- pre-training ----
    def forward(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        cfg = self.config
        alpha = cfg.alpha_at(progress.step, progress.steps_per_epoch)
        self.clamp_temperature()
        image = self.encode_image(batch.images)
        text_states = self.encode_text(batch.input_ids, batch.attention_mask)
        teacher_image = self.teacher["visual_encoder"](batch.images) if self.needs_teacher else None

        losses = {}
        sim_i2t = sim_t2i = None
        matches = self.batch_matches(batch)
        if cfg.itc:
            losses["loss_itc"], sim_i2t, sim_t2i = self.itc_loss(image, text_states, teacher_image, batch, alpha,
                                                                 matches)
        hard = cfg.hard_negative_share(progress.step) if cfg.itm_hard_negatives else 0.0
        losses["loss_itm"] = self.itm_loss(image, text_states, batch.attention_mask, sim_i2t, sim_t2i, hard, matches)
        losses["loss_mlm"] = self.mlm_loss(image, teacher_image, batch, alpha)
        losses["loss"] = sum(losses.values())
        if matches is not None:
            losses["false_negative_pairs"] = false_negative_count(matches)
        losses["alpha"] = torch.tensor(alpha)
        losses["temp"] = self.temp.detach()
        return losses

    def itc_loss(self, image: VisionOutput, text_states: torch.Tensor, teacher_image: VisionOutput,
                 batch: Batch, alpha: float, matches: torch.Tensor | None = None):
        """Eq. 1, 2 and 6: contrast against the momentum features of the batch and the queues."""
        with torch.no_grad():
            text_states_m = self.teacher["text"].encode_text(batch.input_ids, batch.attention_mask)
        return self.momentum_itc_loss(image, text_states, teacher_image, text_states_m, self.temp, alpha,
                                      self.config.distill_itc, matches)

    def itm_loss(self, image: VisionOutput, text_states: torch.Tensor, attention_mask: torch.Tensor,
                 sim_i2t: torch.Tensor | None, sim_t2i: torch.Tensor | None, hard: float,
                 matches: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 4: one positive, one negative image per text and one negative text per image (a
        share ``hard`` of them hard negatives), all fused in a single pass of 3B pairs."""
        bs = text_states.shape[0]
        negatives = sample_itm_negatives(sim_i2t, sim_t2i, bs, hard, text_states.device, matches)
        texts, masks, images, labels = itm_pairs(text_states, attention_mask, image.states, *negatives)
        return F.cross_entropy(self.match_logits(texts, masks, images), labels)

    def mlm_loss(self, image: VisionOutput, teacher_image: VisionOutput | None, batch: Batch,
                 alpha: float) -> torch.Tensor:
        """Eq. 3 and 7: predict masked tokens from the image and the unmasked text."""
        cfg, tok = self.config, self.tokenizer
        masked = mask_tokens_for_mlm(batch.input_ids, tok.vocab_size, tok.mask_id, [tok.pad_id, tok.cls_id],
                                     cfg.mlm_probability, cfg.mlm_mask_fraction, cfg.mlm_random_fraction)
        positions = masked.labels != -100
        fused = self.text.fuse(self.text.encode_text(masked.input_ids, batch.attention_mask), batch.attention_mask,
                               image.states)
        logits = self.text.mlm_logits(fused[positions])
        teacher_logits = None
        if cfg.distill_mlm:
            teacher_logits = self.teacher_mlm_logits(masked.input_ids, batch.attention_mask, teacher_image.states,
                                                     positions)
        return mlm_loss(logits, masked.labels[positions], teacher_logits, alpha)

    def after_optimizer_step(self) -> None:
        if self.needs_teacher:
            self.update_momentum_teacher()
