"""The pre-training data sources (``data.source``): one opener per format, one registry.

An opener takes the data config, the annotations the run falls back on (``data.pretrain``, or the
embedded dataset's), the training transform, the run's skip report and a log, and returns the pairs as
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
from vlpbench.data.datasets import ImageCaptions, SkipReport, captions_of, load_source, pairs_of
from vlpbench.data.embedded import default_root
from vlpbench.data.index import PretrainDataset, open_pair_index
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
                    skips: SkipReport, log=print) -> PretrainData:
    """The records as a ``PairIndex`` (cached, one build per node); the embedded set's also as
    entries, which the uni-modal warm start reads."""
    index = open_pair_index(annotations, cfg.on_bad_record, cfg.verify_images, skips, SKIP_HINT, index_cache(cfg), log)
    entries = [] if cfg.pretrain is not None else load_source(annotations, cfg.on_bad_record, cfg.verify_images,
                                                              SkipReport(), SKIP_HINT)
    return PretrainData(PretrainDataset(index, transform), entries, index.captions)


def index_cache(cfg: DataConfig) -> Path:
    return Path(cfg.index_cache) if cfg.index_cache else Path(cfg.embedded.root or default_root()) / "index"


def open_webdataset(cfg: DataConfig, annotations: AnnotationSource, transform: ImageTransform,
                    skips: SkipReport, log=print) -> PretrainData:
    """``data.shards.urls``; unset, the embedded set's pairs written as shards beside it on first
    use (its records are then the warm start's and the tokenizer's, as with ``albef_json``)."""
    settings = cfg.shards
    if settings.urls is not None:
        found = shards.open_shards(settings.urls)
        return PretrainData(shards.ShardStream(found, transform, settings.shuffle_buffer), [],
                            lambda: shards.shard_captions(found))
    entries = load_source(annotations, cfg.on_bad_record, cfg.verify_images, skips, SKIP_HINT)
    folder = Path(annotations.image_root) / f"shards-{settings.samples_per_shard}-shuffled"
    if not folder.is_dir():
        written = shards.write_shards(pair_files(entries), folder, settings.samples_per_shard)
        log(f"wrote the embedded set's {written['num_samples']} pairs as {len(written['shards'])} shards: {folder}")
    found = shards.open_shards(str(folder / shards.read_manifest(folder)["pattern"]))
    return PretrainData(shards.ShardStream(found, transform, settings.shuffle_buffer), entries,
                        lambda: captions_of(entries))


def pair_files(entries: list[ImageCaptions]) -> Iterable[tuple[Path, str, int, list[list[float]] | None]]:
    """A JSON set's pairs as ``write_shards`` takes them, in ``PretrainDataset``'s order."""
    return ((entry.image, caption, match_id, entry.boxes) for entry, caption, match_id in pairs_of(entries))


PRETRAIN_SOURCES: dict[str, Callable[..., PretrainData]] = {"albef_json": open_albef_json,
                                                            "webdataset": open_webdataset}
