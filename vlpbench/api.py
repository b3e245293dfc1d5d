"""The Python API: what the command line does, as calls for a notebook or a script.

    import vlpbench
    built = vlpbench.create_method("experiments/albef_mini.yaml", train__steps=100)
    run = vlpbench.run(built)                          # pre-trains built.method in a new run directory
    again = vlpbench.load_run(run.path)                # its config, method, tokenizer and results
    scores = vlpbench.evaluate(again)                  # zero-shot retrieval on the run's test split
    table = vlpbench.results.load("runs/mask_sweep")   # a sweep's runs, one row each

An experiment is an experiment file, a config mapping (the file's contents), an
``ExperimentConfig``, or a registered method's name. Settings change with keyword arguments,
two underscores standing for each dot of the config key (``train__steps=3`` is the command
line's ``-o train.steps=3``), or with the command line's ``KEY=VALUE`` strings in ``overrides``.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from vlpbench.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from vlpbench.runs import read_results_if_any, run_state

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from PIL import Image

    from vlpbench.data.transforms import ImageTransform
    from vlpbench.method import Batch, VLPMethod
    from vlpbench.rundir import RunDir
    from vlpbench.zoo.tokenizer import TextTokenizer

Experiment = str | Path | dict | ExperimentConfig
# a method given by name: its config's defaults on the default zoo presets and embedded dataset
BY_NAME = {"train": {"steps": 1000, "batch_size": 64}}
# what `evaluate` runs: zero-shot retrieval, or the matching score's separation of noisy pairs
# (downstream tasks fine-tune first: vlpbench downstream, downstream.runner.run_tasks)
EVALUATIONS = ("retrieval", "gate")


@dataclass
class BuiltMethod:
    """A method with what it needs to read data: its tokenizer and its evaluation transform."""
    config: ExperimentConfig
    method: VLPMethod
    tokenizer: TextTokenizer
    transform: ImageTransform  # resize to the model's resolution and normalise (no augmentation)

    def batch(self, images: Sequence[Image.Image], captions: Sequence[str]) -> Batch:
        """A ``Batch`` of image-caption pairs for ``method`` (each image its own id, no regions)."""
        from vlpbench.data.transforms import NO_AUGMENTATION
        from vlpbench.pipeline import Collate
        pixels = [self.transform(image.convert("RGB"), None) for image in images]
        regions = [self.transform.region(None, image.size, NO_AUGMENTATION) for image in images]
        return Collate(self.tokenizer, self.config.data.max_text_len)(
            list(zip(pixels, captions, regions, range(len(pixels)))))

    @contextlib.contextmanager
    def no_grad(self) -> Iterator[VLPMethod]:
        """``with built.no_grad() as method:`` the method in eval mode without autograd (restored after)."""
        import torch

        from vlpbench.evaluation import eval_mode
        with eval_mode(self.method), torch.no_grad():
            yield self.method


@dataclass
class LoadedRun(BuiltMethod):
    """A run directory: its method from the latest checkpoint, and what the run has recorded."""
    path: Path
    state: str                 # vlpbench.runs.run_state: done, resumable, failed, ...
    results: dict | None       # results.json (None before the run has written one)


def override_strings(overrides: Sequence[str] = (), **keys: Any) -> list[str]:
    """The command line's ``KEY=VALUE`` strings for ``overrides`` and ``keys`` (``a__b=1``: ``a.b=1``;
    values go as JSON, which the config reads as YAML)."""
    return [*overrides, *(f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in keys.items())]


def experiment_config(experiment: Experiment, overrides: Sequence[str] = (), **keys: Any) -> ExperimentConfig:
    """The resolved config of ``experiment`` with the overrides applied (``ConfigError`` naming the key)."""
    strings = override_strings(overrides, **keys)
    if isinstance(experiment, ExperimentConfig):
        experiment = experiment.model_dump(mode="json")
    if isinstance(experiment, dict):
        return config_from_dict(copy.deepcopy(experiment), overrides=strings)
    path = Path(experiment)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_config(path, strings)
    from vlpbench.registry import available_methods
    if str(experiment) not in available_methods():
        raise ConfigError(f"{experiment!r}: neither an experiment file nor a registered method "
                          f"({', '.join(available_methods())})")
    raw = {"name": str(experiment), "method": {"name": str(experiment)}, **copy.deepcopy(BY_NAME)}
    return config_from_dict(raw, source=f"method {experiment!r}", overrides=strings)


def create_method(experiment: Experiment, overrides: Sequence[str] = (), **keys: Any) -> BuiltMethod:
    """The method a run of ``experiment`` starts from, with its tokenizer and transform: the
    tokenizer the run would use (the configured one, or WordPiece trained on the pre-training
    captions, which are generated first for the embedded dataset), and the encoders warm-started
    as the run would (``model.unimodal``, trained once and cached). A FLOP budget is resolved into
    ``config.train.steps``."""
    from vlpbench import pipeline
    from vlpbench.budget import apply_flop_budget
    from vlpbench.data.datasets import SkipReport, captions_of
    from vlpbench.experiment import build_model
    cfg = apply_flop_budget(experiment_config(experiment, overrides, **keys), log=lambda _: None)
    device = pipeline.runtime_device(cfg.train)
    entries = pipeline.open_entries(pipeline.data_sources(cfg)["pretrain"], cfg, SkipReport())
    tokenizer = pipeline.make_tokenizer(cfg, captions_of(entries))
    return BuiltMethod(cfg, build_model(cfg, entries, tokenizer, device), tokenizer, _eval_transform(cfg))


def _eval_transform(cfg: ExperimentConfig) -> ImageTransform:
    from vlpbench.data.transforms import ImageTransform
    from vlpbench.pipeline import image_size_of
    return ImageTransform(image_size_of(cfg.model.vision))


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """A finished or checkpointed run (or a checkpoint file): its method from the latest
    checkpoint, in eval mode, on ``device`` (auto, cpu, cuda)."""
    from vlpbench.pipeline import resolve_device
    return _load_run(Path(run_dir), resolve_device(device, key="device"))


def _load_run(path: Path, device: torch.device) -> LoadedRun:
    from vlpbench.pipeline import load_trained
    cfg, method, tokenizer = load_trained(path, device)
    results = read_results_if_any(path)[0] if path.is_dir() else None
    state = run_state(path)["state"] if path.is_dir() else "checkpoint"
    return LoadedRun(cfg, method.eval(), tokenizer, _eval_transform(cfg), path, state, results)


def run(experiment: Experiment | BuiltMethod, overrides: Sequence[str] = (), log=print,
        **keys: Any) -> LoadedRun | pd.DataFrame:
    """Pre-train and evaluate ``experiment`` in a new run directory, as ``vlpbench run`` does,
    and return the finished run (``load_run``). A ``BuiltMethod`` is trained in place (its
    ``method`` is the trained model afterwards). An experiment file with a ``sweep`` section runs
    its runs that are not done with its ``launcher`` and returns ``results.load`` of the sweep."""
    from vlpbench.budget import apply_flop_budget
    if isinstance(experiment, BuiltMethod):
        if overrides or keys:
            raise ConfigError("run(built): the method is built already; give the overrides to create_method")
        cfg, built = experiment.config, (experiment.tokenizer, experiment.method)  # its budget resolved
    else:
        if isinstance(experiment, (str, Path)) and Path(experiment).is_file():
            sweep_table = _run_sweep(Path(experiment), override_strings(overrides, **keys), log)
            if sweep_table is not None:
                return sweep_table
        cfg, built = apply_flop_budget(experiment_config(experiment, overrides, **keys), log), None
    run_dir, _ = train_run(cfg, built=built, log=log)
    return load_run(run_dir.path)


def train_run(cfg: ExperimentConfig, run_dir: RunDir | None = None, stop_at: int | None = None,
              built: tuple[TextTokenizer, VLPMethod] | None = None, log=print) -> tuple[RunDir, dict]:
    """Pre-train and evaluate ``cfg`` (its FLOP budget resolved: ``budget.apply_flop_budget``) in
    ``run_dir`` (resumed from its checkpoint), or in a new run directory; under torchrun every
    process calls this. Returns the run directory and its results."""
    from vlpbench import distributed
    from vlpbench.experiment import run_experiment
    from vlpbench.pipeline import runtime_device
    from vlpbench.rundir import RunDir
    distributed.initialize(runtime_device(cfg.train))
    resume = run_dir is not None
    run_dir = run_dir or distributed.broadcast_from_main(RunDir.create(cfg) if distributed.is_main() else None)
    if distributed.is_main():
        log(f"run directory: {run_dir.path}")
    with run_dir.claim() if distributed.is_main() else contextlib.nullcontext():  # one process trains a run
        results = run_experiment(cfg, run_dir, resume=resume, stop_at=stop_at, log=log, built=built)
    return run_dir, results


def _run_sweep(path: Path, overrides: list[str], log) -> pd.DataFrame | None:
    """A sweep file's runs that are not done, with its launcher; None when the file has no sweep."""
    from vlpbench import executors, launch, results
    from vlpbench.summary import write_sweep_summary
    from vlpbench.sweep import load_sweep
    sweep = load_sweep(path, overrides)
    if sweep is None:
        return None
    todo = launch.plan(sweep).todo
    executors.start_runs(sweep, todo, wait=True, log=log)
    write_sweep_summary(sweep)
    return results.load(sweep.directory)


def evaluate(target: str | Path | BuiltMethod, data: str | Path | Sequence[str | Path] | None = None,
             task: str = "retrieval", image_root: str | Path | None = None, device: str = "auto",
             on_bad_record: str = "error", **settings: Any) -> dict:
    """Score a trained method (a ``BuiltMethod``/``LoadedRun``, a run directory or a checkpoint).

    ``task``: ``retrieval`` (zero-shot, on ``data``: ALBEF-format retrieval files, default the
    run's own test split; ``settings`` are ``eval.retrieval`` keys such as ``k_test``,
    ``max_images``), or ``gate`` (how well the matching score separates clean from noisy pairs,
    on ``data`` or the run's pre-training pairs; ``settings``: ``max_pairs``, ``batch_size``).
    ``image_root`` defaults to the folder of the first file of ``data``; ``on_bad_record: skip``
    skips unreadable records and reports their count in the results."""
    from vlpbench.config import RetrievalEvalConfig, validate_arguments
    from vlpbench.experiment import evaluate_trained, gate_analysis
    from vlpbench.pipeline import resolve_device
    if task not in EVALUATIONS:
        raise ConfigError(f"task {task!r}: expected one of {list(EVALUATIONS)} (downstream tasks: "
                          "vlpbench downstream RUN_DIR --tasks ...)")
    ann = None if data is None else [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
    root = str(image_root) if image_root is not None else (str(Path(ann[0]).parent) if ann else None)
    if task == "gate":
        unknown = set(settings) - {"max_pairs", "batch_size"}
        max_pairs, batch_size = settings.get("max_pairs", 2000), settings.get("batch_size", 128)
        if unknown or max_pairs < 1 or batch_size < 1:
            raise ConfigError(f"gate settings {settings}: expected max_pairs and batch_size, positive numbers")
    torch_device = resolve_device(device, key="device")
    loaded = target if isinstance(target, BuiltMethod) else _load_run(Path(target), torch_device)
    with loaded.no_grad():
        if task == "gate":
            return gate_analysis(loaded.config, loaded.method, loaded.tokenizer, ann, root, max_pairs, batch_size,
                                 torch_device)
        eval_cfg = validate_arguments(RetrievalEvalConfig, {**loaded.config.eval.retrieval.model_dump(), **settings},
                                      {key: key for key in settings})
        return evaluate_trained(loaded.config, loaded.method, loaded.tokenizer, ann, root, eval_cfg, on_bad_record,
                                torch_device)
