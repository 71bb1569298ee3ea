"""Image-only processors for backbones whose stock processor also needs a video processor.

Qwen2-VL's, Qwen2.5-VL's and InternVL's processors take a video processor, and
transformers builds that one with torchvision; without torchvision (the CPU machines here, or
any install that skips it) ``AutoProcessor.from_pretrained`` fails before an image is seen.
A reward model scores images, so these subclasses drop the video half and keep everything
else (image token expansion, chat template) from the stock class. :func:`image_only_processor`
picks one by the model's ``model_type``.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import InternVLProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class _ImageOnly:
    """Mixin: ``__init__`` without ``video_processor`` (transformers reads a processor's
    parts from the ``__init__`` signature, so saving and loading skip the video part too)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self._set_tokens(tokenizer, **kwargs)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageProcessorOnly(_ImageOnly, Qwen2VLProcessor):
    def _set_tokens(self, tokenizer, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)


class Qwen2_5_VLImageProcessorOnly(_ImageOnly, Qwen2_5_VLProcessor):
    _set_tokens = Qwen2VLImageProcessorOnly._set_tokens


class InternVLImageProcessorOnly(_ImageOnly, InternVLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256,
                 chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template,
                         image_seq_length=image_seq_length)

    def _set_tokens(self, tokenizer, image_seq_length: int = 256, **kwargs):
        self.image_seq_length = image_seq_length
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.video_token = tokenizer.video_token
        self.image_token_id = tokenizer.context_image_token_id
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})")


IMAGE_ONLY = {"qwen2_vl": Qwen2VLImageProcessorOnly, "qwen2_5_vl": Qwen2_5_VLImageProcessorOnly,
              "internvl": InternVLImageProcessorOnly}


def image_only_processor(path: str | Path, model_type: str):
    """The image-only processor of ``model_type`` from ``path``, or ``None`` if there is none."""
    cls = IMAGE_ONLY.get(model_type)
    return cls.from_pretrained(str(path)) if cls is not None else None
