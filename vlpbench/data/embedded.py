"""The embedded default dataset: generated deterministically from its parameters, cached on disk.

Layout (all annotation files in the ALBEF JSON formats, image paths relative to the folder):
  pretrain.json          [{image, caption, image_id, scene_id, phrases, noise, partial}]  pre-training pairs;
                         scene_id: the first image_id whose scene graph a caption cannot tell apart
  retrieval_train.json   [{image, caption, image_id}]       5 clean captions of each pre-training image
  retrieval_test.json    [{image, caption: [5 captions], image_id}]
  vqa_{train,test}.json  [{question_id, image, question, answer: [..], dataset}]
  nlvr_{train,test}.json [{images: [a, b], sentence, label: "True"|"False"}]
  ve_{train,test}.json   [{image, sentence, label: entailment|neutral|contradiction}]
  grounding_{train,test}.json [{ref_id, image, text, bbox: [x, y, w, h]}]
  grounding_candidates.json   {image: [[x, y, w, h], ..]}  candidate boxes: every object of the scene
  scene_graphs.json      {image: {background, tint, objects: [...]}}
  manifest.json          parameters, counts; written last, so its presence marks a complete folder
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from pathlib import Path

from vlpbench.config import EmbeddedDataConfig
from vlpbench.data import captions as cap
from vlpbench.data.scenes import Scene, render, sample_scene
from vlpbench.io import build_folder_atomically, write_json

GENERATOR_VERSION = 5  # 5: pretrain records carry scene_id
TEST_CAPTIONS_PER_IMAGE = 5


def default_root() -> Path:
    return Path(os.environ.get("VLPBENCH_DATA", Path.home() / ".cache" / "vlpbench" / "data"))


def dataset_dir(cfg: EmbeddedDataConfig) -> Path:
    params = cfg.model_dump(exclude={"root"}) | {"generator_version": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.root or default_root()) / f"embedded-{digest}"


def ensure_embedded_dataset(cfg: EmbeddedDataConfig, log=print) -> Path:
    """The dataset folder for ``cfg``, generating it first if it is not complete on disk."""
    folder = dataset_dir(cfg)
    if (folder / "manifest.json").is_file():
        return folder
    log(f"generating the embedded dataset in {folder} ...")
    start = time.perf_counter()

    def fill(tmp: Path) -> None:
        counts = generate(cfg, tmp)
        write_json(tmp / "manifest.json", {"params": cfg.model_dump(exclude={"root"}),
                                           "generator_version": GENERATOR_VERSION, "counts": counts,
                                           "seconds": round(time.perf_counter() - start, 2)})
        log(f"generated {counts} in {time.perf_counter() - start:.1f}s")

    build_folder_atomically(folder, fill)
    return folder


def _render_split(scenes: list[Scene], split: str, out: Path, size: int, rng: random.Random) -> list[str]:
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes):
        rel = f"images/{split}/{i:06d}.png"
        render(scene, size, rng).save(out / rel, compress_level=1)
        paths.append(rel)
    return paths


def _pretrain_caption(scene: Scene, others: list[Scene], rng: random.Random, cfg: EmbeddedDataConfig) -> dict:
    size = cfg.image_size
    roll = rng.random()
    if roll < cfg.noisy_fraction / 2:
        return cap.describe(rng.choice(others), rng, size, rng.randrange(4)) | {"noise": "mismatch", "phrases": []}
    if roll < cfg.noisy_fraction:
        return cap.corrupt_attribute(scene, rng, size)
    if rng.random() < cfg.partial_fraction and len(scene.objects) >= 2:
        return cap.partial_caption(scene, rng, size)
    return cap.describe(scene, rng, size, rng.randrange(4))


def generate(cfg: EmbeddedDataConfig, out: Path) -> dict[str, int]:
    rng = random.Random(cfg.seed)
    train_scenes = [sample_scene(rng, cfg.max_objects) for _ in range(cfg.num_pretrain_images)]
    test_scenes = [sample_scene(rng, cfg.max_objects) for _ in range(cfg.num_test_images)]
    train_paths = _render_split(train_scenes, "pretrain", out, cfg.image_size, rng)
    test_paths = _render_split(test_scenes, "test", out, cfg.image_size, rng)

    pretrain, scene_ids = [], {}
    for image_id, (scene, path) in enumerate(zip(train_scenes, train_paths)):
        scene_id = scene_ids.setdefault(scene.key, image_id)
        for _ in range(cfg.captions_per_image):
            record = {"noise": None, "partial": False} | _pretrain_caption(scene, train_scenes, rng, cfg)
            pretrain.append({"image": path, "image_id": image_id, "scene_id": scene_id} | record)
    files = {
        "pretrain": pretrain,
        "retrieval_train": [{"image": p, "caption": cap.describe(s, rng, cfg.image_size, rng.randrange(4))["caption"],
                             "image_id": i} for i, (s, p) in enumerate(zip(train_scenes, train_paths))],
        "retrieval_test": [{"image": p, "image_id": i,
                            "caption": [cap.describe(s, rng, cfg.image_size, t)["caption"]
                                        for t in range(TEST_CAPTIONS_PER_IMAGE)]}
                           for i, (s, p) in enumerate(zip(test_scenes, test_paths))],
    }
    for split, scenes, paths in (("train", train_scenes, train_paths), ("test", test_scenes, test_paths)):
        files |= _downstream(split, scenes, paths, rng, cfg.image_size)
    # added in version 3 from a generator of their own, so every file above is as version 2 wrote it
    extra = random.Random(f"{cfg.seed}-v3")
    files["retrieval_train"] = [record | {"caption": caption} for record, scene in zip(files["retrieval_train"], train_scenes)
                                for caption in [record["caption"]] + [
                                    cap.describe(scene, extra, cfg.image_size, t)["caption"]
                                    for t in range(1, TEST_CAPTIONS_PER_IMAGE)]]
    for name, records in files.items():
        write_json(out / f"{name}.json", records)
    write_json(out / "grounding_candidates.json", {
        p: [o.bbox(cfg.image_size) for o in s.objects]
        for s, p in zip(train_scenes + test_scenes, train_paths + test_paths)})
    write_json(out / "scene_graphs.json", {
        p: {"background": s.background, "tint": s.tint, "objects": [dataclasses.asdict(o) for o in s.objects]}
        for s, p in zip(train_scenes + test_scenes, train_paths + test_paths)})
    return {name: len(records) for name, records in files.items()}


def _downstream(split: str, scenes: list[Scene], paths: list[str], rng: random.Random, size: int) -> dict[str, list]:
    vqa, nlvr, ve, grounding = [], [], [], []
    for scene, path in zip(scenes, paths):
        for question, answer in cap.vqa_questions(scene, rng):
            vqa.append({"question_id": len(vqa), "image": path, "question": question, "answer": [answer], "dataset": "vqa"})
        ve += [{"image": path, "sentence": s, "label": label} for s, label in cap.entailment_hypotheses(scene, rng)]
        grounding += [{"ref_id": len(grounding) + k, "image": path, "text": text, "bbox": box}
                      for k, (text, box) in enumerate(cap.referring_expressions(scene, size))]
    for a in range(0, len(scenes) - 1, 2):
        sentence, truth = cap.nlvr_statement(scenes[a], scenes[a + 1], rng)
        nlvr.append({"images": [paths[a], paths[a + 1]], "sentence": sentence, "label": str(truth)})
    return {f"vqa_{split}": vqa, f"nlvr_{split}": nlvr, f"ve_{split}": ve, f"grounding_{split}": grounding}
