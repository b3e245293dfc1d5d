"""The pre-training data sources (``data.source``): one opener per format, one registry.

An opener takes the data config, the annotations the run falls back on (``data.pretrain``, or the
embedded dataset's), the training transform and the run's skip report, and returns the pairs as
a dataset the trainer batches (``vlpbench.data.loading``). Adding a format means one module with
its reader and one entry in ``PRETRAIN_SOURCES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from vlpbench.config import AnnotationSource, DataConfig
from vlpbench.data import shards
from vlpbench.data.datasets import (ImageCaptions, PretrainDataset, SkipReport, captions_of, load_image_captions,
                                    pairs_of)
from vlpbench.data.loading import BatchStream
from vlpbench.data.transforms import ImageTransform

SKIP_HINT = "set data.on_bad_record: skip"


@dataclass
class PretrainData:
    dataset: Dataset | BatchStream
    # the records as image files, for the uni-modal warm start (empty: a source that has none)
    entries: list[ImageCaptions]
    captions: Callable[[], Iterable[str]]  # every pre-training caption, for a tokenizer trained on them


def open_albef_json(cfg: DataConfig, annotations: AnnotationSource, transform: ImageTransform,
                    skips: SkipReport) -> PretrainData:
    entries = load_image_captions(annotations.ann_files, annotations.image_root, cfg.on_bad_record, cfg.verify_images,
                                  skips, SKIP_HINT)
    return PretrainData(PretrainDataset(entries, transform), entries, lambda: captions_of(entries))


def open_webdataset(cfg: DataConfig, annotations: AnnotationSource, transform: ImageTransform,
                    skips: SkipReport) -> PretrainData:
    """``data.shards.urls``; unset, the embedded set's pairs written as shards beside it on first
    use (its records are then the warm start's and the tokenizer's, as with ``albef_json``)."""
    settings = cfg.shards
    if settings.urls is not None:
        found = shards.open_shards(settings.urls)
        return PretrainData(shards.ShardStream(found, transform, settings.shuffle_buffer), [],
                            lambda: shards.shard_captions(found))
    entries = load_image_captions(annotations.ann_files, annotations.image_root, cfg.on_bad_record, cfg.verify_images,
                                  skips, SKIP_HINT)
    folder = Path(annotations.image_root) / f"shards-{settings.samples_per_shard}"
    if not folder.is_dir():
        shards.write_shards(pair_files(entries), folder, settings.samples_per_shard)
    found = shards.open_shards(str(folder / shards.read_manifest(folder)["pattern"]))
    return PretrainData(shards.ShardStream(found, transform, settings.shuffle_buffer), entries,
                        lambda: captions_of(entries))


def pair_files(entries: list[ImageCaptions]) -> Iterable[tuple[Path, str, int, list[list[float]] | None]]:
    """A JSON set's pairs as ``write_shards`` takes them, in ``PretrainDataset``'s order."""
    return ((entry.image, caption, match_id, entry.boxes) for entry, caption, match_id in pairs_of(entries))


PRETRAIN_SOURCES: dict[str, Callable[..., PretrainData]] = {"albef_json": open_albef_json,
                                                            "webdataset": open_webdataset}
