"""One experiment end to end: data, tokenizer, method, pre-training, evaluation, run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from vlpbench import pipeline
from vlpbench.config import AnnotationSource, ExperimentConfig, RetrievalEvalConfig, config_from_dict
from vlpbench.data.datasets import SkipReport
from vlpbench.evaluate import evaluate_retrieval
from vlpbench.method import VLPMethod
from vlpbench.rundir import RunDir
from vlpbench.train import Trainer
from vlpbench.zoo.tokenizer import TextTokenizer


def run_experiment(cfg: ExperimentConfig, run: RunDir, resume: bool = False, stop_at: int | None = None,
                   log=print) -> dict:
    """Pre-train and evaluate; with ``stop_at`` pre-train only up to that step (resume later)."""
    device = pipeline.resolve_device(cfg.train.device)
    sources = pipeline.data_sources(cfg, log)
    skips = SkipReport()
    entries = pipeline.open_entries(sources["pretrain"], cfg, skips)
    tokenizer_file = run.path / "tokenizer.json"
    tokenizer = (TextTokenizer.load(tokenizer_file) if resume and tokenizer_file.is_file()
                 else pipeline.build_tokenizer(cfg, entries, tokenizer_file))
    torch.manual_seed(cfg.seed)
    method = pipeline.build_method(cfg, tokenizer).to(device)
    trainer = Trainer(cfg, method, pipeline.pretrain_dataset(entries, cfg),
                      pipeline.Collate(tokenizer, cfg.data.max_text_len), run, device)
    if resume:
        checkpoint = run.latest_checkpoint()
        if checkpoint is None:
            log(f"no checkpoint in {run.checkpoints}; starting from step 0")
        else:
            trainer.load_checkpoint(torch.load(checkpoint, map_location=device, weights_only=False))
            run.truncate_metrics(trainer.step)
            log(f"resuming {run.path} from step {trainer.step}")
    run.write_env(device, resumed_at=trainer.step if resume else None)

    results = {"experiment": cfg.name, "method": cfg.method.name, "run_dir": str(run.path)}
    retrieval = None
    if cfg.eval.retrieval.enabled:
        retrieval = pipeline.retrieval_dataset(pipeline.open_entries(sources["retrieval_test"], cfg, skips), cfg)
        if cfg.eval.retrieval.before_training and trainer.step == 0:
            results["retrieval_untrained"] = evaluate_retrieval(method, retrieval, tokenizer, cfg.eval.retrieval,
                                                                cfg.data.max_text_len, device)
    results["train"] = trainer.fit(tokenizer.to_json(), stop_at)
    results["complete"] = trainer.step == cfg.train.steps
    if retrieval is not None and results["complete"]:
        results["retrieval"] = evaluate_retrieval(method, retrieval, tokenizer, cfg.eval.retrieval,
                                                  cfg.data.max_text_len, device)
    results["skipped_records"] = skips.as_dict()
    if skips.total:
        log(f"skipped {skips.total} bad records: {dict(skips.counts)}")
    run.write_results(results)
    return results


def load_trained(target: str | Path, device: torch.device) -> tuple[ExperimentConfig, VLPMethod, TextTokenizer]:
    """A trained method from a run directory (its latest checkpoint) or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        checkpoint = RunDir(target).latest_checkpoint()
        if checkpoint is None:
            raise FileNotFoundError(f"{target}: run directory has no checkpoint under checkpoints/")
    elif target.is_file():
        checkpoint = target
    else:
        raise FileNotFoundError(f"{target}: neither a run directory nor a checkpoint file")
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    cfg = config_from_dict(state["config"], source=f"{checkpoint} (saved config)")
    tokenizer = TextTokenizer.from_json(state["tokenizer"])
    # the checkpoint holds every weight: do not look for the original pretrained files
    model = cfg.model.model_copy(update={"vision": cfg.model.vision.model_copy(update={"pretrained": None}),
                                         "text": cfg.model.text.model_copy(update={"pretrained": None})})
    method = pipeline.build_method(cfg.model_copy(update={"model": model}), tokenizer).to(device)
    method.load_state_dict(state["model"])
    return cfg, method, tokenizer


def evaluate_checkpoint(target: str, ann: list[str], image_root: str, eval_cfg: RetrievalEvalConfig,
                        on_bad_record: str = "error", device: str = "auto") -> dict:
    """Zero-shot retrieval of a trained model on any ALBEF-format retrieval file."""
    torch_device = pipeline.resolve_device(device)
    cfg, method, tokenizer = load_trained(target, torch_device)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_bad_record": on_bad_record})})
    skips = SkipReport()
    source = AnnotationSource(ann=ann, image_root=image_root)
    dataset = pipeline.retrieval_dataset(pipeline.open_entries(source, cfg, skips), cfg)
    results = evaluate_retrieval(method, dataset, tokenizer, eval_cfg, cfg.data.max_text_len, torch_device)
    results["skipped_records"] = skips.as_dict()
    return results
