"""ViLTA acceptance figure: of the synthetic hard negatives (Sec. 3.3), the share that change a
content word, and the share that really contradict the image according to the scene graph.

    python reports/measure/vilta_negatives.py [EXPERIMENT] [--run RUN_DIR] [--pairs 2000]

Negatives come from the experiment's ViLTA at its initial weights (the shared uni-modal warm
start), or from a trained ``--run``. A negative contradicts the image when the new word is of the
same kind as the old one (colour, shape, size, count, place, background, tint) with another
meaning (synonyms such as box/square do not count), and, for a colour, shape or size, no object
of the scene has the changed attributes; a changed count contradicts when it differs from the
number of objects; a changed place word (left, top, above, ...) is counted as contradicting,
which over-counts relations that happen to hold for another object."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from common import embedded_records, experiment_tokenizer

from vlpbench import pipeline, unimodal
from vlpbench.config import load_config
from vlpbench.data import captions as cap
from vlpbench.data.scenes import BACKGROUND_TINTS, BACKGROUNDS, COLORS, SHAPES
from vlpbench.pipeline import load_trained
from vlpbench.method import Batch

PLACES = ("top", "middle", "bottom", "left", "center", "right", "above", "over", "below")


def word_kinds() -> dict[str, tuple[str, str]]:
    """word -> (kind, canonical meaning)."""
    kinds = {}
    for kind, canonicals in (("color", COLORS), ("shape", SHAPES), ("size", ("large", "small"))):
        for canonical in canonicals:
            for word in cap.SYNONYMS.get(canonical, (canonical,)):
                kinds[word] = (kind, canonical)
    kinds |= {w: ("count", w) for w in cap.NUMBERS} | {w: ("place", w) for w in PLACES}
    kinds |= {w: ("background", w) for w in BACKGROUNDS} | {w: ("tint", w) for w in BACKGROUND_TINTS}
    return kinds


def contradicts(kind: str, old: str, new: str, record: dict, graph: dict, char: int) -> bool:
    objects = graph["objects"]
    if kind == "count":
        return cap.NUMBERS.index(new) != len(objects)
    if kind in ("place", "background", "tint"):
        return True
    phrase = next((p for p in record["phrases"] if p["start"] <= char < p["end"]), None)
    if phrase is None:
        return True
    named = dict(objects[phrase["object"]]) | {kind: new}
    return not any(all(o[k] == named[k] for k in ("color", "shape", "size") if k in (kind, "color", "shape"))
                   for o in objects)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", nargs="?", default="experiments/vilta_mini.yaml")
    parser.add_argument("--run")
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.run:
        cfg, method, tok = load_trained(args.run, torch.device("cpu"))
    else:
        cfg = load_config(args.experiment)
        tok = experiment_tokenizer(cfg)
        source = pipeline.data_sources(cfg, log=lambda *_: None)["pretrain"]
        entries = pipeline.open_entries(source, cfg, pipeline.SkipReport())
        method = pipeline.build_method(unimodal.warm_start(cfg, entries, tok, log=lambda *_: None), tok)
    records, graphs, _ = embedded_records(cfg, args.pairs)
    kinds, tally = word_kinds(), Counter()
    for start in range(0, len(records), 128):
        part = records[start:start + 128]
        encoded = tok.hf([r["caption"] for r in part], padding="longest", truncation=True,
                         max_length=cfg.data.max_text_len, return_offsets_mapping=True, return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        batch = Batch(torch.zeros(len(part), 3, 1, 1), ids, mask)
        with torch.no_grad():
            teacher_states = method.language_teacher.encode_text_only(ids, mask)
            negative, _ = method.negative_texts(batch, teacher_states)
        for row, position in (negative != ids).nonzero().tolist():
            old, new = tok.hf.convert_ids_to_tokens([int(ids[row, position]), int(negative[row, position])])
            tally["negatives"] += 1
            tally["changes a content word"] += old in kinds
            same_kind = old in kinds and new in kinds and kinds[old][0] == kinds[new][0]
            if same_kind and kinds[old][1] != kinds[new][1]:
                tally["same kind, other meaning"] += 1
                char = int(encoded["offset_mapping"][row, position, 0])
                tally["contradicts the image"] += contradicts(kinds[old][0], kinds[old][1], kinds[new][1],
                                                              part[row], graphs[part[row]["image"]], char)
            elif same_kind:
                tally["synonym (still true)"] += 1
            else:
                tally["other word (e.g. a function word)"] += new not in kinds
    total = tally["negatives"]
    print(json.dumps({k: {"count": v, "share": v / total} for k, v in tally.items()} | {"pairs": len(records)},
                     indent=1))


if __name__ == "__main__":
    main()
