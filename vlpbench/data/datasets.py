"""Loaders for ALBEF-style JSON annotations, validated when the dataset is opened.

Formats: pre-training ``[{image, caption}]`` (caption a string or a list, one pair per caption;
optional ``boxes: [[x, y, w, h], ..]``, the regions the caption names, for VLMAE's RMIM);
retrieval test ``[{image, caption: [..]}]``; retrieval train ``[{image, caption, image_id}]``.
A bad record (missing field, wrong type, missing / empty / truncated / non-image file) is an
error naming the annotation file, the record index and the problem; with
``on_bad_record: skip`` it is skipped and counted instead.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from vlpbench.config import AnnotationSource
from vlpbench.data.transforms import ImageTransform
from vlpbench.errors import UserError


class DatasetError(UserError, ValueError):
    """A problem with a dataset file or record, phrased for the user."""


class RecordError(DatasetError):
    """One bad record. ``problem`` is the kind skip counts group by; ``detail`` (the resolved
    image path, the offending value) goes into the message only."""

    def __init__(self, problem: str, detail: str = ""):
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem = problem


@dataclass
class SkipReport:
    """Records skipped at open, counted by annotation file and problem, one example message each."""
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, ann_file: str, problem: str, message: str) -> None:
        key = f"{ann_file}: {problem}"
        self.counts[key] += 1
        self.examples.setdefault(key, message)

    def merge(self, other: "SkipReport") -> None:
        self.counts.update(other.counts)
        for key, message in other.examples.items():
            self.examples.setdefault(key, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``file: problem: N (e.g. file: record i: problem: detail)``, for each file and problem."""
        return "; ".join(f"{key}: {n} (e.g. {self.examples[key]})" for key, n in self.counts.most_common())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_file_and_problem": dict(self.counts), "examples": dict(self.examples),
                "summary": self.summary()}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency is composited over white, 16/32-bit greys rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """Decode fully (so truncation is caught here) and convert to RGB."""
    if not path.is_file():
        raise RecordError("image file is missing", str(path.absolute()))
    if path.stat().st_size == 0:
        raise RecordError("image file is empty", str(path.absolute()))
    try:
        return decode_image(path)
    except DecodeError as exc:
        raise RecordError("image file cannot be decoded", f"{path.absolute()} ({exc})") from None


class DecodeError(Exception):
    """An image that does not decode: ``ExceptionType: message``."""


def decode_image(file) -> Image.Image:
    """Decode ``file`` (a path or a binary file object) fully, so truncation is caught, as RGB."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(file) as img:
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from None


def read_annotation_file(ann_file: str | Path) -> list:
    path = Path(ann_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        records = json.loads(path.read_bytes())  # UTF-8, or UTF-16/32 (JSON's encodings, told by their zeros)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not text in UTF-8, UTF-16 or UTF-32 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


RecordReader = Callable[[str], list[tuple[int, object]]]


def read_albef_json(ann_file: str) -> list[tuple[int, object]]:
    return list(enumerate(read_annotation_file(ann_file)))


def karpathy_reader(splits: list[str]) -> RecordReader:
    """A reader of Karpathy split files: each image of ``splits`` as an ALBEF record, numbered by
    its place in the file's ``images`` (``{image: filepath/filename, caption: [raw, ..], image_id}``)."""
    def read(ann_file: str) -> list[tuple[int, object]]:
        path = Path(ann_file)
        if not path.is_file():
            raise DatasetError(f"{path}: annotation file not found")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"{path}: expected a Karpathy split file, an object with an 'images' list "
                               "(format: karpathy)")
        return [(i, _karpathy_record(image)) for i, image in enumerate(data["images"])
                if not isinstance(image, dict) or image.get("split") in splits]
    read.field_note = " (a Karpathy file: record i is images[i]; 'caption' is read from its sentences[].raw, 'image' " \
                      "from filepath/filename)"
    return read


def _karpathy_record(image: dict) -> object:
    if not isinstance(image, dict):
        return image  # refused by the parser, named by its place
    sentences = image.get("sentences")
    captions = [s.get("raw") if isinstance(s, dict) else s for s in sentences] if isinstance(sentences, list) else None
    name = image.get("filename")
    folder = image.get("filepath")
    return {"image": f"{folder}/{name}" if isinstance(folder, str) and isinstance(name, str) else name,
            "caption": captions, "image_id": image.get("imgid", image.get("cocoid"))}


def record_reader(source: AnnotationSource) -> RecordReader:
    return karpathy_reader(source.splits) if source.format == "karpathy" else read_albef_json


def _captions_of(record: dict) -> list[str]:
    caption = record.get("caption")
    if caption is None:
        raise RecordError("record has no 'caption'")
    captions = [caption] if isinstance(caption, str) else caption
    if not isinstance(captions, list) or not captions:
        raise RecordError("'caption' must be a string or a non-empty list of strings", f"got {type(caption).__name__}")
    for c in captions:
        if not isinstance(c, str) or not c.strip():
            raise RecordError("'caption' entries must be non-empty strings", f"got {c!r}")
    return [c.strip() for c in captions]


@dataclass
class ImageCaptions:
    image: Path
    captions: list[str]
    source: str  # "file#index", for error messages
    boxes: list[list[float]] | None = None  # [x, y, w, h] pixels: the regions the captions name (VLMAE RMIM)
    noise: str | None = None  # a known-noisy pair's kind (embedded data: mismatch, wrong_attribute); None: clean
    scene_id: int | str | None = None  # records of one scene_id show one scene (embedded data); None: unknown


def boxes_of(record: dict) -> list[list[float]] | None:
    """Optional ``boxes: [[x, y, w, h], ..]``, or the ``bbox`` of each entry of ``phrases`` (the
    embedded dataset's grounded phrases). None: no region annotation (the whole image counts)."""
    boxes = record.get("boxes")
    if boxes is None and isinstance(record.get("phrases"), list):
        boxes = [p.get("bbox") for p in record["phrases"] if isinstance(p, dict)] or None
    if boxes is None:
        return None
    if not isinstance(boxes, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in boxes):
        raise RecordError("'boxes' must be a list of [x, y, w, h] pixel boxes", f"got {str(boxes)[:80]}")
    return [[float(v) for v in b] for b in boxes] or None


def captions_of(entries: list[ImageCaptions]) -> Iterator[str]:
    return (caption for entry in entries for caption in entry.captions)


def load_image_captions(ann_files: list[str], image_root: str | Path, on_bad_record: str, verify_images: bool | int,
                        skips: SkipReport, skip_hint: str = "set data.on_bad_record: skip",
                        reader: RecordReader = read_albef_json) -> list[ImageCaptions]:
    """Validated (image, captions) entries from all ``ann_files``; ``skip_hint`` tells the user
    how to switch skipping on (a YAML key or a command-line flag)."""
    return load_records(ann_files, image_root, parse_image_captions, on_bad_record, verify_images, skips, skip_hint,
                        reader)


def load_source(source: AnnotationSource, on_bad_record: str, verify_images: bool | int, skips: SkipReport,
                skip_hint: str = "set data.on_bad_record: skip") -> list[ImageCaptions]:
    """``load_image_captions`` of a configured source, read in its format."""
    return load_image_captions(source.ann_files, source.image_root, on_bad_record, verify_images, skips, skip_hint,
                               record_reader(source))


def load_records(ann_files: list[str], image_root: str | Path, parse: Callable, on_bad_record: str,
                 verify_images: bool | int, skips: SkipReport, skip_hint: str = "set data.on_bad_record: skip",
                 reader: RecordReader = read_albef_json) -> list:
    """``parse(record, image_root, "file#index", verify)`` of every record of ``ann_files``, where
    ``verify`` says whether to decode its image (``images_to_verify``).

    A record ``parse`` refuses (``RecordError``) is an error naming the file, the record and the
    problem, or with ``on_bad_record: skip`` is skipped and counted in ``skips``; ``skip_hint``
    tells the user how to switch skipping on (a YAML key or a command-line flag).
    """
    root, entries, seen, skipped = Path(image_root), [], 0, SkipReport()
    files = {ann_file: reader(ann_file) for ann_file in ann_files}
    verified = images_to_verify(verify_images, sum(map(len, files.values())))
    for ann_file, records in files.items():
        for index, record in records:
            seen += 1
            try:
                entries.append(parse(record, root, f"{ann_file}#{index}", verified(seen - 1)))
            except RecordError as exc:
                message = f"{ann_file}: record {index}: {exc}{getattr(reader, 'field_note', '')}"
                if on_bad_record != "skip":
                    raise DatasetError(f"{message} ({skip_hint} to skip and count such records)") from None
                skipped.add(str(ann_file), exc.problem, message)
    files = ", ".join(map(str, ann_files))
    if not seen:
        raise DatasetError(f"{files}: no records (the annotation list is empty)")
    if not entries:
        raise DatasetError(f"{files}: no usable records: all {seen} were skipped (image paths are relative to "
                           f"{root.resolve()}). By problem: {skipped.summary()}")
    skips.merge(skipped)
    return entries


def images_to_verify(verify_images: bool | int, count: int) -> Callable[[int], bool]:
    """Which of ``count`` records get their image decoded at open: all (true), none (false), or a
    fixed random sample of that many (the same records every time)."""
    if isinstance(verify_images, bool):
        return lambda index: verify_images
    sample = set(random.Random(0).sample(range(count), min(verify_images, count)))
    return sample.__contains__


def text_field(record, key: str, fields: str) -> str:
    """A record's non-empty string ``key``, stripped; ``fields`` names what the record should hold."""
    if not isinstance(record, dict):
        raise RecordError(f"expected an object with {fields}", f"got {type(record).__name__}")
    text = record.get(key)
    if not isinstance(text, str) or not text.strip():
        raise RecordError(f"record has no {key!r} (a non-empty string)")
    return text.strip()


def check_image(image, root: Path, verify: bool, key: str = "image") -> Path:
    """The path of a record's image (``image`` as the record gives it, relative to ``root``),
    decoded fully first with ``verify``; without, the file is not touched (a bad one is met later)."""
    if not isinstance(image, str) or not image:
        raise RecordError(f"record has no {key!r} path")
    path = root / image
    if verify:
        load_image(path)
    return path


def parse_image_captions(record, root: Path, source: str, verify: bool) -> ImageCaptions:
    if not isinstance(record, dict):
        raise RecordError("expected an object with 'image' and 'caption'", f"got {type(record).__name__}")
    captions = _captions_of(record)
    path = check_image(record.get("image"), root, verify)
    noise = record.get("noise")
    return ImageCaptions(path, captions, source, boxes_of(record), noise if isinstance(noise, str) else None,
                         _scene_id_of(record))


def _scene_id_of(record: dict) -> int | str | None:
    """Optional ``scene_id``: images that share one show the same scene, so their pairs match."""
    scene_id = record.get("scene_id")
    if scene_id is not None and (isinstance(scene_id, bool) or not isinstance(scene_id, (int, str))):
        raise RecordError("'scene_id' must be an integer or a string", f"got {str(scene_id)[:80]}")
    return scene_id


def _match_ids(entries: list[ImageCaptions]) -> list[int]:
    """One id per entry, shared by the entries that show one image file or one scene_id, taken
    transitively: an image whose records give a scene_id in some places and none (or another) in
    others still has one id. Ids number the groups in order of first appearance."""
    parent: dict[tuple, tuple] = {}

    def root(key: tuple) -> tuple:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for entry in entries:
        if entry.scene_id is not None:
            image, scene = root(("image", entry.image)), root(("scene", entry.scene_id))
            parent[image] = scene
    ids: dict[tuple, int] = {}
    return [ids.setdefault(root(("image", e.image)), len(ids)) for e in entries]


def pairs_of(entries: list[ImageCaptions]) -> list[tuple[ImageCaptions, str, int]]:
    """One (entry, caption, match id) per caption, in the records' order."""
    return [(e, c, match_id) for e, match_id in zip(entries, _match_ids(entries)) for c in e.captions]


def pretrain_item(transform: ImageTransform, image: Image.Image, caption: str, boxes: list[list[float]] | None,
                  image_id: int, generator: torch.Generator) -> tuple[torch.Tensor, str, torch.Tensor, int]:
    """One training sample: the augmented image, the caption, the [H, W] map of the region the
    caption names (moved with the image), the image's id."""
    aug = transform.draw(image.size, generator)
    return transform.apply(image, aug), caption, transform.region(boxes, image.size, aug), image_id


@dataclass(frozen=True)
class UnreadableSample:
    """A training sample whose image failed to load: the collate skips it and reports ``message``."""
    message: str


class RetrievalDataset:
    """Images and their captions, with the index maps R@K needs."""

    def __init__(self, entries: list[ImageCaptions], transform: ImageTransform):
        self.entries = entries
        self.images = [e.image for e in entries]
        self.texts = [c for e in entries for c in e.captions]
        self.text_to_image = torch.tensor([i for i, e in enumerate(entries) for _ in e.captions])
        self.transform = transform

    def head(self, num_images: int) -> "RetrievalDataset":
        """The first ``num_images`` images with all their captions (a fixed subset)."""
        return self.subset(0, num_images)

    def subset(self, start: int, stop: int) -> "RetrievalDataset":
        """Images ``start`` to ``stop`` (exclusive) with all their captions."""
        return RetrievalDataset(self.entries[start:stop], self.transform)

    def image_tensor(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.images[index]), None)
