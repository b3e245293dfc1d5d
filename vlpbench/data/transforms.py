"""Image transforms driven by an explicit ``torch.Generator`` (exact resume, no global RNG)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

# ALBEF normalises with CLIP's statistics.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


class ImageTransform:
    """Resize to ``size`` x ``size``; in training optionally a random-resized crop (scale in
    [crop_scale_min, 1], aspect 3/4..4/3) and a horizontal flip, as ALBEF's pre-training does."""

    def __init__(self, size: int, crop_scale_min: float = 1.0, hflip: bool = False):
        self.size, self.crop_scale_min, self.hflip = size, crop_scale_min, hflip

    def __call__(self, img: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
        return self.apply(img, self.geometry(img.size, generator))

    def geometry(self, size: tuple[int, int], generator: torch.Generator | None) -> tuple[tuple | None, bool]:
        """The random crop box (None: the whole image) and flip, drawn once so that an image and
        its region map get the same ones."""
        crop = self._crop_box(size, generator) if generator is not None and self.crop_scale_min < 1.0 else None
        flip = generator is not None and self.hflip and bool(torch.rand((), generator=generator) < 0.5)
        return crop, flip

    def apply(self, img: Image.Image, geometry: tuple[tuple | None, bool]) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(self._place(img, geometry, Image.BICUBIC), dtype=np.float32).copy())
        return (x.permute(2, 0, 1) / 255.0 - MEAN) / STD

    def region(self, boxes: list[list[float]] | None, size: tuple[int, int],
               geometry: tuple[tuple | None, bool]) -> torch.Tensor:
        """[size, size] bool map of the union of ``boxes`` ([x, y, w, h] pixels of the original
        image), placed as the image is; all True when there are no boxes (VLMAE Sec. 3.4)."""
        if not boxes:
            return torch.ones(self.size, self.size, dtype=torch.bool)
        canvas = Image.new("L", size, 0)
        draw = ImageDraw.Draw(canvas)
        for x, y, w, h in boxes:
            draw.rectangle([x, y, x + w, y + h], fill=255)
        return torch.from_numpy(np.asarray(self._place(canvas, geometry, Image.NEAREST)) > 0)

    def _place(self, img: Image.Image, geometry: tuple[tuple | None, bool], resample) -> Image.Image:
        crop, flip = geometry
        if crop is not None:
            img = img.crop(crop)
        img = img.resize((self.size, self.size), resample)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img

    def _crop_box(self, size: tuple[int, int], generator: torch.Generator) -> tuple[int, int, int, int]:
        width, height = size
        u = torch.rand(4, generator=generator).tolist()
        area = width * height * (self.crop_scale_min + (1 - self.crop_scale_min) * u[0])
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        w = min(width, max(1, round(math.sqrt(area * aspect))))
        h = min(height, max(1, round(math.sqrt(area / aspect))))
        left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
        return left, top, left + w, top + h
