"""Visual entailment (SNLI-VE; ALBEF Sec. 5, following UNITER): three-way classification
(entailment, neutral, contradiction) by an MLP on the fused [CLS] state; accuracy.

Records (ALBEF format): ``{image, sentence, label}``, label one of the three names (or 0, 1, 2);
``image`` a path, or a Flickr30K id without extension as in ALBEF's released files (``<id>.jpg``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlpbench.data.datasets import RecordError, check_image, text_field
from vlpbench.downstream.common import (ClassifierHead, DownstreamTask, KeyedDataset, TaskBatch, TaskModel, accuracy,
                                        frame_prior, fuse_batch, majority_share)
from vlpbench.method import Progress, VLPMethod
from vlpbench.registry import register_task

LABELS = ("entailment", "neutral", "contradiction")


@dataclass
class SentenceRecord:
    image: Path
    sentence: str
    label: int


def parse_sentence(record, labels: dict) -> tuple[str, int]:
    """The ``sentence`` and the ``label`` (mapped through ``labels``) of a record."""
    sentence = text_field(record, "sentence", "'sentence' and 'label'")
    label = record.get("label")
    key = label.strip().lower() if isinstance(label, str) else label
    if key not in labels or (isinstance(key, bool) and not any(k is key for k in labels)):  # True is not 1 here
        raise RecordError(f"'label' must be one of {sorted(map(str, labels))}", f"got {label!r}")
    return sentence, labels[key]


def parse_ve(record, root: Path, source: str, verify_images: bool) -> SentenceRecord:
    sentence, label = parse_sentence(record, {**{n: i for i, n in enumerate(LABELS)}, **{i: i for i in range(len(LABELS))}})
    return SentenceRecord(check_image(released_image_name(record.get("image")), root, verify_images), sentence, label)


def released_image_name(image):
    """ALBEF's released SNLI-VE files name a Flickr30K image by its id, without an extension (the
    authors' ve_dataset reads ``<image_root>/<id>.jpg``); a name with an extension is kept."""
    if isinstance(image, int) and not isinstance(image, bool):
        image = str(image)
    return f"{image}.jpg" if isinstance(image, str) and image and not Path(image).suffix else image


class PairClassifier(TaskModel):
    """An MLP (``head``) on the fused [CLS] state of (image, sentence); subclasses fuse otherwise."""

    def __init__(self, method: VLPMethod, head: ClassifierHead):
        super().__init__(method)
        self.head = head

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        return self.head(fuse_batch(self.method, batch.images, batch.input_ids, batch.attention_mask).cls)

    def forward(self, batch: TaskBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.logits(batch).float(), batch.labels)}


class ClassificationTask(DownstreamTask):
    """A task whose records carry a class ``label``: accuracy against the majority-class baseline."""

    parse: staticmethod
    num_classes: int

    @functools.cached_property
    def train_records(self) -> list:
        return self.open_records("train", type(self).parse)

    def train_dataset(self) -> KeyedDataset:
        return KeyedDataset(self.train_records, self.item)

    def collate(self, items: list) -> TaskBatch:
        images, sentences, labels = zip(*items)
        input_ids, attention_mask = self.tokenize(list(sentences))
        return TaskBatch(torch.stack(images), input_ids, attention_mask, labels=torch.tensor(labels))

    @torch.no_grad()
    def evaluate(self, model: TaskModel, device: torch.device) -> dict:
        records = self.open_records("test", type(self).parse)
        predicted = torch.cat([model.logits(self.collate([self.item(r) for r in chunk]).to(device)).argmax(1).cpu()
                               for chunk in self.eval_batches(records)])
        labels = torch.tensor([r.label for r in records])
        blind = frame_prior([(r.sentence, r.label) for r in self.train_records], [r.sentence for r in records])
        return {"metrics": {"accuracy": accuracy(predicted, labels)},
                "baselines": {"chance": {"accuracy": 100.0 / self.num_classes},
                              "majority_class": {"accuracy": majority_share(labels.tolist())},
                              "sentence_frame_prior": {"accuracy": accuracy(torch.tensor(blind), labels)}},
                "num_test": len(records)}


@register_task
class SNLIVETask(ClassificationTask):
    name = "snli_ve"
    embedded_prefix = "ve"
    parse = staticmethod(parse_ve)
    num_classes = len(LABELS)

    def item(self, record: SentenceRecord, generator: torch.Generator | None = None) -> tuple:
        return self.image(record.image, generator), record.sentence, record.label

    def build_model(self, method: VLPMethod) -> PairClassifier:
        return PairClassifier(method, ClassifierHead(method.fused_width, self.num_classes))
