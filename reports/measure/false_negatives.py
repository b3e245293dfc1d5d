"""How often two pairs of a pre-training batch match each other (the same image, another image of
the same scene (the embedded data's scene_id), or an identical caption), replaying a run's own batches: its data, tokenizer, sampler, batch size and steps.

    python reports/measure/false_negatives.py [EXPERIMENT]    # default experiments/albef_mini.yaml

No model is built and no image decoded: the counts follow from the sampler's order alone."""

from __future__ import annotations

import argparse

import torch

from vlpbench import pipeline
from vlpbench.config import load_config
from vlpbench.data.datasets import SkipReport
from vlpbench.losses import false_negative_count, matching_pairs
from vlpbench.data.loading import ResumableBatchSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="experiments/albef_mini.yaml")
    cfg = load_config(parser.parse_args().experiment)
    data = pipeline.open_pretrain(cfg, SkipReport(), lambda *a: None)
    dataset = data.dataset
    captions = list(data.captions())
    ids, mask = pipeline.make_tokenizer(cfg, captions)(captions, cfg.data.max_text_len)
    image_ids = torch.from_numpy(dataset.pairs.arrays["match_id"].copy())  # one id per scene
    files: dict = {}
    file_ids = torch.tensor([files.setdefault(dataset.pairs.image(i), len(files)) for i in range(len(dataset))])
    counts = {"any": [], "same image": [], "same scene": [], "identical caption": []}
    sampler = ResumableBatchSampler(len(dataset), cfg.train.batch_size, cfg.seed)
    for _, keys in zip(range(cfg.train.steps), sampler):
        index = torch.tensor([key for key, _ in keys])
        batch_ids, batch_mask, batch_images, batch_files = ids[index], mask[index], image_ids[index], file_ids[index]
        counts["any"].append(false_negative_count(matching_pairs(batch_ids, batch_mask, batch_images)).item())
        counts["same image"].append(false_negative_count(batch_files[:, None] == batch_files[None]).item())
        counts["same scene"].append(false_negative_count(batch_images[:, None] == batch_images[None]).item())
        counts["identical caption"].append(false_negative_count(matching_pairs(batch_ids, batch_mask)).item())
    steps = len(counts["any"])
    print(f"{cfg.name}: {len(dataset)} pairs of {len(files)} images ({len(set(image_ids.tolist()))} distinct scenes), "
          f"{len(set(captions))} distinct captions; batch {cfg.train.batch_size}, {steps} steps")
    print("matching ordered pairs per step: " + ", ".join(f"{k} {sum(v) / steps:.3f}" for k, v in counts.items())
          + f"; steps with any: {sum(c > 0 for c in counts['any'])} of {steps}")


if __name__ == "__main__":
    main()
