"""Shared set-up of the measurement scripts: an experiment's pre-training records, with the
embedded dataset's scene graphs, and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from vlpbench import pipeline
from vlpbench.config import ExperimentConfig
from vlpbench.data.datasets import SkipReport, captions_of


def embedded_records(cfg: ExperimentConfig, count: int) -> tuple[list[dict], dict, Path]:
    """The first ``count`` clean pre-training records of the experiment's embedded dataset, its
    scene graphs, and the dataset folder."""
    source = pipeline.data_sources(cfg, log=lambda *_: None)["pretrain"]
    folder = Path(source.image_root)
    records = [r for r in json.loads(Path(source.ann_files[0]).read_text()) if not r.get("noise")][:count]
    graphs = json.loads((folder / "scene_graphs.json").read_text())
    return records, graphs, folder


def experiment_tokenizer(cfg: ExperimentConfig):
    source = pipeline.data_sources(cfg, log=lambda *_: None)["pretrain"]
    return pipeline.make_tokenizer(cfg, captions_of(pipeline.open_entries(source, cfg, SkipReport())))
