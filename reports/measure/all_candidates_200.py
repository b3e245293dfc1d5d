"""Zero-shot retrieval over all candidates on the first 200 test images, per group of seed runs.

Methods without a contrastive embedding (ViLTA) can only rank by ITM over every pair, which is
evaluated on the first ``eval.retrieval.max_images`` (200) test images; the methods with ITC are
put on the same footing by their learning curve's last point (ITC over all candidates, the same
200 images and their 1,000 captions) and, where present, ``eval_itm_all_200.json`` (ITM over all
pairs, written by ``vlpbench eval --k-test all --max-images 200 --output``).

    python reports/measure/all_candidates_200.py vilta=runs/vilta_mini albef=runs/albef_mini ...

Each group is a folder of runs (one per seed); prints n, mean, std and the 95% interval of r_mean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlpbench.stats import seed_stats


def run_scores(run: Path) -> dict[str, float]:
    scores = {}
    results = json.loads((run / "results.json").read_text())
    retrieval = results.get("retrieval", {})
    if retrieval.get("k_test") == "all" and retrieval.get("num_images") == 200:
        scores["ITM, all pairs"] = retrieval["itm"]["r_mean"]
    extra = run / "eval_itm_all_200.json"
    if extra.is_file():
        scores["ITM, all pairs"] = json.loads(extra.read_text())["itm"]["r_mean"]
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    itc = [m["curve_itc_r_mean"] for m in curve if "curve_itc_r_mean" in m]
    if itc:
        scores["ITC, all candidates"] = itc[-1]
    return scores


def main(groups: list[str]) -> None:
    for group in groups:
        label, folder = group.split("=", 1)
        runs = sorted(p.parent for p in Path(folder).glob("*/results.json"))
        by_ranking: dict[str, list[float]] = {}
        for run in runs:
            if "retrieval" not in json.loads((run / "results.json").read_text()):
                continue  # still evaluating
            for ranking, value in run_scores(run).items():
                by_ranking.setdefault(ranking, []).append(value)
        for ranking, values in by_ranking.items():
            s = seed_stats(values)
            interval = f"[{s.ci95_low:.2f}, {s.ci95_high:.2f}]" if s.n > 1 else "(one seed)"
            print(f"{label:<22} {ranking:<22} n={s.n}  {s.mean:6.2f} ± {s.std:5.2f}  95% CI {interval}  "
                  f"seeds: {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main(sys.argv[1:])
