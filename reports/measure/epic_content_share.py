"""EPIC acceptance figure: the share of masked tokens that are content words (colours, shapes,
sizes, counts, positions, relations, backgrounds) under saliency masking vs random masking.

    python reports/measure/epic_content_share.py TEACHER_RUN [--pairs 2000] [--draws 5]

TEACHER_RUN: a trained run (the saliency teacher, e.g. an albef_mini run). Content words are the
embedded generator's lexicon (exact on the embedded data)."""

from __future__ import annotations

import argparse
import json

import torch
from common import embedded_records

from vlpbench.methods.epic import sample_without_replacement
from vlpbench.data.transforms import ImageTransform
from vlpbench.data.datasets import load_image
from vlpbench.pipeline import load_trained
from vlpbench.pipeline import image_size_of
from vlpbench.wordroles import content_token_mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--mask-ratio", type=float, default=0.35)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg, teacher, tok = load_trained(args.teacher, torch.device("cpu"))
    teacher.eval()
    records, _, folder = embedded_records(cfg, args.pairs)
    transform = ImageTransform(image_size_of(cfg.model.vision))
    content = content_token_mask(tok, "embedded")
    special = torch.tensor(tok.special_ids)
    counts = {"saliency": [0, 0], "random": [0, 0]}
    for start in range(0, len(records), 128):
        part = records[start:start + 128]
        ids, mask = tok([r["caption"] for r in part], cfg.data.max_text_len)
        images = torch.stack([transform(load_image(folder / r["image"]), None) for r in part])
        eligible = mask.bool() & ~torch.isin(ids, special)
        with torch.no_grad():
            saliency = teacher.token_saliency(ids, mask, images).masked_fill(~eligible, 0.0)
        count = torch.ceil(args.mask_ratio * eligible.sum(1).float()).long()
        for name, weights in (("saliency", saliency), ("random", eligible.float())):
            for _ in range(args.draws):
                chosen = sample_without_replacement(weights, count)
                counts[name][0] += int(content[ids[chosen]].sum())
                counts[name][1] += int(chosen.sum())
    result = {name: {"content_share": c / n, "masked_tokens": n} for name, (c, n) in counts.items()}
    ids, mask = tok([r["caption"] for r in records], cfg.data.max_text_len)
    eligible = mask.bool() & ~torch.isin(ids, special)
    result["content_share_of_all_eligible_tokens"] = float(content[ids[eligible]].float().mean())
    result["pairs"], result["draws"], result["teacher"] = len(records), args.draws, args.teacher
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
