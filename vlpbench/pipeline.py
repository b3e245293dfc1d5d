"""Building blocks shared by pre-training and evaluation: data sources, tokenizer, method."""

from __future__ import annotations

from pathlib import Path

import torch

from vlpbench.config import AnnotationSource, ExperimentConfig, VisionConfig
from vlpbench.data.datasets import (ImageCaptions, PretrainDataset, RetrievalDataset, SkipReport,
                                    load_image_captions)
from vlpbench.data.embedded import ensure_embedded_dataset
from vlpbench.data.transforms import ImageTransform
from vlpbench.method import Batch, VLPMethod
from vlpbench.registry import get_method
from vlpbench.zoo.tokenizer import TextTokenizer, train_wordpiece
from vlpbench.zoo.vision import VISION_PRESETS


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def image_size_of(vision: VisionConfig) -> int:
    return vision.image_size or VISION_PRESETS[vision.preset].image_size


def data_sources(cfg: ExperimentConfig, log=print) -> dict[str, AnnotationSource]:
    """The pre-training and retrieval-test sources; the embedded dataset fills whichever is unset."""
    sources = {"pretrain": cfg.data.pretrain, "retrieval_test": cfg.data.retrieval_test}
    if any(s is None for s in sources.values()):
        folder = ensure_embedded_dataset(cfg.data.embedded, log)
        for name, source in sources.items():
            if source is None:
                sources[name] = AnnotationSource(ann=str(folder / f"{name}.json"), image_root=str(folder))
    return sources


def open_entries(source: AnnotationSource, cfg: ExperimentConfig, skips: SkipReport) -> list[ImageCaptions]:
    return load_image_captions(source.ann_files, source.image_root, cfg.data.on_bad_record, cfg.data.verify_images, skips)


def pretrain_dataset(entries: list[ImageCaptions], cfg: ExperimentConfig) -> PretrainDataset:
    aug = cfg.data.augment
    return PretrainDataset(entries, ImageTransform(image_size_of(cfg.model.vision), aug.crop_scale_min, aug.hflip))


def retrieval_dataset(entries: list[ImageCaptions], cfg: ExperimentConfig) -> RetrievalDataset:
    return RetrievalDataset(entries, ImageTransform(image_size_of(cfg.model.vision)))


def build_tokenizer(cfg: ExperimentConfig, entries: list[ImageCaptions], save_to: Path) -> TextTokenizer:
    """The configured tokenizer, or WordPiece trained on the pre-training captions; saved to ``save_to``."""
    if cfg.model.text.tokenizer:
        tokenizer = TextTokenizer.load(cfg.model.text.tokenizer)
    else:
        tokenizer = train_wordpiece((c for e in entries for c in e.captions), cfg.model.text.vocab_size)
    tokenizer.save(save_to)
    return tokenizer


def build_method(cfg: ExperimentConfig, tokenizer: TextTokenizer) -> VLPMethod:
    return get_method(cfg.method.name)(cfg.method, cfg.model, tokenizer)


class Collate:
    """Stacks images and tokenises captions into a ``Batch`` (runs in loader workers)."""

    def __init__(self, tokenizer: TextTokenizer, max_text_len: int):
        self.tokenizer, self.max_text_len = tokenizer, max_text_len

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> Batch:
        images, captions = zip(*items)
        input_ids, attention_mask = self.tokenizer(list(captions), self.max_text_len)
        return Batch(torch.stack(images), input_ids, attention_mask)
