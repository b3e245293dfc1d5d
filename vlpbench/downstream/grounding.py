"""Weakly-supervised visual grounding (ALBEF Sec. 5 and 6.4): fine-tuned with image-text pairs only,
as retrieval is (ITC + ITM); at test time Grad-CAM of the matching score on the cross-attention of
fusion layer ``gradcam_layer`` scores each candidate box (heat-map sum over the box / area **
``box_alpha``), and the best box is a hit when its IoU with the referred box is >= ``iou_threshold``.

Records (ALBEF's RefCOCO+ files, with the box inline): ``{ref_id, image, text, bbox: [x, y, w, h]}``
(the box is needed in the test split only); candidates: a JSON object ``{image: [[x, y, w, h], ..]}``
with the same image paths (ALBEF: detector proposals; the embedded dataset: every object of the scene).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pydantic import Field

from vlpbench.config import AnnotationSource, TaskData
from vlpbench.data.datasets import DatasetError, ImageCaptions, RecordError, check_image, load_image, text_field
from vlpbench.data.embedded import ensure_embedded_dataset
from vlpbench.downstream.retrieval import CaptionPairs, MatchingFinetune, MatchingFinetuneConfig, MatchingTask
from vlpbench.downstream.common import KeyedDataset
from vlpbench.gradcam import box_iou, box_scores, cross_attention_gradcam, upsample
from vlpbench.registry import register_task


@dataclass
class GroundingRecord:
    image: Path
    image_key: str  # the path as the annotation file gives it (the key of the candidates file)
    text: str
    bbox: list[float] | None


def _box(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value) \
        and value[2] > 0 and value[3] > 0


def parse_grounding(record, root: Path, source: str, verify_images: bool) -> GroundingRecord:
    text = text_field(record, "text", "'image' and 'text'")
    bbox = record.get("bbox")
    if bbox is not None and not _box(bbox):
        raise RecordError("'bbox' must be [x, y, w, h] pixels with w, h > 0", f"got {bbox!r}")
    path = check_image(record.get("image"), root, verify_images)
    return GroundingRecord(path, record["image"], text, None if bbox is None else [float(v) for v in bbox])


def read_candidates(path: str) -> dict[str, torch.Tensor]:
    """``{image: [N, 4] boxes}`` from a candidates file; errors name the file and the image."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the grounding candidates ({exc})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a JSON object {{image: [[x, y, w, h], ..]}}")
    for image, boxes in raw.items():
        if not isinstance(boxes, list) or not boxes or not all(_box(b) for b in boxes):
            raise DatasetError(f"{path}: {image}: expected a non-empty list of [x, y, w, h] boxes with w, h > 0")
    return {image: torch.tensor(boxes, dtype=torch.float32) for image, boxes in raw.items()}


class GroundingData(TaskData):
    candidates: AnnotationSource | None = None  # {image: [[x, y, w, h], ..]}; None: the embedded dataset's


class GroundingTaskConfig(MatchingFinetuneConfig):
    data: GroundingData = GroundingData()
    gradcam_layer: int = Field(2, ge=0)  # index into the text-to-image cross-attention layers (ALBEF: the 3rd)
    box_alpha: float = Field(0.5, ge=0.0)  # box score = heat-map sum over the box / area ** box_alpha
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)

    def check(self, experiment, at: str) -> list[str]:
        layers = experiment.method.cross_attention_layers(experiment)
        if self.gradcam_layer >= layers:
            return [f"{at}.gradcam_layer: {self.gradcam_layer}, but {experiment.method.name!r} builds {layers} "
                    f"text-to-image cross-attention layers here (expected 0..{layers - 1})"]
        return []


@register_task
class GroundingTask(MatchingTask):
    name = "grounding"
    config_class = GroundingTaskConfig

    def train_dataset(self) -> KeyedDataset:
        records = self.open_records("train", parse_grounding)
        pairs = CaptionPairs([ImageCaptions(r.image, [r.text], r.image_key) for r in records]).pairs
        return KeyedDataset(pairs, lambda pair, generator: (self.image(pair[0], generator), pair[1], pair[2]))

    def candidates_file(self) -> str:
        source = self.task_cfg.data.candidates
        if source is not None:
            return source.ann_files[0]
        return str(ensure_embedded_dataset(self.cfg.data.embedded, self.log) / "grounding_candidates.json")

    def test_records(self) -> tuple[list[GroundingRecord], dict[str, torch.Tensor]]:
        """Test records with a referred box and candidates; others are errors (or skipped and counted)."""
        path = self.candidates_file()
        candidates = read_candidates(path)

        def parse(record, root, source, verify_images) -> GroundingRecord:
            parsed = parse_grounding(record, root, source, verify_images)
            if parsed.bbox is None:
                raise RecordError("test record has no 'bbox' (the referred box)")
            if parsed.image_key not in candidates:
                raise RecordError(f"no candidate boxes for this image in {path}", parsed.image_key)
            return parsed
        return self.open_records("test", parse), candidates

    def evaluate(self, model: MatchingFinetune, device: torch.device) -> dict:
        cfg = self.task_cfg
        records, candidates = self.test_records()
        hits, chance = [], []
        for chunk in self.eval_batches(records):
            pictures = [load_image(r.image) for r in chunk]
            images = torch.stack([self.transform(p, None) for p in pictures]).to(device)
            input_ids, attention_mask = (t.to(device) for t in self.tokenize([r.text for r in chunk]))
            maps = cross_attention_gradcam(model.method, images, input_ids, attention_mask, cfg.gradcam_layer,
                                           key="downstream.grounding.gradcam_layer").cpu()
            for record, picture, heat_map in zip(chunk, pictures, maps):
                boxes, truth = candidates[record.image_key], torch.tensor(record.bbox)
                best = box_scores(upsample(heat_map, picture.height, picture.width), boxes, cfg.box_alpha).argmax()
                overlaps = box_iou(boxes, truth) >= cfg.iou_threshold
                hits.append(bool(overlaps[best]))
                chance.append(overlaps.float().mean().item())
        return {"metrics": {"accuracy": 100.0 * sum(hits) / len(hits)},
                "baselines": {"chance": {"accuracy": 100.0 * sum(chance) / len(chance)}},
                "num_test": len(records), "gradcam_layer": cfg.gradcam_layer}
