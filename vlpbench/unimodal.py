"""Uni-modal pre-training at the ``mini`` scale: the stand-in for the papers' pretrained encoders.

Every paper starts from uni-modal encoders trained on their own (ALBEF: BERT-base and an
ImageNet-supervised DeiT/ViT). At ``mini`` nothing is pretrained, so both encoders would start
from random weights, which leaves the contrastive loss on a long plateau. This module trains them
briefly on the pre-training data, once, and caches the weights like the dataset; every method and
seed that asks for the same settings starts from the same weights:

- text: BERT's masked language modelling on the pre-training captions, through all text and fusion
  layers as one text-only BERT (cross-attention is not trained and keeps the method's own init);
- vision: multi-label classification of which (colour, shape) objects an image holds, read from
  the embedded dataset's scene graphs (the analogue of ImageNet-supervised ViT weights).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vlpbench.config import ExperimentConfig, TrainConfig, UnimodalConfig
from vlpbench.data.datasets import ImageCaptions, load_image
from vlpbench.data.embedded import dataset_dir
from vlpbench.data.scenes import COLORS, SHAPES
from vlpbench.data.transforms import ImageTransform
from vlpbench.io import build_folder_atomically, write_json
from vlpbench.masking import mask_tokens_for_mlm
from vlpbench.train import build_optimizer, lr_at
from vlpbench.zoo.text import create_text_model
from vlpbench.zoo.tokenizer import TextTokenizer
from vlpbench.zoo.vision import VISION_PRESETS, create_vision_encoder

VERSION = 1
LABELS = [(color, shape) for color in COLORS for shape in SHAPES]


def warm_start(cfg: ExperimentConfig, entries: list[ImageCaptions], tokenizer: TextTokenizer, log=print) -> ExperimentConfig:
    """``cfg`` with ``model.{vision,text}.pretrained`` set to the cached uni-modal weights (trained
    first if absent); unchanged when ``model.unimodal`` asks for no steps."""
    u, vision, text = cfg.model.unimodal, cfg.model.vision, cfg.model.text
    if u.vision_steps:
        path = _cached(cache_dir(cfg, "vision", tokenizer), lambda: pretrain_vision(cfg, entries, log), log)
        vision = vision.model_copy(update={"pretrained": str(path)})
    if u.text_steps:
        captions = [c for e in entries for c in e.captions]
        path = _cached(cache_dir(cfg, "text", tokenizer), lambda: pretrain_text(cfg, captions, tokenizer, log), log)
        text = text.model_copy(update={"pretrained": str(path)})
    if vision is cfg.model.vision and text is cfg.model.text:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"vision": vision, "text": text})})


def cache_dir(cfg: ExperimentConfig, modality: str, tokenizer: TextTokenizer) -> Path:
    """``<dataset root>/unimodal-<modality>-<hash of everything the weights depend on>``."""
    m, u = cfg.model, cfg.model.unimodal
    params = {"version": VERSION, "dataset": dataset_dir(cfg.data.embedded).name, "seed": u.seed,
              "batch_size": u.batch_size, "lr": u.lr, "warmup_steps": u.warmup_steps}
    if modality == "vision":
        params |= {"steps": u.vision_steps, "preset": m.vision.preset, "image_size": m.vision.image_size}
    else:
        params |= {"steps": u.text_steps, "preset": m.text.preset, "overrides": m.text.preset_overrides(),
                   "max_text_len": cfg.data.max_text_len,
                   "tokenizer": tokenizer.fingerprint()}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return dataset_dir(cfg.data.embedded).parent / f"unimodal-{modality}-{digest}"


def _cached(folder: Path, train, log) -> Path:
    """``folder/weights.safetensors``, from ``train()`` -> (state dict, report) the first time."""
    weights = folder / "weights.safetensors"
    if (folder / "manifest.json").is_file():
        return weights
    state, report = train()

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / weights.name))
        write_json(tmp / "manifest.json", report)

    build_folder_atomically(folder, fill)
    log(f"uni-modal weights cached in {folder}")
    return weights


def _schedule(u: UnimodalConfig, steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=u.batch_size, lr=u.lr, min_lr=u.lr / 10, warmup_steps=u.warmup_steps)


def _fit(module: nn.Module, loss_of_batch, steps: int, u: UnimodalConfig, name: str, log) -> dict:
    """AdamW with warm-up and cosine decay over ``steps``; ``loss_of_batch(generator)`` draws a batch."""
    schedule = _schedule(u, steps)
    optimizer = build_optimizer(module, schedule)
    generator = torch.Generator().manual_seed(u.seed)
    start, losses = time.perf_counter(), []
    module.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        loss = loss_of_batch(generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"  {name} step {step + 1}/{steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    return {"steps": steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "seconds": round(time.perf_counter() - start, 1)}


def scene_labels(cfg: ExperimentConfig, images: list[Path]) -> torch.Tensor:
    """[N, colours x shapes] multi-hot: which (colour, shape) objects each image holds."""
    folder = dataset_dir(cfg.data.embedded)
    graphs = json.loads((folder / "scene_graphs.json").read_text())
    labels = torch.zeros(len(images), len(LABELS))
    for row, image in enumerate(images):
        for obj in graphs[str(image.relative_to(folder))]["objects"]:
            labels[row, LABELS.index((obj["color"], obj["shape"]))] = 1.0
    return labels


def pretrain_vision(cfg: ExperimentConfig, entries: list[ImageCaptions], log) -> tuple[dict, dict]:
    u, v = cfg.model.unimodal, cfg.model.vision
    log(f"uni-modal pre-training: vision, {u.vision_steps} steps of (colour, shape) classification ...")
    torch.manual_seed(u.seed)
    images = sorted({e.image for e in entries})
    transform = ImageTransform(v.image_size or VISION_PRESETS[v.preset].image_size)
    pixels = torch.stack([transform(load_image(p), None) for p in images])
    labels = scene_labels(cfg, images)
    encoder = create_vision_encoder(v.preset, None, v.image_size)
    model = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(encoder.width, len(LABELS))})

    def loss_of_batch(generator):
        idx = torch.randint(len(images), (u.batch_size,), generator=generator)
        logits = model["head"](model["encoder"](pixels[idx]).cls)
        return F.binary_cross_entropy_with_logits(logits, labels[idx])

    report = _fit(model, loss_of_batch, u.vision_steps, u, "vision", log)
    return {k: t.contiguous() for k, t in encoder.vit.state_dict().items()}, report


def pretrain_text(cfg: ExperimentConfig, captions: list[str], tokenizer: TextTokenizer, log) -> tuple[dict, dict]:
    u, t = cfg.model.unimodal, cfg.model.text
    log(f"uni-modal pre-training: text, {u.text_steps} steps of MLM on the captions ...")
    torch.manual_seed(u.seed)
    vision_width = create_vision_encoder(cfg.model.vision.preset, None, cfg.model.vision.image_size).width
    model = create_text_model(t.preset, vision_width, None, vocab_size=tokenizer.vocab_size, **t.preset_overrides())
    input_ids, attention_mask = tokenizer(captions, cfg.data.max_text_len)

    def loss_of_batch(generator):
        idx = torch.randint(len(captions), (u.batch_size,), generator=generator)
        mask = attention_mask[idx]
        length = int(mask.sum(1).max())
        ids, mask = input_ids[idx, :length], mask[:, :length]
        masked = mask_tokens_for_mlm(ids, tokenizer.vocab_size, tokenizer.mask_id, [tokenizer.pad_id, tokenizer.cls_id],
                                     generator=generator)
        positions = masked.labels != -100
        logits = model.mlm_logits(model.encode_text_only(masked.input_ids, mask)[positions])
        return F.cross_entropy(logits, masked.labels[positions])

    report = _fit(model, loss_of_batch, u.text_steps, u, "text", log)
    # cross-attention was never trained: leave it to the method's own initialisation
    state = {k: v.contiguous() for k, v in model.state_dict().items() if ".cross_attn" not in k}
    return state, report
