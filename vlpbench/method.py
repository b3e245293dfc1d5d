"""The interface every method implements, so training and evaluation treat all methods alike."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlpbench.config import MethodConfig, ModelConfig
from vlpbench.losses import matching_pairs, momentum_contrastive_loss
from vlpbench.momentum import FeatureQueue, momentum_teacher, update_teacher
from vlpbench.streams import init_part
from vlpbench.zoo.layers import MultiHeadAttention
from vlpbench.zoo.text import BertTextModel, create_text_model
from vlpbench.zoo.tokenizer import TextTokenizer
from vlpbench.zoo.vision import VisionOutput, create_vision_encoder


@dataclass
class Batch:
    images: torch.Tensor          # [B, 3, H, W], normalised
    input_ids: torch.Tensor       # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 = token
    regions: torch.Tensor | None = None  # [B, H, W] bool: where the caption's objects are (all True: unknown)
    image_ids: torch.Tensor | None = None  # [B] long: pairs of one image or scene share an id (None: unknown)
    # samples whose image failed to load in training, each "source: problem"; the slot of each holds
    # a copy of another sample of the batch (same image id, so never its copy's negative)
    skipped: tuple[str, ...] = ()

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(None if t is None else t.to(device, non_blocking=True)
                       for t in (self.images, self.input_ids, self.attention_mask, self.regions, self.image_ids)),
                     skipped=self.skipped)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class FusedPair:
    text: torch.Tensor  # [B, L, W] fused text token states
    cls: torch.Tensor   # [B, fused_width]: the pooled pair a task head reads (fused [CLS], or both towers' [CLS])


@dataclass(frozen=True)
class FusionStream:
    """Single-stream fusion: the text states pass through ``blocks`` in order, each cross-attending
    to the image states, then through ``final_norm``."""
    blocks: nn.ModuleList
    final_norm: nn.Module


@dataclass(frozen=True)
class Progress:
    step: int             # optimizer steps completed before this one
    steps_per_epoch: int


class VLPMethod(nn.Module, abc.ABC):
    """A pre-training method: computes its paper's losses and exposes the shared encoders."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig, model: ModelConfig, tokenizer: TextTokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer

    def attach_trained(self, trained: dict[str, tuple["VLPMethod", TextTokenizer]]) -> None:
        """Receive the frozen trained models (and their tokenizers) that ``config.trained_models()`` names."""
        raise NotImplementedError(f"method {self.name!r} declares trained models but does not take them")

    @abc.abstractmethod
    def forward(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch: ``loss`` (the total to minimise) plus named parts to log."""

    def after_optimizer_step(self) -> None:
        """Hook for state that follows the weights (momentum teachers)."""

    def batch_matches(self, batch: Batch) -> torch.Tensor | None:
        """[B, B] pairs of the batch that match each other (the same image, or an identical caption),
        which ITC must not push apart and ITM must not sample as negatives; None with
        ``false_negatives: keep`` (what the authors' code does)."""
        if self.config.false_negatives == "keep":
            return None
        return matching_pairs(batch.input_ids, batch.attention_mask, batch.image_ids)

    # The evaluation interface, shared by every method.
    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor) -> VisionOutput: ...

    @abc.abstractmethod
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    # What a method offers beyond encoding it declares in its config's ``Capabilities``; these
    # defaults are what a method without the capability keeps, and nothing calls them.
    def image_embedding(self, image: VisionOutput) -> torch.Tensor:
        """L2-normalised embedding for contrastive retrieval (``Capabilities.contrastive_embedding``)."""
        raise NotImplementedError(f"method {self.name!r} declares no contrastive embedding")

    def text_embedding(self, text_states: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding for contrastive retrieval (``Capabilities.contrastive_embedding``)."""
        raise NotImplementedError(f"method {self.name!r} declares no contrastive embedding")

    def match_score(self, text_states: torch.Tensor, attention_mask: torch.Tensor,
                    image_states: torch.Tensor) -> torch.Tensor:
        """[B] image-text matching score of aligned pairs, higher = more likely matched
        (``Capabilities.matching``)."""
        raise NotImplementedError(f"method {self.name!r} declares no matching score")

    # The fusion interface the downstream pipelines use (``vlpbench.downstream``), for a method that
    # declares ``Capabilities.fusion``; without it the pipelines refuse the method at config load.
    def fuse(self, text_states: torch.Tensor, attention_mask: torch.Tensor,
             image_states: torch.Tensor) -> "FusedPair":
        """The image-text pair after fusion: text token states and the pooled state a task head reads."""
        raise NotImplementedError(f"method {self.name!r} does not expose fused image-text states (fuse)")

    @property
    def fused_width(self) -> int:
        """Width of ``FusedPair.cls``."""
        raise NotImplementedError(f"method {self.name!r} does not expose fused image-text states (fuse)")

    def match_logits(self, text_states: torch.Tensor, attention_mask: torch.Tensor,
                     image_states: torch.Tensor) -> torch.Tensor:
        """[B, 2] (not matched, matched) logits of the method's matching head; fine-tuning trains
        them with cross-entropy, as ALBEF's ITM."""
        raise NotImplementedError(f"method {self.name!r} has no image-text matching head (match_logits)")

    def fusion_blocks(self) -> nn.ModuleList:
        """The text side's fusion blocks in order, each cross-attending to the image (an answer
        decoder starts from them)."""
        raise NotImplementedError(f"method {self.name!r} exposes no fusion blocks")

    def cross_attentions(self) -> list[MultiHeadAttention]:
        """The attention modules in which text queries attend to the image states ([CLS] first,
        then the patches in grid order), one per fusion layer in order (Grad-CAM reads them)."""
        return [block.cross_attn for block in self.fusion_blocks()]

    def fusion_stream(self) -> "FusionStream | None":
        """Where fusion is one text stream through blocks that cross-attend to the image (ALBEF),
        those blocks; None for two-stream fusion (co-attention, LightVLP's cross stacks)."""
        return None

    def language_model(self) -> BertTextModel:
        """The text model whose embeddings and MLM head an answer decoder starts from."""
        return self.text

    def itc_temperature(self) -> torch.Tensor | None:
        """The contrastive temperature the method learned (fine-tuning goes on learning it), or
        None where it has none of its own."""
        return None

    def token_saliency(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       images: torch.Tensor) -> torch.Tensor:
        """[B, L] saliency of each text token w.r.t. the image (EPIC Eq. 8), rows summing to 1."""
        raise NotImplementedError(f"method {self.name!r} defines no image-token saliency")

    def match_probability(self, scores: torch.Tensor) -> torch.Tensor:
        """The probability ``match_score`` stands for (LightVLP's gate p; ``Capabilities.gate``)."""
        raise NotImplementedError(f"method {self.name!r} declares no gate")


class ContrastiveEmbeddings:
    """Evaluation interface of methods whose ITC embeddings are normalised projections of the
    uni-modal [CLS] states (``visual_encoder``, ``vision_proj``, ``text_proj``)."""

    def encode_image(self, images: torch.Tensor) -> VisionOutput:
        return self.visual_encoder(images)

    def image_embedding(self, image: VisionOutput) -> torch.Tensor:
        return F.normalize(self.vision_proj(image.cls), dim=-1)

    def text_embedding(self, text_states: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_states[:, 0]), dim=-1)


class MomentumContrast(ContrastiveEmbeddings):
    """ITC against a momentum teacher and queues of its features (ALBEF Eq. 1-2 and 6, LightVLP
    Eq. 3 and 9, VLMAE Eq. 3-4), for a method whose config is a ``MomentumContrastConfig``. The
    teacher copies the uni-modal encoders and the ITC projections; the method runs the teacher's
    encoders on what its paper says they see, and ``momentum_itc_loss`` does the rest."""

    _ema_names = ("visual_encoder", "vision_proj", "text", "text_proj")

    def build_momentum_contrast(self, teacher: bool = True, queues: bool = True) -> None:
        """The teacher (after the parts it copies exist) and the two queues of ``queue_size`` features."""
        cfg = self.config
        if teacher:
            self.teacher = momentum_teacher(self, self._ema_names)
        if queues:
            self.image_queue = init_part("image_queue", FeatureQueue, cfg.queue_size, cfg.embed_dim)
            self.text_queue = init_part("text_queue", FeatureQueue, cfg.queue_size, cfg.embed_dim)

    def clamp_temperature(self) -> None:
        """ALBEF's learnable temperature, kept in [temp_min, temp_max] before every forward."""
        with torch.no_grad():
            self.temp.clamp_(self.config.temp_min, self.config.temp_max)

    def momentum_itc_loss(self, image: VisionOutput, text_states: torch.Tensor, teacher_image: VisionOutput,
                          teacher_text_states: torch.Tensor, temp: torch.Tensor | float, alpha: float = 0.0,
                          distill: bool = False, matches: torch.Tensor | None = None):
        """The student's embeddings against the teacher's (of its [CLS] states) and the queues, which
        the teacher's features then enter. Returns the loss and the student's similarities."""
        with torch.no_grad():
            image_feat_m = F.normalize(self.teacher["vision_proj"](teacher_image.cls), dim=-1)
            text_feat_m = F.normalize(self.teacher["text_proj"](teacher_text_states[:, 0]), dim=-1)
        return momentum_contrastive_loss(self.image_embedding(image), self.text_embedding(text_states), image_feat_m,
                                         text_feat_m, self.image_queue, self.text_queue, temp, alpha, distill, matches)

    def update_momentum_teacher(self) -> None:
        """One EMA step of the teacher (after each optimizer step)."""
        update_teacher(self, self.teacher, self.config.momentum)


class FusionEncoderMatching(MomentumContrast):
    """... and ALBEF's text + fusion BERT (``text``) with an ITM head on the fused [CLS] (``itm_head``)."""

    def build_fusion_model(self, model: ModelConfig, tokenizer: TextTokenizer, embed_dim: int, temp: float) -> None:
        """ALBEF's parts from the zoo: ViT, text + fusion BERT, ITC projections, ITM head, temperature."""
        self.visual_encoder = init_part("visual_encoder", create_vision_encoder, model.vision.preset,
                                        model.vision.pretrained, model.vision.image_size)
        self.text = init_part("text", create_text_model, model.text.preset, self.visual_encoder.width,
                              model.text.pretrained, vocab_size=tokenizer.vocab_size, **model.text.preset_overrides())
        self.vision_proj = init_part("vision_proj", nn.Linear, self.visual_encoder.width, embed_dim)
        self.text_proj = init_part("text_proj", nn.Linear, self.text.width, embed_dim)
        self.itm_head = init_part("itm_head", nn.Linear, self.text.width, 2)
        self.temp = nn.Parameter(torch.tensor(temp))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text.encode_text(input_ids, attention_mask)

    @torch.no_grad()
    def teacher_mlm_logits(self, masked_ids: torch.Tensor, attention_mask: torch.Tensor,
                           teacher_image_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ALBEF's MLM_MoD targets (Eq. 7): the momentum text+fusion model's logits at the masked
        ``positions`` of the same corrupted caption, fused with the momentum image states."""
        teacher = self.teacher["text"]
        fused = teacher.fuse(teacher.encode_text(masked_ids, attention_mask), attention_mask, teacher_image_states)
        return teacher.mlm_logits(fused[positions])

    def match_score(self, text_states: torch.Tensor, attention_mask: torch.Tensor,
                    image_states: torch.Tensor) -> torch.Tensor:
        return self.match_logits(text_states, attention_mask, image_states)[:, 1]

    def match_logits(self, text_states: torch.Tensor, attention_mask: torch.Tensor,
                     image_states: torch.Tensor) -> torch.Tensor:
        return self.itm_head(self.text.fuse(text_states, attention_mask, image_states)[:, 0])

    def fuse(self, text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor) -> FusedPair:
        fused = self.text.fuse(text_states, attention_mask, image_states)
        return FusedPair(fused, fused[:, 0])

    @property
    def fused_width(self) -> int:
        return self.text.width

    def fusion_blocks(self) -> nn.ModuleList:
        return self.text.fusion_layers

    def itc_temperature(self) -> torch.Tensor:
        return self.temp

    def fusion_stream(self) -> FusionStream:
        return FusionStream(self.text.fusion_layers, self.text.fusion_norm)

    def token_saliency(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       images: torch.Tensor) -> torch.Tensor:
        """The fused [CLS] query over the text keys in the penultimate fusion layer (see
        ``BertTextModel.cls_saliency``: the closest equivalent of EPIC's image [CLS] query here)."""
        return self.text.cls_saliency(self.encode_text(input_ids, attention_mask), attention_mask,
                                      self.encode_image(images).states)
