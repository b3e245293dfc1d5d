"""Uni-modal pre-training: trained once, cached, loaded into the method's encoders."""

import json

import torch
from safetensors.torch import load_file

from vlpbench import pipeline, unimodal
from vlpbench.config import config_from_dict
from vlpbench.data.datasets import SkipReport, captions_of
from vlpbench.data.embedded import ensure_embedded_dataset

QUIET = dict(log=lambda *_: None)


def setup(tiny_config, tmp_path):
    tiny_config["model"]["unimodal"] = {"text_steps": 3, "vision_steps": 3, "batch_size": 4, "warmup_steps": 1}
    cfg = config_from_dict(tiny_config)
    sources = pipeline.data_sources(cfg, **QUIET)
    entries = pipeline.open_entries(sources["pretrain"], cfg, SkipReport())
    tokenizer = pipeline.build_tokenizer(cfg, captions_of(entries), tmp_path / "tokenizer.json")
    return cfg, entries, tokenizer


def test_scene_labels_name_the_colour_shape_pairs_an_image_holds(tiny_config, tmp_path):
    cfg, entries, _ = setup(tiny_config, tmp_path)
    folder = ensure_embedded_dataset(cfg.data.embedded, **QUIET)
    graphs = json.loads((folder / "scene_graphs.json").read_text())
    image = entries[0].image
    labels = unimodal.scene_labels(cfg, [image])
    expected = {(o["color"], o["shape"]) for o in graphs[str(image.relative_to(folder))]["objects"]}
    assert {unimodal.LABELS[i] for i in labels[0].nonzero().flatten().tolist()} == expected
    assert len(unimodal.LABELS) == 48  # 8 colours x 6 shapes


def test_weights_are_cached_once_and_loaded_into_the_method(tiny_config, tmp_path):
    cfg, entries, tokenizer = setup(tiny_config, tmp_path)
    warm = unimodal.warm_start(cfg, entries, tokenizer, **QUIET)
    text_dir, vision_dir = (unimodal.cache_dir(cfg, m, tokenizer) for m in ("text", "vision"))
    assert warm.model.text.pretrained == str(text_dir / "weights.safetensors")
    assert warm.model.vision.pretrained == str(vision_dir / "weights.safetensors")
    stamp = (text_dir / "manifest.json").stat().st_mtime_ns
    assert unimodal.warm_start(cfg, entries, tokenizer, **QUIET) == warm
    assert (text_dir / "manifest.json").stat().st_mtime_ns == stamp, "trained again instead of using the cache"
    # the text weights depend on text settings only: another dropout leaves the vision cache alone
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "text": cfg.model.text.model_copy(update={"dropout": 0.0})})})
    assert unimodal.cache_dir(other, "vision", tokenizer) == vision_dir
    assert unimodal.cache_dir(other, "text", tokenizer) != text_dir

    text_state = load_file(text_dir / "weights.safetensors")
    assert not any(".cross_attn" in k for k in text_state), "untrained cross-attention must not be cached"
    method = pipeline.build_method(warm, tokenizer)
    torch.testing.assert_close(method.text.text_layers[0].ffn_in.weight, text_state["text_layers.0.ffn_in.weight"])
    torch.testing.assert_close(method.text.fusion_layers[0].self_attn.query.weight,
                               text_state["fusion_layers.0.self_attn.query.weight"])
    vision_state = load_file(vision_dir / "weights.safetensors")
    torch.testing.assert_close(method.visual_encoder.vit.blocks[0].attn.qkv.weight, vision_state["blocks.0.attn.qkv.weight"])
    # the teacher starts as a copy of the warm-started student
    torch.testing.assert_close(method.teacher["text"].text_layers[0].ffn_in.weight, text_state["text_layers.0.ffn_in.weight"])


def test_no_steps_means_no_warm_start(tiny_config, tmp_path):
    cfg, entries, tokenizer = setup(tiny_config, tmp_path)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"unimodal": type(cfg.model.unimodal)()})})
    assert unimodal.warm_start(cfg, entries, tokenizer, **QUIET) is cfg
