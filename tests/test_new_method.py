"""A sixth method, ready without touching another file: a throwaway dual encoder (ITC only, no
matching head, no fusion) defined here runs through pre-training, retrieval and a report."""

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch import nn

import vlpbench
from vlpbench import registry
from vlpbench.config import Capabilities, ConfigError, MethodConfig, config_from_dict
from vlpbench.method import ContrastiveEmbeddings, VLPMethod
from vlpbench.report_writer import build_report
from vlpbench.streams import init_part
from vlpbench.zoo import create_text_model, create_vision_encoder


class DualEncoderConfig(MethodConfig):
    name: Literal["dual_encoder"] = "dual_encoder"
    tiny = {"embed_dim": 16}
    declared = Capabilities(matching=False, fusion=False)
    embed_dim: int = Field(32, ge=1)
    temp: float = Field(0.07, gt=0.0)


class DualEncoder(ContrastiveEmbeddings, VLPMethod):
    """Symmetric InfoNCE between the [CLS] projections of a ViT and a text encoder."""
    name = "dual_encoder"
    config_class = DualEncoderConfig

    def __init__(self, config: DualEncoderConfig, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self.visual_encoder = init_part("visual_encoder", create_vision_encoder, model.vision.preset,
                                        model.vision.pretrained, model.vision.image_size)
        self.text = init_part("text", create_text_model, model.text.preset, self.visual_encoder.width,
                              model.text.pretrained, vocab_size=tokenizer.vocab_size, **model.text.preset_overrides())
        self.vision_proj = init_part("vision_proj", nn.Linear, self.visual_encoder.width, config.embed_dim)
        self.text_proj = init_part("text_proj", nn.Linear, self.text.width, config.embed_dim)

    def encode_text(self, input_ids, attention_mask):
        return self.text.encode_text(input_ids, attention_mask)

    def forward(self, batch, progress):
        image = self.image_embedding(self.encode_image(batch.images))
        text = self.text_embedding(self.encode_text(batch.input_ids, batch.attention_mask))
        logits = image @ text.T / self.config.temp
        targets = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        return {"loss": loss, "loss_itc": loss.detach()}


@pytest.fixture
def dual_encoder(monkeypatch):
    registry.available_methods()  # the shipped methods first, then this one beside them
    monkeypatch.setitem(registry.METHODS, DualEncoder.name, DualEncoder)


def test_a_dual_encoder_pretrains_ranks_by_itc_and_reports(dual_encoder, tiny_config, tmp_path):
    tiny_config["method"] = {"name": "dual_encoder", **DualEncoderConfig.tiny}
    experiment = {**tiny_config, "sweep": {"grid": {"method.embed_dim": [16, 24]}, "seeds": [0, 1]},
                  "report": {"metrics": {"retrieval.itc.r_mean": "r_mean"}}}
    path = tmp_path / "dual.yaml"
    path.write_text(yaml.safe_dump(experiment))

    table = vlpbench.run(path, log=lambda _: None)
    assert list(table["state"]) == ["done"] * 4
    assert table["retrieval.ranking"].unique().tolist() == ["ITC (the method has no matching score)"]
    assert "retrieval.itm.r_mean" not in table and table["retrieval.itc.r_mean"].between(0, 100).all()
    assert (table["compute.gflops_per_sample"] > 0).all()

    report = build_report(str(path), output_root=str(tmp_path / "reports"), log=lambda _: None)
    text = (report / "report.md").read_text()
    assert "embed_dim" in text and "(n=2)" in text and (report / "plots" / "flops_vs_quality.png").is_file()


def test_what_it_lacks_is_refused_at_config_load(dual_encoder, tiny_config):
    tiny_config["method"] = {"name": "dual_encoder"}
    with pytest.raises(ConfigError, match="exposes no fused image-text states"):
        config_from_dict({**tiny_config, "downstream": {"tasks": ["vqa"]}})
    with pytest.raises(ConfigError, match="method.base: 'dual_encoder' exposes no fused text token states"):
        config_from_dict({**tiny_config, "method": {"name": "epic", "base": "dual_encoder", "masking": "random",
                                                    "replacement": "random"}})
    assert config_from_dict(tiny_config).method.itm_positive_fraction() is None  # no ITM verdict to give
