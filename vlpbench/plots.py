"""The report's figures (matplotlib, Agg): each has axis labels with units and a title that says
what was run. Every function writes one PNG and returns its path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
import numpy as np  # noqa: E402

from vlpbench.report import Cell, cell_label  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher),
    by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def flops_vs_quality(cells: list[Cell], flops: dict[str, float], metric: str, label: str, title: str,
                     path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    means = []
    for cell in cells:
        cost = flops.get(json.dumps(cell.keys, sort_keys=True))
        values = cell.values(metric)
        if cost is None or not values:
            continue
        ax.scatter([cost] * len(values), values, s=14, alpha=0.45, color="tab:blue")
        means.append((cost, float(np.mean(values)), "/".join(str(v) for v in cell.keys.values())))
    if means:
        xs, ys, names = zip(*means)
        keys = "/".join(k.rsplit(".", 1)[-1] for k in cells[0].keys) or "all runs"
        ax.scatter(xs, ys, s=46, color="tab:blue", edgecolor="black", zorder=3, label=f"mean of a configuration ({keys})")
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", lw=1.5, zorder=2,
                label="Pareto front (fewer FLOPs, higher quality)")
        for x, y, name in means:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        # below the axes: inside, it hides whichever points sit in its corner
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.set_xlabel("training GFLOPs per sample (forward + backward)")
    ax.set_ylabel(f"{label} (%)")
    ax.set_title(f"{title}: quality per FLOP (points: runs)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def heatmap(cells: list[Cell], row_key: str, column_key: str, metric: str, label: str, title: str,
            path: Path) -> Path:
    row_values = sorted({c.keys[row_key] for c in cells})
    column_values = sorted({c.keys[column_key] for c in cells})
    grid = np.full((len(row_values), len(column_values)), np.nan)
    counts = np.zeros_like(grid, dtype=int)
    for cell in cells:
        values = cell.values(metric)
        i, j = row_values.index(cell.keys[row_key]), column_values.index(cell.keys[column_key])
        counts[i, j] = len(values)
        if values:
            grid[i, j] = np.mean(values)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    for i in range(len(row_values)):
        for j in range(len(column_values)):
            text = "missing" if math.isnan(grid[i, j]) else f"{grid[i, j]:.1f}\nn={counts[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if math.isnan(grid[i, j]) else "white")
    ax.set_xticks(range(len(column_values)), [str(v) for v in column_values])
    ax.set_yticks(range(len(row_values)), [str(v) for v in row_values])
    ax.set_xlabel(column_key.rsplit(".", 1)[-1].replace("_", " "))
    ax.set_ylabel(row_key.rsplit(".", 1)[-1].replace("_", " "))
    fig.colorbar(image, ax=ax, label=f"{label} (%), mean over seeds")
    names = [k.rsplit(".", 1)[-1].replace("_", " ") for k in (row_key, column_key)]
    ax.set_title(f"{title}: {label} by {names[0]} x {names[1]}", fontsize=10)
    return _save(fig, path)


def loss_curves(cells: list[Cell], title: str, path: Path) -> Path:
    """The training loss of each configuration, averaged over its finished seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for cell in cells:
        curves = [_losses(run.run_dir / "metrics.jsonl") for run in cell.done]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], lw=1.3,
                label=f"{cell_label(cell.keys)} (n={len(curves)})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (sum of the method's losses)")
    ax.set_title(f"{title}: training loss, mean over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _losses(metrics_file: Path) -> dict[int, float]:
    if not metrics_file.is_file():
        return {}
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def ablation_bars(cells: list[Cell], metric: str, label: str, title: str, path: Path) -> Path:
    """Each configuration's mean with its 95% interval; its seeds as dots."""
    from vlpbench.report import statistics
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cells) + 2), 4.4))
    for i, cell in enumerate(cells):
        values = cell.values(metric)
        s = statistics(values)
        if not values:
            ax.text(i, 0, "missing", ha="center", va="bottom", rotation=90, fontsize=8)
            continue
        error = None if math.isnan(s["ci95_low"]) else [[s["mean"] - s["ci95_low"]], [s["ci95_high"] - s["mean"]]]
        ax.bar(i, s["mean"], color="tab:blue", alpha=0.7, yerr=error, capsize=4)
        ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(cells)), ["/".join(str(v) for v in c.keys.values()) or "all runs" for c in cells],
                  rotation=30 if len(cells) > 6 else 0, ha="right" if len(cells) > 6 else "center", fontsize=8)
    ax.set_xlabel("configuration (" + "/".join(k.rsplit(".", 1)[-1] for k in cells[0].keys) + ")")
    ax.set_ylabel(f"{label} (%)")
    ax.set_title(f"{title}: {label}, mean and 95% interval over seeds (dots: seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def gate_histogram(histogram: dict[str, list[int]], title: str, path: Path) -> Path:
    """LightVLP's gate p (Eq. 5) for matched and noisy pre-training pairs (the paper's Fig. 4), from
    the per-kind counts over equal bins of [0, 1] that the run recorded."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for kind, counts in histogram.items():
        counts = np.asarray(counts, dtype=float)
        edges = np.linspace(0, 1, len(counts) + 1)
        density = counts / max(counts.sum(), 1.0) / np.diff(edges)
        ax.stairs(density, edges, fill=True, alpha=0.55, label=f"{kind} (n={int(counts.sum())})")
    ax.set_xlabel("matching probability p (gate)")
    ax.set_ylabel("density (pairs per unit p)")
    ax.set_title(f"{title}: gate p, matched vs noisy pairs", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
