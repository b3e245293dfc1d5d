"""The results store: every run directory of a sweep (or an experiment) as one row of a DataFrame.

Each run directory holds files written atomically (``vlpbench.io``): ``config.yaml`` (the resolved
config), ``env.json``, ``metrics.jsonl``, ``results.json``. ``load`` reads them into one row per
run: ``run_id`` and ``state``, the config flattened to ``config.<key path>`` columns, and every
number of ``results.json`` flattened to its key path (``retrieval.itm.r_mean``, ``train.seconds``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vlpbench.runs import read_results_if_any, read_run_config, run_dirs, run_state


def flatten(node, prefix: str = "") -> dict:
    """Nested dicts to ``{"a.b.c": value}``; lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def load(folder: str | Path) -> pd.DataFrame:
    """One row per run directory under ``folder``: run_id, state, config.* and result columns."""
    rows = []
    for path in run_dirs(folder):
        row = {"run_id": path.name, "run_dir": str(path), "state": run_state(path)["state"]}
        if (path / "config.yaml").is_file():
            row.update(flatten(read_run_config(path), "config"))
        results, error = read_results_if_any(path)
        if error:
            row["results_error"] = error
        if results is not None:
            row.update({k: v for k, v in flatten(results).items() if isinstance(v, (int, float, bool, str))
                        and k not in ("run_dir",)})
        rows.append(row)
    return pd.DataFrame(rows)
