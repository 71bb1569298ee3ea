"""Synthetic scenes: one coloured shape on a plain background, drawn with Pillow.

Small and fully determined by their attributes, so that what an image shows is known exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 210, 40), "purple": (140, 60, 180), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str

    def describe(self) -> str:
        return f"a {self.colour} {self.shape}"


def draw(scene: Scene, size: int = 56, background: tuple[int, int, int] = (255, 255, 255)
         ) -> Image.Image:
    """The scene as an RGB image; the shape fills most of it."""
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    margin = size // 8
    box = (margin, margin, size - margin, size - margin)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    elif scene.shape == "triangle":
        pen.polygon([(size // 2, margin), (size - margin, size - margin),
                     (margin, size - margin)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; known: {SHAPES}")
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Image bytes; PNG by default because it is lossless and byte-for-byte deterministic."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
