"""Run downstream tasks from a pre-trained run: each task starts from the run's pre-training
checkpoint, fine-tunes with the shared trainer (resumable from its own checkpoints) and is
evaluated on its test split. Layout inside the run directory::

    downstream/<task>/config.yaml     the task's resolved settings
    downstream/<task>/metrics.jsonl   its training log
    downstream/<task>/checkpoints/
    downstream/<task>/results.json    metrics, baselines (chance, majority, ...), test size, training
    downstream.csv                    one row per task and metric, with the baselines beside it

and the run's ``results.json`` gains ``downstream: {task: ...}``. A task with ``results.json``
is done and is not run again. A task folder made with other settings than those now given is
refused, naming the keys, unless ``restart`` (``--restart``) clears it: its checkpoint and result
belong to the settings it was trained with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch
import yaml

from vlpbench import pipeline
from vlpbench.config import ConfigError, ExperimentConfig, config_differences, config_from_dict, read_yaml_with_base
from vlpbench.evaluation import eval_mode
from vlpbench.io import write_json, write_text
from vlpbench.registry import available_tasks, get_task
from vlpbench.rundir import RunDir
from vlpbench.train import StoppedBySignal, Trainer, TrainingSetup
from vlpbench.zoo.vision import VisionEncoder

# what may change after pre-training: the tasks' settings, and how bad records are met
DOWNSTREAM_OVERRIDABLE = ("downstream.", "data.on_bad_record=", "data.verify_images=")


def downstream_config(run: RunDir, overrides: list[str], settings: str | None = None,
                      tasks: list[str] | None = None) -> tuple[ExperimentConfig, list[str]]:
    """The config and tasks ``vlpbench downstream`` runs on a pre-training run: the run's saved
    config with ``overrides`` (``downstream.*`` only) and, with ``settings``, another experiment
    file's ``downstream`` section; ``tasks`` (default: its ``downstream.tasks``) are checked against
    the method as config load checks them."""
    if not (run.path / "config.yaml").is_file():
        raise ConfigError(f"{run.path}: not a run directory (expected config.yaml in it)")
    wrong = [o for o in overrides if not o.startswith(DOWNSTREAM_OVERRIDABLE)]
    if wrong:
        raise ConfigError(f"-o {wrong[0]}: only downstream.* settings (and data.on_bad_record, data.verify_images) "
                          "can change after pre-training")
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    if settings:  # the task settings of an experiment file instead of those the run was made with
        saved["downstream"] = read_yaml_with_base(Path(settings)).get("downstream", {})
    source = str(run.path / "config.yaml")
    tasks = list(tasks or config_from_dict(saved, source=source, overrides=overrides).downstream.tasks)
    if not tasks:
        raise ConfigError(f"--tasks: none given and {run.path}'s downstream.tasks is empty")
    unknown = sorted(set(tasks) - set(available_tasks()))
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {unknown}; expected some of {available_tasks()}")
    cfg = config_from_dict(saved, source=source, overrides=[*overrides, f"downstream.tasks={tasks}"])
    if run.latest_checkpoint() is None:
        raise ConfigError(f"{run.path}: no pre-training checkpoint to start the tasks from")
    return cfg, tasks


def run_tasks(run: RunDir, cfg: ExperimentConfig, device: torch.device, tasks: list[str] | None = None,
              log=print, restart: bool = False) -> dict:
    """Every task of ``tasks`` (default ``downstream.tasks``), in order; returns ``{task: result}``
    and records them in the run's ``results.json`` and ``downstream.csv``."""
    tasks = tasks or cfg.downstream.tasks
    for name in tasks:  # every task's settings are checked before any trains
        check_task_settings(run, cfg, name, restart)
    results = {}
    for name in tasks:
        with RunDir(run.path / "downstream" / name).claim():
            results[name] = run_task(run, cfg, name, device, log)
    record_results(run, results)
    return results


def task_settings(cfg: ExperimentConfig, name: str) -> dict:
    """What a task's ``config.yaml`` records: its resolved section of ``downstream``."""
    return {name: getattr(cfg.downstream, name).model_dump(mode="json")}


def check_task_settings(run: RunDir, cfg: ExperimentConfig, name: str, restart: bool) -> None:
    """A task folder trained with other settings is refused (naming the keys), or cleared with ``restart``."""
    folder = run.path / "downstream" / name
    if not (folder / "config.yaml").is_file():
        return
    recorded = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    differences = config_differences(recorded, task_settings(cfg, name))
    if differences and restart:
        shutil.rmtree(folder)
    elif differences:
        raise ConfigError(f"{folder}: trained with other settings than those now given "
                          f"({'; '.join(differences[:5])}); its checkpoint and result belong to those. "
                          "Pass --restart to discard it and train the task afresh, or restore the settings")


def run_task(run: RunDir, cfg: ExperimentConfig, name: str, device: torch.device, log=print) -> dict:
    task_run = RunDir(run.path / "downstream" / name)
    done = task_run.path / "results.json"
    if done.is_file():
        log(f"{name}: done before ({done})")
        return json.loads(done.read_text())
    task_cfg = getattr(cfg.downstream, name)
    _, method, tokenizer = pipeline.load_trained(run.path, device)
    image_size = task_cfg.image_size or pipeline.image_size_of(cfg.model.vision)
    for module in method.modules():
        if isinstance(module, VisionEncoder):
            module.set_image_size(image_size)
    task = get_task(name)(cfg, task_cfg, tokenizer, image_size, log)
    torch.manual_seed(cfg.seed)  # the task head's initialisation
    model = task.build_model(method).to(device)
    trainer = Trainer(task_cfg.train, task_setup(cfg, name), model, task.train_dataset(), task.collate, task_run,
                      device)
    write_text(task_run.path / "config.yaml", yaml.safe_dump(task_settings(cfg, name), sort_keys=False))
    resume_task(trainer, task_run, device, log)
    log(f"{name}: fine-tuning {cfg.method.name} for {task_cfg.train.steps} steps ({len(trainer.dataset)} examples)")
    train = trainer.fit(tokenizer.to_json())
    if trainer.step < task_cfg.train.steps:  # a signal stopped it: evaluate nothing half-trained
        raise StoppedBySignal(f"{name} stopped at step {trainer.step} of {task_cfg.train.steps}, checkpointed; "
                              f"`vlpbench downstream {run.path}` resumes it")
    with eval_mode(model):
        evaluation = task.evaluate(model, device)
    if "server_result" in evaluation:  # every test answer as the benchmark's server takes them (VQA)
        write_json(task_run.path / f"{name}_result.json", evaluation.pop("server_result"))
    result = {"task": name, **evaluation, "image_size": image_size, "train": train,
              "skipped_records": task.skips.as_dict()}
    write_json(done, result)
    log(f"{name}: {_format_metrics(result)}")
    return result


def task_setup(cfg: ExperimentConfig, name: str) -> TrainingSetup:
    """How the trainer runs a task: its own label, the pre-training seed, no learning curve or weight
    average; its checkpoints record the pre-trained experiment with the task's optimisation."""
    task_train = getattr(cfg.downstream, name).train.model_dump(mode="json")
    record = {**cfg.model_dump(mode="json"), "name": f"{cfg.name}.{name}", "train": task_train}
    return TrainingSetup(f"{cfg.name}.{name}", cfg.seed, record, cfg.data.num_workers)


def resume_task(trainer: Trainer, task_run: RunDir, device: torch.device, log) -> None:
    task_run.checkpoints.mkdir(parents=True, exist_ok=True)
    checkpoint = task_run.read_latest_checkpoint(device, log)
    if checkpoint is None:
        task_run.truncate_metrics(0)
        return
    trainer.load_checkpoint(checkpoint)
    task_run.truncate_metrics(trainer.step)
    log(f"resuming {task_run.path} from step {trainer.step}")


def results_table(results: dict) -> pd.DataFrame:
    """One row per task and metric: the measured value, each baseline, the test size."""
    rows = []
    for name, result in results.items():
        for metric, value in result["metrics"].items():
            baselines = {base: values[metric] for base, values in result["baselines"].items() if metric in values}
            rows.append({"task": name, "metric": metric, "value": value, **baselines, "num_test": result["num_test"]})
    return pd.DataFrame(rows)


def record_results(run: RunDir, results: dict) -> None:
    """Adds ``results`` to the run's ``results.json`` and ``downstream.csv``, together with every task
    finished before, also by a session stopped before it could record them."""
    results_file = run.path / "results.json"
    summary = json.loads(results_file.read_text()) if results_file.is_file() else {}
    finished = {path.parent.name: json.loads(path.read_text())
                for path in sorted((run.path / "downstream").glob("*/results.json"))}
    summary["downstream"] = {**summary.get("downstream", {}), **finished, **results}
    write_json(results_file, summary)
    table = results_table(summary["downstream"])
    write_text(run.path / "downstream.csv", table.to_csv(index=False))


def _format_metrics(result: dict) -> str:
    """``metric value (baseline value, ...)`` for each metric, then the test size."""
    parts = []
    for metric, value in result["metrics"].items():
        baselines = ", ".join(f"{base} {values[metric]:.2f}" for base, values in result["baselines"].items()
                              if metric in values)
        parts.append(f"{metric} {value:.2f}" + (f" ({baselines})" if baselines else ""))
    return "; ".join(parts) + f"; n = {result['num_test']}"
