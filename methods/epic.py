"""EPIC: per image-token consistency (Sec. 4, Eq. 1-8), a plug-in objective on another method.

``method: {name: epic, base: albef}`` (or a mapping with the base method's own keys) trains the
base method with its own losses unchanged and adds:
1. Masking positions M: m = ceil(mask_ratio * n) of the n real non-special tokens, drawn without
   replacement from the image-token saliency (Eq. 8) that a frozen pre-trained vision-language
   model gives (``saliency_teacher``: a run directory or checkpoint of any method that defines
   ``token_saliency``), or uniformly (``masking: random``, Table 4 "ITC+LM").
2. Inconsistent tokens (Sec. 4.3): an auxiliary BERT-like language model with the base's text
   architecture, started from the same pre-trained language model, predicts the masked positions;
   replacements are sampled from it (Eq. 5); T = the positions where the sample differs (Eq. 6).
   ``replacement: random`` samples uniformly from the vocabulary instead (Table 4 "ITC (rand.)").
   ``generator: fine_tune`` trains it with L_GEN (Eq. 7) during pre-training; ``fixed`` keeps its
   initial weights (Table 5; at `mini` those are already fit to the captions by the uni-modal
   pre-training, i.e. the paper's "LM (trained)").
3. Token consistency (Eq. 1-2; "ITC" in the paper, renamed here because ALBEF's ITC is
   contrastive): sigmoid(beta^T h_i) on each fused text token of (corrupted text, image), binary
   cross-entropy against "consistent" over all real tokens (mean), weight ``consistency_weight``
   (lambda, 8).
The corrupted text is fused by the base method's ``fuse``; images are encoded once more for it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator
from torch import nn

from vlpbench.config import Capabilities, ConfigError, MethodConfig
from vlpbench.method import Batch, FusedPair, FusionStream, Progress, VLPMethod
from vlpbench.registry import get_method, register_method
from vlpbench.streams import init_part, stream
from vlpbench.zoo import TEXT_PRESETS, create_text_model
from vlpbench.zoo.tokenizer import TextTokenizer
from vlpbench.zoo.vision import VisionOutput


class EPICConfig(MethodConfig):
    name: Literal["epic"] = "epic"
    tiny = {"base": {"name": "albef", "embed_dim": 32, "queue_size": 16}, "masking": "random", "replacement": "random"}
    base: Any = Field(..., description="the base method: its name, or a mapping with name and its keys")
    mask_ratio: float = Field(0.35, gt=0.0, le=1.0)
    consistency_weight: float = Field(8.0, ge=0.0)  # lambda
    masking: Literal["saliency", "random"] = "saliency"
    replacement: Literal["lm", "random"] = "lm"
    generator: Literal["fine_tune", "fixed"] = "fine_tune"
    saliency_teacher: str | None = None

    def cross_attention_layers(self, experiment) -> int:
        return self.base.cross_attention_layers(experiment)

    def itm_positive_fraction(self) -> float | None:
        return self.base.itm_positive_fraction()

    @field_validator("base", mode="before")
    @classmethod
    def _base_config(cls, value: Any) -> MethodConfig:
        raw = {"name": value} if isinstance(value, str) else value
        if isinstance(raw, MethodConfig):
            return raw
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError("expected a method name or a mapping with the base method's name and keys")
        if raw["name"] == "epic":
            raise ValueError("EPIC cannot be its own base")
        try:
            config_class = get_method(raw["name"]).config_class
        except KeyError:
            raise ValueError(f"unknown base method {raw['name']!r}") from None
        try:
            return config_class.model_validate(raw)
        except ValidationError as exc:  # one message naming the base's keys (its schema is not EPIC's)
            raise ValueError("; ".join(_describe(e, sorted(config_class.model_fields)) for e in exc.errors())) from None

    def capabilities(self) -> Capabilities:
        """The base method's, which EPIC's evaluation interface passes through; EPIC is no saliency teacher."""
        return dataclasses.replace(self.base.capabilities(), saliency=False)

    def trained_models(self) -> dict[str, str]:
        return {"saliency_teacher": self.saliency_teacher} if self.masking == "saliency" else {}

    def check(self, experiment, at: str = "method") -> list[str]:
        problems = self.base.check(experiment, f"{at}.base")
        text, unimodal = experiment.model.text, experiment.model.unimodal
        if self.masking == "saliency" and not self.saliency_teacher:
            problems.append(f"{at}.saliency_teacher: saliency masking needs a pre-trained vision-language model "
                            "(a checkpoint, run directory or experiment output folder); or set masking: random")
        if not self.base.capabilities().fusion:
            problems.append(f"{at}.base: {self.base.name!r} exposes no fused text token states (fuse), "
                            "which token consistency reads")
        if self.replacement == "lm" and not (text.pretrained or unimodal.text_steps):
            problems.append(f"{at}.replacement: the generator starts from the pre-trained language model; set "
                            "model.text.pretrained or model.unimodal.text_steps (or replacement: random)")
        return problems


@register_method
class EPIC(VLPMethod):
    name = "epic"
    config_class = EPICConfig

    def __init__(self, config: EPICConfig, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self.base = get_method(config.base.name)(config.base, model, tokenizer)
        self.consistency_head = init_part("consistency_head", nn.Linear, TEXT_PRESETS[model.text.preset].width, 1)
        if config.replacement == "lm":
            self.generator = init_part("generator", create_text_model, model.text.preset, None, model.text.pretrained,
                                       vocab_size=tokenizer.vocab_size, **model.text.preset_overrides())
            self.generator.requires_grad_(config.generator == "fine_tune")
        self.saliency_model = None  # with saliency masking: attach_trained (the pipeline loads the teacher)
        self.register_buffer("special_ids", torch.tensor(tokenizer.special_ids), persistent=False)

    def attach_trained(self, trained: dict[str, tuple[VLPMethod, TextTokenizer]]) -> None:
        """The frozen saliency teacher, kept in a list so it is neither trained, checkpointed nor
        moved by ``.to()`` with the student."""
        teacher, teacher_tokenizer = trained["saliency_teacher"]
        path = self.config.saliency_teacher
        if not teacher.config.capabilities().saliency:
            raise ConfigError(f"method.saliency_teacher: {path} is a {teacher.name!r} model, which defines no "
                              "image-token saliency (token_saliency); use a run of a method that does")
        if teacher_tokenizer.fingerprint() != self.tokenizer.fingerprint():
            raise ConfigError(f"method.saliency_teacher: {path} was trained with another tokenizer; the teacher must "
                              "read the same token ids (train it on the same captions or model.text.tokenizer)")
        self.saliency_model = [teacher]

    # ---- the base method's evaluation interface ----
    def encode_image(self, images: torch.Tensor) -> VisionOutput:
        return self.base.encode_image(images)

    def encode_text(self, input_ids, attention_mask) -> torch.Tensor:
        return self.base.encode_text(input_ids, attention_mask)

    def image_embedding(self, image: VisionOutput) -> torch.Tensor:
        return self.base.image_embedding(image)

    def text_embedding(self, text_states: torch.Tensor) -> torch.Tensor:
        return self.base.text_embedding(text_states)

    def match_score(self, text_states, attention_mask, image_states) -> torch.Tensor:
        return self.base.match_score(text_states, attention_mask, image_states)

    def match_probability(self, scores: torch.Tensor) -> torch.Tensor:
        return self.base.match_probability(scores)

    def match_logits(self, text_states, attention_mask, image_states) -> torch.Tensor:
        return self.base.match_logits(text_states, attention_mask, image_states)

    def fuse(self, text_states, attention_mask, image_states) -> FusedPair:
        return self.base.fuse(text_states, attention_mask, image_states)

    @property
    def fused_width(self) -> int:
        return self.base.fused_width

    def fusion_blocks(self) -> nn.ModuleList:
        return self.base.fusion_blocks()

    def itc_temperature(self) -> torch.Tensor | None:
        return self.base.itc_temperature()

    def fusion_stream(self) -> FusionStream | None:
        return self.base.fusion_stream()

    def language_model(self):
        return self.base.language_model()

    def after_optimizer_step(self) -> None:
        self.base.after_optimizer_step()

    # ---- pre-training ----
    def forward(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        losses = self.base(batch, progress)
        positions = self.masking_positions(batch)
        corrupted, loss_gen = self.inconsistent_tokens(batch, positions)
        inconsistent = corrupted != batch.input_ids
        losses["loss_consistency"] = self.consistency_loss(batch, corrupted, inconsistent)
        losses["loss"] = losses["loss"] + self.config.consistency_weight * losses["loss_consistency"]
        if loss_gen is not None:
            losses["loss_gen"] = loss_gen
            losses["loss"] = losses["loss"] + loss_gen
        real = self.eligible(batch.input_ids, batch.attention_mask)
        losses["inconsistent_share"] = inconsistent.sum() / real.sum().clamp_min(1)
        return losses

    def eligible(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Real tokens that are not special ([CLS], [SEP], ...)."""
        return attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)

    @torch.no_grad()
    def masking_positions(self, batch: Batch) -> torch.Tensor:
        """[B, L] bool, M: ceil(mask_ratio * n) positions per caption, without replacement, drawn
        from the saliency (or uniformly) over the n eligible tokens (Gumbel top-k)."""
        eligible = self.eligible(batch.input_ids, batch.attention_mask)
        if self.config.masking == "saliency" and self.saliency_model is None:
            raise RuntimeError("EPIC with saliency masking has no teacher: build it with vlpbench.pipeline."
                               "build_method, which loads method.saliency_teacher")
        if self.saliency_model is not None:
            teacher = self.saliency_model[0].to(batch.images.device)
            weights = teacher.token_saliency(batch.input_ids, batch.attention_mask, batch.images).float()
        else:
            weights = torch.ones_like(batch.input_ids, dtype=torch.float)
        weights = weights.masked_fill(~eligible, 0.0)
        count = torch.ceil(self.config.mask_ratio * eligible.sum(1).float()).long()
        return sample_without_replacement(weights, count)

    def inconsistent_tokens(self, batch: Batch, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 3-7: the corrupted ids (replacements at ``positions``) and L_GEN (when fine-tuned)."""
        ids, tok = batch.input_ids, self.tokenizer
        if self.config.replacement == "random":
            allowed = torch.ones(tok.vocab_size, device=ids.device).index_fill_(0, self.special_ids, 0.0)
            samples = torch.multinomial(allowed, int(positions.sum()), replacement=True,
                                        generator=stream("epic_replacements", ids.device))
            return ids.masked_scatter(positions, samples), None
        masked = ids.masked_fill(positions, tok.mask_id)
        logits = self.generator.mlm_logits(self.generator.encode_text_only(masked, batch.attention_mask)[positions])
        with torch.no_grad():
            probs = F.softmax(logits.float(), dim=-1).index_fill_(1, self.special_ids, 0.0)
            samples = torch.multinomial(probs, 1, generator=stream("epic_replacements", ids.device)).squeeze(1)
        loss_gen = F.cross_entropy(logits.float(), ids[positions]) if self.config.generator == "fine_tune" else None
        return ids.masked_scatter(positions, samples), loss_gen

    def consistency_loss(self, batch: Batch, corrupted: torch.Tensor, inconsistent: torch.Tensor) -> torch.Tensor:
        """Eq. 1-2 over all real tokens: label 1 = consistent with the image, 0 = replaced and changed."""
        image = self.base.encode_image(batch.images)
        fused = self.base.fuse(self.base.encode_text(corrupted, batch.attention_mask), batch.attention_mask,
                               image.states).text
        logits = self.consistency_head(fused).squeeze(-1).float()
        real = batch.attention_mask.bool()
        return F.binary_cross_entropy_with_logits(logits[real], (~inconsistent[real]).float())


def _describe(error: dict, keys: list[str]) -> str:
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key of the base method; expected one of {keys}"
    return f"{key}: {error['msg'].removeprefix('Value error, ')}"


def sample_without_replacement(weights: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """[B, L] bool with ``count[b]`` positions per row drawn without replacement proportionally to
    ``weights`` (zero weight: never), by Gumbel top-k; rows with fewer positive weights take them all."""
    uniforms = torch.rand(weights.shape, device=weights.device, generator=stream("epic_positions", weights.device))
    gumbel = -torch.log(-torch.log(uniforms.clamp(1e-12, 1 - 1e-12)))
    keys = torch.where(weights > 0, weights.clamp_min(1e-30).log() + gumbel, torch.full_like(gumbel, -math.inf))
    rank = keys.argsort(dim=1, descending=True).argsort(dim=1)
    return (rank < count[:, None]) & (weights > 0)
