"""Language from scene graphs: captions with grounded phrases, noise, and downstream-task records.

The phenomena the five papers target are built in: synonyms ("big"/"large", "box"/"square":
ViLTA), captions that describe only part of the scene (VLMAE), mismatched or partly wrong
pairs (ALBEF MoD, LightVLP), and function words predictable from text alone (EPIC).
"""

from __future__ import annotations

import random

from vlpbench.data.scenes import BACKGROUND_TINTS, BACKGROUNDS, COLORS, SHAPES, Scene, SceneObject

SYNONYMS = {
    "circle": ("circle", "disk", "ball"), "square": ("square", "box", "block"), "triangle": ("triangle",),
    "star": ("star",), "diamond": ("diamond", "rhombus"), "hexagon": ("hexagon",),
    "large": ("large", "big"), "small": ("small", "little", "tiny"), "purple": ("purple", "violet"),
}
INTROS = ("there is", "this image shows", "a picture of", "we can see", "the scene contains")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The words that say something about the scene: colours, shapes, sizes (with synonyms), counts,
# positions, relations, backgrounds and tints. A word's role is known here, so ViLTA's word
# replacement and EPIC's content-word counts are exact on the embedded data; the rest of a caption
# (intros, articles, "and", "with", "on the", "shapes") is function words.
CONTENT_WORDS = frozenset(
    [w for canonical in (*COLORS, *SHAPES, "large", "small") for w in SYNONYMS.get(canonical, (canonical,))]
    + list(NUMBERS) + ["top", "middle", "bottom", "left", "center", "right", "above", "over", "below"]
    + list(BACKGROUNDS) + list(BACKGROUND_TINTS))


def word(rng: random.Random, canonical: str) -> str:
    return rng.choice(SYNONYMS.get(canonical, (canonical,)))


def article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def where(obj: SceneObject) -> str:
    pos = obj.position
    if pos == "center":
        return "in the center"
    if pos in ("left", "right"):
        return f"on the {pos}"
    return f"at the {pos}"


def relation(a: SceneObject, b: SceneObject, rng: random.Random) -> str:
    """How ``a`` stands to ``b`` (objects occupy distinct grid cells)."""
    if a.col != b.col:
        return rng.choice(("to the left of", "left of")) if a.col < b.col else rng.choice(("to the right of", "right of"))
    return rng.choice(("above", "over")) if a.row < b.row else "below"


class CaptionBuilder:
    """Accumulates caption text and the character spans of phrases that name objects."""

    def __init__(self, image_size: int):
        self.text, self.phrases, self.image_size = "", [], image_size

    def add(self, piece: str) -> "CaptionBuilder":
        self.text += piece
        return self

    def add_object(self, obj: SceneObject, index: int, rng: random.Random, with_size: bool = True) -> "CaptionBuilder":
        words = ([word(rng, obj.size)] if with_size else []) + [word(rng, obj.color), word(rng, obj.shape)]
        phrase = f"{article(words[0])} {' '.join(words)}"
        start = len(self.text)
        self.text += phrase
        self.phrases.append({"text": phrase, "start": start, "end": len(self.text), "object": index,
                             "bbox": obj.bbox(self.image_size)})
        return self

    def record(self) -> dict:
        return {"caption": self.text, "phrases": self.phrases}


def _join(items: list[int], b: CaptionBuilder, scene: Scene, rng: random.Random, with_pos: bool, with_size: bool):
    for k, i in enumerate(items):
        if k:
            b.add(" and " if k == len(items) - 1 else ", ")
        b.add_object(scene.objects[i], i, rng, with_size)
        if with_pos:
            b.add(" " + where(scene.objects[i]))


def describe(scene: Scene, rng: random.Random, image_size: int, template: int, subset: list[int] | None = None) -> dict:
    """One caption of ``scene`` (or of the objects in ``subset`` only) in one of four templates."""
    items = list(range(len(scene.objects))) if subset is None else subset
    b = CaptionBuilder(image_size)
    template %= 4
    if template == 0:
        _join(items, b.add(rng.choice(INTROS) + " "), scene, rng, with_pos=True, with_size=True)
    elif template == 1 and len(items) >= 2:
        first, second = items[0], items[1]
        b.add_object(scene.objects[first], first, rng).add(f" {relation(scene.objects[first], scene.objects[second], rng)} ")
        b.add_object(scene.objects[second], second, rng, with_size=False)
        if len(items) > 2:
            _join(items[2:], b.add(", with "), scene, rng, with_pos=True, with_size=False)
    elif template == 2 and subset is None:
        count = len(scene.objects)
        b.add(f"{NUMBERS[count]} {'shape' if count == 1 else 'shapes'} on a {scene.background} {scene.tint} background: ")
        _join(items, b, scene, rng, with_pos=False, with_size=True)
    else:
        _join(items, b, scene, rng, with_pos=True, with_size=rng.random() < 0.5)
    return b.record()


def partial_caption(scene: Scene, rng: random.Random, image_size: int) -> dict:
    """A true caption of only some of the objects (needs at least two)."""
    keep = sorted(rng.sample(range(len(scene.objects)), rng.randint(1, len(scene.objects) - 1)))
    return describe(scene, rng, image_size, rng.choice((0, 1, 3)), subset=keep) | {"partial": True}


def corrupt_attribute(scene: Scene, rng: random.Random, image_size: int) -> dict:
    """A caption that only partly matches: one object's colour is wrong."""
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    wrong = rng.choice([c for c in COLORS if c != obj.color])
    objects = list(scene.objects)
    objects[index] = SceneObject(obj.shape, wrong, obj.size, obj.row, obj.col, obj.cx, obj.cy, obj.radius)
    record = describe(Scene(tuple(objects), scene.background, scene.tint), rng, image_size, rng.randrange(4))
    return record | {"noise": "wrong_attribute"}


# ---- downstream records (ALBEF JSON formats) ----

def _unique(scene: Scene, key) -> list[SceneObject]:
    values = [key(o) for o in scene.objects]
    return [o for o in scene.objects if values.count(key(o)) == 1]


def vqa_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Counting, colour, shape and yes/no questions; "yes" and "no" are equally likely, so the
    question alone does not give the answer away."""
    count = len(scene.objects)
    qa = [("how many shapes are there?", NUMBERS[count])]
    for obj in _unique(scene, lambda o: o.shape)[:1]:
        qa.append((f"what color is the {obj.shape}?", obj.color))
    obj = rng.choice(scene.objects)
    qa.append((f"what shape is {where(obj)}?", obj.shape))
    if rng.random() < 0.5:
        target = rng.choice(scene.objects)
        color, shape, answer = target.color, target.shape, "yes"
    else:
        color, shape = rng.choice([(c, s) for c in COLORS for s in SHAPES if not contains(scene, c, s)])
        answer = "no"
    qa.append((f"is there {article(color)} {color} {shape}?", answer))
    return qa


def contains(scene: Scene, color: str, shape: str) -> bool:
    return any(o.color == color and o.shape == shape for o in scene.objects)


def _nlvr_candidates(left: Scene, right: Scene) -> dict[bool, list[str]]:
    """Every statement of the three kinds about (left, right), by truth."""
    out = {True: [], False: []}
    counts = len(left.objects), len(right.objects)
    if counts[0] != counts[1]:
        for side, other, more in (("left", "right", counts[0] > counts[1]), ("right", "left", counts[1] > counts[0])):
            out[more].append(f"the {side} image has more shapes than the {other} image")
    shapes = [{o.shape for o in scene.objects} for scene in (left, right)]
    for shape in shapes[0] | shapes[1]:
        out[shape in shapes[0] and shape in shapes[1]].append(f"both images contain {article(shape)} {shape}")
    for color in COLORS:
        for shape in SHAPES:  # false where both images or neither holds it
            inside = contains(left, color, shape), contains(right, color, shape)
            out[inside[0] != inside[1]].append(f"exactly one image contains {article(color)} {color} {shape}")
    return out


def nlvr_statement(left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    """A statement about two images: a kind of statement that can be both true and false of this
    pair, then true or false with equal probability, so that its wording does not give its truth
    away ("the left" and "the right" count as one kind)."""
    candidates = _nlvr_candidates(left, right)
    kinds = {truth: {_kind(c) for c in candidates[truth]} for truth in (True, False)}
    either = sorted(kinds[True] & kinds[False])
    if either:
        kind, truth = rng.choice(either), rng.random() < 0.5
    else:  # rare: the two images hold the same objects, and every statement is of one truth
        truth = bool(candidates[True])
        kind = rng.choice(sorted(kinds[truth]))
    return rng.choice([c for c in candidates[truth] if _kind(c) == kind]), truth


def _kind(statement: str) -> str:
    return {"the": "more shapes", "both": "both", "exactly": "exactly one"}[statement.split()[0]]


NEUTRAL_PREDICATES = ("is made of wood", "is moving", "was drawn by a child", "is heavy", "is new")


def entailment_hypotheses(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """One hypothesis of each label. Entailment and contradiction share their wording (a true or a
    wrong colour at the object's place), so only the image separates them; a neutral hypothesis
    states what no image shows, which its wording reveals."""
    obj = rng.choice(scene.objects)
    wrong = rng.choice([c for c in COLORS if c != obj.color])
    return [
        (f"there is {article(obj.color)} {obj.color} {obj.shape} {where(obj)}", "entailment"),
        (f"there is {article(wrong)} {wrong} {obj.shape} {where(obj)}", "contradiction"),
        (f"the {obj.color} {obj.shape} {rng.choice(NEUTRAL_PREDICATES)}", "neutral"),
    ]


def referring_expressions(scene: Scene, image_size: int) -> list[tuple[str, list[float]]]:
    """Expressions that pick out exactly one object, with its box."""
    refs = [(f"the {o.shape}", o.bbox(image_size)) for o in _unique(scene, lambda o: o.shape)]
    refs += [(f"the {o.color} {o.shape} {where(o)}", o.bbox(image_size)) for o in scene.objects]
    return refs
