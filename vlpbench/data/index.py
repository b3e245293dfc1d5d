"""Pre-training pairs as flat arrays, built once per node and memory-mapped by every process.

A list of a million record objects costs every process its own copy: each rank parses the JSON
again, and each forked loader worker copies the objects page by page as it touches them (reference
counts and the garbage collector write to them). ``PairIndex`` keeps the pairs in a few numpy
arrays instead (one UTF-8 buffer plus offsets per text field), saved in a cache folder keyed by the
annotation files (path, size, modification time) and the parse settings. The first process of each
node (``LOCAL_RANK`` / ``SLURM_LOCALID`` 0) builds it; the others wait for it to appear. Every
process then maps the same files, so its workers share the pages and grow with nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vlpbench.config import AnnotationSource
from vlpbench.data.datasets import (DatasetError, ImageCaptions, SkipReport, UnreadableSample, load_image, load_source,
                                    pairs_of, pretrain_item)
from vlpbench.data.transforms import ImageTransform
from vlpbench.io import build_folder_atomically, write_json

INDEX_VERSION = 1
ARRAYS = ("image_bytes", "image_offsets", "caption_bytes", "caption_offsets", "pair_image", "match_id",
          "box_offsets", "boxes", "record_file", "record_index")
WAIT_SECONDS = 4 * 3600  # how long a process waits for its node's first process to build the index


def _packed(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode() for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _text(buffer: np.ndarray, offsets: np.ndarray, i: int) -> str:
    return buffer[offsets[i]:offsets[i + 1]].tobytes().decode()


@dataclass
class PairIndex:
    """Every (image, caption) pair of a pre-training set: pair ``i`` shows image ``pair_image[i]``."""
    arrays: dict[str, np.ndarray]
    files: list[str]  # the annotation files, for naming a record: "file#index"

    @classmethod
    def of(cls, entries: list[ImageCaptions]) -> "PairIndex":
        pairs = pairs_of(entries)
        image_of = {id(e): i for i, e in enumerate(entries)}
        sources = [e.source.rsplit("#", 1) for e in entries]
        files = list(dict.fromkeys(file for file, _ in sources))
        boxes = [e.boxes or [] for e in entries]
        arrays = dict(zip(("image_bytes", "image_offsets"), _packed([str(e.image) for e in entries])))
        arrays.update(zip(("caption_bytes", "caption_offsets"), _packed([c for _, c, _ in pairs])))
        arrays.update(
            pair_image=np.array([image_of[id(e)] for e, _, _ in pairs], dtype=np.int64),
            match_id=np.array([m for _, _, m in pairs], dtype=np.int64),
            box_offsets=np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64),
            boxes=np.array([box for b in boxes for box in b], dtype=np.float32).reshape(-1, 4),
            record_file=np.array([files.index(file) for file, _ in sources], dtype=np.int32),
            record_index=np.array([int(index) for _, index in sources], dtype=np.int64))
        return cls(arrays, files)

    def __len__(self) -> int:
        return len(self.arrays["pair_image"])

    def image(self, pair: int) -> Path:
        return Path(_text(self.arrays["image_bytes"], self.arrays["image_offsets"], int(self.arrays["pair_image"][pair])))

    def caption(self, pair: int) -> str:
        return _text(self.arrays["caption_bytes"], self.arrays["caption_offsets"], pair)

    def match_id(self, pair: int) -> int:
        return int(self.arrays["match_id"][pair])

    def boxes(self, pair: int) -> list[list[float]] | None:
        image, offsets = int(self.arrays["pair_image"][pair]), self.arrays["box_offsets"]
        return self.arrays["boxes"][offsets[image]:offsets[image + 1]].tolist() or None

    def source(self, pair: int) -> str:
        image = int(self.arrays["pair_image"][pair])
        return f"{self.files[self.arrays['record_file'][image]]}#{self.arrays['record_index'][image]}"

    def captions(self) -> Iterator[str]:
        return (self.caption(i) for i in range(len(self)))

    def save(self, folder: Path, skips: SkipReport) -> None:
        for name in ARRAYS:
            np.save(folder / f"{name}.npy", self.arrays[name])
        write_json(folder / "meta.json", {"version": INDEX_VERSION, "files": self.files, "pairs": len(self),
                                          "skips": {"counts": dict(skips.counts), "examples": skips.examples}})

    @classmethod
    def load(cls, folder: Path) -> tuple["PairIndex", SkipReport]:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        skips = SkipReport()
        skips.counts.update(meta["skips"]["counts"])
        skips.examples.update(meta["skips"]["examples"])
        return cls(arrays, meta["files"]), skips


def index_folder(cache: Path, source: AnnotationSource, settings: dict) -> Path:
    """``cache/index-<hash>`` of the annotation files' paths, sizes and times, their format and
    split, and the parse settings."""
    stamp = [(str(Path(f).resolve()), *((s.st_size, s.st_mtime_ns) if (s := _stat(f)) else ()))
             for f in source.ann_files]
    key = json.dumps({"files": stamp, "root": str(Path(source.image_root).resolve()), "format": source.format,
                      "split": source.splits, **settings, "v": INDEX_VERSION}, sort_keys=True)
    return cache / f"index-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def node_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


def open_pair_index(source: AnnotationSource, on_bad_record: str, verify_images: bool | int, skips: SkipReport,
                    skip_hint: str, cache: Path, log=print) -> PairIndex:
    """The pairs of ``source``, from the node's cached index (built here by the node's first process)."""
    folder = index_folder(cache, source, {"on_bad_record": on_bad_record, "verify": verify_images})
    failed = folder.with_name(f"{folder.name}.failed")
    if not folder.is_dir() and node_local_rank() == 0:
        failed.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            built = SkipReport()
            entries = load_source(source, on_bad_record, verify_images, built, skip_hint)
            build_folder_atomically(folder, lambda tmp: PairIndex.of(entries).save(tmp, built))
        except DatasetError as exc:  # the node's other processes raise it too, instead of waiting
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(str(exc))
            raise
        log(f"indexed {len(entries)} pre-training records in {time.perf_counter() - start:.1f}s: {folder}")
    _wait_for(folder, failed)
    index, found = PairIndex.load(folder)
    skips.merge(found)
    return index


def _wait_for(folder: Path, failed: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not folder.is_dir():
        if failed.is_file():
            raise DatasetError(failed.read_text())
        if time.monotonic() > deadline:
            raise DatasetError(f"{folder}: the node's first process (LOCAL_RANK 0) did not build the pre-training "
                               f"index within {WAIT_SECONDS} s")
        time.sleep(1.0)


class PretrainDataset(Dataset):
    """One (image, caption) pair per caption, from a ``PairIndex`` (flat arrays, shared by forked
    workers). Items are keyed by (index, seed) so random augmentation is a function of the
    sampler's seed, which makes resumed runs exact."""

    def __init__(self, pairs: PairIndex, transform: ImageTransform):
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, str, torch.Tensor, int] | UnreadableSample:
        """The image, the caption, the [H, W] map of the region the caption names, the image's id."""
        index, seed = key
        try:
            image = load_image(self.pairs.image(index))
        except DatasetError as exc:  # images not decoded at open (verify_images: false, or sampled)
            return UnreadableSample(f"{self.pairs.source(index)}: {exc}")
        return pretrain_item(self.transform, image, self.pairs.caption(index), self.pairs.boxes(index),
                             self.pairs.match_id(index), torch.Generator().manual_seed(seed))
