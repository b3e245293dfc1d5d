"""``vlpbench report``: writes ``reports/<name>/`` from a sweep: ``report.md``, a self-contained
``index.html`` (tables and PNG plots embedded, readable offline), ``tables/*.csv`` and
``tables/*.tex`` (booktabs) and ``plots/*.png``."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from pathlib import Path

import pandas as pd

from vlpbench import plots
from vlpbench.config import ConfigError
from vlpbench.report import (Cell, ReportConfig, baseline_cell, cell_label, cells_of, check_metrics, delta_table, gather,
                             main_table, measured_delta_table, read_reference, reference_table)

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "Δ": r"$\Delta$"}


def text_of(value) -> str:
    """A table cell as text: numbers to 2 decimals, intervals as [low, high], missing as '-'."""
    if isinstance(value, tuple):
        return "-" if any(isinstance(v, float) and math.isnan(v) for v in value) else \
            "[" + ", ".join(f"{v:.2f}" for v in value) + "]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(text_of(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs})."""
    columns = "l" * len(frame.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
             " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(text_of(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(text_of(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def display_table(table: pd.DataFrame, report: ReportConfig) -> pd.DataFrame:
    """The main table as read: per metric one cell, ``mean ± half-width of the 95% interval (n=seeds)``;
    cost and state columns as they are (the CSV keeps every statistic in its own column)."""
    out = pd.DataFrame()
    keys = [c for c in table.columns if not any(c.startswith(f"{label} ") for label in report.metrics.values())]
    for column in keys[: len(report.rows + report.columns)]:
        out[column] = table[column]
    for label in report.metrics.values():
        out[label] = [measured_text(row[f"{label} mean"], (row[f"{label} ci95_low"], row[f"{label} ci95_high"]),
                                    row[f"{label} n"]) for _, row in table.iterrows()]
    for column in keys[len(report.rows + report.columns):]:
        out[column] = table[column]
    return out


def display_reference(side: pd.DataFrame) -> pd.DataFrame:
    """The published table beside the measured one, per metric two cells: the paper's value and
    the measured ``mean ± half-width (n=seeds)``."""
    out = pd.DataFrame({"row": side["row"]})
    for label in dict.fromkeys(c.removesuffix(" (paper)") for c in side.columns if c.endswith(" (paper)")):
        out[f"{label} (paper)"] = side[f"{label} (paper)"]
        out[f"{label} (measured)"] = [measured_text(row[f"{label} (measured)"], row[f"{label} 95% CI"], row[f"{label} n"])
                                      for _, row in side.iterrows()]
    out["runs"] = side["runs"]
    return out


def display_deltas(deltas: pd.DataFrame, report: ReportConfig) -> pd.DataFrame:
    """Per metric one cell: ``delta [low, high]``, starred where the interval excludes zero."""
    out = pd.DataFrame({"configuration": deltas.get("configuration", [])})
    for label in report.metrics.values():
        out[f"{label} Δ"] = [delta_text(row[f"{label} delta"], row[f"{label} ci95_low"], row[f"{label} ci95_high"],
                                        row[f"{label} significant"]) for _, row in deltas.iterrows()]
    out["test"] = [", ".join(sorted({row[f"{label} test"] for label in report.metrics.values()} - {None})) or "-"
                   for _, row in deltas.iterrows()]
    return out


def delta_text(delta: float, low: float, high: float, significant: bool | None) -> str:
    if math.isnan(delta):
        return "needs n >= 2 on both sides"
    return f"{delta:+.2f} [{low:+.2f}, {high:+.2f}]" + (" *" if significant else "")


def measured_text(mean: float, interval: tuple[float, float], n: int) -> str:
    if not n or math.isnan(mean):
        return "missing"
    low, high = interval
    spread = "" if math.isnan(low) else f" ± {(high - low) / 2:.2f}"
    return f"{mean:.2f}{spread} (n={int(n)})"


def configuration_flops(cells: list[Cell]) -> dict[str, float]:
    """Training GFLOPs per sample (forward + backward, attention included) of each configuration,
    as its finished runs recorded them (``results.json`` ``compute``; NaN where none did)."""
    out = {}
    for cell in cells:
        recorded = [r.metric("compute.gflops_per_sample") for r in cell.done]
        values = [v for v in recorded if v is not None]
        out[json.dumps(cell.keys, sort_keys=True)] = sum(values) / len(values) if values else math.nan
    return out


def recorded_gate(cells: list[Cell]) -> tuple[str, dict[str, list[int]]] | None:
    """The gate p histogram by pair kind that the first finished run of a gate method recorded
    (``results.json`` ``gate``, ``eval.gate_pairs``), with that run's id."""
    for cell in cells:
        for run in cell.done:
            histogram = (run.results.get("gate") or {}).get("p_histogram")
            if histogram:
                return run.run_id, histogram
    return None


FINISHED_LINE = re.compile(r"(\d+) of (\d+) runs finished")


def build_report(target: str, output_root: str = "reports", overrides: list[str] = (), log=print,
                 force: bool = False) -> Path:
    """Gather, tabulate, plot and write the report of ``target`` (sweep directory or experiment file).

    An existing report that shows more finished runs is kept unless ``force``: where the runs are
    not on this machine, a rebuild would replace measured numbers with "missing"."""
    name, experiment, report, records = gather(target, overrides)
    check_metrics(records, report)
    cells = cells_of(records)
    out = Path(output_root) / name
    done = sum(r.state == "done" for r in records)
    before = finished_runs_shown(out)
    if before is not None and before > done and not force:
        folders = sorted({str(r.run_dir.parent) for r in records})
        raise ConfigError(f"{out}: the report there shows {before} finished runs, this one would show {done} of "
                          f"{len(records)} (runs looked for in {', '.join(folders)}); it is not replaced. Pass --force "
                          "to replace it, or --output another folder")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    flops = configuration_flops(cells) if report.flops else None
    table = main_table(cells, report, flops)
    tables = {"main": (table, display_table(table, report), f"{name}: per configuration, over seeds")}
    if report.baseline:
        base = baseline_cell(cells, report)
        deltas = measured_delta_table(cells, base, report)
        caption = (f"{name}: measured difference to {cell_label(base.keys)} "
                   "(95% interval: paired by seed where both ran the same seeds, else Welch; "
                   "* the interval excludes 0)")
        tables["deltas"] = (deltas, display_deltas(deltas, report), caption)
    references = []
    for settings in report.reference:
        reference = read_reference(settings.table)
        references.append(reference)
        side = reference_table(cells, report, settings, reference)
        deltas = delta_table(cells, report, settings, reference)
        tables[reference.name] = (side, display_reference(side), f"{name} beside {reference.name} (paper)")
        tables[f"{reference.name}_deltas"] = (deltas, deltas, f"{name}: deltas to the baseline row, "
                                                             f"{reference.name} vs measured")
    for key, (raw, shown, caption) in tables.items():
        raw.to_csv(out / "tables" / f"{key}.csv", index=False)
        (out / "tables" / f"{key}.tex").write_text(latex(shown, caption))
    figures = make_plots(cells, report, flops, name, out / "plots")
    page = Page(name, experiment, report, references, tables, figures, f"{done} of {len(records)} runs finished",
                time.strftime("%Y-%m-%d %H:%M"), records[0].config.scale)
    (out / "report.md").write_text(page.markdown())
    (out / "index.html").write_text(page.html())
    log(f"report: {out / 'index.html'} ({done} of {len(records)} runs finished)")
    return out


def finished_runs_shown(folder: Path) -> int | None:
    """How many finished runs the report in ``folder`` shows (None: there is no report)."""
    page = folder / "report.md"
    found = FINISHED_LINE.search(page.read_text()) if page.is_file() else None
    return int(found[1]) if found else None


def make_plots(cells: list[Cell], report: ReportConfig, flops: dict | None, name: str, folder: Path) -> dict:
    headline, label = next(iter(report.metrics.items()))
    figures = {}
    if flops:
        figures["FLOPs per sample vs quality"] = plots.flops_vs_quality(cells, flops, headline, label, name,
                                                                        folder / "flops_vs_quality.png")
    if len(report.rows) == 1 and len(report.columns) == 1:
        figures["Heat map"] = plots.heatmap(cells, report.rows[0], report.columns[0], headline, label, name,
                                            folder / "heatmap.png")
    figures["Training loss"] = plots.loss_curves(cells, name, folder / "loss_curves.png")
    figures["Per configuration"] = plots.ablation_bars(cells, headline, label, name, folder / "ablation_bars.png")
    gate = recorded_gate(cells)
    if gate:
        run_id, histogram = gate
        figures["LightVLP gate p"] = plots.gate_histogram(histogram, f"{name}/{run_id}",
                                                          folder / "gate_histogram.png")
    return figures


def inline_code(text: str) -> str:
    """Markdown's `code` spans as HTML <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


class Page:
    """The report as Markdown and as one self-contained HTML page."""

    def __init__(self, name, experiment, report, references, tables, figures, progress, when, scale):
        self.name, self.experiment, self.report, self.references = name, experiment, report, references
        self.tables, self.figures, self.progress, self.when, self.scale = tables, figures, progress, when, scale

    def intro(self) -> list[str]:
        lines = [f"Experiment `{self.experiment}`; {self.progress}; built {self.when}.",
                 f"Scale: `{self.scale}`. Each cell: mean over finished seeds ± half the 95% interval of "
                 "the mean (Student t), with the seed count n; `missing` where no seed has finished."]
        for reference in self.references:
            lines.append(f"Published ({reference.name}): {reference.source}")
        if self.references:
            lines.append("The papers' numbers come from their own scale and data: compare the directions of "
                         "differences and their significance, not levels.")
        return lines

    def markdown(self) -> str:
        parts = [f"# {self.name}", "", *self.intro(), ""]
        for key, (_, shown, caption) in self.tables.items():
            parts += [f"## {caption}", "", markdown(shown), "", f"CSV: `tables/{key}.csv`, LaTeX: `tables/{key}.tex`", ""]
        for title, path in self.figures.items():
            parts += [f"## {title}", "", f"![{title}](plots/{path.name})", ""]
        return "\n".join(parts)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.name)}</h1>", *(f"<p>{inline_code(html.escape(line))}</p>" for line in self.intro())]
        for key, (_, shown, caption) in self.tables.items():
            body += [f'<h2 id="table-{key}">{html.escape(caption)}</h2>', html_table(shown)]
        for title, path in self.figures.items():
            data = base64.b64encode(path.read_bytes()).decode()
            body += [f"<h2>{html.escape(title)}</h2>",
                     f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">']
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
th {{ border-bottom: 2px solid #444; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
{chr(10).join(body)}
</body></html>
"""
