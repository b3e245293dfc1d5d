"""Procedural scenes and their scene graphs: coloured shapes on varied backgrounds.

A scene places 1..max_objects shapes in distinct cells of a 3x3 grid, so every object has a
well-defined position word and pairwise relations (left of, above). Rendering is PIL drawing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SIZES = {"small": 0.10, "large": 0.16}  # radius as a fraction of the image side; x1.04 stays inside a cell
BACKGROUNDS = ("plain", "striped", "gradient", "dotted")
BACKGROUND_TINTS = {"gray": (128, 128, 128), "beige": (200, 185, 150), "teal": (60, 120, 120), "navy": (40, 45, 90)}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    row: int
    col: int
    cx: float  # centre, as a fraction of the image side
    cy: float
    radius: float

    @property
    def position(self) -> str:
        if (self.row, self.col) == (1, 1):
            return "center"
        if self.row == 1:
            return COLS[self.col]
        if self.col == 1:
            return ROWS[self.row]
        return f"{ROWS[self.row]} {COLS[self.col]}"

    def bbox(self, image_size: int) -> list[float]:
        """[x, y, w, h] in pixels, the COCO convention."""
        r = self.radius * image_size
        return [round(self.cx * image_size - r, 1), round(self.cy * image_size - r, 1), round(2 * r, 1), round(2 * r, 1)]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    tint: str

    @property
    def key(self) -> tuple:
        """What a caption can say of the scene (background, tint, and each object's shape, colour,
        size and grid cell): two scenes with one key make every caption of one true of the other."""
        objects = sorted((o.shape, o.color, o.size, o.row, o.col) for o in self.objects)
        return self.background, self.tint, tuple(objects)


def sample_scene(rng: random.Random, max_objects: int) -> Scene:
    count = rng.randint(1, max_objects)
    cells = rng.sample(range(9), count)
    objects = []
    for cell in cells:
        row, col = divmod(cell, 3)
        size = rng.choice(tuple(SIZES))
        radius = SIZES[size] * rng.uniform(0.9, 1.04)
        slack = 1 / 6 - radius  # keep the shape inside its cell (no overlaps, never past the border)
        cx = (col + 0.5) / 3 + rng.uniform(-1, 1) * slack
        cy = (row + 0.5) / 3 + rng.uniform(-1, 1) * slack
        objects.append(SceneObject(rng.choice(SHAPES), rng.choice(tuple(COLORS)), size, row, col, cx, cy, radius))
    return Scene(tuple(objects), rng.choice(BACKGROUNDS), rng.choice(tuple(BACKGROUND_TINTS)))


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUND_TINTS[scene.tint])
    draw = ImageDraw.Draw(img)
    _draw_background(draw, scene, size, rng)
    for obj in scene.objects:
        _draw_shape(draw, obj, size)
    return img


def _shade(rgb: tuple[int, int, int], delta: int) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + delta)) for c in rgb)


def _draw_background(draw: ImageDraw.ImageDraw, scene: Scene, size: int, rng: random.Random) -> None:
    base = BACKGROUND_TINTS[scene.tint]
    if scene.background == "striped":
        step = max(2, size // rng.choice((6, 8, 10)))
        for x in range(0, size, 2 * step):
            draw.rectangle([x, 0, x + step - 1, size], fill=_shade(base, 25))
    elif scene.background == "gradient":
        for y in range(size):
            draw.line([0, y, size, y], fill=_shade(base, int(40 * y / size) - 20))
    elif scene.background == "dotted":
        for _ in range(size // 2):
            x, y = rng.randrange(size), rng.randrange(size)
            draw.point([x, y], fill=_shade(base, rng.choice((-30, 30))))


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, size: int) -> None:
    cx, cy, r = obj.cx * size, obj.cy * size, obj.radius * size
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = (-90, 30, 150), (r, r, r)
    elif shape == "diamond":
        angles, radii = (-90, 0, 90, 180), (r, 0.7 * r, r, 0.7 * r)
    elif shape == "hexagon":
        angles, radii = tuple(range(0, 360, 60)), (r,) * 6
    else:  # star
        angles, radii = tuple(range(-90, 270, 36)), tuple(r if i % 2 == 0 else 0.45 * r for i in range(10))
    return [(cx + rad * math.cos(math.radians(a)), cy + rad * math.sin(math.radians(a))) for a, rad in zip(angles, radii)]
