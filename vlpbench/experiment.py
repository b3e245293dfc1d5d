"""One experiment end to end: data, tokenizer, method, pre-training, evaluation, run directory."""

from __future__ import annotations

import traceback

import torch

from vlpbench import distributed, pipeline, unimodal
from vlpbench.budget import compute_record
from vlpbench.config import (AnnotationSource, ConfigError, ExperimentConfig, RetrievalEvalConfig, config_differences)
from vlpbench.data.datasets import ImageCaptions, RetrievalDataset, SkipReport
from vlpbench.data.sources import PretrainData
from vlpbench.diagnostics import run_verdicts
from vlpbench.analysis import matching_separation
from vlpbench.errors import UserError
from vlpbench.evaluation import LearningCurve, evaluate_retrieval
from vlpbench.io import CorruptFileError, read_json, write_json
from vlpbench.method import VLPMethod
from vlpbench.rundir import RunDir
from vlpbench.train import Trainer
from vlpbench.zoo.tokenizer import TextTokenizer


class EvaluationError(UserError, RuntimeError):
    """Evaluation failed after training finished; the training result is saved regardless."""
    exit_code = 1


def run_experiment(cfg: ExperimentConfig, run: RunDir, resume: bool = False, stop_at: int | None = None,
                   log=print, built: tuple[TextTokenizer, VLPMethod] | None = None) -> dict:
    """Pre-train and evaluate; with ``stop_at`` pre-train only up to that step (resume later).
    ``built``: the tokenizer and method to train (``build_model``'s, made by the caller), instead
    of building them here; a resumed run always builds its own.

    A session that raises leaves ``failed.json`` (the error, and the checkpoint a resume would
    start from) in the run directory.
    """
    if built is not None and resume:
        raise ValueError("a resumed run builds its method from its checkpoint; built= is for a new run")
    if cfg.train.steps is None:
        raise ValueError("train.flop_budget is not resolved into train.steps (budget.apply_flop_budget)")
    run.failed_file.unlink(missing_ok=True)
    try:
        return _run(cfg, run, resume, stop_at, log, built)
    except (EvaluationError, KeyboardInterrupt):
        # training completed: the run is not failed, results.json says what went wrong; or the
        # user aborted: the run resumes from its last checkpoint
        raise
    except BaseException as exc:
        run.mark_failed(exc)
        raise


def build_model(cfg: ExperimentConfig, entries: list[ImageCaptions], tokenizer: TextTokenizer, device: torch.device,
                log=print) -> VLPMethod:
    """The method a run of ``cfg`` starts from: its encoders warm-started where ``model.unimodal``
    asks (trained once per dataset and cached), the rest initialised from ``cfg.seed``."""
    cfg_with_init = unimodal.warm_start(cfg, entries, tokenizer, log)  # seeds torch itself when it trains
    torch.manual_seed(cfg.seed)
    return pipeline.build_method(cfg_with_init, tokenizer).to(device)


def _run(cfg: ExperimentConfig, run: RunDir, resume: bool, stop_at: int | None, log,
         built: tuple[TextTokenizer, VLPMethod] | None) -> dict:
    device = pipeline.runtime_device(cfg.train)
    if cfg.downstream.tasks and distributed.world_size() > 1:
        raise ConfigError("downstream.tasks: downstream tasks run in one process; pre-train data-parallel without "
                          "them, then run `vlpbench downstream RUN_DIR`")
    data, retrieval, skips = open_data(cfg, log)
    tokenizer, method = prepare_model(cfg, run, data, resume, built, device, log)
    trainer = Trainer.for_experiment(cfg, method, data.dataset, pipeline.Collate(tokenizer, cfg.data.max_text_len),
                                     run, device)
    if resume:
        resume_training(trainer, cfg, run, device, log)
    if distributed.is_main():
        run.write_env(device, resumed_at=trainer.step if resume else None)
    results = {"experiment": cfg.name, "method": cfg.method.name, "run_dir": str(run.path),
               "skipped_records": skips.as_dict()}
    if retrieval is not None and cfg.eval.retrieval.before_training and trainer.step == 0 and distributed.is_main():
        results["retrieval_untrained"] = evaluate_retrieval(method, retrieval, tokenizer, cfg.eval.retrieval,
                                                            cfg.data.max_text_len, device)
    results.update(pretrain(cfg, run, trainer, tokenizer, retrieval, resume, stop_at, device, log))
    if not distributed.is_main():  # process 0 writes and evaluates
        return results
    with torch.random.fork_rng(devices=[]):  # the count draws random weights; evaluation's draws stay the run's
        results["compute"] = compute_record(cfg)
    # `pending`: what is still to run after training. The run is done when it is empty; a session
    # stopped before then is resumed, and runs it without training again.
    due = {"retrieval": retrieval is not None, "downstream": bool(cfg.downstream.tasks)}
    results["pending"] = [part for part, wanted in due.items() if wanted and results["complete"]]
    run.write_results(results)  # the training result is on disk before evaluation starts
    if "retrieval" in results["pending"]:
        evaluate_run(cfg, run, method, tokenizer, retrieval, device, results)
    if "downstream" in results["pending"]:
        from vlpbench.downstream.runner import run_tasks  # the tasks load the pre-trained run as eval does
        results["downstream"] = run_tasks(run, cfg, device, log=log)
        results["pending"].remove("downstream")
        run.write_results(results)
    return results


def open_data(cfg: ExperimentConfig, log) -> tuple[PretrainData, RetrievalDataset | None, SkipReport]:
    """The pre-training data, the retrieval test split (None when retrieval is off), and the bad
    records skipped on the way (counted and logged)."""
    skips = SkipReport()
    data = pipeline.open_pretrain(cfg, skips, log)
    retrieval = None
    if cfg.eval.retrieval.enabled:
        test = pipeline.data_sources(cfg, log)["retrieval_test"]
        retrieval = pipeline.retrieval_dataset(pipeline.open_entries(test, cfg, skips), cfg)
    if skips.total:
        log(f"skipped {skips.total} bad records: {skips.summary()}")
    return data, retrieval, skips


def prepare_model(cfg: ExperimentConfig, run: RunDir, data: PretrainData, resume: bool,
                  built: tuple[TextTokenizer, VLPMethod] | None, device: torch.device,
                  log) -> tuple[TextTokenizer, VLPMethod]:
    """The tokenizer (saved in the run directory; a resumed run's own) and the method to train."""
    tokenizer_file = run.path / "tokenizer.json"
    if built is not None:
        tokenizer, method = built[0], built[1].to(device)
        tokenizer.save(tokenizer_file)
    else:
        tokenizer = (TextTokenizer.load(tokenizer_file) if resume and tokenizer_file.is_file()
                     else pipeline.build_tokenizer(cfg, data.captions(), tokenizer_file))
        method = build_model(cfg, data.entries, tokenizer, device, log)
    if distributed.is_main():
        record_pretrained_loads(pipeline.load_reports(method), run, log)
    return tokenizer, method


def resume_training(trainer: Trainer, cfg: ExperimentConfig, run: RunDir, device: torch.device, log) -> None:
    """The trainer at the run's latest checkpoint (which must hold ``cfg``), or at step 0 without one."""
    checkpoint = run.read_latest_checkpoint(device, log)
    if checkpoint is None:
        log(f"no checkpoint in {run.checkpoints}; starting from step 0")
        run.truncate_metrics(0)  # lines an earlier, failed attempt logged
        return
    check_checkpoint_config(checkpoint, cfg, run)
    trainer.load_checkpoint(checkpoint)
    run.truncate_metrics(trainer.step)
    log(f"resuming {run.path} from step {trainer.step}")


def pretrain(cfg: ExperimentConfig, run: RunDir, trainer: Trainer, tokenizer: TextTokenizer,
             retrieval: RetrievalDataset | None, resume: bool, stop_at: int | None, device: torch.device,
             log) -> dict:
    """Train (with the learning curve where asked), or checkpoint the initial weights with
    ``pretrain: false``; the results' ``train``, ``complete`` and ``diagnostics``."""
    if not cfg.pretrain:  # the initial weights, checkpointed for evaluation and downstream tasks
        if distributed.is_main():
            trainer.save_checkpoint(tokenizer.to_json())
        return {"train": {"steps": 0, "pretrain": False, "processes": distributed.world_size()}, "complete": True}
    curve = None
    if retrieval is not None and cfg.eval.every_steps and not cfg.method.capabilities().contrastive_embedding:
        log("no learning curve: it is ITC-only retrieval, and this method has no contrastive embedding")
    elif retrieval is not None and cfg.eval.every_steps:
        curve = LearningCurve(retrieval, cfg.eval.curve_images, tokenizer, cfg.eval.retrieval.batch_size,
                              cfg.data.max_text_len, device)
    earlier = _finished_training(run, cfg, trainer, log) if resume else None
    results = {"train": earlier or trainer.fit(tokenizer.to_json(), stop_at, curve)}
    results["train"]["processes"] = distributed.world_size()
    results["complete"] = trainer.step == cfg.train.steps
    if results["complete"]:
        results["diagnostics"] = run_verdicts(run.metrics_file, cfg.method.itm_positive_fraction(),
                                              cfg.eval.itm_learned_margin, cfg.eval.flat_tolerance)
    return results


def evaluate_run(cfg: ExperimentConfig, run: RunDir, method: VLPMethod, tokenizer: TextTokenizer,
                 retrieval: RetrievalDataset, device: torch.device, results: dict) -> None:
    """Zero-shot retrieval, and a gate method's gate, into ``results`` (written); a failure is
    recorded with its traceback and raised as ``EvaluationError``: the training stays done."""
    try:
        results["retrieval"] = evaluate_retrieval(method, retrieval, tokenizer, cfg.eval.retrieval,
                                                  cfg.data.max_text_len, device)
        if cfg.method.capabilities().gate and cfg.eval.gate_pairs:
            results["gate"] = gate_analysis(cfg, method, tokenizer, None, None, cfg.eval.gate_pairs,
                                            cfg.eval.retrieval.batch_size, device)
    except Exception as exc:
        results["retrieval_error"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        run.write_results(results)
        raise EvaluationError(f"training finished and is checkpointed, but retrieval evaluation failed: "
                              f"{type(exc).__name__}: {exc}. {run.path / 'results.json'} holds the training "
                              f"result and the traceback; retry with `vlpbench eval {run.path} ...`") from exc
    results["pending"].remove("retrieval")
    run.write_results(results)


def record_pretrained_loads(reports: list[dict], run: RunDir, log) -> None:
    """``pretrained_load.json``: what each pretrained file filled, and a line per file in the log."""
    if not reports:
        return
    write_json(run.path / "pretrained_load.json", reports)
    for r in reports:
        log(f"model.{r['kind']}.pretrained {r['source']}: {r['loaded']} tensors loaded; {len(r['missing'])} keys "
            f"missing ({len(r['unexplained_missing'])} unexpectedly), {len(r['unexpected'])} unused "
            f"({len(r['unexplained_unexpected'])} unexpectedly); details in {run.path / 'pretrained_load.json'}")


def check_checkpoint_config(checkpoint: dict, cfg: ExperimentConfig, run: RunDir) -> None:
    """A resumed run continues the training its checkpoint holds: a ``config.yaml`` edited since
    (or a sweep that now resolves otherwise) would label that training with settings it never had."""
    differences = config_differences(checkpoint["config"], cfg.model_dump(mode="json"))
    if differences:
        raise ConfigError(f"{run.path}: config.yaml differs from the config its checkpoint was trained with "
                          f"({'; '.join(differences[:5])}); restore config.yaml, or start a new run with the "
                          "new settings")


def _finished_training(run: RunDir, cfg: ExperimentConfig, trainer: Trainer, log) -> dict | None:
    """The training result of an earlier session that finished training but was stopped during
    evaluation: this session trains no step, so the earlier timing is the run's."""
    results_file = run.path / "results.json"
    if trainer.step != cfg.train.steps or not results_file.is_file():
        return None
    try:
        earlier = read_json(results_file).get("train", {})
    except CorruptFileError as exc:
        log(f"warning: {exc}; the run's training time is lost, its training result is not")
        return None
    return earlier if earlier.get("steps") == cfg.train.steps else None


def evaluate_trained(cfg: ExperimentConfig, method: VLPMethod, tokenizer: TextTokenizer, ann: list[str] | None,
                     image_root: str | None, eval_cfg: RetrievalEvalConfig, on_bad_record: str,
                     device: torch.device) -> dict:
    """Zero-shot retrieval of ``method``, trained with ``cfg``, on ALBEF-format retrieval files
    ``ann`` (default: the run's own retrieval test split)."""
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_bad_record": on_bad_record})})
    skips = SkipReport()
    source = (AnnotationSource(ann=ann, image_root=image_root) if ann
              else pipeline.data_sources(cfg)["retrieval_test"])
    dataset = pipeline.retrieval_dataset(pipeline.open_entries(source, cfg, skips, "pass --on-bad-record skip"), cfg)
    results = evaluate_retrieval(method.to(device), dataset, tokenizer, eval_cfg, cfg.data.max_text_len, device)
    results["skipped_records"] = skips.as_dict()
    return results


def gate_analysis(cfg: ExperimentConfig, method: VLPMethod, tokenizer: TextTokenizer, ann: list[str] | None,
                    image_root: str | None, max_pairs: int, batch_size: int, device: torch.device) -> dict:
    """``analysis.matching_separation`` of ``method``, trained with ``cfg``, on the first ``max_pairs``
    records of ``ann`` (default: the run's own pre-training data, whose noisy pairs the embedded
    dataset marks)."""
    source = AnnotationSource(ann=ann, image_root=image_root) if ann else pipeline.data_sources(cfg)["pretrain"]
    entries = pipeline.open_entries(source, cfg, SkipReport(), "pass --on-bad-record skip")[:max_pairs]
    result = matching_separation(method.to(device), entries, tokenizer, pipeline.image_size_of(cfg.model.vision),
                                 cfg.data.max_text_len, batch_size, device)
    return {"method": cfg.method.name, "annotations": source.ann_files, **result}
