"""Synthetic scenes: one shape of a given colour and size, drawn with Pillow.

What an image shows is known exactly (its three attributes), yet no two images are the same:
position and the exact size jitter, and the background is lightly tinted, so held-out images
are genuinely new to a model.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 210, 40), "purple": (140, 60, 180), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
ATTRIBUTES = ("size", "colour", "shape")
VALUES = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str = "large"
    jitter: int = 0   # seed of the position/size/background jitter; 0 = centred, no tint

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"

    def with_attribute(self, attribute: str, value: str) -> Scene:
        return Scene(**{**self.__dict__, attribute: value})

    @classmethod
    def random(cls, rng: random.Random) -> Scene:
        return cls(shape=rng.choice(SHAPES), colour=rng.choice(tuple(COLOURS)),
                   size=rng.choice(SIZES), jitter=rng.randrange(1, 2**31))


def draw(scene: Scene, size: int = 56) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` pixels.

    A large shape spans 75-92% of the image, a small one 40-52%; both are placed at a random
    offset that keeps them inside, on a near-white background.
    """
    rng = random.Random(scene.jitter)
    tint = tuple(255 - rng.randrange(0, 20) for _ in range(3)) if scene.jitter else (255,) * 3
    image = Image.new("RGB", (size, size), tint)
    if scene.size not in SIZES:
        raise ValueError(f"unknown size {scene.size!r}; known: {SIZES}")
    lo, hi = (0.75, 0.92) if scene.size == "large" else (0.40, 0.52)
    extent = int(size * (rng.uniform(lo, hi) if scene.jitter else (lo + hi) / 2))
    x0 = rng.randrange(0, size - extent + 1) if scene.jitter else (size - extent) // 2
    y0 = rng.randrange(0, size - extent + 1) if scene.jitter else (size - extent) // 2
    box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
    if scene.colour not in COLOURS:
        raise ValueError(f"unknown colour {scene.colour!r}; known: {tuple(COLOURS)}")
    fill = COLOURS[scene.colour]
    pen = ImageDraw.Draw(image)
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    elif scene.shape == "triangle":
        pen.polygon([((box[0] + box[2]) // 2, box[1]), (box[2], box[3]), (box[0], box[3])],
                    fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; known: {SHAPES}")
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Image bytes; PNG by default because it is lossless and byte-for-byte deterministic."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
