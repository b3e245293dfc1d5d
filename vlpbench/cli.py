"""The ``vlpbench`` command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
import typing
from collections import Counter
from pathlib import Path


# only what parsing and the error report need: each command imports its own machinery (torch
# included), so that `vlpbench --help` and argument errors answer at once
from vlpbench.config import (ConfigError, DataConfig, EmbeddedDataConfig, RetrievalEvalConfig, load_config, validate_arguments)
from vlpbench.errors import UserError
from vlpbench.sweep import MAX_SWEEP_RUNS, LauncherConfig, format_plan, load_sweep
from vlpbench.zoo import TEXT_PRESETS, VISION_PRESETS

RETRIEVAL_COLUMNS = {"txt_r1": "TR@1", "txt_r5": "TR@5", "txt_r10": "TR@10", "img_r1": "IR@1", "img_r5": "IR@5",
                     "img_r10": "IR@10", "r_mean": "r_mean"}


def format_retrieval_table(rows: dict[str, dict]) -> str:
    """Rows of TR/IR recall (percent), one per label."""
    width = max(len(label) for label in rows)
    lines = [f"{'':<{width}}  " + "  ".join(f"{label:>7}" for label in RETRIEVAL_COLUMNS.values())]
    for label, metrics in rows.items():
        lines.append(f"{label:<{width}}  " + "  ".join(f"{metrics[c]:7.2f}" for c in RETRIEVAL_COLUMNS))
    return "\n".join(lines)


def retrieval_rows(results: dict) -> dict[str, dict]:
    untrained, trained = results.get("retrieval_untrained", {}), results["retrieval"]
    rows = {"untrained, ITM ranking": untrained.get("itm"), "trained, ITC only": trained["itc"],
            "trained, ITM ranking": trained["itm"], "chance": trained["chance"]}
    return {label: metrics for label, metrics in rows.items() if metrics is not None}


def cmd_run(args) -> int:
    from vlpbench import distributed
    from vlpbench.api import train_run
    from vlpbench.budget import apply_flop_budget
    from vlpbench.pipeline import runtime_device
    from vlpbench.train import clear_stop, stop_requested
    clear_stop()  # a stop requested in an earlier command of this process does not carry over
    sweep_flags = [flag for flag, on in (("--seeds", args.seeds), ("--dry-run", args.dry_run),
                                         ("--rerun", args.rerun), ("--executor", args.executor),
                                         ("--jobs", args.jobs)) if on]
    if sweep_flags and (args.resume or args.stop_at):
        raise ConfigError(f"{sweep_flags[0]} is about sweeps, whose runs resume by themselves when the sweep "
                          "runs again; it does not combine with --resume or --stop-at")
    sweep = None
    if args.experiment and not args.resume:
        sweep = load_sweep(args.experiment, args.override, args.seeds, args.executor, args.jobs,
                           max_runs=args.max_runs or MAX_SWEEP_RUNS)
    if sweep is not None:
        if args.stop_at:
            raise ConfigError("--stop-at applies to one run; a sweep's runs checkpoint and resume by themselves")
        return run_sweep(args, sweep)
    if len(sweep_flags) > (args.dry_run is True):
        raise ConfigError(f"{sweep_flags[-1]}: {args.experiment} has no sweep section (and no --seeds)")
    if args.resume:
        if args.override:
            raise ConfigError("a resumed run keeps its saved config.yaml; -o overrides are not allowed with --resume")
        run = resumable_run(args)
        cfg = run.config()
    else:
        if not args.experiment:
            raise ConfigError("vlpbench run needs an experiment file (or --resume RUN_DIR)")
        cfg = apply_flop_budget(load_config(args.experiment, args.override))
        run = None
    check_stop_at(args.stop_at, cfg.train.steps, run)
    runtime_device(cfg.train)  # a device or precision this machine lacks fails here, before anything is built
    if args.dry_run:
        print(f"{cfg.name}: one run (no sweep section) of {cfg.train.steps} steps, in a new directory under "
              f"{Path(cfg.output_dir) / cfg.name}")
        return 0
    run, results = train_run(cfg, run, stop_at=args.stop_at, log=print)  # torchrun: every process runs this
    if distributed.is_main():
        report_run(cfg, run, results)
    return 1 if stop_requested() and not results["complete"] else 0


def run_sweep(args, sweep) -> int:
    """Start the sweep's runs that are not done (or, with ``--rerun failed``, its failed ones)."""
    from vlpbench import executors, launch
    from vlpbench.pipeline import runtime_device
    runtime_device(sweep.runs[0].config.train)
    todo, states, runs = launch.plan(sweep, rerun_failed=args.rerun == "failed")
    print(format_plan(sweep, states, runs))
    print(f"to start: {len(todo)} of {len(sweep.runs)} runs "
          f"({', '.join(f'{n} {s}' for s, n in sorted(Counter(states.values()).items()))})")
    if args.dry_run:
        return 0
    if not todo:
        launch.write_plan(sweep)
        return report_sweep(sweep)
    jobs = executors.start_runs(sweep, todo, wait=args.wait)
    if jobs and not args.wait:
        print(f"submitted {len(jobs)} runs; follow them with: vlpbench status {sweep.directory}")
        return 0
    return report_sweep(sweep)


def report_sweep(sweep) -> int:
    """Each run's state; per configuration whose seeds all finished, the across-seed summary."""
    from vlpbench.runs import folder_status
    from vlpbench.summary import format_summary, write_sweep_summary
    rows = folder_status(sweep.directory, [r.run_id for r in sweep.runs])
    print("\n" + format_status(rows))
    summaries = write_sweep_summary(sweep)
    for label, summary in summaries.items():
        print(f"\n{label}:\n" + format_summary(summary))
    if summaries:
        print(f"\nsummary: {sweep.directory / 'summary.json'}")
    return 0 if all(row["state"] == "done" for row in rows) else 1


def format_status(rows: list[dict]) -> str:
    if not rows:
        return "no runs"
    width = max(len(r["run_id"]) for r in rows)
    lines = []
    for row in rows:
        detail = row.get("error") or row.get("detail") or (f"job {row['job_id']}" if "job_id" in row else "")
        lines.append(f"{row['run_id']:<{width}}  {row['state']:<9}  {detail}".rstrip())
        lines += [f"{'':<{width}}    | {line}" for line in row.get("log_tail", [])[-3:]]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["state"] for r in rows).items()))
    return "\n".join(lines + [f"{len(rows)} runs: {counts}"])


def cmd_status(args) -> int:
    from vlpbench.runs import folder_status
    target = Path(args.sweep)
    if target.is_file():
        sweep = load_sweep(target)
        if sweep is None:
            cfg = load_config(target)
            folder, planned = Path(cfg.output_dir) / cfg.name, None
        else:
            folder, planned = sweep.directory, [r.run_id for r in sweep.runs]
    elif target.is_dir():
        folder, planned = target, None
    else:
        raise ConfigError(f"{target}: no such sweep file or run folder")
    print(format_status(folder_status(folder, planned)))
    return 0


def report_run(cfg, run, results: dict) -> None:
    train = results["train"]
    if not results["complete"]:
        print(f"stopped at step {train['steps']} of {cfg.train.steps}; continue with: vlpbench run --resume {run.path}")
        return
    if cfg.pretrain:
        print(f"\npre-trained {cfg.method.name} for {train['steps']} steps in {train['seconds']}s "
              f"({train['samples_per_s']} samples/s)")
        if verdicts := format_verdicts(results.get("diagnostics") or {}):
            print(verdicts)
    else:
        print(f"\nno pre-training (pretrain: false): {cfg.method.name} at its initial weights")
    if "retrieval" in results:
        r = results["retrieval"]
        print(f"zero-shot retrieval on {r['num_images']} images / {r['num_texts']} texts ({r['ranking']}):")
        print(format_retrieval_table(retrieval_rows(results)))
    if "downstream" in results:
        from vlpbench.downstream.runner import results_table
        print("\ndownstream tasks:\n" + results_table(results["downstream"]).to_string(
            index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nresults: {run.path / 'results.json'}")


def format_verdicts(diagnostics: dict) -> str:
    """The run's ITM and convergence verdicts in two lines (``vlpbench.diagnostics``)."""
    lines = []
    if diagnostics.get("itm"):
        itm = diagnostics["itm"]
        state = "learned" if itm["itm_learned"] else "still at its label prior"
        lines.append(f"ITM head: {state} (final loss {itm['final_loss_itm']:.3f}; prior entropy "
                     f"{itm['prior_entropy']:.3f}, margin {itm['margin']})")
    if diagnostics.get("convergence"):
        flat = diagnostics["convergence"]
        state = "flattened" if flat["flattened"] else "not flattened: still learning at the last step"
        lines.append(f"loss curve: {state} ({100 * flat['relative_change_last_quarter']:+.1f}% over the last quarter)")
    return "\n".join(lines)


def resumable_run(args):
    """The run ``--resume`` names: a run directory, or ``latest`` (the experiment's newest run with a checkpoint)."""
    from vlpbench.rundir import RunDir
    if args.resume != "latest":
        if not (Path(args.resume) / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume}: not a run directory (expected config.yaml in it)")
        return RunDir(args.resume)
    if not args.experiment:
        raise ConfigError("--resume latest needs the experiment file to know which runs to search")
    cfg = load_config(args.experiment)
    return RunDir.latest(cfg.output_dir, cfg.name)


def check_stop_at(stop_at: int | None, steps: int, run) -> None:
    """``--stop-at`` must lie in 1..train.steps and, on resume, after the newest checkpoint."""
    if stop_at is None:
        return
    if not 1 <= stop_at <= steps:
        raise ConfigError(f"--stop-at {stop_at}: expected a step from 1 to train.steps ({steps})")
    latest = run.latest_checkpoint() if run else None
    if latest is not None and stop_at <= run.checkpoint_step(latest):
        raise ConfigError(f"--stop-at {stop_at}: the run already has a checkpoint at step "
                          f"{run.checkpoint_step(latest)} ({latest}); expected a later step")


def cmd_eval(args) -> int:
    from vlpbench.api import evaluate
    from vlpbench.io import write_json
    eval_cfg = validate_arguments(RetrievalEvalConfig,
                                  {"k_test": args.k_test, "batch_size": args.batch_size, "max_images": args.max_images},
                                  {"k_test": "--k-test", "batch_size": "--batch-size", "max_images": "--max-images"})
    results = evaluate(args.target, args.ann, "retrieval", args.image_root, args.device, args.on_bad_record,
                       **eval_cfg.model_dump())
    print(f"zero-shot retrieval on {results['num_images']} images / {results['num_texts']} texts "
          f"({results['ranking']}):")
    rows = {"ITC only": results["itc"], "ITM ranking": results["itm"], "chance": results["chance"]}
    print(format_retrieval_table({label: metrics for label, metrics in rows.items() if metrics is not None}))
    skipped = results["skipped_records"]
    if skipped["total"]:
        print(f"skipped {skipped['total']} bad records: {skipped['summary']}")
    if args.output:
        write_json(args.output, results)
    return 0


def cmd_downstream(args) -> int:
    from vlpbench.downstream.runner import downstream_config, results_table, run_tasks
    from vlpbench.pipeline import resolve_device
    from vlpbench.rundir import RunDir
    from vlpbench.train import clear_stop
    clear_stop()
    run = RunDir(args.run)
    cfg, tasks = downstream_config(run, args.override, args.settings, args.tasks)
    results = run_tasks(run, cfg, resolve_device(args.device, key="--device"), tasks, restart=args.restart)
    print(results_table(results).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nresults: {run.path / 'downstream.csv'}")
    return 0


def cmd_report(args) -> int:
    from vlpbench.report_writer import build_report
    build_report(args.target, args.output, args.override, force=args.force)
    return 0


def cmd_gate(args) -> int:
    from vlpbench.api import evaluate
    from vlpbench.io import write_json
    if args.max_pairs < 1:
        raise ConfigError(f"--max-pairs {args.max_pairs}: expected a positive number of pairs")
    result = evaluate(args.target, args.ann, "gate", args.image_root, args.device, max_pairs=args.max_pairs,
                      batch_size=args.batch_size)
    print(f"{result['method']}: matching score of {sum(result['num_pairs'].values())} pre-training pairs "
          f"({', '.join(f'{k} {n}' for k, n in result['num_pairs'].items())})")
    for name, auc in result["auc"].items():
        print(f"  ROC AUC {name.replace('_', ' ')}: {auc:.3f}")
    for kind, q in result.get("p", {}).items():
        print(f"  gate p, {kind}: mean {q['mean']:.3f}, 10/50/90% {q['q10']:.3f} / {q['median']:.3f} / {q['q90']:.3f}")
    if args.output:
        write_json(args.output, result)
    return 0


def cmd_bench(args) -> int:
    from vlpbench.bench import compare, format_table
    from vlpbench.flops import experiment_path
    from vlpbench.io import write_json
    scale = {"mini": "experiments/{}_mini.yaml", "base": "experiments/presets/{}_base.yaml"}[args.scale]
    experiments = [experiment_path(e) for e in args.experiments] + [scale.format(m) for m in args.compare]
    if not experiments:
        raise ConfigError("vlpbench bench: give experiment YAMLs or preset names, or --compare METHOD ...")
    for experiment in experiments:
        load_config(experiment, args.override)  # a bad file or override fails here, not in a worker
    rows = compare(experiments, args.override, args.steps, args.warmup, args.rounds)
    print(format_table(rows))
    if args.output:
        write_json(args.output, rows)
    return 0


def cmd_flops(args) -> int:
    from vlpbench import flops
    from vlpbench.io import write_json
    try:
        convention = flops.Convention.parse(args.convention)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if args.reproduce:
        from vlpbench.flops_tables import format_reproduction, reproduce
        rep = reproduce(args.reproduce, args.batch_size)
        print(format_reproduction(rep))
        if args.json:
            write_json(args.json, rep)
        return 0
    if not args.experiment:
        raise ConfigError("vlpbench flops: give an experiment YAML or preset name, or --reproduce TABLE")
    cfg = load_config(flops.experiment_path(args.experiment), args.override)
    text_length = args.text_length or cfg.data.max_text_len
    positions = TEXT_PRESETS[cfg.model.text.preset].max_positions
    if text_length > positions:
        raise ConfigError(f"--text-length {text_length}: the {cfg.model.text.preset} preset has {positions} positions "
                          f"(expected 1..{positions})")
    result = flops.count_experiment(cfg, args.batch_size, text_length, cross_check=not args.no_cross_check)
    rep = flops.report(result, convention, cfg.name, text_length)
    print(flops.format_report(rep))
    if args.json:
        write_json(args.json, rep)
    return 0


def cmd_summary(args) -> int:
    from vlpbench.summary import configuration_changes, format_comparison, format_summary, read_results, summarize
    summary = summarize(read_results(args.runs))
    print(format_summary(summary))
    if args.versus:
        other = summarize(read_results(args.versus))
        changes = configuration_changes(args.versus[0], args.runs[0])
        print("\n" + format_summary(other) + "\n\n" + format_comparison(other, summary, changes))
    return 0


def at_least(minimum: int):
    """An argparse type: an integer of at least ``minimum`` (argparse names the flag on error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value}")
        return value
    return parse


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def cmd_data(args) -> int:
    from vlpbench.data.embedded import ensure_embedded_dataset
    cfg = load_config(args.experiment, args.override).data.embedded if args.experiment else EmbeddedDataConfig()
    print(ensure_embedded_dataset(cfg))
    return 0


def cmd_data_shard(args) -> int:
    from vlpbench import pipeline
    from vlpbench.data.datasets import SkipReport, load_source
    from vlpbench.data.shards import write_shards
    from vlpbench.data.sources import pair_files
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out}: already exists; shards are written into a new folder")
    cfg = load_config(args.experiment, args.override).data if args.experiment else DataConfig()
    source, skips = pipeline.pretrain_annotations(cfg), SkipReport()
    entries = load_source(source, cfg.on_bad_record, cfg.verify_images, skips, "pass -o data.on_bad_record=skip")
    manifest = write_shards(pair_files(entries), out, args.samples_per_shard,
                            None if args.keep_order else args.shuffle_seed)
    skipped = f"; skipped {skips.total} bad records: {skips.summary()}" if skips.total else ""
    print(f"wrote {manifest['num_samples']} pairs in {len(manifest['shards'])} shards{skipped}\n"
          f"train on them with: -o data.source=webdataset -o 'data.shards.urls={out / manifest['pattern']}'")
    return 0


def cmd_list(args) -> int:
    from vlpbench.registry import available_methods, available_tasks, get_method, get_task
    for name in available_methods():
        config_class = get_method(name).config_class
        keys = ", ".join(f"{k}={f.default}" for k, f in config_class.model_fields.items() if k != "name")
        print(f"method {name} ({config_class.declared.describe()}): {keys}")
    for name in available_tasks():
        fields = get_task(name).config_class.model_fields
        print(f"task {name}: " + ", ".join(k for k in fields if k not in ("train", "data")))
    print("vision presets:", ", ".join(VISION_PRESETS))
    print("text presets:", ", ".join(TEXT_PRESETS))
    return 0


def int_or_word(text: str) -> int | str:
    """An integer flag that also takes a word ("all"); the schema checks which values are allowed."""
    try:
        return int(text)
    except ValueError:
        return text


def add_run_command(sub) -> None:
    run = sub.add_parser("run", help="pre-train and evaluate one experiment",
                         description="Pre-train a method as an experiment YAML describes, then evaluate it.")
    run.add_argument("experiment", nargs="?", help="experiment YAML file")
    run.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config key, e.g. -o train.steps=50 -o method.alpha=0.0")
    run.add_argument("--resume", metavar="RUN_DIR|latest",
                     help="continue a run from its latest checkpoint ('latest': newest run of the experiment)")
    run.add_argument("--stop-at", type=int, metavar="STEP",
                     help="checkpoint and stop after this step (to fit a time slot); continue with --resume")
    run.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                     help="sweep the seeds (e.g. 0,1,2,3,4; replaces sweep.seeds), then mean, std, 95%% interval "
                          "and minimum detectable difference per metric")
    run.add_argument("--dry-run", action="store_true", help="print the runs (id, overrides, state) and the "
                                                            "executor settings; run nothing")
    run.add_argument("--executor", choices=typing.get_args(LauncherConfig.model_fields["executor"].annotation),
                     help="replaces launcher.executor")
    run.add_argument("--jobs", type=at_least(1), metavar="N", help="local executor: N runs at a time (launcher.jobs)")
    run.add_argument("--rerun", choices=["failed"], help="start only the sweep's failed runs (they resume from "
                                                         "their latest checkpoint)")
    run.add_argument("--wait", action="store_true", help="slurm: wait for the submitted runs, then report")
    run.add_argument("--max-runs", type=at_least(1), default=None, metavar="N",
                     help=f"allow a sweep of up to N runs (default {MAX_SWEEP_RUNS}: a larger grid is refused "
                          "before anything is expanded)")
    run.set_defaults(func=cmd_run)


def add_status_command(sub) -> None:
    status = sub.add_parser("status", help="the state of every run of a sweep",
                            description="Each run's state (new, pending, running, requeued, resumable, done, "
                                        "failed with the error's last lines), from the run directories and "
                                        "the scheduler.")
    status.add_argument("sweep", help="the sweep's experiment file or its directory (<output_dir>/<name>)")
    status.set_defaults(func=cmd_status)


def add_summary_command(sub) -> None:
    summ = sub.add_parser("summary", help="summarise finished runs across seeds",
                          description="Mean, std, 95%% interval and minimum detectable difference of finished runs.")
    summ.add_argument("runs", nargs="+", help="run directories (e.g. runs/albef_mini/*)")
    summ.add_argument("--versus", nargs="+", metavar="RUN_DIR",
                      help="runs of another configuration: also print each metric's difference (RUNS minus "
                           "these) with its 95%% interval and the pooled seed std")
    summ.set_defaults(func=cmd_summary)


def add_eval_command(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a trained model on a dataset",
                        description="Evaluate a run directory or checkpoint on ALBEF-format annotations.")
    ev.add_argument("target", help="run directory (uses its latest checkpoint) or checkpoint file")
    ev.add_argument("--task", choices=["retrieval"], default="retrieval")
    ev.add_argument("--ann", action="append", required=True, help="annotation JSON [{image, caption: [..]}] (repeatable)")
    ev.add_argument("--image-root", default=".", help="directory image paths are relative to")
    ev.add_argument("--k-test", type=int_or_word, default=16,
                    help="ITM re-ranks this many ITC candidates; 'all': ITM scores every pair")
    ev.add_argument("--max-images", type=int, help="evaluate on the first N images (and their captions) only")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--on-bad-record", choices=["error", "skip"], default="error")
    ev.add_argument("--output", help="also write the metrics to this JSON file")
    ev.set_defaults(func=cmd_eval)


def add_downstream_command(sub) -> None:
    down = sub.add_parser("downstream", help="fine-tune and evaluate downstream tasks from a pre-trained run",
                          description="Run downstream tasks (vlpbench list names them) from a "
                                      "run's pre-training checkpoint, with the run's downstream settings; results "
                                      "go to RUN_DIR/downstream/ and RUN_DIR/downstream.csv. Finished tasks are "
                                      "not run again; interrupted ones resume.")
    down.add_argument("run", help="run directory of a pre-training run")
    down.add_argument("--tasks", type=lambda text: [t for t in text.split(",") if t], metavar="T,T,...",
                      help="tasks to run (default: the run's downstream.tasks)")
    down.add_argument("-o", "--override", action="append", default=[], metavar="downstream.KEY=VALUE",
                      help="change a downstream setting, e.g. -o downstream.vqa.head=classification")
    down.add_argument("--settings", metavar="EXPERIMENT.yaml",
                      help="take the downstream section of this experiment file instead of the run's own")
    down.add_argument("--restart", action="store_true",
                      help="discard the folders of tasks trained with other settings and train them afresh")
    down.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    down.set_defaults(func=cmd_downstream)


def add_report_command(sub) -> None:
    rep = sub.add_parser("report", help="a comparison report of a sweep: tables, the paper's table, plots",
                         description="Gather every run of a sweep (finished or not) into reports/<name>/: "
                                     "report.md, a self-contained index.html, tables/*.csv and *.tex (booktabs), "
                                     "plots/*.png; the experiment file's report section says what to show.")
    rep.add_argument("target", help="the sweep's experiment file or its directory (<output_dir>/<name>)")
    rep.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="the overrides the sweep was run with")
    rep.add_argument("--output", default="reports", help="folder the report folder goes in (default: reports)")
    rep.add_argument("--force", action="store_true",
                     help="replace an existing report even if it shows more finished runs than this one")
    rep.set_defaults(func=cmd_report)


def add_gate_command(sub) -> None:
    gate = sub.add_parser("gate", help="how well the matching score (LightVLP: the gate p) separates noisy pairs",
                          description="ROC AUC of a trained model's matching score between clean and known-noisy "
                                      "pre-training pairs, and the distribution of LightVLP's gate p (Fig. 4).")
    gate.add_argument("target", help="run directory (uses its latest checkpoint) or checkpoint file")
    gate.add_argument("--ann", action="append", help="pre-training JSON whose records may carry 'noise' "
                                                    "(default: the run's own pre-training data)")
    gate.add_argument("--image-root", default=".", help="directory image paths are relative to (with --ann)")
    gate.add_argument("--max-pairs", type=at_least(1), default=2000, help="score the first N records")
    gate.add_argument("--batch-size", type=at_least(1), default=128)
    gate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    gate.add_argument("--output", help="also write the result to this JSON file")
    gate.set_defaults(func=cmd_gate)


def add_bench_command(sub) -> None:
    bench = sub.add_parser("bench", help="step time, memory and FLOP efficiency of experiments",
                           description="Time the training step of each experiment (a worker process each, real "
                                       "batches, random weights; experiments alternate) and report seconds per "
                                       "step, samples/s, peak memory, counted FLOPs per step, achieved FLOP/s and "
                                       "its fraction of the dense-matmul throughput measured in the same run.")
    bench.add_argument("experiments", nargs="*", help="experiment YAML files or preset names")
    bench.add_argument("--compare", nargs="+", default=[], metavar="METHOD",
                       help="methods at --scale: experiments/METHOD_mini.yaml or experiments/presets/METHOD_base.yaml")
    bench.add_argument("--scale", choices=["mini", "base"], default="mini")
    bench.add_argument("--steps", type=at_least(1), default=10, help="timed steps per experiment (the median is reported)")
    bench.add_argument("--rounds", type=at_least(1), default=2, help="turns the timed steps are split into, alternating "
                                                             "the experiments")
    bench.add_argument("--warmup", type=at_least(0), default=2, help="untimed steps first")
    bench.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="applied to every experiment")
    bench.add_argument("--output", help="also write the rows to this JSON file")
    bench.set_defaults(func=cmd_bench)


def add_flops_command(sub) -> None:
    fl = sub.add_parser("flops", help="FLOPs of one training step per sample, by component and pass",
                        description="Count one pre-training step of an experiment's method (random weights, "
                                    "inputs of its shapes) with vlpbench's counter, cross-checked by fvcore and "
                                    "ptflops; the output states the convention.")
    fl.add_argument("experiment", nargs="?", help="experiment YAML file or preset name (experiments/presets)")
    fl.add_argument("--reproduce", choices=["lightvlp_table1", "lightvlp_table5", "vlmae_table8"],
                    help="re-count a paper's FLOP table: published, counted and relative error per cell")
    fl.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    fl.add_argument("--convention", default="flops,forward+backward,attention",
                    help="comma-separated: macs|flops, forward|forward+backward, attention|linear_only")
    fl.add_argument("--batch-size", type=at_least(1), default=2, help="samples counted (figures are per sample)")
    fl.add_argument("--text-length", type=at_least(1), help="caption tokens incl. [CLS]/[SEP] (default data.max_text_len)")
    fl.add_argument("--no-cross-check", action="store_true", help="skip the fvcore and ptflops counts")
    fl.add_argument("--json", help="also write the result to this JSON file")
    fl.set_defaults(func=cmd_flops)


DATA_COMMANDS = ("embedded", "shard")


def add_data_command(sub) -> None:
    data = sub.add_parser("data", help="the embedded dataset (`data [embedded]`), or shards of a pre-training set",
                          description="`vlpbench data [embedded] [EXPERIMENT]`: generate (or find cached) the embedded "
                                      "dataset an experiment uses and print its folder. `vlpbench data shard "
                                      "[EXPERIMENT] OUT`: write the experiment's pre-training pairs (data.pretrain, or "
                                      "the embedded set) as webdataset shards.")
    commands = data.add_subparsers(dest="data_command", required=True)
    embedded = commands.add_parser("embedded", help="generate the embedded dataset and print its folder")
    embedded.add_argument("experiment", nargs="?", help="experiment YAML (its data.embedded section); default "
                                                        "parameters if absent")
    embedded.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    embedded.set_defaults(func=cmd_data)
    shard = commands.add_parser("shard", help="write an experiment's pre-training pairs as webdataset shards")
    shard.add_argument("experiment", nargs="?", help="experiment YAML (its data.pretrain, or its embedded data); "
                                                     "the embedded data's default parameters if absent")
    shard.add_argument("out", help="the folder to create: shard-000000.tar, .. and manifest.json")
    shard.add_argument("--samples-per-shard", type=int, default=1000)
    shard.add_argument("--shuffle-seed", type=int, default=0, help="the pairs' order in the shards (default 0)")
    shard.add_argument("--keep-order", action="store_true", help="write the pairs in the records' order")
    shard.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    shard.set_defaults(func=cmd_data_shard)


def add_list_command(sub) -> None:
    lst = sub.add_parser("list", help="list methods (with their config keys) and zoo presets",
                         description="List registered methods with their config keys and defaults, and zoo presets.")
    lst.set_defaults(func=cmd_list)


COMMANDS = (add_run_command, add_status_command, add_summary_command, add_eval_command, add_downstream_command, add_report_command, add_gate_command, add_bench_command, add_flops_command, add_data_command, add_list_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlpbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


NEGATIVE_LIST = re.compile(r"^-\d+(,-?\d+)*$")


def joined_negative_values(argv: list[str]) -> list[str]:
    """``--seeds -1,2`` as ``--seeds=-1,2``: argparse takes a value starting with '-' for a flag.
    And ``data [EXPERIMENT]`` as ``data embedded [EXPERIMENT]``, its form before ``data shard``."""
    if argv[:1] == ["data"] and (len(argv) == 1 or argv[1] not in (*DATA_COMMANDS, "-h", "--help")):
        argv = ["data", "embedded", *argv[1:]]
    out = []
    for token in argv:
        if out and out[-1] == "--seeds" and NEGATIVE_LIST.match(token):
            out[-1] = f"--seeds={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(joined_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went to `head` or a closed pager: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or a task stopped on a signal (checkpointed)
        print(f"stopped: {exc}" if str(exc) else "interrupted: the run resumes from its last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
