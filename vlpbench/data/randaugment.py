"""RandAugment as ALBEF applies it (salesforce/ALBEF ``dataset/randaugment.py``), on PIL images
and drawn from an explicit ``torch.Generator``.

``num_ops`` operations are drawn uniformly, with replacement, from ``ops``; each is applied with
probability 0.5 at ``magnitude`` (of 10). ALBEF uses RandAugment(2, 7) over its list of ops
(``config.ALBEF_RANDAUGMENT_OPS``, the default ``data.augment.randaugment.ops``): the
colour-changing operations are left out because captions name colours (ALBEF Sec. 4, footnote 4).
Magnitudes follow the authors' code: a shear of 0.3 and a rotation of 30 degrees at magnitude 10,
a translation of ``translate_pixels`` (10 in the authors' code, at any resolution), enhancement
factors 0.1 + 1.8 * magnitude / 10; geometric ones take a random sign. Empty pixels take the
authors' fill (128, 128, 128). The authors warp with OpenCV; the same maps through PIL differ at
most in sub-pixel resampling.

A geometric operation is an affine map, so a region map (VLMAE's RMIM) follows the image through
``apply_geometry``; photometric ones touch only the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageEnhance, ImageOps

from vlpbench.config import RandAugmentConfig

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
ENHANCE = {"Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness,
           "Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast}
OTHER_PHOTOMETRIC = ("Identity", "AutoContrast", "Equalize", "Solarize", "Posterize")
ALL_OPS = OTHER_PHOTOMETRIC + tuple(ENHANCE) + GEOMETRIC
FILL = (128, 128, 128)


@dataclass(frozen=True)
class Op:
    """One drawn operation: its name and signed argument (a factor, a shear, pixels, degrees,
    a threshold or a bit count)."""
    name: str
    value: float = 0.0


class RandAugment:
    def __init__(self, cfg: RandAugmentConfig):
        self.num_ops, self.level, self.ops = cfg.num_ops, cfg.magnitude / 10.0, cfg.ops
        self.translate_pixels = cfg.translate_pixels

    def draw(self, generator: torch.Generator) -> tuple[Op, ...]:
        """The operations one sample gets, in order (those skipped by their coin left out)."""
        picks = torch.randint(len(self.ops), (self.num_ops,), generator=generator).tolist()
        coins = torch.rand(self.num_ops, 2, generator=generator).tolist()
        return tuple(self._op(self.ops[pick], sign < 0.5) for pick, (apply, sign) in zip(picks, coins) if apply < 0.5)

    def _op(self, name: str, negative: bool) -> Op:
        sign = -1.0 if negative else 1.0
        if name in ENHANCE:
            return Op(name, 0.1 + 1.8 * self.level)
        extent = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": self.translate_pixels,
                  "TranslateY": self.translate_pixels, "Rotate": 30.0}
        if name in extent:
            return Op(name, sign * extent[name] * self.level)
        if name == "Solarize":
            return Op(name, int(self.level * 256))
        if name == "Posterize":
            return Op(name, int(self.level * 4))
        return Op(name)


def apply(img: Image.Image, ops: tuple[Op, ...]) -> Image.Image:
    """``img`` (RGB) after ``ops``, in order."""
    for op in ops:
        if op.name in GEOMETRIC:
            img = warp(img, forward_affine(op, img.size), Image.BILINEAR, FILL)
        elif op.name in ENHANCE:
            img = ENHANCE[op.name](img).enhance(op.value)
        elif op.name == "AutoContrast":
            img = ImageOps.autocontrast(img)
        elif op.name == "Equalize":
            img = ImageOps.equalize(img)
        elif op.name == "Solarize":
            img = ImageOps.solarize(img, int(op.value))
        elif op.name == "Posterize":
            img = ImageOps.posterize(img, max(1, int(op.value)))
    return img


def apply_geometry(mask: Image.Image, ops: tuple[Op, ...]) -> Image.Image:
    """A mode-"L" map after the geometric ones of ``ops`` (nearest neighbour; outside: 0)."""
    for op in ops:
        if op.name in GEOMETRIC:
            mask = warp(mask, forward_affine(op, mask.size), Image.NEAREST, 0)
    return mask


def forward_affine(op: Op, size: tuple[int, int]) -> tuple[float, ...]:
    """(a, b, c, d, e, f): a point (x, y) of the input lands at (a x + b y + c, d x + e y + f),
    the matrices of the authors' OpenCV calls."""
    if op.name == "ShearX":
        return 1.0, op.value, 0.0, 0.0, 1.0, 0.0
    if op.name == "ShearY":
        return 1.0, 0.0, 0.0, op.value, 1.0, 0.0
    if op.name == "TranslateX":
        return 1.0, 0.0, -op.value, 0.0, 1.0, 0.0
    if op.name == "TranslateY":
        return 1.0, 0.0, 0.0, 0.0, 1.0, -op.value
    # cv2.getRotationMatrix2D((W / 2, H / 2), degrees, 1): counter-clockwise on screen
    cx, cy = size[0] / 2, size[1] / 2
    cos, sin = math.cos(math.radians(op.value)), math.sin(math.radians(op.value))
    return cos, sin, (1 - cos) * cx - sin * cy, -sin, cos, sin * cx + (1 - cos) * cy


def warp(img: Image.Image, forward: tuple[float, ...], resample, fill) -> Image.Image:
    """``img`` moved by the ``forward`` map; PIL's AFFINE takes the inverse (output to input)."""
    a, b, c, d, e, f = forward
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return img.transform(img.size, Image.AFFINE, (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f)),
                         resample=resample, fillcolor=fill)
