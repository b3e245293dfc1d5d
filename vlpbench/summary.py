"""Across-seed summaries of finished runs: per metric, mean, std, 95% interval and the minimum
detectable difference (see ``vlpbench.stats``), plus the per-seed values they come from."""

from __future__ import annotations

import json
from pathlib import Path

from vlpbench.stats import seed_stats

# (path in results.json, label); the ITM ranking is the method's retrieval result, ITC-only its embedding's
METRICS = (
    ("retrieval.itm.r_mean", "r_mean"), ("retrieval.itm.txt_r1", "TR@1"), ("retrieval.itm.img_r1", "IR@1"),
    ("retrieval.itc.r_mean", "r_mean ITC-only"), ("train.seconds", "train s"), ("retrieval.seconds", "eval s"),
)


def _lookup(results: dict, dotted: str):
    node = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_results(run_dirs: list[Path]) -> list[dict]:
    """``results.json`` of each finished run (with its ``seed`` from ``config.yaml``)."""
    import yaml

    out = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no results.json (the run has not finished)")
        results = json.loads(path.read_text())
        if not results.get("complete") or "retrieval" not in results:
            raise FileNotFoundError(f"{path}: the run has not finished training and evaluation")
        results["seed"] = yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
        out.append(results)
    return out


def summarize(results: list[dict]) -> dict:
    """Per metric: the per-seed values and their statistics."""
    metrics = {}
    for dotted, label in METRICS:
        values = [_lookup(r, dotted) for r in results]
        if any(v is None for v in values):
            continue
        metrics[label] = {"values": values, **seed_stats(values).as_dict()}
    rankings = sorted({r["retrieval"].get("ranking", f"k_test={r['retrieval']['k_test']}") for r in results})
    return {"runs": [r["run_dir"] for r in results], "seeds": [r["seed"] for r in results],
            "experiments": sorted({r["experiment"] for r in results}), "ranking": rankings, "metrics": metrics}


def format_summary(summary: dict) -> str:
    n = len(summary["seeds"])
    lines = [f"{', '.join(summary['experiments'])}: {n} seeds {summary['seeds']}; ranking: {'; '.join(summary['ranking'])}",
             f"{'metric':<16} {'mean':>8} {'std':>7} {'95% interval':>19} {'MDD':>7}   per seed"]
    for label, m in summary["metrics"].items():
        interval = f"[{m['ci95_low']:.2f}, {m['ci95_high']:.2f}]"
        values = " ".join(f"{v:.2f}" for v in m["values"])
        lines.append(f"{label:<16} {m['mean']:8.2f} {m['std']:7.2f} {interval:>19} {m['mdd']:7.2f}   {values}")
    lines.append(f"MDD: the smallest difference between two configurations that {n} seeds each detect "
                 "(two-sided t-test, alpha 0.05, power 0.8)")
    return "\n".join(lines)
