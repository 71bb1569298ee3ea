"""Synthetic scenes: one to three shapes, each of a given colour, size and fill, drawn with Pillow.

What an image shows is known exactly (every thing's attributes, left to right), yet no two
images are the same: position and the exact size jitter, and the background is lightly tinted,
so held-out images are genuinely new to a model.

How much it costs a model to check a description against the image is set by the scene's
shape (see :mod:`mmrm.synthetic.visual`): one thing whose words the base was taught to ground
is cheap; two things whose attributes may be swapped between them (binding), or a fill
(``filled`` / ``hollow``) that the base never heard named, is expensive.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 210, 40), "purple": (140, 60, 180), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
STYLES = ("filled", "hollow")
#: The attributes every description names; ``style`` is named only in styled scenes.
ATTRIBUTES = ("size", "colour", "shape")
VALUES = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES, "style": STYLES}


@dataclass(frozen=True)
class Thing:
    """One shape in a scene."""

    shape: str
    colour: str
    size: str = "large"
    style: str = "filled"

    def describe(self, styled: bool = False) -> str:
        fill = f" {self.style}" if styled else ""
        return f"{self.size} {self.colour}{fill} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Things from left to right, the jitter seed, and whether descriptions name the fill.

    ``jitter`` seeds position, size and background tint; 0 = centred, no tint.
    """

    things: tuple[Thing, ...]
    jitter: int = 0
    styled: bool = False

    @classmethod
    def single(cls, shape: str, colour: str, size: str = "large", jitter: int = 0) -> Scene:
        return cls((Thing(shape, colour, size),), jitter)

    @classmethod
    def random(cls, rng: random.Random, count: int = 1, hollow_rate: float = 0.0,
               styled: bool = False) -> Scene:
        """``count`` random things. With one filled thing the draws are those of every
        earlier release (shape, colour, size, jitter), so its data stay byte-identical."""
        things = [Thing(shape=rng.choice(SHAPES), colour=rng.choice(tuple(COLOURS)),
                        size=rng.choice(SIZES)) for _ in range(count)]
        if hollow_rate:
            things = [replace(t, style="hollow" if rng.random() < hollow_rate else "filled")
                      for t in things]
        return cls(tuple(things), jitter=rng.randrange(1, 2**31), styled=styled)

    @property
    def thing(self) -> Thing:
        """The one thing of a single-thing scene."""
        if len(self.things) != 1:
            raise ValueError(f"a scene of {len(self.things)} things has no single thing")
        return self.things[0]

    def describe(self) -> str:
        """``a large red circle``; ``a large red circle and a small blue square``; three
        things: ``a ..., a ... and a ...`` (left to right)."""
        parts = [f"a {t.describe(self.styled)}" for t in self.things]
        if len(parts) == 1:
            return parts[0]
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def present(self, attribute: str) -> set[str]:
        """The values of ``attribute`` that some thing in the scene has."""
        return {getattr(t, attribute) for t in self.things}

    def with_thing(self, index: int, **changes: str) -> Scene:
        things = list(self.things)
        things[index] = replace(things[index], **changes)
        return replace(self, things=tuple(things))

    def with_attribute(self, attribute: str, value: str) -> Scene:
        """A single-thing scene with one attribute changed."""
        self.thing  # noqa: B018 - raises for several things, where the change is ambiguous
        return self.with_thing(0, **{attribute: value})


def draw(scene: Scene, size: int = 56) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` pixels.

    The canvas is cut into one vertical strip per thing, left to right. In its strip a large
    thing spans 75-92% of the strip's shorter side, a small one 40-52%, at a random offset
    that keeps it inside, on a near-white background. Several things get more of their
    narrower strip (large 85-100%, small 55-68%), so that a small one still covers about two
    8-pixel patches of a 56-pixel image. A hollow thing is an outline.
    """
    rng = random.Random(scene.jitter)
    tint = tuple(255 - rng.randrange(0, 20) for _ in range(3)) if scene.jitter else (255,) * 3
    image = Image.new("RGB", (size, size), tint)
    pen = ImageDraw.Draw(image)
    strip = size // len(scene.things)
    for n, thing in enumerate(scene.things):
        _draw_thing(pen, thing, rng, scene.jitter, n * strip, strip, size,
                    several=len(scene.things) > 1)
    return image


def _draw_thing(pen: ImageDraw.ImageDraw, thing: Thing, rng: random.Random, jitter: int,
                left: int, width: int, height: int, several: bool) -> None:
    if thing.size not in SIZES:
        raise ValueError(f"unknown size {thing.size!r}; known: {SIZES}")
    if thing.colour not in COLOURS:
        raise ValueError(f"unknown colour {thing.colour!r}; known: {tuple(COLOURS)}")
    if thing.style not in STYLES:
        raise ValueError(f"unknown style {thing.style!r}; known: {STYLES}")
    lo, hi = {(False, "large"): (0.75, 0.92), (False, "small"): (0.40, 0.52),
              (True, "large"): (0.85, 1.0), (True, "small"): (0.55, 0.68)}[several, thing.size]
    side = min(width, height)
    extent = int(side * (rng.uniform(lo, hi) if jitter else (lo + hi) / 2))
    x0 = left + (rng.randrange(0, width - extent + 1) if jitter else (width - extent) // 2)
    y0 = rng.randrange(0, height - extent + 1) if jitter else (height - extent) // 2
    box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
    colour = COLOURS[thing.colour]
    paint = {"fill": colour} if thing.style == "filled" else \
        {"outline": colour, "width": max(2, extent // 8)}
    if thing.shape == "circle":
        pen.ellipse(box, **paint)
    elif thing.shape == "square":
        pen.rectangle(box, **paint)
    elif thing.shape == "triangle":
        corners = [((box[0] + box[2]) // 2, box[1]), (box[2], box[3]), (box[0], box[3])]
        if thing.style == "filled":
            pen.polygon(corners, fill=colour)
        else:
            pen.polygon(corners, outline=colour, width=max(2, extent // 8))
    else:
        raise ValueError(f"unknown shape {thing.shape!r}; known: {SHAPES}")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Image bytes; PNG by default because it is lossless and byte-for-byte deterministic."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
