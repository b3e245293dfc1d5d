"""What every downstream task shares: its batch, its data sources, a keyed dataset the trainer's
sampler reads, the MLP head on the fused [CLS] state, and the task interface the runner drives."""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from vlpbench.config import AnnotationSource, ExperimentConfig, TaskConfig
from vlpbench.data.captions import CONTENT_WORDS
from vlpbench.data.datasets import SkipReport, load_image, load_records, record_reader
from vlpbench.data.embedded import ensure_embedded_dataset
from vlpbench.data.transforms import ImageTransform
from vlpbench.method import FusedPair, VLPMethod
from vlpbench.zoo.tokenizer import TextTokenizer

@dataclass
class TaskBatch:
    images: torch.Tensor            # [B, 3, H, W], or [B, 2, 3, H, W] for image pairs (NLVR2)
    input_ids: torch.Tensor         # [B, L]
    attention_mask: torch.Tensor    # [B, L]
    labels: torch.Tensor | None = None   # [B] class, or [B, A] soft answer scores (VQA classification)
    image_index: torch.Tensor | None = None  # [B] which image a caption belongs to (retrieval fine-tuning)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # task-specific tensors

    def to(self, device: torch.device) -> "TaskBatch":
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        return TaskBatch(**moved)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _to(value, device):
    if isinstance(value, dict):
        return {k: v.to(device, non_blocking=True) for k, v in value.items()}
    return None if value is None else value.to(device, non_blocking=True)


class KeyedDataset:
    """Records as the trainer's sampler reads them: ``dataset[(index, seed)]`` is ``make(record,
    generator)``, the generator seeded with the sample's seed (its augmentation: exact resume)."""

    def __init__(self, records: list, make: Callable):
        self.records, self.make = records, make

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        return self.make(self.records[index], torch.Generator().manual_seed(seed))


class ClassifierHead(nn.Sequential):
    """ALBEF's task MLP on the fused [CLS] state: Linear, ReLU, Linear."""

    def __init__(self, in_width: int, num_classes: int):
        super().__init__(nn.Linear(in_width, in_width), nn.ReLU(), nn.Linear(in_width, num_classes))


def fuse_batch(method: VLPMethod, images: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> FusedPair:
    """Encode both modalities and fuse them: the path every classification head reads."""
    image = method.encode_image(images)
    text = method.encode_text(input_ids, attention_mask)
    return method.fuse(text, attention_mask, image.states)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (predicted == labels).float().mean().item()


def majority_share(labels: list) -> float:
    """Accuracy (percent) of always answering the most frequent label."""
    return 100.0 * Counter(labels).most_common(1)[0][1] / len(labels)


def sentence_frame(text: str) -> str:
    """The text with the embedded lexicon's content words (colours, shapes, counts, positions, ...)
    blanked: what a guess that never looks at the image can key on."""
    return " ".join("_" if word in CONTENT_WORDS else word for word in text.lower().rstrip("?").split())


def frame_prior(train: list[tuple[str, object]], test: list[str]) -> list:
    """For each test text, the most frequent training label of its sentence frame (unseen frames:
    the most frequent label overall): a text-only baseline."""
    by_frame: dict[str, Counter] = {}
    for text, label in train:
        by_frame.setdefault(sentence_frame(text), Counter())[label] += 1
    overall = Counter(label for _, label in train).most_common(1)[0][0]
    return [by_frame[f].most_common(1)[0][0] if (f := sentence_frame(t)) in by_frame else overall for t in test]


class DownstreamTask(abc.ABC):
    """One downstream task: its data (opened and validated at construction), its model around
    the pre-trained method, its training batches and its evaluation."""

    name: ClassVar[str]
    config_class: ClassVar[type[TaskConfig]] = TaskConfig  # the task's section, downstream.<name>
    # the embedded dataset's annotation files of the task: <prefix>_train.json, <prefix>_test.json
    # (None: the task's name)
    embedded_prefix: ClassVar[str | None] = None

    def __init__(self, cfg: ExperimentConfig, task_cfg: TaskConfig, tokenizer: TextTokenizer, image_size: int,
                 log=print):
        self.cfg, self.task_cfg, self.tokenizer, self.log = cfg, task_cfg, tokenizer, log
        self.transform = ImageTransform(image_size, task_cfg.augment)
        self.skips = SkipReport()

    # ---- data ----
    def source(self, split: str) -> AnnotationSource:
        """The task's ``train`` or ``test`` annotations: as configured, else the embedded dataset's."""
        configured = getattr(self.task_cfg.data, split)
        if configured is not None:
            return configured
        folder = ensure_embedded_dataset(self.cfg.data.embedded, self.log)
        prefix = self.embedded_prefix or self.name
        return AnnotationSource(ann=str(folder / f"{prefix}_{split}.json"), image_root=str(folder))

    def open_records(self, split: str, parse: Callable) -> list:
        """The split's records, each checked by ``parse`` (bad ones: an error, or skipped and counted)."""
        source = self.source(split)
        records = load_records(source.ann_files, source.image_root, parse, self.cfg.data.on_bad_record,
                               self.cfg.data.verify_images, self.skips,
                               f"set data.on_bad_record: skip (downstream.{self.name}.data.{split}; "
                               "vlpbench downstream takes -o data.on_bad_record=skip)", record_reader(source))
        limit = self.task_cfg.data.max_test_records if split == "test" else None
        return records[:limit] if limit else records

    def image(self, path: Path, generator: torch.Generator | None = None) -> torch.Tensor:
        """The image as the model reads it: augmented (``augment``) with a training sample's
        generator, only resized without one."""
        return self.transform(load_image(path), generator)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(texts, self.cfg.data.max_text_len)

    def eval_batches(self, records: list) -> Iterator[list]:
        size = self.task_cfg.eval_batch_size
        for start in range(0, len(records), size):
            yield records[start:start + size]

    # ---- what each task defines ----
    @abc.abstractmethod
    def train_dataset(self) -> KeyedDataset: ...

    @abc.abstractmethod
    def collate(self, items: list) -> TaskBatch: ...

    @abc.abstractmethod
    def build_model(self, method: VLPMethod) -> nn.Module:
        """The task model: ``forward(batch, progress)`` returns its losses (``loss`` the total)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device) -> dict:
        """``{"metrics": {...}, "baselines": {...}, "num_test": N, ...}`` on the test split."""


class TaskModel(nn.Module):
    """Base of the task models: the pre-trained method plus task parts; no teacher to update."""

    def __init__(self, method: VLPMethod):
        super().__init__()
        self.method = method

    def after_optimizer_step(self) -> None:
        """Fine-tuning updates no momentum teacher (ALBEF's downstream distillation is not built)."""
