"""Pairs in, model inputs out: the dataset and the collator that builds chosen/rejected batches.

The conversation of a pair comes from the processor's own chat template: the user turn holds
the image and the prompt, the assistant turn the response. Three input modes:

* ``multimodal`` — the image and the text (the MM-RM);
* ``text_only`` — the same conversation without the image (the shortcut proxy);
* ``blank_image`` — a white image of the same size instead of the real one (the paper's
  variant of the text-only proxy, for backbones that expect an image).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from PIL import Image

from mmrm.formats import ImageCheck, ImageRules, PairRecord, read_pairs
from mmrm.ledger import Ledger, OnError


class InputMode(str, Enum):
    MULTIMODAL = "multimodal"
    TEXT_ONLY = "text_only"
    BLANK_IMAGE = "blank_image"


def load_pairs(path: str | Path, *, on_error: OnError | str = OnError.RAISE,
               image_root: Path | None = None, check: ImageCheck = ImageCheck.EXISTS
               ) -> list[PairRecord]:
    """Read and validate a whole pairwise file into memory (training sets fit)."""
    ledger = Ledger(on_error=OnError(on_error))
    return list(read_pairs(path, images=ImageRules(root=image_root, check=check), ledger=ledger))


def conversation(prompt: str, response: str | None, with_image: bool) -> list[dict]:
    """Chat messages of one (prompt, response): the image first in the user turn, if any."""
    user = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": user}]
    if response is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return messages


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class _ReuseImageInputs:
    """Wraps a processor's image processor so that the same list of images is preprocessed
    once however many times the processor is called with it (once per response).

    The cached images are held, so their ``id`` s cannot be reused by new images while the
    cache refers to them."""

    def __init__(self, image_processor):
        self._inner = image_processor
        self._images, self._kwargs, self._value = None, None, None

    def __call__(self, images, *args, **kwargs):
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        same = (self._images is not None and len(images) == len(self._images)
                and all(a is b for a, b in zip(images, self._images))
                and (args, kwargs) == self._kwargs)
        if not same:
            self._value = self._inner(images, *args, **kwargs)
            self._images, self._kwargs = images, (args, kwargs)
        return self._value

    def __getattr__(self, name):
        return getattr(self._inner, name)


@contextmanager
def preprocess_images_once(processor):
    """Within the block, calling ``processor`` again with the same list of images reuses the
    first call's image tensors (only the text is processed again): a pair's chosen and
    rejected, or an item's N responses, cost one image preprocessing."""
    inner = processor.image_processor
    processor.image_processor = _ReuseImageInputs(inner)
    try:
        yield processor
    finally:
        processor.image_processor = inner


@dataclass
class PairCollator:
    """Builds one batch of 2B sequences from B pairs; each pair's image is preprocessed once.

    Example: two pairs ``[p0, p1]`` give ``input_ids`` of shape ``(4, L)`` ordered
    ``[p0.chosen, p1.chosen, p0.rejected, p1.rejected]`` (right-padded), ``attention_mask``
    of the same shape, and, in ``multimodal`` / ``blank_image`` mode, the image tensors of
    the two images only (``pixel_values`` of shape ``(2, 3, H, W)`` for LLaVA; for Qwen2-VL
    flattened patches plus ``image_grid_thw``). The model encodes those images once and uses
    the features for both sequences of a pair. ``ids`` lists the pair ids.

    Args:
        processor: the backbone's processor (tokenizer + image processor + chat template).
        mode: multimodal, text_only or blank_image.
        max_length: longest sequence kept; longer ones raise (truncation would cut the
            response that is being scored, or the image tokens).
    """

    processor: object
    mode: InputMode = InputMode.MULTIMODAL
    max_length: int = 2048

    def __call__(self, pairs: list[PairRecord]) -> dict:
        with_image = InputMode(self.mode) is not InputMode.TEXT_ONLY
        texts = [self._render(p.prompt, getattr(p, side), with_image)
                 for side in ("chosen", "rejected") for p in pairs]
        if with_image:
            images = [self._image(p) for p in pairs]
            with preprocess_images_once(self.processor):
                chosen = self.processor(text=texts[:len(pairs)], images=images,
                                        return_tensors="pt", padding=True)
                rejected = self.processor(text=texts[len(pairs):], images=images,
                                          return_tensors="pt", padding=True)
            image_inputs = {k: v for k, v in chosen.items()
                            if k not in SEQUENCE_KEYS and k != "token_type_ids"}
        else:
            tokenizer = getattr(self.processor, "tokenizer", self.processor)
            chosen = tokenizer(texts[:len(pairs)], return_tensors="pt", padding=True,
                               add_special_tokens=False)
            rejected = tokenizer(texts[len(pairs):], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
            image_inputs = {}
        sequences = stack_sequences([chosen, rejected], self._pad_id())
        input_ids = sequences["input_ids"]
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"a sequence of {input_ids.shape[1]} tokens exceeds max_length "
                             f"{self.max_length} (pairs {[p.id for p in pairs]})")
        return {**sequences, **image_inputs, "ids": [p.id for p in pairs]}

    def _render(self, prompt: str, response: str, with_image: bool) -> str:
        return self.processor.apply_chat_template(conversation(prompt, response, with_image),
                                                  tokenize=False)

    def _image(self, pair: PairRecord) -> Image.Image:
        image = load_image(pair.image_file)
        if InputMode(self.mode) is InputMode.BLANK_IMAGE:
            return Image.new("RGB", image.size, (255, 255, 255))
        return image

    def _pad_id(self) -> int:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


#: Per-sequence tensors of a processor's output (the rest are per-image tensors).
#: ``mm_token_type_ids`` marks image tokens; Qwen2-VL needs it for its 3-D rotary positions.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def stack_sequences(encoded: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate processor outputs along the batch axis, right-padding every per-sequence
    tensor (``input_ids`` with ``pad_id``, the others with 0)."""
    length = max(e["input_ids"].shape[1] for e in encoded)
    out = {}
    for key in SEQUENCE_KEYS:
        if key in encoded[0]:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.cat([torch.nn.functional.pad(e[key], (0, length - e[key].shape[1]),
                                                          value=fill) for e in encoded])
    return out


def set_right_padding(processor) -> None:
    """Reward heads read the last real token; right padding keeps positions 0..n-1 real."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "right"
