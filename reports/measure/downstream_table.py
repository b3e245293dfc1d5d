"""Methods x downstream tasks: each task's headline metric after pre-training, from random weights,
and the baselines on the same test records (issue 11's acceptance table).

    python reports/measure/downstream_table.py albef=runs/albef_mini/<run>,runs/albef_random/<run> ...

Each argument is ``label=PRETRAINED_RUN[,RANDOM_RUN]``; a run is read through its downstream.csv.
Prints a markdown table: per task, pre-trained / random weights with the difference and its 95%
interval (accuracies: two proportions on the same test size, unpaired and so conservative; the
retrieval r_mean, an average of six recalls, gets none), and the baselines of the task (chance,
majority class or answer, the text-only sentence-frame prior).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

HEADLINE = {"retrieval": "r_mean", "vqa": "accuracy", "nlvr2": "accuracy", "snli_ve": "accuracy",
            "grounding": "accuracy"}
BASELINES = ("chance", "majority_class", "majority_answer", "sentence_frame_prior")


def headline(run: str | None) -> dict[str, pd.Series]:
    if not run:
        return {}
    table = pd.read_csv(Path(run) / "downstream.csv")
    return {row.task: row for row in table.itertuples() if HEADLINE.get(row.task) == row.metric}


def cell(task: str, pretrained: dict, random: dict) -> str:
    values = " / ".join(f"{d[task].value:.1f}" if task in d else "-" for d in (pretrained, random))
    if task not in pretrained or task not in random:
        return values
    gain = pretrained[task].value - random[task].value
    if HEADLINE[task] != "accuracy":
        return f"{values} ({gain:+.1f})"
    n = pretrained[task].num_test
    half_width = 1.96 * 100 * math.sqrt(sum(p * (1 - p) / n for p in (pretrained[task].value / 100,
                                                                     random[task].value / 100)))
    return f"{values} ({gain:+.1f} ± {half_width:.1f})"


def baseline_cell(task: str, rows: list[dict]) -> str:
    for result in rows:
        if task in result:
            row = result[task]._asdict()
            parts = [f"{name.replace('_', ' ')} {row[name]:.1f}" for name in BASELINES
                     if name in row and pd.notna(row[name])]
            return ", ".join(parts) + f" (n = {row['num_test']})"
    return "-"


def main(argv: list[str]) -> None:
    groups = []
    for argument in argv:
        label, _, runs = argument.partition("=")
        pretrained, _, random = runs.partition(",")
        groups.append((label, headline(pretrained), headline(random)))
    tasks = list(HEADLINE)
    print("| method | " + " | ".join(f"{t} ({HEADLINE[t]})" for t in tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    for label, pretrained, random in groups:
        print(f"| {label} | " + " | ".join(cell(t, pretrained, random) for t in tasks) + " |")
    all_rows = [g[1] for g in groups] + [g[2] for g in groups]
    print("| baselines | " + " | ".join(baseline_cell(t, all_rows) for t in tasks) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
