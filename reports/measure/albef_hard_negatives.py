"""Are the ITM hard negatives a trained ALBEF samples (Sec. 3.3) true of the image? Checked against
the embedded dataset's scene graphs: a negative caption counts as true of the image when every
object it names (colour, shape and grid cell) is in the image's scene.

    python reports/measure/albef_hard_negatives.py RUN [--batches 8]"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from common import embedded_records

from vlpbench.data.datasets import load_image
from vlpbench.data.transforms import ImageTransform
from vlpbench.pipeline import load_trained
from vlpbench.losses import negative_sampling_weights, sample_negatives
from vlpbench.pipeline import image_size_of


def named_objects(record: dict, graphs: dict) -> set[tuple]:
    objects = graphs[record["image"]]["objects"]
    return {(o["color"], o["shape"], o["row"], o["col"]) for o in (objects[p["object"]] for p in record["phrases"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg, method, tok = load_trained(args.run, torch.device("cpu"))
    method.eval()
    size = cfg.train.batch_size
    records, graphs, folder = embedded_records(cfg, size * args.batches * 4)
    transform = ImageTransform(image_size_of(cfg.model.vision))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(1))
    tally = Counter()
    for b in range(args.batches):
        part = [records[i] for i in order[b * size:(b + 1) * size].tolist()]
        images = torch.stack([transform(load_image(folder / r["image"]), None) for r in part])
        ids, mask = tok([r["caption"] for r in part], cfg.data.max_text_len)
        with torch.no_grad():
            sim = method.image_embedding(method.encode_image(images)) @ method.text_embedding(
                method.encode_text(ids, mask)).T / method.temp
        for kind, negatives in (("hard", sample_negatives(negative_sampling_weights(sim, size, True))),
                                ("uniform", sample_negatives(negative_sampling_weights(None, size, False)))):
            for i, j in enumerate(negatives.tolist()):
                scene = {(o["color"], o["shape"], o["row"], o["col"]) for o in graphs[part[i]["image"]]["objects"]}
                tally[kind, "negatives"] += 1
                tally[kind, "same image"] += part[j]["image"] == part[i]["image"]
                tally[kind, "true of the image"] += named_objects(part[j], graphs) <= scene
    print(json.dumps({f"{k[0]}: {k[1]}": v for k, v in sorted(tally.items())}, indent=1))


if __name__ == "__main__":
    main()
