"""NLVR2: does a statement hold of a pair of images? Two designs (``downstream.nlvr2.design``):

- ``replicated`` (ALBEF Sec. 5, Fig. 3b): every fusion layer becomes two consecutive blocks, the
  first cross-attending to the first image and the second to the second, both started from the
  pre-trained layer; ``sharing`` (Table 7): ``key_value`` (ALBEF's model: the two cross-attentions
  share their key and value projections), ``cross_attention`` (they share the whole
  cross-attention), ``all`` (one block applied twice) or ``none``. Needs single-stream fusion.
- ``pair`` (METER, ViLT): each image fused with the statement on its own; the two pooled states
  are concatenated. Works with every method.

An MLP on the result predicts true / false; accuracy. ALBEF's text-assignment pre-training step is
not built (the issue marks it optional). Records (ALBEF format): ``{images: [a, b], sentence,
label}``, label "True" / "False" (or a boolean, 1 / 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vlpbench.config import TaskConfig
from vlpbench.data.datasets import RecordError, check_image
from vlpbench.downstream.common import ClassifierHead
from vlpbench.downstream.snli_ve import ClassificationTask, PairClassifier, parse_sentence
from vlpbench.method import FusionStream, VLPMethod
from vlpbench.registry import register_task
from vlpbench.zoo.layers import padding_mask_to_attn_mask

TRUTH = {"true": 1, "false": 0, True: 1, False: 0}  # 1 and 0 match True and False


@dataclass
class ImagePairRecord:
    images: tuple[Path, Path]
    sentence: str
    label: int


def parse_nlvr2(record, root: Path, source: str, verify_images: bool) -> ImagePairRecord:
    sentence, label = parse_sentence(record, TRUTH)
    images = record.get("images")
    if not isinstance(images, list) or len(images) != 2:
        raise RecordError("'images' must be a list of two image paths", f"got {images!r}")
    pair = tuple(check_image(image, root, verify_images, key="images") for image in images)
    return ImagePairRecord(pair, sentence, label)


class PairFusion(nn.Module):
    """A single-stream fusion with each layer replicated for two images (ALBEF Fig. 3b)."""

    def __init__(self, stream: FusionStream, sharing: str):
        super().__init__()
        self.first, self.final_norm = stream.blocks, stream.final_norm
        self.second = self.first if sharing == "all" else copy.deepcopy(stream.blocks)
        for one, two in zip(self.first, self.second):
            if sharing == "cross_attention":
                two.cross_attn = one.cross_attn
            elif sharing == "key_value":
                two.cross_attn.key, two.cross_attn.value = one.cross_attn.key, one.cross_attn.value

    def forward(self, text_states: torch.Tensor, attention_mask: torch.Tensor, first_image: torch.Tensor,
                second_image: torch.Tensor) -> torch.Tensor:
        x, mask = text_states, padding_mask_to_attn_mask(attention_mask)
        for one, two in zip(self.first, self.second):
            x = one(x, attn_mask=mask, context=first_image)
            x = two(x, attn_mask=mask, context=second_image)
        return self.final_norm(x)


class ReplicatedNLVR2(PairClassifier):
    def __init__(self, method: VLPMethod, sharing: str):
        super().__init__(method, ClassifierHead(method.fused_width, 2))
        self.pair_fusion = PairFusion(method.fusion_stream(), sharing)

    def logits(self, batch) -> torch.Tensor:
        text = self.method.encode_text(batch.input_ids, batch.attention_mask)
        first, second = self.method.encode_image(batch.images.flatten(0, 1)).states.unflatten(0, (-1, 2)).unbind(1)
        return self.head(self.pair_fusion(text, batch.attention_mask, first, second)[:, 0])


class PairNLVR2(PairClassifier):
    def __init__(self, method: VLPMethod):
        super().__init__(method, ClassifierHead(2 * method.fused_width, 2))

    def logits(self, batch) -> torch.Tensor:
        text = self.method.encode_text(batch.input_ids, batch.attention_mask)
        images = self.method.encode_image(batch.images.flatten(0, 1)).states.unflatten(0, (-1, 2)).unbind(1)
        pooled = [self.method.fuse(text, batch.attention_mask, image).cls for image in images]
        return self.head(torch.cat(pooled, dim=-1))


class NLVR2TaskConfig(TaskConfig):
    # replicated: ALBEF's two blocks per fusion layer (one per image), single-stream fusion only;
    # pair: each image fused with the statement on its own, the two pooled states concatenated (METER)
    design: Literal["replicated", "pair"] = "replicated"
    sharing: Literal["key_value", "cross_attention", "all", "none"] = "key_value"  # ALBEF Table 7

    def check(self, experiment, at: str) -> list[str]:
        method = experiment.method
        if self.design == "replicated" and not method.capabilities().single_stream:
            return [f"{at}.design: 'replicated' (ALBEF's two blocks per fusion layer) needs a single-stream "
                    f"fusion, and {method.name!r} fuses with two streams; use design: pair"]
        return []


@register_task
class NLVR2Task(ClassificationTask):
    name = "nlvr2"
    embedded_prefix = "nlvr"
    config_class = NLVR2TaskConfig
    parse = staticmethod(parse_nlvr2)
    num_classes = 2

    def item(self, record: ImagePairRecord, generator: torch.Generator | None = None) -> tuple:
        return torch.stack([self.image(path, generator) for path in record.images]), record.sentence, record.label

    def build_model(self, method: VLPMethod) -> PairClassifier:
        if self.task_cfg.design == "replicated":
            return ReplicatedNLVR2(method, self.task_cfg.sharing)
        return PairNLVR2(method)
