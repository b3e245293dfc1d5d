"""Building blocks shared by pre-training and evaluation: data sources, tokenizer, method."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from vlpbench.checkpoint import load_weights, read_checkpoint
from vlpbench.config import (AnnotationSource, ConfigError, DataConfig, ExperimentConfig, TrainConfig, VisionConfig,
                             config_from_dict)
from vlpbench.data.datasets import (DatasetError, ImageCaptions, RetrievalDataset, SkipReport, UnreadableSample,
                                    load_source)
from vlpbench.data.embedded import ensure_embedded_dataset
from vlpbench.data.sources import PRETRAIN_SOURCES, PretrainData
from vlpbench.data.transforms import ImageTransform
from vlpbench.method import Batch, VLPMethod
from vlpbench.registry import get_method
from vlpbench.rundir import RunDir
from vlpbench.zoo.tokenizer import TextTokenizer, train_wordpiece
from vlpbench.zoo.vision import VISION_PRESETS
from vlpbench.zoo.weights import PretrainedWeightsError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` to a device of this machine; ``key`` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda', but this machine has no usable CUDA device (torch {torch.__version__}); "
                          "use cpu or auto")
    return torch.device(name)


def runtime_device(cfg: TrainConfig) -> torch.device:
    """The device a run trains on; a device or precision this machine cannot give is an error
    naming the key, raised before data or model are built."""
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"train.precision: bf16 is supported on CUDA only, and this run trains on {device.type} "
                          "(bf16 matmul on CPU is far slower than fp32); use fp32 or auto")
    return device


def image_size_of(vision: VisionConfig) -> int:
    return vision.image_size or VISION_PRESETS[vision.preset].image_size


def data_sources(cfg: ExperimentConfig, log=print) -> dict[str, AnnotationSource]:
    """The pre-training and retrieval-test sources; the embedded dataset fills whichever is unset."""
    return annotation_sources(cfg.data, log)


def pretrain_annotations(data: DataConfig, log=print) -> AnnotationSource:
    """``data.pretrain``, or the embedded dataset's pre-training records."""
    return annotation_sources(data, log, ("pretrain",))["pretrain"]


def annotation_sources(data: DataConfig, log=print, names=("pretrain", "retrieval_test")) -> dict[str, AnnotationSource]:
    sources = {name: getattr(data, name) for name in names}
    if any(s is None for s in sources.values()):
        folder = ensure_embedded_dataset(data.embedded, log)
        for name, source in sources.items():
            if source is None:
                sources[name] = AnnotationSource(ann=str(folder / f"{name}.json"), image_root=str(folder))
    return sources


def open_entries(source: AnnotationSource, cfg: ExperimentConfig, skips: SkipReport,
                 skip_hint: str = "set data.on_bad_record: skip") -> list[ImageCaptions]:
    return load_source(source, cfg.data.on_bad_record, cfg.data.verify_images, skips, skip_hint)


def open_pretrain(cfg: ExperimentConfig, skips: SkipReport, log=print) -> PretrainData:
    """The pre-training pairs through ``data.source``'s reader; fewer than one optimizer step needs
    is an error that says why."""
    transform = ImageTransform(image_size_of(cfg.model.vision), cfg.data.augment)
    data = PRETRAIN_SOURCES[cfg.data.source](cfg.data, pretrain_annotations(cfg.data, log), transform, skips, log)
    needed, pairs = cfg.train.batch_size * cfg.train.grad_accum_steps, len(data.dataset)
    if pairs < needed:
        skipped = f", after skipping {skips.total} bad records: {skips.summary()}" if skips.total else ""
        raise DatasetError(f"the pre-training data ({cfg.data.source}) holds {pairs} image-caption pairs{skipped}; "
                           f"train.batch_size x train.grad_accum_steps = {needed} needs at least {needed}")
    return data


def retrieval_dataset(entries: list[ImageCaptions], cfg: ExperimentConfig) -> RetrievalDataset:
    return RetrievalDataset(entries, ImageTransform(image_size_of(cfg.model.vision)))


def make_tokenizer(cfg: ExperimentConfig, captions: Iterable[str]) -> TextTokenizer:
    """The configured tokenizer, or WordPiece trained on the pre-training ``captions``."""
    if cfg.model.text.tokenizer:
        return TextTokenizer.load(cfg.model.text.tokenizer)
    text = cfg.model.text
    return train_wordpiece(captions, text.vocab_size, pad=text.pad_vocab)


def build_tokenizer(cfg: ExperimentConfig, captions: Iterable[str], save_to: Path) -> TextTokenizer:
    """``make_tokenizer``, saved to ``save_to``."""
    tokenizer = make_tokenizer(cfg, captions)
    tokenizer.save(save_to)
    return tokenizer


def build_method(cfg: ExperimentConfig, tokenizer: TextTokenizer) -> VLPMethod:
    """The configured method; pretrained weights that do not fit (beyond the mismatches the zoo
    documents as expected, unless ``allow_partial``) are a ``ConfigError`` naming the key."""
    try:
        method = get_method(cfg.method.name)(cfg.method, cfg.model, tokenizer)
    except PretrainedWeightsError as exc:
        raise ConfigError(f"model.*.pretrained: {exc}") from None
    trained = {key: load_frozen(key, path) for key, path in cfg.method.trained_models().items()}
    if trained:
        method.attach_trained(trained)
    for report in load_reports(method):
        problems = report["unexplained_missing"], report["unexplained_unexpected"]
        if any(problems) and not getattr(cfg.model, report["kind"]).allow_partial:
            key = f"model.{report['kind']}"
            raise ConfigError(
                f"{key}.pretrained: {report['source']} does not fit the {getattr(cfg.model, report['kind']).preset} "
                f"preset: {len(problems[0])} of its keys stay unfilled (first: {problems[0][:3]}), {len(problems[1])} "
                f"keys of the file have no place (first: {problems[1][:3]}). Set {key}.allow_partial: true to "
                "train with what fits")
    return method


def load_frozen(key: str, path: str) -> tuple[VLPMethod, TextTokenizer]:
    """A trained model that ``method.<key>`` names, frozen in eval mode, with its tokenizer:
    from a checkpoint, a run directory, or an experiment's output folder (``runs/albef_mini``:
    its newest run with a checkpoint)."""
    folder = Path(path)
    try:
        if folder.is_dir() and not (folder / "config.yaml").is_file():
            path = str(RunDir.latest(str(folder.parent), folder.name).path)
        _, method, tokenizer = load_trained(path, torch.device("cpu"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"method.{key}: {folder}: no trained model there ({exc}); train it first, e.g. "
                                "vlpbench run experiments/albef_mini.yaml") from None
    return method.eval().requires_grad_(False), tokenizer


def load_reports(method: torch.nn.Module) -> list[dict]:
    """The load report of every encoder of ``method`` that loaded pretrained weights (once each:
    a momentum teacher is a copy of its student, report included)."""
    reports = {}
    for module in method.modules():
        if getattr(module, "load_report", None):
            reports.setdefault(json.dumps(module.load_report, sort_keys=True), module.load_report)
    return list(reports.values())


class Collate:
    """Stacks images and tokenises captions into a ``Batch`` (runs in loader workers)."""

    def __init__(self, tokenizer: TextTokenizer, max_text_len: int):
        self.tokenizer, self.max_text_len = tokenizer, max_text_len

    def __call__(self, items: list[tuple[torch.Tensor, str, torch.Tensor, int] | UnreadableSample]) -> Batch:
        skipped = tuple(item.message for item in items if isinstance(item, UnreadableSample))
        readable = [item for item in items if not isinstance(item, UnreadableSample)]
        if not readable:
            raise DatasetError(f"all {len(items)} samples of a batch failed to load, e.g. {skipped[0]}")
        # a skipped sample's slot holds a copy of the first readable one: shapes stay fixed, on every rank
        items = [item if not isinstance(item, UnreadableSample) else readable[0] for item in items]
        images, captions, regions, image_ids = zip(*items)
        input_ids, attention_mask = self.tokenizer(list(captions), self.max_text_len)
        return Batch(torch.stack(images), input_ids, attention_mask, torch.stack(regions), torch.tensor(image_ids),
                     skipped)


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
    state = read_checkpoint(checkpoint, device)
    cfg = config_from_dict(state["config"], source=f"{checkpoint} (saved config)")
    tokenizer = TextTokenizer.from_json(state["tokenizer"])
    # the checkpoint holds every weight: do not look for the original pretrained files
    model = cfg.model.model_copy(update={"vision": cfg.model.vision.model_copy(update={"pretrained": None}),
                                         "text": cfg.model.text.model_copy(update={"pretrained": None})})
    method = build_method(cfg.model_copy(update={"model": model}), tokenizer).to(device)
    load_weights(method, state["model"], checkpoint)
    return cfg, method, tokenizer
