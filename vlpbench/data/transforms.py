"""Image transforms driven by an explicit ``torch.Generator`` (exact resume, no global RNG)."""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from vlpbench.config import AugmentConfig
from vlpbench.data import randaugment

# ALBEF normalises with CLIP's statistics.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@dataclass(frozen=True)
class Augmentation:
    """What one sample draws, once, so that its image and its region map get the same."""
    crop: tuple[int, int, int, int] | None = None  # the random-resized crop's box (None: whole image)
    flip: bool = False
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    grayscale: bool = False
    blur_sigma: float | None = None
    ops: tuple[randaugment.Op, ...] = ()


NO_AUGMENTATION = Augmentation()


class ImageTransform:
    """Resize to ``size`` x ``size``; in training the augmentations of ``augment`` (see
    ``AugmentConfig`` for the order), as the papers' pre-training applies them."""

    def __init__(self, size: int, augment: AugmentConfig | None = None):
        self.size, self.augment = size, augment or AugmentConfig()
        rand = self.augment.randaugment
        self.randaugment = randaugment.RandAugment(rand) if rand else None

    def __call__(self, img: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
        return self.apply(img, self.draw(img.size, generator))

    def draw(self, size: tuple[int, int], generator: torch.Generator | None) -> Augmentation:
        """This sample's augmentation (none without a generator). Each configured step draws in
        turn, and an unconfigured one draws nothing, so adding a step shifts no earlier draw."""
        a = self.augment
        if generator is None:
            return NO_AUGMENTATION
        crop = self._crop_box(size, generator) if a.crop_scale_min < 1.0 else None
        flip = a.hflip and bool(torch.rand((), generator=generator) < 0.5)
        jitter = self._jitter(generator) if a.color_jitter else None
        grayscale = a.grayscale_probability > 0 and bool(torch.rand((), generator=generator) < a.grayscale_probability)
        blur = self._blur_sigma(generator) if a.blur_probability > 0 else None
        ops = self.randaugment.draw(generator) if self.randaugment else ()
        return Augmentation(crop, flip, jitter, grayscale, blur, ops)

    def apply(self, img: Image.Image, aug: Augmentation) -> torch.Tensor:
        img = self._photometric(self._place(img, aug, Image.BICUBIC), aug)
        x = torch.from_numpy(np.asarray(randaugment.apply(img, aug.ops), dtype=np.float32).copy())
        return (x.permute(2, 0, 1) / 255.0 - MEAN) / STD

    def region(self, boxes: list[list[float]] | None, size: tuple[int, int], aug: Augmentation) -> torch.Tensor:
        """[size, size] bool map of the union of ``boxes`` ([x, y, w, h] pixels of the original
        image), moved as the image is; all True when there are no boxes (VLMAE Sec. 3.4)."""
        if not boxes:
            return torch.ones(self.size, self.size, dtype=torch.bool)
        canvas = Image.new("L", size, 0)
        draw = ImageDraw.Draw(canvas)
        for x, y, w, h in boxes:  # PIL's rectangle includes its end point: w pixels end at x + w - 1
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=255)
        placed = randaugment.apply_geometry(self._place(canvas, aug, Image.NEAREST), aug.ops)
        return torch.from_numpy(np.asarray(placed) > 0)

    def _place(self, img: Image.Image, aug: Augmentation, resample) -> Image.Image:
        if aug.crop is not None:
            img = img.crop(aug.crop)
        img = img.resize((self.size, self.size), resample)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if aug.flip else img

    def _photometric(self, img: Image.Image, aug: Augmentation) -> Image.Image:
        if aug.jitter is not None:
            brightness, contrast, saturation, hue = aug.jitter
            img = ImageEnhance.Brightness(img).enhance(brightness)
            img = ImageEnhance.Contrast(img).enhance(contrast)
            img = ImageEnhance.Color(img).enhance(saturation)
            img = shift_hue(img, hue)
        if aug.grayscale:
            img = img.convert("L").convert("RGB")
        if aug.blur_sigma is not None:
            img = img.filter(ImageFilter.GaussianBlur(aug.blur_sigma))
        return img

    def _jitter(self, generator: torch.Generator) -> tuple[float, float, float, float] | None:
        j = self.augment.color_jitter
        u = torch.rand(5, generator=generator).tolist()
        if u[0] >= j.probability:
            return None
        return (1 + j.brightness * (2 * u[1] - 1), 1 + j.contrast * (2 * u[2] - 1),
                1 + j.saturation * (2 * u[3] - 1), j.hue * (2 * u[4] - 1))

    def _blur_sigma(self, generator: torch.Generator) -> float | None:
        u = torch.rand(2, generator=generator).tolist()
        low, high = self.augment.blur_sigma
        return low + (high - low) * u[1] if u[0] < self.augment.blur_probability else None

    def _crop_box(self, size: tuple[int, int], generator: torch.Generator) -> tuple[int, int, int, int]:
        width, height = size
        u = torch.rand(4, generator=generator).tolist()
        area = width * height * (self.augment.crop_scale_min + (1 - self.augment.crop_scale_min) * u[0])
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        w = min(width, max(1, round(math.sqrt(area * aspect))))
        h = min(height, max(1, round(math.sqrt(area / aspect))))
        left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
        return left, top, left + w, top + h


def shift_hue(img: Image.Image, turns: float) -> Image.Image:
    """``img`` with its hue rotated by ``turns`` of the colour wheel."""
    if turns == 0.0:
        return img
    h, s, v = img.convert("HSV").split()
    shift = round(turns * 256) % 256
    h = h.point(lambda value: (value + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")
