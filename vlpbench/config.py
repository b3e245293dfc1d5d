"""Experiment configuration: YAML files validated against a schema, with dotted overrides.

Every error names the file, the key path and what was expected. The ``method`` section is
validated against the config class the named method registers, so each method owns its keys.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from vlpbench.errors import UserError
from vlpbench.zoo.presets import TEXT_PRESETS, VISION_PRESETS


class ConfigError(UserError, ValueError):
    """A configuration problem, already phrased for the user."""


SWEEP_SECTIONS = ("sweep", "launcher", "report")  # about the whole experiment, not one run


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EmbeddedDataConfig(StrictModel):
    """Parameters of the procedurally generated dataset (regenerated only when these change)."""
    seed: int = 0
    num_pretrain_images: int = Field(3000, ge=8)
    captions_per_image: int = Field(2, ge=1)
    num_test_images: int = Field(100, ge=2)
    image_size: int = Field(64, ge=16, le=1024)
    max_objects: int = Field(4, ge=1, le=9)
    noisy_fraction: float = Field(0.1, ge=0.0, le=1.0)
    partial_fraction: float = Field(0.2, ge=0.0, le=1.0)
    root: str | None = None


KarpathySplit = Literal["train", "restval", "val", "test"]


class AnnotationSource(StrictModel):
    """Annotation file(s) and the directory image paths are relative to. ``format``: ALBEF's JSON
    records, or a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``), whose
    images of ``split`` are read (ALBEF's COCO training set: [train, restval])."""
    ann: str | list[str]
    image_root: str = "."
    format: Literal["albef_json", "karpathy"] = "albef_json"
    split: KarpathySplit | list[KarpathySplit] | None = None

    @property
    def ann_files(self) -> list[str]:
        return [self.ann] if isinstance(self.ann, str) else list(self.ann)

    @property
    def splits(self) -> list[str]:
        return [self.split] if isinstance(self.split, str) else list(self.split or [])

    @model_validator(mode="after")
    def _split_for_karpathy(self) -> "AnnotationSource":
        if self.format == "karpathy" and not self.split:
            raise ValueError("format: karpathy needs split: the Karpathy splits to read (train, restval, val, test)")
        if self.format != "karpathy" and self.split:
            raise ValueError(f"split: only a Karpathy split file has splits; this source's format is {self.format}")
        return self


RandAugmentOp = Literal["Identity", "AutoContrast", "Equalize", "Solarize", "Posterize", "Brightness", "Sharpness",
                        "Color", "Contrast", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]
# ALBEF's list (the authors' dataset/__init__.py): no colour-changing ops, since captions name colours
ALBEF_RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                         "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


class RandAugmentConfig(StrictModel):
    """ALBEF's RandomAugment(num_ops, magnitude) (vlpbench.data.randaugment): ``num_ops`` ops drawn
    from ``ops`` with replacement, each applied with probability 0.5 at ``magnitude`` of 10."""
    num_ops: int = Field(2, ge=1)
    magnitude: float = Field(7.0, ge=0.0, le=10.0)
    ops: tuple[RandAugmentOp, ...] = ALBEF_RANDAUGMENT_OPS
    translate_pixels: float = Field(10.0, ge=0.0)  # at magnitude 10; the authors' code: 10 at any resolution


class ColorJitterConfig(StrictModel):
    """VLMAE Sec. 4.1 names colour jittering without strengths: these are SimCLR's, applied with
    ``probability`` (brightness, contrast and saturation factors in [1 - s, 1 + s], hue shift in
    [-hue, hue] of a turn)."""
    probability: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.4, ge=0.0, lt=1.0)
    contrast: float = Field(0.4, ge=0.0, lt=1.0)
    saturation: float = Field(0.4, ge=0.0, lt=1.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)


class AugmentConfig(StrictModel):
    """Training-time image augmentation, applied in this order: random-resized crop, horizontal
    flip, colour jitter, grayscale, Gaussian blur, RandAugment. Geometric steps move VLMAE's
    region maps with the image. Off by default; the paper presets set each paper's."""
    crop_scale_min: float = Field(1.0, gt=0.0, le=1.0)  # 1.0: no random-resized-crop
    hflip: bool = False  # off by default: captions name left and right
    color_jitter: ColorJitterConfig | None = None
    grayscale_probability: float = Field(0.0, ge=0.0, le=1.0)
    # VLMAE names Gaussian blur without parameters: SimCLR's sigma range, in pixels at the model's resolution
    blur_probability: float = Field(0.0, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    randaugment: RandAugmentConfig | None = None


class ShardSource(StrictModel):
    """webdataset tar shards for pre-training (``data.source: webdataset``, ``vlpbench.data.shards``)."""
    # paths, with brace patterns (shards/{000000..000099}.tar); None: the embedded set's pairs,
    # written as shards of samples_per_shard beside it on first use
    urls: str | list[str] | None = None
    samples_per_shard: int = Field(250, ge=1)
    shuffle_buffer: int = Field(1000, ge=1)  # samples per loader lane, shuffled within its epoch


class DataConfig(StrictModel):
    embedded: EmbeddedDataConfig = EmbeddedDataConfig()
    # how the pre-training pairs are read (vlpbench.data.sources): ALBEF-JSON records, or webdataset
    # shards (data.shards; unset: the embedded set written as shards on first use)
    source: Literal["albef_json", "webdataset"] = "albef_json"
    shards: ShardSource = ShardSource()
    pretrain: AnnotationSource | None = None        # None: the embedded dataset
    retrieval_test: AnnotationSource | None = None  # None: the embedded dataset
    max_text_len: int = Field(40, ge=4)
    on_bad_record: Literal["error", "skip"] = "error"
    # decode every image at open (true), none (false: a bad image is skipped when training meets it),
    # or a fixed random sample of N records (the paper-scale presets: 1000)
    verify_images: bool | Annotated[int, Field(ge=1)] = True
    # where the pre-training records' index is cached (vlpbench.data.index; one build per node);
    # None: <data.embedded.root or VLPBENCH_DATA>/index. On a multi-node cluster a shared folder
    # lets one node build it for all
    index_cache: str | None = None
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = AugmentConfig()

    def source_problems(self, unimodal: "UnimodalConfig") -> list[str]:
        urls = self.shards.urls
        if self.source == "albef_json":
            return [] if urls is None else [
                "data.shards.urls: set, but data.source is albef_json (set data.source: webdataset to read them)"]
        if urls is None and self.pretrain is not None:
            return ["data.source: webdataset reads data.shards.urls, which is unset; write shards of data.pretrain "
                    "with `vlpbench data shard EXPERIMENT OUT` (unset, both: the embedded set's shards)"]
        if urls is not None and (unimodal.text_steps or unimodal.vision_steps):
            return ["model.unimodal: the uni-modal warm start reads the embedded dataset's files; with "
                    "data.shards.urls set text_steps and vision_steps to 0 (or leave urls unset for the embedded "
                    "set's shards)"]
        return []


def _preset_validator(presets: dict):
    def check(cls, v: str) -> str:
        if v not in presets:
            raise ValueError(f"expected one of {sorted(presets)}")
        return v
    return field_validator("preset")(classmethod(check))


class VisionConfig(StrictModel):
    preset: str = "vit_mini"
    pretrained: str | None = None
    # accept pretrained weights that leave keys unfilled or bring keys the model lacks, beyond the
    # mismatches vlpbench.zoo.weights documents as expected (the load report lists them either way)
    allow_partial: bool = False
    image_size: int | None = Field(None, ge=16)
    _known_preset = _preset_validator(VISION_PRESETS)


class TextConfig(StrictModel):
    preset: str = "bert_mini"
    pretrained: str | None = None
    allow_partial: bool = False  # as model.vision.allow_partial
    tokenizer: str | None = None  # None: train WordPiece on the pre-training captions
    vocab_size: int = Field(1000, ge=32)  # of the trained WordPiece (at most: the captions' words)
    # fill the trained vocabulary with [unusedN] entries to exactly vocab_size (BERT's 30,522 for the
    # base presets, so embedding and MLM-head sizes are the papers' when no BERT vocabulary is at hand)
    pad_vocab: bool = False
    # architecture overrides of the preset (None: the preset's value); for models trained from scratch
    pre_norm: bool | None = None  # pre-LN blocks and a final LayerNorm per stack instead of BERT's post-LN
    init_std: float | None = Field(None, gt=0.0)  # N(0, std) initialisation (BERT: 0.02)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    _known_preset = _preset_validator(TEXT_PRESETS)

    def preset_overrides(self) -> dict:
        return {k: v for k, v in (("pre_norm", self.pre_norm), ("init_std", self.init_std),
                                  ("dropout", self.dropout)) if v is not None}


class UnimodalConfig(StrictModel):
    """Uni-modal pre-training of both encoders before the method's own (``vlpbench.unimodal``):
    the ``mini`` stand-in for the papers' pretrained BERT and ViT. Trained once, cached, shared."""
    text_steps: int = Field(0, ge=0)    # MLM on the pre-training captions (0: text encoder from scratch)
    vision_steps: int = Field(0, ge=0)  # (colour, shape) classification of the embedded images (0: from scratch)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(100, ge=0)
    seed: int = 0


class ModelConfig(StrictModel):
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    unimodal: UnimodalConfig = UnimodalConfig()


def divisibility_problem(key: str, value: int, by_key: str, by: int) -> list[str]:
    """The config-check line for ``key`` having to be a multiple of ``by_key`` (none if it is)."""
    return [f"{key}: {value} is not divisible by {by_key} {by}"] if value % by else []


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a method, as configured, offers the pipeline: declared by the method, not probed. The
    config checks, the retrieval evaluation, EPIC and the downstream tasks read it."""
    contrastive_embedding: bool = True  # image_embedding / text_embedding: ITC retrieval and its candidates
    matching: bool = True               # match_score: ITM re-ranking, matching diagnostics, vlpbench gate
    fusion: bool = True                 # fuse, fused_width, match_logits: what every downstream task reads
    single_stream: bool = False         # one text stream cross-attending to the image (NLVR2's replicated design)
    saliency: bool = False              # token_saliency: the method can be EPIC's saliency teacher
    gate: bool = False                  # match_score is the logit of a gate probability (match_probability)

    def describe(self) -> str:
        return ", ".join(f.name for f in dataclasses.fields(self) if getattr(self, f.name)) or "none"


class MethodConfig(StrictModel):
    """Base of every method's config; a method adds its own keys in its own file."""
    # the method's keys for a seconds-long run on the tests' tiny model (tests/conftest.py): the
    # registry-wide tests build, train and evaluate every registered method from it (timm's pattern)
    tiny: ClassVar[dict[str, Any]] = {}
    # what the method can offer at all; ``capabilities`` removes what a configuration switches off
    declared: ClassVar[Capabilities] = Capabilities()
    name: str
    # in-batch pairs that match each other (the same image, an identical caption): "exclude" never
    # samples them as ITM negatives and makes them ITC positives; "keep" treats them as negatives,
    # as the authors' code does (a plug-in such as EPIC follows its base method's setting)
    false_negatives: Literal["exclude", "keep"] = "exclude"

    def capabilities(self) -> Capabilities:
        """The declared capabilities less those this configuration's switches turn off (ALBEF Table 1's
        row 1 trains no ITC embedding: ``itc: false``)."""
        return self.declared

    def trained_models(self) -> dict[str, str]:
        """The trained runs the method reads, by config key (a checkpoint, a run directory or an
        experiment's output folder; EPIC's ``saliency_teacher``). The pipeline loads them, frozen,
        and hands them to the method's ``attach_trained``, so a method never loads runs itself."""
        return {}

    def itm_positive_fraction(self) -> float | None:
        """The share of positives among the ITM pairs the method trains on (None: it trains no ITM
        head): B positives and 2B negatives by default (ALBEF Sec. 3.2)."""
        return 1 / 3 if self.capabilities().matching else None

    def cross_attention_layers(self, experiment: "ExperimentConfig") -> int:
        """How many text-to-image cross-attention layers the method builds (``fusion_blocks``):
        by default the text preset's fusion layers; a method with its own fusion says otherwise."""
        return TEXT_PRESETS[experiment.model.text.preset].fusion_layers

    def downstream_problems(self, downstream: "DownstreamConfig") -> list[str]:
        """Tasks this method cannot run as configured, as ``"key.path: message"`` strings."""
        can = self.capabilities()
        if downstream.tasks and not can.fusion:
            return [f"downstream.tasks: {self.name!r} exposes no fused image-text states (its capabilities: "
                    f"{can.describe()}), which every downstream pipeline reads"]
        return []

    def check(self, experiment: "ExperimentConfig", at: str = "method") -> list[str]:
        """Cross-section problems as ``"key.path: message"`` strings, this section's keys under ``at``
        (a plug-in checks its base method at ``method.base``); a method adds its own to these."""
        retrieval, can = experiment.eval.retrieval, self.capabilities()
        if not retrieval.enabled:
            return []
        if not (can.contrastive_embedding or can.matching):
            return [f"eval.retrieval.enabled: {self.name!r} as configured has neither a contrastive embedding nor "
                    "a matching score to rank by; set it to false"]
        if not can.contrastive_embedding and retrieval.k_test != "all":
            return [f"eval.retrieval.k_test: {retrieval.k_test} takes ITM candidates from ITC similarities, which "
                    "this method does not train; set k_test: all (ITM scores every pair; max_images bounds the cost)"]
        return []


class HardNegativeConfig(MethodConfig):
    """Keys of a method that draws its ITM negatives from the in-batch contrastive similarities
    (ALBEF Sec. 3.3, LightVLP Sec. 3.4, VLMAE Sec. 3.4)."""
    # not in the papers (they draw hard negatives from the first step, with pretrained encoders):
    # the share of hard negatives rises linearly from 0 (uniform) to 1 over this many steps, a
    # curriculum for a matching head that starts from scratch; 0: hard from the first step
    itm_hard_negative_warmup_steps: int = Field(0, ge=0)

    def hard_negative_share(self, step: int) -> float:
        """The share of ITM negatives drawn hard at optimizer step ``step``."""
        warmup = self.itm_hard_negative_warmup_steps
        return 1.0 if warmup == 0 else min(1.0, step / warmup)


class MomentumContrastConfig(HardNegativeConfig):
    """Keys of ITC against a momentum teacher's features and queues of them (ALBEF Sec. 3.2,
    LightVLP Sec. 3.2, VLMAE Sec. 3.4; after MoCo): paper-scale defaults."""
    embed_dim: int = Field(256, ge=1)
    queue_size: int = Field(65536, ge=1)
    momentum: float = Field(0.995, ge=0.0, le=1.0)
    temp: float = Field(0.07, gt=0.0)

    def check(self, experiment: "ExperimentConfig", at: str = "method") -> list[str]:
        problems = super().check(experiment, at)
        if self.capabilities().contrastive_embedding:  # a whole batch of features enters the queue at a time
            problems += divisibility_problem(f"{at}.queue_size", self.queue_size, "train.batch_size",
                                             experiment.train.batch_size)
        return problems


class DistilledContrastConfig(MomentumContrastConfig):
    """... with ALBEF's learnable temperature (clamped to [temp_min, temp_max]) and momentum
    distillation (MoD, Sec. 3.4), whose weight ``alpha`` ramps in over ``alpha_warmup_steps``."""
    temp_min: float = Field(0.001, gt=0.0)
    temp_max: float = Field(0.5, gt=0.0)
    alpha: float = Field(0.4, ge=0.0, le=1.0)
    alpha_warmup_steps: int | None = Field(None, ge=0)  # None: the first epoch

    def alpha_at(self, step: int, steps_per_epoch: int) -> float:
        """``alpha * min(1, step / alpha_warmup_steps)``, the ramp over the first epoch by default."""
        ramp = steps_per_epoch if self.alpha_warmup_steps is None else self.alpha_warmup_steps
        return self.alpha * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def check(self, experiment: "ExperimentConfig", at: str = "method") -> list[str]:
        problems = super().check(experiment, at)
        if not self.temp_min <= self.temp <= self.temp_max:
            problems.append(f"{at}.temp: {self.temp} is outside [temp_min, temp_max] = [{self.temp_min}, {self.temp_max}]")
        return problems


class OptimizationConfig(StrictModel):
    """How a model is trained: what pre-training (``TrainConfig``) and a downstream task
    (``FinetuneTrainConfig``) share, and all the trainer reads."""
    steps: int = Field(..., ge=1)
    batch_size: int = Field(..., ge=2)
    grad_accum_steps: int = Field(1, ge=1)
    optimizer: Literal["adamw", "adafactor"] = "adamw"  # betas apply to AdamW only
    lr: float = Field(1e-4, gt=0.0)
    min_lr: float = Field(1e-5, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.02, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(None, gt=0.0)
    # learning-rate multipliers by parameter name: {glob pattern: factor}, the first pattern a
    # name matches wins (e.g. {"text.fusion_layers.*.cross_attn*": 3.0, "itm_head.*": 3.0} for the
    # parts a warm start leaves fresh); no paper sets one, so the default is {}
    lr_scale: dict[str, Annotated[float, Field(gt=0.0)]] = {}
    log_every: int = Field(10, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # blocks: torch.compile each transformer block (Inductor fuses its element-wise work); the
    # first steps then pay the compilation (~2 min at the base preset on 2 CPU cores)
    compile: Literal["none", "blocks"] = "none"
    # CPU, glibc: freed tensors stay in the process instead of being unmapped and faulted in again
    # every step (vlpbench.runtime.keep_freed_memory)
    keep_freed_memory: bool = True

    @model_validator(mode="after")
    def _lr_order(self) -> "OptimizationConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class TrainConfig(OptimizationConfig):
    """Pre-training's optimisation, where it runs, and its compute budget."""
    steps: int | None = Field(None, ge=1)  # optional with a flop_budget, which then sets it
    device: Literal["auto", "cpu", "cuda"] = "auto"  # downstream tasks run where pre-training ran
    # training compute in PFLOP (forward + backward, attention included, vlpbench flops' count per
    # sample x samples); when set, the run's steps are those that spend it (vlpbench.budget), so
    # methods of different cost get the same compute
    flop_budget: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _steps_or_budget(self) -> "TrainConfig":
        if self.steps is None and self.flop_budget is None:
            raise ValueError("train.steps: required unless train.flop_budget is set")
        return self


class RetrievalEvalConfig(StrictModel):
    enabled: bool = True
    # ITM re-ranks the top-k ITC candidates (ALBEF: 256 COCO, 128 Flickr); "all": ITM scores every
    # pair, for methods without a contrastive embedding (ALBEF Table 1 row 1). Cost: images x texts pairs.
    k_test: int | Literal["all"] = 16
    # evaluate on the first max_images test images only (all their captions); None: all. With
    # k_test: all, 1,000 x 5,000 pairs take ~35 min on 2 CPU cores, 200 x 1,000 about 1.5 min.
    max_images: int | None = Field(None, ge=2)
    batch_size: int = Field(64, ge=1)
    before_training: bool = False  # also evaluate the randomly initialised model, as a baseline
    # ROC AUC of the matching score against random and ITC-hardest negative images (one extra ITM
    # score per caption for each)
    itm_diagnostics: bool = True
    # disjoint test folds of this many images, each its own gallery (the embedded data makes as many
    # test images as asked); metrics are their means, ``folds`` keeps each fold's. None: one gallery
    fold_images: int | None = Field(None, ge=2)

    @field_validator("k_test", mode="before")
    @classmethod
    def _k_test(cls, v: Any) -> Any:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("expected an integer >= 1 or 'all'")


class EvalConfig(StrictModel):
    retrieval: RetrievalEvalConfig = RetrievalEvalConfig()
    # learning curve: ITC-only retrieval on the first curve_images test images every every_steps
    # optimizer steps (and at the last step), logged to metrics.jsonl as "curve_itc_*"
    every_steps: int | None = Field(None, ge=1)
    curve_images: int = Field(200, ge=2)
    # verdicts in results.json (vlpbench.diagnostics): the ITM head learned when its final loss is
    # this many nats below the entropy of its label prior; the loss curve has flattened when the
    # line fitted to its last quarter falls by less than this fraction of the loss over that quarter
    itm_learned_margin: float = Field(0.05, ge=0.0)
    # evaluate an exponential moving average of the weights (decay per optimizer step, e.g. 0.99)
    # instead of the last step's; the final checkpoint holds the average. None: the last weights
    ema: float | None = Field(None, ge=0.0, lt=1.0)
    flat_tolerance: float = Field(0.01, ge=0.0)
    # a method whose matching score is a gate (LightVLP): after retrieval, its gate p on this many
    # pre-training pairs goes to results.json ("gate": AUCs, quantiles and histogram of p by pair
    # kind, which reports plot without loading a model); 0: not recorded
    gate_pairs: int = Field(2000, ge=0)


# ---- downstream tasks (vlpbench.downstream): fine-tuned from the pre-trained model ----

class FinetuneTrainConfig(OptimizationConfig):
    """A task's own optimisation; the model starts from the pre-trained run's weights."""
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-5, gt=0.0)  # ALBEF: 2e-5 (VQA, NLVR2, SNLI-VE), 1e-5 (retrieval, grounding)
    min_lr: float = Field(0.0, ge=0.0)
    log_every: int = Field(20, ge=1)


class TaskData(StrictModel):
    train: AnnotationSource | None = None  # None: the embedded dataset's <task>_train.json
    test: AnnotationSource | None = None   # None: its <task>_test.json; another dataset's: zero-shot transfer
    max_test_records: int | None = Field(None, ge=1)  # evaluate on the first N test records only


class TaskConfig(StrictModel):
    """Base of every downstream task's config (``downstream.<task>``); a task adds its own keys in
    its own file (``vlpbench/downstream/``) and registers with ``registry.register_task``."""
    train: FinetuneTrainConfig = FinetuneTrainConfig()
    data: TaskData = TaskData()
    # fine-tuning resolution (ALBEF: 384 after pre-training at 256); position embeddings are resampled
    image_size: int | None = Field(None, ge=16)
    augment: AugmentConfig = AugmentConfig()  # of the training images; the test images are only resized
    eval_batch_size: int = Field(64, ge=1)

    def check(self, experiment: "ExperimentConfig", at: str) -> list[str]:
        """Problems of this task with the rest of ``experiment`` (its method), as ``"key.path: message"``
        strings with this section's keys under ``at``."""
        return []


class DownstreamConfig(StrictModel):
    """``downstream``: the tasks to run, and each registered task's section (``downstream_model``
    adds them to this base, so that a new task needs no edit here)."""
    tasks: list[str] = []  # run in this order after pre-training

    @model_validator(mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        """``downstream: [vqa, nlvr2]`` is short for ``downstream: {tasks: [vqa, nlvr2]}``."""
        return {"tasks": value} if isinstance(value, list) else value

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a task is listed twice: {tasks}")
        return tasks

    def task(self, name: str) -> TaskConfig:
        return getattr(self, name)


@functools.cache
def downstream_model() -> type[DownstreamConfig]:
    """``DownstreamConfig`` with ``tasks`` limited to the registered tasks and a section for each."""
    from vlpbench.registry import available_tasks, get_task
    names = tuple(available_tasks())
    sections = {name: (get_task(name).config_class, get_task(name).config_class()) for name in names}
    return create_model("DownstreamConfig", __base__=DownstreamConfig, tasks=(list[Literal[names]], []), **sections)


class ExperimentConfig(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")  # a folder name: no path separators
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig
    scale: str = "mini"  # which of the file's ``scales`` was applied (read_experiment)
    pretrain: bool = True  # false: no pre-training; downstream tasks start from the initial weights
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    downstream: DownstreamConfig = DownstreamConfig()

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        if set(name) == {"."}:
            raise ValueError(f"{name!r} would put the runs outside output_dir; expected a folder name")
        return name

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        problems = self.method.check(self)
        unimodal = self.model.unimodal
        if unimodal.vision_steps and (self.data.pretrain is not None or self.model.vision.pretrained):
            problems.append("model.unimodal.vision_steps: classification pre-training reads the embedded dataset's "
                            "scene graphs; it needs data.pretrain unset and no model.vision.pretrained")
        if unimodal.text_steps and self.model.text.pretrained:
            problems.append("model.unimodal.text_steps: the text encoder already loads model.text.pretrained")
        problems += self.data.source_problems(unimodal)
        problems += self.method.downstream_problems(self.downstream)
        retrieval = self.eval.retrieval
        if retrieval.fold_images and self.data.retrieval_test is None:  # the embedded test split's size is known
            images = min(self.data.embedded.num_test_images, retrieval.max_images or self.data.embedded.num_test_images)
            if retrieval.fold_images > images:
                problems.append(f"eval.retrieval.fold_images: {retrieval.fold_images}, but the test split has {images} "
                                "images (data.embedded.num_test_images, eval.retrieval.max_images)")
        for task in self.downstream.tasks:
            problems += self.downstream.task(task).check(self, f"downstream.{task}")
        if self.data.max_text_len > TEXT_PRESETS[self.model.text.preset].max_positions:
            problems.append(f"data.max_text_len: {self.data.max_text_len} exceeds the {self.model.text.preset} "
                            f"preset's {TEXT_PRESETS[self.model.text.preset].max_positions} positions")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings; values are parsed as YAML (``50``, ``0.1``, ``true``, ``[1,2]``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        node, parts = raw, key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # an unset optional section (e.g. a task's data.train: null)
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not plain YAML ({problem}); expected a number, "
                              "string, boolean, list or mapping") from None
    return raw


def deep_merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``; sections merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in child.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml_with_base(path: Path, seen: tuple[Path, ...] = (), scale: str | None = None) -> dict:
    """Read an experiment file; a top-level ``base: other.yaml`` (relative to this file) is
    read first and this file's keys are merged over it.

    ``scale``: where a file declares that scale (``scales: {base: [overlay.yaml, ..]}``, paths
    relative to it), its overlays are merged over it and its bases, and files built on it merge
    over the result: a sweep's own settings survive a change of scale."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: base files form a cycle")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    merged = deep_merge(_read_base(path, raw.pop("base", None), seen, scale), raw)
    declared = raw.get("scales") or {}
    if scale in declared:
        overlays = declared[scale]
        for overlay in [overlays] if isinstance(overlays, str) else overlays:
            settings = read_yaml_with_base(path.parent / overlay)
            settings.pop("name", None)
            merged = deep_merge(merged, settings)
        merged["scale"] = scale
    return merged


def _read_base(path: Path, base, seen: tuple[Path, ...], scale: str | None) -> dict:
    if base is None:
        return {}
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the path of another experiment file")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base!r}: no such experiment file (looked for {base_path.resolve()}; "
                          "a base path is relative to the file that names it)")
    return read_yaml_with_base(base_path, seen + (path.resolve(),), scale)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    return config_from_dict(read_experiment(path, overrides or []), source=str(path), overrides=overrides)


def read_experiment(path: Path, overrides: list[str]) -> dict:
    """An experiment file (with its bases) at the scale ``scale`` names (``-o scale=base``, or the
    file's own ``scale`` key); ``mini`` (the default) is the files as written."""
    chosen = [o.partition("=")[2].strip() for o in overrides if o.partition("=")[0].strip() == "scale"]
    scale = chosen[-1] if chosen else read_yaml_with_base(path).get("scale", "mini")
    raw = read_yaml_with_base(path, scale=scale)
    declared = raw.pop("scales", None) or {}
    if scale != "mini" and raw.get("scale") != scale:
        raise ConfigError(f"{path}: scale: {scale!r} is not one of this experiment's scales: "
                          f"{sorted({'mini', *declared})}")
    return raw


def config_from_dict(raw: Any, source: str = "<config>", overrides: list[str] | None = None) -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    overrides = overrides or []
    # a sweep file is also its base experiment; vlpbench.sweep reads and checks these two sections
    raw = apply_overrides({k: v for k, v in raw.items() if k not in SWEEP_SECTIONS}, overrides)
    schema = experiment_schema(raw, source_of(("method", "name"), source, overrides))
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, schema, overrides)) from None


def source_of(loc: tuple, source: str, overrides: list[str]) -> str:
    """Who set the key at ``loc``: the last ``-o`` override of that key (or of a section holding
    it, or of a key inside it), else the file. Errors about the whole config name the file and
    every override."""
    key = [str(part) for part in loc]
    if not key:
        return source + "".join(f" -o {item}" for item in overrides)
    for item in reversed(overrides):
        path = item.partition("=")[0].strip().split(".")
        shared = min(len(path), len(key))
        if path[:shared] == key[:shared]:
            return f"override -o {item}"
    return source


def experiment_schema(raw: dict, source: str) -> type[ExperimentConfig]:
    """The experiment model with ``method`` typed as the named method's own config class."""
    from vlpbench.registry import available_methods, get_method

    method = raw.get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError(f"{source}: method.name: required; expected one of {available_methods()}")
    try:
        method_cls = get_method(method["name"])
    except KeyError:
        raise ConfigError(f"{source}: method.name: unknown method {method['name']!r}; "
                          f"expected one of {available_methods()}") from None
    return _experiment_model(method_cls.config_class)


def validate_arguments(model: type[StrictModel], values: dict, flags: dict[str, str]) -> StrictModel:
    """Command-line values checked by the schema YAML keys use; an error names the flag."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{flags.get(str(e['loc'][0]), e['loc'][0])}: "
                                     f"{e['msg'].removeprefix('Value error, ')} (got {e['input']!r})"
                                     for e in exc.errors())) from None


@functools.cache
def _experiment_model(method_config: type[MethodConfig]) -> type[ExperimentConfig]:
    downstream = downstream_model()
    return create_model(f"Experiment_{method_config.__name__}", __base__=ExperimentConfig, method=(method_config, ...),
                        downstream=(downstream, downstream()))


def format_validation_error(exc: ValidationError, file: str, schema: type[BaseModel],
                            overrides: list[str] = ()) -> str:
    """One line per problem: who set the key (file or override), the key path, what was expected."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        source = source_of(err["loc"], file, overrides)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, err["loc"][:-1])
            lines.append(f"{source}: {key}: unknown key; expected one of {allowed}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if err["loc"] else ""
            lines.append(f"{source}: {key}: {msg}{got}" if key else f"{source}: {msg}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key.path: old -> new`` for every key whose value differs between two config dicts."""
    out = []
    for key in dict.fromkeys([*old, *new]):
        path, a, b = f"{prefix}{key}", old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
