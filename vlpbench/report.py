"""Comparison reports: every run of a sweep (or of an experiment) gathered into tables of
configurations x metrics over seeds, set beside the paper's published table, with plots.

An experiment file names what its report shows in a ``report`` section::

    report:
      rows: [method.image_mask_ratio]         # config keys that label the table's rows
      columns: [method.text_mask_ratio]       # ... and its columns (a heat map with one of each)
      metrics: {retrieval.itm.r_mean: R Mean} # results.json paths -> labels; the first is the headline
      baseline: {method.image_mask_ratio: 0.5, method.text_mask_ratio: 0.5}  # measured deltas to it
      reference:                              # the published table (reports/reference/<table>.csv)
        table: lightvlp_table5
        metrics: {retrieval.itm.r_mean: overall_r_mean}
        baseline: {method.image_mask_ratio: 0.5, method.text_mask_ratio: 0.5}

A cell is one configuration: the mean over its finished seeds, the standard deviation, the 95%
interval of the mean and the seed count; runs that have not finished are listed with their state
(a report can be built while a sweep runs). For each published row other than the baseline, the
report compares the published delta to the baseline with the measured one: same sign, and
whether the measured difference's 95% interval excludes zero. ``report.baseline`` names a measured
configuration every other one is compared with, metric by metric, with or without a paper.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from vlpbench.config import ConfigError, StrictModel, format_validation_error, load_config, read_yaml_with_base
from vlpbench.runs import read_finished_results, run_dirs, run_state
from vlpbench.stats import Difference, compare_seeds, seed_stats
from vlpbench.summary import VERDICTS, _lookup, verdict_count
from vlpbench.sweep import load_sweep

# launch states as a reader of the report words them
STATE_WORDS = {"new": "not started"}
REFERENCE_DIRS = (Path.cwd() / "reports" / "reference", Path(__file__).resolve().parents[1] / "reports" / "reference")


class ReferenceConfig(StrictModel):
    table: str                        # reports/reference/<table>.csv
    metrics: dict[str, str]           # measured results.json path -> the published table's column
    baseline: dict[str, Any] = {}     # the row every delta is taken against (config key -> value)
    where: dict[str, Any] = {}        # what the published table holds fixed: only cells with these values


class ReportConfig(StrictModel):
    rows: list[str] = []              # default, in a sweep: its grid and zip keys
    columns: list[str] = []
    metrics: dict[str, str] = {"retrieval.itm.r_mean": "r_mean"}
    reference: list[ReferenceConfig] = []  # published tables this experiment reproduces
    baseline: dict[str, Any] = {}     # the configuration every measured delta is taken against (key -> value)
    flops: bool = True                # GFLOPs per sample of each configuration (vlpbench flops)


@dataclass
class RunRecord:
    run_id: str
    run_dir: Path
    keys: dict[str, Any]              # the report's row and column keys -> this run's values
    seed: int
    state: str
    results: dict | None = None
    config: Any = None                # the resolved ExperimentConfig

    def metric(self, path: str) -> float | None:
        value = _lookup(self.results, path) if self.results else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Cell:
    keys: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.runs if r.state == "done" and r.results is not None]

    def values(self, metric: str) -> list[float]:
        return [v for r in self.done if (v := r.metric(metric)) is not None]

    def by_seed(self, metric: str) -> dict[int, float]:
        return {r.seed: v for r in self.done if (v := r.metric(metric)) is not None}

    def status(self) -> str:
        """``3/3 seeds``, or what the missing ones are doing: ``1/3 seeds (1 not started, 1 running)``."""
        waiting: dict[str, int] = {}
        for run in self.runs:
            if run not in self.done:
                waiting[run.state] = waiting.get(run.state, 0) + 1
        text = f"{len(self.done)}/{len(self.runs)} seeds"
        words = [f"{n} {STATE_WORDS.get(s, s)}" for s, n in sorted(waiting.items())]
        return text + (" (" + ", ".join(words) + ")" if waiting else "")


def read_report_config(path: Path) -> ReportConfig:
    value = read_yaml_with_base(path).get("report") or {}
    try:
        return ReportConfig.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{path}: report", ReportConfig)) from None


def config_value(config, dotted: str):
    node = config.model_dump(mode="json")
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"report: {dotted!r} is not a config key of the experiment")
        node = node[part]
    return node


def gather(target: str | Path, overrides: list[str] = ()) -> tuple[str, Path, ReportConfig, list[RunRecord]]:
    """The experiment's name, file, report settings and every planned run with its state:
    ``target`` is an experiment file or a sweep directory (its ``sweep.json`` names the file)."""
    target = Path(target)
    if target.is_dir():
        plan = target / "sweep.json"
        if not plan.is_file():
            raise FileNotFoundError(f"{target}: no sweep.json (give the experiment file instead)")
        saved = json.loads(plan.read_text())
        experiment, overrides = Path(saved["experiment"]), [*saved["overrides"], *overrides]
    else:
        experiment = target
    report = read_report_config(experiment)
    sweep = load_sweep(experiment, list(overrides))
    if sweep is not None and not (report.rows or report.columns):  # one row per swept configuration
        report = report.model_copy(update={"rows": swept_keys(sweep)})
    if sweep is not None:
        planned = [(run.run_id, sweep.run_dir(run), run.config) for run in sweep.runs]
        name = sweep.name
    else:  # one configuration: every run directory of the experiment
        cfg = load_config(experiment, list(overrides))
        folder, name = Path(cfg.output_dir) / cfg.name, cfg.name
        runs = [p for p in run_dirs(folder) if (p / "config.yaml").is_file()] if folder.is_dir() else []
        planned = [(p.name, p, load_config(p / "config.yaml")) for p in runs] or [("(no run yet)", folder, cfg)]
    records = []
    for run_id, run_dir, config in planned:
        state = run_state(run_dir)["state"] if run_dir.is_dir() else "new"
        results = read_finished_results(run_dir) if state == "done" else None
        keys = {key: config_value(config, key) for key in report.rows + report.columns}
        records.append(RunRecord(run_id, run_dir, keys, config.seed, state, results, config))
    return name, experiment, report, records


def check_metrics(records: list[RunRecord], report: ReportConfig) -> None:
    """A metric no finished run has would read "missing" in every cell: name it and the nearest keys."""
    finished = [r for r in records if r.results]
    if not finished:
        return
    wanted = [*report.metrics, *(m for settings in report.reference for m in settings.metrics)]
    available = sorted({key for r in finished for key in _numeric_keys(r.results)})
    for metric in dict.fromkeys(wanted):
        if all(r.metric(metric) is None for r in finished):
            nearest = difflib.get_close_matches(metric, available, n=3, cutoff=0.5)
            raise ConfigError(f"report.metrics: {metric!r} is in none of the {len(finished)} finished runs' "
                              f"results.json; nearest keys: {nearest or available[:5]}")


def _numeric_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _numeric_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def swept_keys(sweep) -> list[str]:
    """The config keys a sweep varies (its grid and zip keys; seeds are what a cell averages over)."""
    return [override.split("=", 1)[0] for override in sweep.runs[0].overrides if not override.startswith("seed=")]


def cells_of(records: list[RunRecord]) -> list[Cell]:
    """Runs grouped by their key values, in the order the sweep plans them."""
    cells: dict[str, Cell] = {}
    for record in records:
        label = json.dumps(record.keys, sort_keys=True)
        cells.setdefault(label, Cell(record.keys)).runs.append(record)
    return list(cells.values())


def cell_label(keys: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in keys.items()) or "all runs"


def statistics(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    s = seed_stats(values)
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci95_low": s.ci95_low, "ci95_high": s.ci95_high}


def main_table(cells: list[Cell], report: ReportConfig, flops: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per configuration: its keys, each metric's statistics over seeds, cost, state."""
    rows = []
    for cell in cells:
        row = {key.rsplit(".", 1)[-1]: value for key, value in cell.keys.items()}
        for metric, label in report.metrics.items():
            for stat, value in statistics(cell.values(metric)).items():
                row[f"{label} {stat}"] = value
        if flops is not None:
            row["GFLOPs/sample"] = flops.get(json.dumps(cell.keys, sort_keys=True), math.nan)
        row["samples/s"] = statistics(cell.values("train.samples_per_s"))["mean"]
        for part, key, label in VERDICTS:
            row[label] = verdict_count([r.results for r in cell.done], part, key) or "-"
        row["runs"] = cell.status()
        rows.append(row)
    return pd.DataFrame(rows)


# ---- the published table ----

@dataclass
class Reference:
    name: str
    source: str          # the '# ...' lines of the file: paper, table, dataset, scale
    rows: pd.DataFrame


def find_reference(name: str) -> Path:
    for folder in REFERENCE_DIRS:
        if (folder / f"{name}.csv").is_file():
            return folder / f"{name}.csv"
    raise ConfigError(f"report.reference.table: {name!r}: no {name}.csv under "
                      + " or ".join(str(d) for d in REFERENCE_DIRS))


def read_reference(name: str) -> Reference:
    path = find_reference(name)
    lines = path.read_text().splitlines()
    source = " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))
    rows = pd.read_csv(path, comment="#")
    return Reference(name, source, rows)


def _same(a, b) -> bool:
    """A published key value (read from CSV text) equals a config value."""
    parsed = yaml.safe_load(str(a)) if isinstance(a, str) else a
    if isinstance(parsed, (int, float)) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(float(parsed), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return parsed == b


def matching_cell(reference_row: pd.Series, cells: list[Cell], where: dict[str, Any]) -> Cell | None:
    """The measured configuration whose keys equal the published row's (and ``where``'s)."""
    for cell in cells:
        keys = {k: v for k, v in cell.keys.items() if k in reference_row.index}
        fixed = all(_same(value, cell.keys.get(key)) for key, value in where.items())
        if keys and fixed and all(_same(reference_row[k], v) for k, v in keys.items()):
            return cell
    return None


def reference_table(cells: list[Cell], report: ReportConfig, settings: ReferenceConfig,
                    reference: Reference) -> pd.DataFrame:
    """Each published row beside the measured cell with the same keys (missing: shown as such)."""
    rows = []
    label_column = "row" if "row" in reference.rows.columns else None
    for _, published in reference.rows.iterrows():
        cell = matching_cell(published, cells, settings.where)
        row = {"row": published[label_column] if label_column else cell_label(
            {k: published[k] for k in report.rows + report.columns if k in published.index})}
        for metric, column in settings.metrics.items():
            label = report.metrics.get(metric, metric)
            row[f"{label} (paper)"] = published[column]
            s = statistics(cell.values(metric)) if cell else statistics([])
            row[f"{label} (measured)"], row[f"{label} 95% CI"] = s["mean"], (s["ci95_low"], s["ci95_high"])
            row[f"{label} n"] = s["n"]
        row["runs"] = cell.status() if cell else "not in this sweep"
        rows.append(row)
    return pd.DataFrame(rows)


def seed_difference(base: Cell, cell: Cell, metric: str) -> Difference | None:
    """``cell`` minus ``base`` over seeds: paired by seed where both ran the same seeds, else Welch;
    None unless both sides have at least 2 seeds."""
    return compare_seeds(base.by_seed(metric), cell.by_seed(metric))


def delta_table(cells: list[Cell], report: ReportConfig, settings: ReferenceConfig,
                reference: Reference) -> pd.DataFrame:
    """Per published row and metric: its delta to the baseline row, the measured delta with its
    95% interval (paired by seed, else Welch: ``test``), whether the signs agree and whether the
    measured one is significant."""
    base_row = _baseline_row(settings, reference)
    base_cell = matching_cell(base_row, cells, settings.where)
    rows = []
    for _, published in reference.rows.iterrows():
        if published.equals(base_row):
            continue
        cell = matching_cell(published, cells, settings.where)
        for metric, column in settings.metrics.items():
            paper = float(published[column]) - float(base_row[column])
            row = {"row": _row_name(published, report), "metric": report.metrics.get(metric, metric),
                   "paper delta": paper}
            d = seed_difference(base_cell, cell, metric) if cell and base_cell else None
            if d:
                row.update({"measured delta": d.delta, "95% CI": (d.ci95_low, d.ci95_high),
                            "same sign": (d.delta > 0) == (paper > 0) if paper and d.delta else None,
                            "significant": d.significant, "test": d.test})
            else:
                row.update({"measured delta": math.nan, "95% CI": (math.nan, math.nan), "same sign": None,
                            "significant": None, "note": "needs >= 2 finished seeds in both cells"})
            rows.append(row)
    return pd.DataFrame(rows)


def baseline_cell(cells: list[Cell], report: ReportConfig) -> Cell:
    """The configuration ``report.baseline`` names (its keys are among the rows and columns)."""
    for cell in cells:
        if all(key in cell.keys and _same(value, cell.keys[key]) for key, value in report.baseline.items()):
            return cell
    known = "; ".join(cell_label(cell.keys) for cell in cells)
    raise ConfigError(f"report.baseline: {report.baseline} matches no configuration of the report's rows and "
                      f"columns {report.rows + report.columns} (there are: {known})")


def measured_delta_table(cells: list[Cell], base: Cell, report: ReportConfig) -> pd.DataFrame:
    """Per configuration and metric: the difference to the ``base`` configuration, its 95% interval
    (paired by seed where both ran the same seeds, else Welch: ``test``), the design's MDD and
    whether the interval excludes zero; NaN where either side has fewer than 2 seeds."""
    rows = []
    for cell in (c for c in cells if c is not base):
        row = {"configuration": cell_label(cell.keys)}
        for metric, label in report.metrics.items():
            d = seed_difference(base, cell, metric)
            row.update({f"{label} delta": d.delta if d else math.nan,
                        f"{label} ci95_low": d.ci95_low if d else math.nan,
                        f"{label} ci95_high": d.ci95_high if d else math.nan,
                        f"{label} significant": d.significant if d else None,
                        f"{label} test": d.test if d else None, f"{label} mdd": d.mdd if d else math.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def _baseline_row(settings: ReferenceConfig, reference: Reference) -> pd.Series:
    baseline = settings.baseline
    for _, row in reference.rows.iterrows():
        if all(k in row.index and _same(row[k], v) for k, v in baseline.items()):
            return row
    raise ConfigError(f"report.reference.baseline: {baseline} matches no row of {reference.name}.csv")


def _row_name(published: pd.Series, report: ReportConfig) -> str:
    if "row" in published.index:
        return str(published["row"])
    return cell_label({k: published[k] for k in report.rows + report.columns if k in published.index})
