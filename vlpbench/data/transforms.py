"""Image transforms driven by an explicit ``torch.Generator`` (exact resume, no global RNG)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

# ALBEF normalises with CLIP's statistics.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


class ImageTransform:
    """Resize to ``size`` x ``size``; in training optionally a random-resized crop (scale in
    [crop_scale_min, 1], aspect 3/4..4/3) and a horizontal flip, as ALBEF's pre-training does."""

    def __init__(self, size: int, crop_scale_min: float = 1.0, hflip: bool = False):
        self.size, self.crop_scale_min, self.hflip = size, crop_scale_min, hflip

    def __call__(self, img: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
        if generator is not None and self.crop_scale_min < 1.0:
            img = img.crop(self._crop_box(img.size, generator))
        img = img.resize((self.size, self.size), Image.BICUBIC)
        if generator is not None and self.hflip and torch.rand((), generator=generator) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - MEAN) / STD

    def _crop_box(self, size: tuple[int, int], generator: torch.Generator) -> tuple[int, int, int, int]:
        width, height = size
        u = torch.rand(4, generator=generator).tolist()
        area = width * height * (self.crop_scale_min + (1 - self.crop_scale_min) * u[0])
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        w = min(width, max(1, round(math.sqrt(area * aspect))))
        h = min(height, max(1, round(math.sqrt(area / aspect))))
        left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
        return left, top, left + w, top + h
