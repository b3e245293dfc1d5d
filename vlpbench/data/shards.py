"""Pre-training from webdataset tar shards (``data.source: webdataset``), as img2dataset writes them.

A sample is the members of one key: an image (``{key}.jpg``, ``.jpeg``, ``.png`` or ``.webp``)
and its caption, in ``{key}.json`` (``caption``; optional ``match_id``, the id shared by the
pairs of one image or scene, and ``boxes``, VLMAE's regions) or ``{key}.txt``. ``write_shards``
(``vlpbench data shard``) writes an ALBEF-JSON set in this layout, one sample per pair.

The stream is exactly resumable. The shards are split into ``streams = ranks x max(1, workers)``
lanes: in epoch ``e`` lane ``s`` reads, in order, the shards at positions ``s, s + streams, ..``
of a permutation drawn from (seed, e), through a shuffle buffer drawn from (seed, e, s) that is
emptied at the end of the epoch. Batch ``b`` of a process comes from its lane ``b mod workers``
and holds that lane's next ``batch / ranks`` samples. So which sample lands in which batch depends
only on the seed, the shards and the number of lanes, and a resumed run re-reads (without
decoding) the part of the current epoch its lanes had consumed, then continues exactly. Resuming
with another number of ranks or workers continues with another order: within that epoch, some
samples are then seen twice and some not at all.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import TarWriter
from webdataset.tariterators import group_by_keys, tar_file_iterator

from vlpbench.data.datasets import (DatasetError, DecodeError, RecordError, UnreadableSample, boxes_of, decode_image,
                                    pretrain_item)
from vlpbench.data.loading import LoaderPlan
from vlpbench.data.transforms import ImageTransform
from vlpbench.io import build_folder_atomically, write_json
from vlpbench.streams import derived_seed

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"  # written by write_shards: the samples of each shard, so none is counted at open


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns (``shards/{000000..000099}.tar``) expanded, in the order given."""
    return [url for pattern in ([urls] if isinstance(urls, str) else urls) for url in braceexpand(pattern)]


def open_shards(urls: str | list[str]) -> list[Shard]:
    """The shards ``urls`` names, each with its sample count: from the folder's ``manifest.json``
    or img2dataset's ``{shard}_stats.json``, else counted from the tar's member names."""
    shards, manifests = [], {}
    for url in expand_urls(urls):
        path = Path(url)
        if not path.is_file():
            raise DatasetError(f"data.shards.urls: {url}: shard not found (pattern {urls!r})")
        counts = manifests.setdefault(path.parent, _manifest_counts(path.parent))
        shards.append(Shard(path, counts[path.name] if path.name in counts else _count_samples(path)))
    if not shards:
        raise DatasetError(f"data.shards.urls: {urls!r} names no shard")
    if not any(shard.samples for shard in shards):
        raise DatasetError(f"data.shards.urls: the {len(shards)} shards of {urls!r} hold no sample with an image "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    return shards


def read_manifest(folder: Path) -> dict:
    """``write_shards``' record of a folder: ``num_samples``, ``shards`` (name, samples), and
    ``pattern``, the brace pattern of their names within the folder."""
    return json.loads((folder / MANIFEST).read_text())


def _manifest_counts(folder: Path) -> dict[str, int]:
    if not (folder / MANIFEST).is_file():
        return {}
    return {shard["name"]: shard["samples"] for shard in read_manifest(folder)["shards"]}


def _count_samples(path: Path) -> int:
    stats = path.with_name(f"{path.name.removesuffix('.tar')}_stats.json")
    if stats.is_file():
        return int(json.loads(stats.read_text())["successes"])
    with tarfile.open(path) as tar:  # headers only: a regular file is seeked past each member's data
        return len({name.rsplit(".", 1)[0] for name in tar.getnames()
                    if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS})


def write_shards(pairs: Iterable[tuple[Path, str, int, list[list[float]] | None]], out: Path,
                 samples_per_shard: int, shuffle_seed: int | None = 0) -> dict:
    """``(image, caption, match_id, boxes)`` pairs as shards ``out/shard-000000.tar``, .. and a
    manifest, written atomically; the image files' bytes are kept as they are.

    The pairs are written in a random order drawn from ``shuffle_seed`` (None: as given). A
    stream's shuffle buffer mixes only a window of it, and in a file that lists an image's captions
    together they would stay close: ALBEF's queue (which knows no ids) then holds the other caption
    of a batch's image as a negative 2.7x as often (11.7% of samples against 4.4% from a global
    shuffle, the embedded set, a buffer of 1,000 and a queue of 256)."""
    pairs = list(pairs)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(pairs)

    def fill(folder: Path) -> None:
        shards, writer = [], None
        for index, (image, caption, match_id, boxes) in enumerate(pairs):
            if index % samples_per_shard == 0:
                if writer is not None:
                    writer.close()
                shards.append({"name": f"shard-{len(shards):06d}.tar", "samples": 0})
                writer = TarWriter(str(folder / shards[-1]["name"]))
            extension = image.suffix.lower().lstrip(".").replace("jpeg", "jpg")
            if extension not in IMAGE_EXTENSIONS:
                raise DatasetError(f"{image}: a shard holds {', '.join(IMAGE_EXTENSIONS)} images, not .{extension}")
            meta = {"caption": caption, "match_id": match_id, "image": image.name, **({"boxes": boxes} if boxes else {})}
            writer.write({"__key__": f"{index:09d}", extension: image.read_bytes(), "json": json.dumps(meta).encode()})
            shards[-1]["samples"] += 1
        if writer is None:
            raise DatasetError("no pre-training pairs to write as shards")
        writer.close()
        last = f"{len(shards) - 1:06d}"
        write_json(folder / MANIFEST, {"num_samples": sum(s["samples"] for s in shards), "shards": shards,
                                       "pattern": f"shard-{{000000..{last}}}.tar", "shuffle_seed": shuffle_seed})
    build_folder_atomically(out, fill)
    return read_manifest(out)


def decode_sample(sample: dict, transform: ImageTransform, generator: torch.Generator):
    """A raw sample (``{ext: bytes}``) as a training item, or ``UnreadableSample`` naming the shard and key."""
    try:
        meta = _metadata(sample)
        return pretrain_item(transform, _image(sample), _caption(meta, sample), boxes_of(meta),
                             _match_id(meta, sample), generator)
    except RecordError as exc:
        return UnreadableSample(f"{sample['__url__']}: sample {sample['__key__']}: {exc}")


def _metadata(sample: dict) -> dict:
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError("the .json member is not valid JSON", str(exc)) from None
    if not isinstance(meta, dict):
        raise RecordError("the .json member must be an object", f"got {type(meta).__name__}")
    return meta


def _image(sample: dict) -> Image.Image:
    data = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if data is None:
        raise RecordError(f"the sample has no image member ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        return decode_image(io.BytesIO(data))
    except DecodeError as exc:
        raise RecordError("image cannot be decoded", str(exc)) from None


def _caption(meta: dict, sample: dict) -> str:
    caption = meta.get("caption")
    if caption is None and "txt" in sample:
        caption = sample["txt"].decode("utf-8", errors="replace")
    if not isinstance(caption, str) or not caption.strip():
        raise RecordError("the sample has no caption (a non-empty 'caption' in .json, or a .txt member)")
    return caption.strip()


def _match_id(meta: dict, sample: dict) -> int:
    """The ``match_id`` the writer recorded, else one id per sample (img2dataset: one pair per image)."""
    match_id = meta.get("match_id")
    if isinstance(match_id, int) and not isinstance(match_id, bool):
        return match_id
    return derived_seed(sample["__url__"], sample["__key__"]) >> 2  # apart from small written ids


def shard_captions(shards: list[Shard]) -> Iterator[str]:
    """Every caption of ``shards`` in order, reading only the text members."""
    for shard in shards:
        for sample in raw_samples(shard.path, select=lambda name: name.endswith((".json", ".txt"))):
            try:
                yield _caption(_metadata(sample), sample)
            except RecordError:
                continue  # counted when the sample is met in training


def raw_samples(path: Path, select: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """The samples of one shard as ``{__key__, __url__, ext: bytes}``, undecoded."""
    with open(path, "rb") as stream:
        files = ({**member, "__url__": str(path)} for member in tar_file_iterator(stream, select_files=select))
        yield from group_by_keys(files)


class ShardStream:
    """The pre-training pairs of a list of shards, as a ``BatchStream`` (see the module docstring)."""

    def __init__(self, shards: list[Shard], transform: ImageTransform, shuffle_buffer: int):
        self.shards, self.transform, self.shuffle_buffer = shards, transform, shuffle_buffer

    def __len__(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def batches(self, collate: Callable, plan: LoaderPlan) -> Iterator:
        lanes = plan.world_size * max(1, plan.num_workers)
        if len(self.shards) < lanes:
            raise DatasetError(f"data.shards: {len(self.shards)} shards for {lanes} loader lanes ({plan.world_size} "
                               f"processes x {max(1, plan.num_workers)} workers): each lane reads whole shards, so "
                               "write more, smaller shards (vlpbench data shard --samples-per-shard) or use fewer "
                               "workers")
        lanes_dataset = _Lanes(self, collate, plan)
        return iter(DataLoader(lanes_dataset, batch_size=None, num_workers=plan.num_workers,
                               pin_memory=plan.pin_memory, persistent_workers=plan.num_workers > 0))

    def epoch_shards(self, seed: int, epoch: int, lane: int, lanes: int) -> list[Shard]:
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(
            derived_seed(seed, "shard-order", epoch)))
        return [self.shards[i] for i in order[lane::lanes].tolist()]

    def emissions(self, seed: int, lane: int, lanes: int, skip: int) -> Iterator[tuple[int, dict]]:
        """Lane ``lane``'s raw samples in training order, numbered, from number ``skip`` on."""
        epoch, number = 0, 0
        while True:
            shards = self.epoch_shards(seed, epoch, lane, lanes)
            length = sum(shard.samples for shard in shards)
            if number + length <= skip:  # the whole epoch is behind the resume point: not read
                number, epoch = number + length, epoch + 1
                continue
            rng = random.Random(derived_seed(seed, "shard-shuffle", epoch, lane))
            for sample in shuffled((s for shard in shards for s in raw_samples(shard.path)), self.shuffle_buffer, rng):
                if number >= skip:
                    yield number, sample
                number += 1
            epoch += 1


def shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """``samples`` through a shuffle buffer of ``size``, emptied in random order at the end."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


class _Lanes(IterableDataset):
    """The batches one loader worker (or the process itself, without workers) yields."""

    def __init__(self, stream: ShardStream, collate: Callable, plan: LoaderPlan):
        self.stream, self.collate, self.plan = stream, collate, plan

    def __iter__(self) -> Iterator:
        plan, info = self.plan, get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        local = (plan.start_batch + worker) % workers  # the DataLoader asks worker 0 for the first batch
        done = max(0, -(-(plan.start_batch - local) // workers))  # this lane's batches before start_batch
        lane, size = plan.rank * workers + local, plan.rank_batch_size
        items = []
        for number, sample in self.stream.emissions(plan.seed, lane, plan.world_size * workers, done * size):
            generator = torch.Generator().manual_seed(derived_seed(plan.seed, "shard-augment", lane, number))
            items.append(decode_sample(sample, self.stream.transform, generator))
            if len(items) == size:
                yield self.collate(items)
                items = []
