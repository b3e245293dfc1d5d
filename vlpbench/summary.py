"""Across-seed summaries of finished runs: per metric, mean, std, 95% interval and the minimum
detectable difference (see ``vlpbench.stats``), plus the per-seed values they come from."""

from __future__ import annotations

from pathlib import Path

from vlpbench.config import ConfigError, config_differences
from vlpbench.io import write_json
from vlpbench.runs import is_done, read_finished_results, read_run_config
from vlpbench.stats import compare_seeds, seed_stats

# (path in results.json, label); the ITM ranking is the method's retrieval result, ITC-only its embedding's
METRICS = (
    ("retrieval.itm.r_mean", "r_mean"), ("retrieval.itm.txt_r1", "TR@1"), ("retrieval.itm.img_r1", "IR@1"),
    ("retrieval.itc.r_mean", "r_mean ITC-only"), ("retrieval.itm.mrr", "MRR"), ("retrieval.itc.loss", "ITC test loss"),
    ("retrieval.itm_diagnostics.auc_random_negatives", "ITM AUC random"),
    ("retrieval.itm_diagnostics.auc_hard_negatives", "ITM AUC hard"),
    ("retrieval.folds.itm_r_mean_std", "r_mean fold std"),
    ("diagnostics.itm.final_loss_itm", "ITM train loss"), ("train.seconds", "train s"), ("retrieval.seconds", "eval s"),
)
VERDICTS = (("itm", "itm_learned", "ITM head learned"), ("convergence", "flattened", "loss curve flattened"))


def _lookup(results: dict, dotted: str):
    node = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# keys that may differ between the runs of one configuration: they change no number
NOT_CONFIGURATION = ("seed", "name", "output_dir")


def read_results(run_dirs: list[Path]) -> list[dict]:
    """``results.json`` of each finished run (with its ``seed`` from ``config.yaml``); the runs
    must be seeds of one configuration (``ConfigError`` naming the keys that differ otherwise)."""
    out, configs = [], []
    for run_dir in map(Path, run_dirs):
        results = read_finished_results(run_dir)
        configs.append(read_run_config(run_dir))
        results["seed"] = configs[-1].get("seed")
        out.append(results)
    check_one_configuration(list(map(Path, run_dirs)), configs)
    return out


def comparable(config: dict) -> dict:
    """A run's resolved config without the keys that do not make a configuration (seed, names)."""
    return {k: v for k, v in config.items() if k not in NOT_CONFIGURATION}


def configuration_changes(from_run: Path, to_run: Path) -> list[str]:
    """``key: old -> new`` for every setting in which two runs' configurations differ."""
    return config_differences(comparable(read_run_config(Path(from_run))), comparable(read_run_config(Path(to_run))))


def check_one_configuration(run_dirs: list[Path], configs: list[dict]) -> None:
    """Seeds of one configuration only: statistics over runs of different settings describe none."""
    for run_dir, config in zip(run_dirs[1:], configs[1:]):
        differences = config_differences(comparable(configs[0]), comparable(config))
        if differences:
            raise ConfigError(f"{run_dirs[0]} and {run_dir} are different configurations "
                              f"({'; '.join(differences[:5])}); a summary pools the seeds of one configuration: "
                              "give each configuration's runs separately (e.g. A --versus B)")


def summarize(results: list[dict]) -> dict:
    """Per metric: the per-seed values and their statistics."""
    metrics = {}
    for dotted, label in METRICS:
        values = [_lookup(r, dotted) for r in results]
        if any(v is None for v in values):
            continue
        metrics[label] = {"values": values, **seed_stats(values).as_dict()}
    rankings = sorted({r["retrieval"].get("ranking", f"k_test={r['retrieval']['k_test']}")
                       for r in results if "retrieval" in r}) or ["no retrieval evaluation"]
    verdicts = {label: verdict_count(results, part, key) for part, key, label in VERDICTS}
    return {"runs": [r["run_dir"] for r in results], "seeds": [r["seed"] for r in results],
            "experiments": sorted({r["experiment"] for r in results}), "ranking": rankings, "metrics": metrics,
            "verdicts": {label: count for label, count in verdicts.items() if count}}


def verdict_count(results: list[dict], part: str, key: str) -> str | None:
    """``k/n``: in how many of the n runs that have the verdict it holds (None: none has it)."""
    found = [d[part][key] for r in results if (d := r.get("diagnostics")) and d.get(part)]
    return f"{sum(found)}/{len(found)}" if found else None


def format_summary(summary: dict) -> str:
    n = len(summary["seeds"])
    lines = [f"{', '.join(summary['experiments'])}: {n} seeds {summary['seeds']}; ranking: {'; '.join(summary['ranking'])}",
             f"{'metric':<16} {'mean':>8} {'std':>7} {'95% interval':>19} {'MDD':>7}   per seed"]
    for label, m in summary["metrics"].items():
        interval = f"[{m['ci95_low']:.2f}, {m['ci95_high']:.2f}]"
        values = " ".join(f"{v:.2f}" for v in m["values"])
        lines.append(f"{label:<16} {m['mean']:8.2f} {m['std']:7.2f} {interval:>19} {m['mdd']:7.2f}   {values}")
    lines += [f"{label}: {count} seeds" for label, count in summary.get("verdicts", {}).items()]
    if "r_mean fold std" in summary["metrics"]:
        lines.append("r_mean fold std: within one run, the std of r_mean between its disjoint test folds (the "
                     "test split's own sampling noise for one fold; the folds' mean has that / sqrt(folds))")
    lines.append(f"MDD: the smallest difference between two configurations that {n} seeds each detect "
                 "(two-sided t-test, alpha 0.05, power 0.8)")
    return "\n".join(lines)


def format_comparison(a: dict, b: dict, changes: list[str] | None = None) -> str:
    """Per metric shared by two summaries: the difference (b - a), its 95% interval and the MDD of
    the design; paired by seed when both sides ran the same seeds, else Welch (the ``test``
    column says which). A difference counts as resolved when the interval excludes 0. ``changes``
    (``configuration_changes`` from a run of a to one of b) names what separates the sides."""
    lines = [f"{', '.join(b['experiments'])} ({len(b['seeds'])} seeds) minus "
             f"{', '.join(a['experiments'])} ({len(a['seeds'])} seeds)"]
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        lines.append(f"configuration, subtrahend -> minuend: {shown}")
    lines += [f"{'metric':<16} {'difference':>10} {'95% interval':>19} {'test':>7} {'rho':>6} {'MDD':>7}   resolved"]
    for label in (k for k in a["metrics"] if k in b["metrics"]):
        d = compare_seeds(dict(zip(a["seeds"], a["metrics"][label]["values"])),
                          dict(zip(b["seeds"], b["metrics"][label]["values"])))
        if d is None:
            continue
        lines.append(f"{label:<16} {d.delta:10.2f} {f'[{d.ci95_low:.2f}, {d.ci95_high:.2f}]':>19} {d.test:>7} "
                     f"{d.correlation:6.2f} {d.mdd:7.2f}   {'yes' if d.significant else 'no'}")
    lines.append("paired: the same seeds on both sides, the difference taken seed by seed (t over the n "
                 "differences; rho: the sides' correlation); welch: seeds differ")
    return "\n".join(lines)


def write_sweep_summary(sweep) -> dict:
    """Per configuration of ``sweep`` whose seeds have all finished, its across-seed summary,
    also written to the sweep's ``summary.json`` (when there is any)."""
    summaries = {label: summarize(read_results(dirs)) for label, dirs in sweep.seed_groups().items()
                 if all(is_done(d) for d in dirs)}
    if summaries:
        write_json(sweep.directory / "summary.json", summaries)
    return summaries
