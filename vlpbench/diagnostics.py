"""Verdicts on a finished pre-training run, read from its ``metrics.jsonl``.

- ``itm_learned``: an ITM head that always predicts its label prior (the share p of positives
  among its pairs) has the loss H(p) = -p ln p - (1 - p) ln(1 - p), 0.6365 nats for ALBEF's 1
  positive : 2 negatives. The head has learned to match only if its final loss (the mean over the
  last quarter of the logged steps) is ``eval.itm_learned_margin`` nats below H(p).
- ``flattened``: a least-squares line through the logged loss over the last quarter of the run;
  the curve has flattened when that line falls by less than ``eval.flat_tolerance`` of the mean
  loss across the quarter. A run that has not flattened is still learning: a comparison at that
  step compares speeds, not end points.
- ``false_negative_pairs_per_step``: how many ordered in-batch pairs matched each other (the same
  image, an identical caption) per step, which ``false_negatives: exclude`` kept out of the negatives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def label_entropy(p: float) -> float:
    """H(p) in nats: the loss of a binary head that always predicts the prior p."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def last_quarter(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` over the last quarter of the logged steps."""
    points = [(r["step"], r[key]) for r in records if key in r]
    if not points:
        return []
    start = points[-1][0] - (points[-1][0] - points[0][0]) * 0.25
    return [(step, value) for step, value in points if step >= start]


def itm_verdict(records: list[dict], positive_fraction: float, margin: float) -> dict | None:
    """Whether the ITM head left its label prior (None where the run logs no ITM loss)."""
    tail = last_quarter(records, "loss_itm")
    if not tail:
        return None
    final, prior = sum(v for _, v in tail) / len(tail), label_entropy(positive_fraction)
    return {"itm_learned": final < prior - margin, "final_loss_itm": round(final, 4),
            "prior_entropy": round(prior, 4), "margin": margin}


def flatness(records: list[dict], tolerance: float, key: str = "loss") -> dict | None:
    """The fitted change of ``key`` over the run's last quarter, relative to its mean there."""
    tail = last_quarter(records, key)
    if len(tail) < 3:
        return None
    steps, values = [s for s, _ in tail], [v for _, v in tail]
    ms, mv = sum(steps) / len(steps), sum(values) / len(values)
    var = sum((s - ms) ** 2 for s in steps)
    slope = sum((s - ms) * (v - mv) for s, v in tail) / var
    change = slope * (steps[-1] - steps[0]) / abs(mv) if mv else math.nan
    return {"flattened": abs(change) < tolerance, "relative_change_last_quarter": round(change, 4),
            "slope_per_1000_steps": round(slope * 1000, 5), "tolerance": tolerance}


def read_metrics(metrics_file: Path) -> list[dict]:
    """The training lines of ``metrics.jsonl`` (learning-curve lines carry no loss and are kept too)."""
    if not Path(metrics_file).is_file():
        return []
    return [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]


def false_negatives(records: list[dict]) -> float | None:
    """Matching in-batch pairs per step (``false_negative_pairs``), averaged over the logged windows."""
    values = [r["false_negative_pairs"] for r in records if "false_negative_pairs" in r]
    return round(sum(values) / len(values), 3) if values else None


def run_verdicts(metrics_file: Path, positive_fraction: float | None, margin: float, tolerance: float) -> dict:
    """``{"itm": ..., "convergence": ..., "false_negative_pairs_per_step": ...}`` for ``results.json``
    (a part is None where it does not apply)."""
    records = read_metrics(metrics_file)
    return {"itm": itm_verdict(records, positive_fraction, margin) if positive_fraction else None,
            "convergence": flatness(records, tolerance), "false_negative_pairs_per_step": false_negatives(records)}
