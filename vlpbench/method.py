"""The interface every method implements, so training and evaluation treat all methods alike."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vlpbench.config import MethodConfig, ModelConfig
from vlpbench.zoo.tokenizer import TextTokenizer
from vlpbench.zoo.vision import VisionOutput


@dataclass
class Batch:
    images: torch.Tensor          # [B, 3, H, W], normalised
    input_ids: torch.Tensor       # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 = token

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.images, self.input_ids, self.attention_mask)))

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class Progress:
    step: int             # optimizer steps completed before this one
    steps_per_epoch: int
    total_steps: int


class VLPMethod(nn.Module, abc.ABC):
    """A pre-training method: computes its paper's losses and exposes the shared encoders."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig, model: ModelConfig, tokenizer: TextTokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer

    @abc.abstractmethod
    def forward(self, batch: Batch, progress: Progress) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch: ``loss`` (the total to minimise) plus named parts to log."""

    def after_optimizer_step(self) -> None:
        """Hook for state that follows the weights (momentum teachers)."""

    # The evaluation interface, shared by every method.
    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor) -> VisionOutput: ...

    @abc.abstractmethod
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def image_embedding(self, image: VisionOutput) -> torch.Tensor:
        """L2-normalised embedding for contrastive retrieval."""

    @abc.abstractmethod
    def text_embedding(self, text_states: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding for contrastive retrieval."""

    @abc.abstractmethod
    def match_score(self, text_states: torch.Tensor, attention_mask: torch.Tensor,
                    image_states: torch.Tensor) -> torch.Tensor:
        """[B] image-text matching score of aligned pairs (higher = more likely matched)."""
