"""Start-up of a large pre-training set: seconds to the first batch and memory, per simulated rank.

    python reports/measure/startup.py /tmp/startup --records 1000000 --ranks 8 --verify 1000

writes ``/tmp/startup/ann.json`` (records of one caption each; every image a hard link to a
small JPEG, so paths are real but nothing large is stored), then starts ``--ranks`` processes at
once, each with its own ``LOCAL_RANK``, that open the set as a run does (``open_pretrain``) and
fork ``--workers`` processes that read every pair's record, as loader workers do over an epoch.
It prints, per rank, the seconds to open and the resident memory, and per worker the memory it
had to copy from its parent (private dirty pages: copy-on-write). Run it with another checkout
first on ``PYTHONPATH`` for the figures before a change.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

LINKS_PER_FILE = 50_000  # ext4 allows 65,000 hard links to one file
WORDS = "a the red blue green small large cube sphere cone left right of on near above below two three".split()


def private_dirty_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def write_records(folder: Path, count: int) -> Path:
    ann = folder / "ann.json"
    if ann.is_file() and json.loads((folder / "count.json").read_text()) == count:
        return ann
    from PIL import Image
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    records = []
    for i in range(count):
        name, original = images / f"{i:07d}.jpg", folder / f"original-{i // LINKS_PER_FILE}.jpg"
        if not original.exists():
            Image.new("RGB", (16, 16), (200, 30, 30)).save(original)
        if not name.exists():
            os.link(original, name)
        records.append({"image": f"img/{i:07d}.jpg", "caption": " ".join(rng.choices(WORDS, k=12))})
    ann.write_text(json.dumps(records))
    (folder / "count.json").write_text(json.dumps(count))
    return ann


def touch_every_pair(dataset) -> None:
    """What loader workers do to the records over an epoch: read each pair's path, caption and id."""
    pairs = dataset.pairs
    if isinstance(pairs, list):  # before the index: (entry, caption, match id) objects
        for entry, caption, match_id in pairs:
            (entry.image, entry.boxes, len(caption), match_id)
    else:
        for i in range(len(dataset)):
            (pairs.image(i), pairs.boxes(i), pairs.caption(i), pairs.match_id(i))
    gc.collect()  # a worker's collector visits every tracked object it inherited


def worker(dataset, pipe) -> None:
    before = private_dirty_mb()
    start = time.perf_counter()
    touch_every_pair(dataset)
    pipe.send({"copied_mb": round(private_dirty_mb() - before, 1), "seconds": round(time.perf_counter() - start, 1)})


def one_rank(args) -> None:
    from vlpbench import pipeline
    from vlpbench.config import config_from_dict
    from vlpbench.data.datasets import SkipReport
    start = time.perf_counter()
    cfg = config_from_dict({
        "name": "startup", "method": {"name": "albef", "embed_dim": 32, "queue_size": 16},
        "model": {"vision": {"image_size": 32}}, "train": {"steps": 1, "batch_size": 8},
        "data": {"pretrain": {"ann": str(args.folder / "ann.json"), "image_root": str(args.folder)},
                 "verify_images": json.loads(args.verify), "embedded": {"root": str(args.folder / "cache")}},
        "eval": {"retrieval": {"enabled": False}}})
    data = pipeline.open_pretrain(cfg, SkipReport(), log=lambda *_: None)
    opened, rss = time.perf_counter() - start, rss_mb()
    context = multiprocessing.get_context("fork")
    results = []
    for _ in range(args.workers):
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(data.dataset, child))
        process.start()
        results.append(parent.recv())
        process.join()
    print(json.dumps({"rank": int(os.environ.get("LOCAL_RANK", 0)), "pairs": len(data.dataset),
                      "open_seconds": round(opened, 1), "rss_mb": round(rss, 1), "workers": results}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--verify", default="1000", help="data.verify_images as JSON: true, false or a count")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)  # one simulated rank
    args = parser.parse_args()
    if args.rank:
        return one_rank(args)
    tic = time.perf_counter()
    write_records(args.folder, args.records)
    print(f"records ready ({args.records}) in {time.perf_counter() - tic:.0f}s", flush=True)
    command = [sys.executable, __file__, str(args.folder), "--rank", "--workers", str(args.workers),
               "--verify", args.verify]
    started = time.perf_counter()
    ranks = [subprocess.Popen(command, env={**os.environ, "LOCAL_RANK": str(r)}) for r in range(args.ranks)]
    for rank in ranks:
        rank.wait()
    print(f"all {args.ranks} ranks done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
