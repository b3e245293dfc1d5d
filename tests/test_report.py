"""Comparison reports: aggregation over seeds with hand-checkable statistics, missing runs shown as
missing, the published table and its deltas, and the rendered HTML / LaTeX / Markdown."""

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from vlpbench import report as report_module
from vlpbench.config import ConfigError
from vlpbench.report import (baseline_cell, cells_of, delta_table, gather, main_table, measured_delta_table,
                             read_reference, reference_table)
from vlpbench.report_writer import build_report, latex
from vlpbench.rundir import RunDir
from vlpbench.stats import difference_interval
from vlpbench.sweep import load_sweep

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# r_mean of each finished run: alpha 0.0 has three seeds, alpha 0.4 two (its seed 2 never started)
R_MEAN = {("0.0", 0): 30.0, ("0.0", 1): 32.0, ("0.0", 2): 34.0, ("0.4", 0): 40.0, ("0.4", 1): 44.0}
T_975 = {2: 4.302652729911275, 1: 12.706204736174696}  # Student t quantiles, df = n - 1


@pytest.fixture
def sweep_file(tiny_config, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "toy_table.csv").write_text("# Toy paper (Table 9): made-up numbers for the test.\n"
                                             "method.alpha,overall\n0.0,50.0\n0.4,55.0\n")
    monkeypatch.setattr(report_module, "REFERENCE_DIRS", (reference,))
    experiment = {**tiny_config, "sweep": {"grid": {"method.alpha": [0.0, 0.4]}, "seeds": [0, 1, 2]},
                  "report": {"rows": ["method.alpha"], "metrics": {"retrieval.itm.r_mean": "r_mean"},
                             "flops": False,
                             "reference": [{"table": "toy_table", "metrics": {"retrieval.itm.r_mean": "overall"},
                                            "baseline": {"method.alpha": 0.4}}]}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(experiment))
    for run in load_sweep(path).runs:
        alpha, seed = str(run.config.method.alpha), run.config.seed
        if (alpha, seed) == ("0.4", 2):
            continue  # never started
        directory = RunDir.create(run.config, run.run_id)
        if (alpha, seed) in R_MEAN:
            directory.write_results({"complete": True, "retrieval": {"itm": {"r_mean": R_MEAN[(alpha, seed)]}},
                                     "train": {"samples_per_s": 100.0}})
    return path


def test_cells_hold_the_mean_std_interval_and_seed_count(sweep_file):
    _, _, report, records = gather(sweep_file)
    table = main_table(cells_of(records), report).set_index("alpha")
    full = table.loc[0.0]
    assert (full["r_mean n"], full["r_mean mean"], full["r_mean std"]) == (3, pytest.approx(32.0), pytest.approx(2.0))
    half = T_975[2] * 2.0 / math.sqrt(3)
    assert (full["r_mean ci95_low"], full["r_mean ci95_high"]) == (pytest.approx(32 - half), pytest.approx(32 + half))
    partial = table.loc[0.4]
    assert (partial["r_mean n"], partial["r_mean mean"]) == (2, pytest.approx(42.0))
    assert partial["r_mean ci95_high"] - 42.0 == pytest.approx(T_975[1] * math.sqrt(8) / math.sqrt(2))
    assert full["runs"] == "3/3 seeds" and partial["runs"] == "2/3 seeds (1 not started)"


def test_without_report_rows_a_sweep_has_one_row_per_swept_configuration(sweep_file):
    experiment = yaml.safe_load(sweep_file.read_text())
    experiment["report"] = {"flops": False}
    sweep_file.write_text(yaml.safe_dump(experiment))
    _, _, report, records = gather(sweep_file)
    assert report.rows == ["method.alpha"]
    table = main_table(cells_of(records), report).set_index("alpha")
    assert list(table["r_mean n"]) == [3, 2] and list(table["r_mean mean"]) == [pytest.approx(32.0), pytest.approx(42.0)]


def test_a_missing_cell_shows_as_missing_with_its_state(sweep_file, tmp_path):
    for run_dir in (tmp_path / "runs" / "tiny").glob("alpha=0.4*"):
        (run_dir / "results.json").unlink()
    _, _, report, records = gather(sweep_file)
    row = main_table(cells_of(records), report).set_index("alpha").loc[0.4]
    assert row["r_mean n"] == 0 and math.isnan(row["r_mean mean"])
    assert row["runs"] == "0/3 seeds (3 not started)"


def test_published_rows_and_deltas_sit_beside_the_measured_ones(sweep_file):
    _, _, report, records = gather(sweep_file)
    cells, settings = cells_of(records), report.reference[0]
    reference = read_reference(settings.table)
    assert "Toy paper (Table 9)" in reference.source
    side = reference_table(cells, report, settings, reference)
    assert side["r_mean (paper)"].tolist() == [50.0, 55.0]
    assert side["r_mean (measured)"].tolist() == [pytest.approx(32.0), pytest.approx(42.0)]
    deltas = delta_table(cells, report, settings, reference)
    assert len(deltas) == 1  # the baseline row has no delta to itself
    row = deltas.iloc[0]
    expected = difference_interval([40.0, 44.0], [30.0, 32.0, 34.0])
    assert row["paper delta"] == pytest.approx(-5.0) and row["measured delta"] == pytest.approx(-10.0)
    assert row["95% CI"] == pytest.approx(expected[1:])
    assert row["same sign"] is True or row["same sign"] == True  # noqa: E712  (numpy bool)
    assert bool(row["significant"]) == (expected[2] < 0)


def test_measured_deltas_to_the_report_baseline_need_no_paper(sweep_file):
    _, _, report, records = gather(sweep_file)
    report = report.model_copy(update={"baseline": {"method.alpha": 0.4}, "reference": []})
    cells = cells_of(records)
    deltas = measured_delta_table(cells, baseline_cell(cells, report), report)
    assert deltas["configuration"].tolist() == ["alpha=0.0"]  # the baseline has no delta to itself
    row = deltas.iloc[0]
    delta, low, high = difference_interval([40.0, 44.0], [30.0, 32.0, 34.0])
    assert row["r_mean delta"] == pytest.approx(-10.0) == pytest.approx(delta)  # 32 - 42
    assert (row["r_mean ci95_low"], row["r_mean ci95_high"]) == (pytest.approx(low), pytest.approx(high))
    assert bool(row["r_mean significant"]) == (high < 0)
    with pytest.raises(ConfigError, match=r"report.baseline: \{'method.alpha': 0.7\} matches no configuration"):
        baseline_cell(cells, report.model_copy(update={"baseline": {"method.alpha": 0.7}}))


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.images, self.tables, self._in_h2 = [], [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables += 1

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_the_report_holds_every_table_and_plot_it_lists(sweep_file, tmp_path):
    experiment = yaml.safe_load(sweep_file.read_text())
    experiment["report"]["baseline"] = {"method.alpha": 0.4}
    sweep_file.write_text(yaml.safe_dump(experiment))
    out = build_report(str(sweep_file), str(tmp_path / "reports"), log=lambda *a: None)
    tables = sorted(p.stem for p in (out / "tables").glob("*.csv"))
    assert tables == ["deltas", "main", "toy_table", "toy_table_deltas"]
    assert {p.stem for p in (out / "tables").glob("*.tex")} == set(tables)
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["ablation_bars.png", "loss_curves.png"]  # no FLOPs asked for, one row key only
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert page.tables == len(tables) and len(page.images) == len(plots)
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)  # self-contained
    assert any("toy_table" in h for h in page.headings)
    markdown = (out / "report.md").read_text()
    assert all(f"plots/{name}" in markdown for name in plots) and "missing" not in markdown.split("##")[1]
    assert "2/3 seeds (1 not started)" in markdown
    assert f"| 32.00 ± {T_975[2] * 2.0 / math.sqrt(3):.2f} (n=3) |" in markdown  # mean ± half the interval (seeds)
    delta, low, high = difference_interval([40.0, 44.0], [30.0, 32.0, 34.0])
    assert f"| alpha=0.0 | {delta:+.2f} [{low:+.2f}, {high:+.2f}]" in markdown  # report.baseline's deltas


def test_a_report_builds_from_the_sweep_directory_too(sweep_file, tmp_path):
    from vlpbench import launch
    launch.write_plan(load_sweep(sweep_file))
    out = build_report(str(tmp_path / "runs" / "tiny"), str(tmp_path / "reports"), log=lambda *a: None)
    assert (out / "index.html").is_file()


def test_latex_tables_have_balanced_braces_and_booktabs_rules(sweep_file, tmp_path):
    out = build_report(str(sweep_file), str(tmp_path / "reports"), log=lambda *a: None)
    for tex in (out / "tables").glob("*.tex"):
        text = tex.read_text()
        unescaped = re.sub(r"\\[{}]", "", text)
        assert unescaped.count("{") == unescaped.count("}"), tex.name
        rules = [text.index(r) for r in (r"\toprule", r"\midrule", r"\bottomrule")]
        assert rules == sorted(rules), tex.name
    import pandas as pd
    assert "50\\_\\%" in latex(pd.DataFrame({"a_b": ["50_%"]}), "t")


SHIPPED = {"mask_sweep.yaml": 27, "albef_ablation.yaml": 15, "lightvlp_ablation.yaml": 15, "vilta_ablation.yaml": 18,
           "epic_ablation.yaml": 12, "vlmae_ablation.yaml": 18, "compare_methods.yaml": 15, "quickstart.yaml": 1}


@pytest.mark.parametrize("name, runs", sorted(SHIPPED.items()))
def test_shipped_experiments_expand_to_their_runs_in_a_dry_run(name, runs, capsys):
    from vlpbench.cli import main
    assert main(["run", str(EXPERIMENTS / name), "--dry-run"]) == 0
    out = capsys.readouterr().out
    if runs == 1:
        assert "one run" in out
    else:
        assert f": {runs} runs in" in out


@pytest.mark.parametrize("name", sorted(n for n in SHIPPED if n != "quickstart.yaml"))
def test_shipped_sweeps_name_their_table_and_wall_clock_and_their_reports_resolve(name):
    text = (EXPERIMENTS / name).read_text()
    assert re.search(r"Tables? \d", text) or name == "compare_methods.yaml"
    assert "wall-clock" in text
    settings = report_module.read_report_config(EXPERIMENTS / name)
    sweep = load_sweep(EXPERIMENTS / name)
    for key in settings.rows + settings.columns:
        report_module.config_value(sweep.runs[0].config, key)
    for reference in settings.reference:
        table = read_reference(reference.table)
        assert set(reference.metrics.values()) <= set(table.rows.columns)
        report_module._baseline_row(reference, table)  # the baseline row exists
    assert settings.baseline and any(all(report_module._same(value, report_module.config_value(run.config, key))
                   for key, value in settings.baseline.items()) for run in sweep.runs), "report.baseline is run"


def test_pareto_front_keeps_what_nothing_beats_on_cost_and_quality():
    from vlpbench.plots import pareto_front
    # (cost, quality): 1 beats 0 on both; 2 costs more for more quality; 3 is dominated by 2
    assert pareto_front([(2.0, 10.0), (1.0, 12.0), (3.0, 15.0), (4.0, 14.0)]) == [1, 2]


def test_report_settings_with_an_unknown_key_name_the_section(tmp_path, tiny_config):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, "report": {"rowz": ["method.alpha"]}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: report: rowz: unknown key"):
        report_module.read_report_config(path)
