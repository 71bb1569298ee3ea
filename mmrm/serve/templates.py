"""The chat templates an RL loop's policy renders its queries in, and how to take a query
apart into the user's prompt and the policy's response, so the reward model can render them
in its own template.

OpenRLHF sends the policy's whole rendered text (``query``: prompt + response + the policy's
end token); the policy and the reward model are usually different models. A reward computed
on that text as it stands sees another model's special tokens: it is off by as much as the
reward scale. So a query is split:

* given ``prompts`` (the rendered prompt the query starts with), the response is the rest,
  with the policy's end and pad tokens taken off its end;
* else in the first template that fits: the reward model's own, then the known families'
  (:data:`FAMILIES`: Qwen2-VL, InternVL, LLaVA, LLaVA-NeXT (Mistral), Idefics3), or only
  the family or tokenizer folder the server was started with (``policy_template=``).

Image placeholders (``<image>``, ``<|vision_start|>...<|vision_end|>``, ...) are taken out
of the user text: the image is the request's (or the server's index's), not a token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    """How one template wraps a single-turn conversation: the text before the user's prompt
    (``head``, a regex: an optional system turn), between it and the response (``between``),
    and the tokens the policy ends (or pads) its response with (``ends``, literal)."""

    name: str
    head: str
    between: str
    ends: tuple[str, ...] = ()

    def pattern(self) -> re.Pattern:
        # greedy user text: the last assistant turn holds the response
        return re.compile(f"^{self.head}(?P<user>.*){self.between}(?P<response>.*)$", re.S)


_CHATML_HEAD = r"(?:<\|im_start\|>system\n.*?<\|im_end\|>\n)?<\|im_start\|>user\n"
_CHATML_BETWEEN = r"<\|im_end\|>\n<\|im_start\|>assistant\n"

#: Known families, as their released chat templates render (image, prompt, response).
FAMILIES: dict[str, Shape] = {
    # <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>
    # <|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>
    "qwen2_vl": Shape("qwen2_vl", _CHATML_HEAD, _CHATML_BETWEEN,
                      ("<|im_end|>", "<|endoftext|>")),
    # InternVL 2/2.5/3 (chat and -hf): the same ChatML turns, <image> / <IMG_CONTEXT>
    "internvl": Shape("internvl", _CHATML_HEAD, _CHATML_BETWEEN,
                      ("<|im_end|>", "<|endoftext|>")),
    # llava-1.5(-hf): [system ]USER: <image>\nWhat is this? ASSISTANT: A cat.</s>
    "llava": Shape("llava", r"(?:<s>)?(?:[^\n]*?)?USER: ?", r" ?ASSISTANT: ?", ("</s>",)),
    # llava-v1.6-mistral: [INST] <image>\nWhat is this? [/INST] A cat.</s>
    "llava_mistral": Shape("llava_mistral", r"(?:<s>)?\[INST\] ?", r" ?\[/INST\] ?",
                           ("</s>",)),
    # Idefics3: <|begin_of_text|>User:<image>What is this?<end_of_utterance>\nAssistant: A
    # cat.<end_of_utterance>\n
    "idefics3": Shape("idefics3", r"(?:<\|begin_of_text\|>)?(?:System:.*?<end_of_utterance>\n)?"
                      r"User: ?", r"<end_of_utterance>\nAssistant: ?",
                      ("<end_of_utterance>", "<|end_of_text|>")),
}

#: Image placeholders of the families (and the tiny base's ``<image>``), taken out of a
#: user text.
IMAGE_PLACEHOLDERS = re.compile(
    r"<\|vision_start\|>.*?<\|vision_end\|>|<img>.*?</img>|<IMG_CONTEXT>|<image>|<\|image_pad\|>"
    r"|<fake_token_around_image>|<global-img>|<row_\d+_col_\d+>", re.S)
#: Pad tokens a policy may leave after its end token.
PADS = ("<pad>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<unk>")


def user_text(text: str) -> str:
    """A user turn's text without image placeholders, trimmed."""
    return IMAGE_PLACEHOLDERS.sub("", text).strip()


def strip_ends(response: str, ends: tuple[str, ...]) -> str:
    """``response`` without the end and pad tokens (and whitespace) at its end, repeatedly:
    ``'A cat.<|im_end|><|endoftext|>\\n'`` -> ``'A cat.'``."""
    tokens = tuple(t for t in (*ends, *PADS) if t)
    while True:
        trimmed = response.rstrip()
        for token in tokens:
            if trimmed.endswith(token):
                trimmed = trimmed[:-len(token)]
                break
        if trimmed == response:
            return response
        response = trimmed


def literal_shape(name: str, head: str, between: str, tail: str, ends=()) -> Shape:
    """A shape from a rendered template's literal parts (a reward model's or a tokenizer
    folder's own): what surrounds the prompt and the response."""
    extra = tuple(t for t in (tail.strip(),) if t)
    return Shape(name, re.escape(head), re.escape(between), (*extra, *ends))


def shape_of_folder(folder: str | Path) -> Shape:
    """The shape of the chat template in a tokenizer or processor folder (``policy_template=
    FOLDER``): rendered once with placeholders, as mmrm renders its own."""
    from transformers import AutoProcessor, AutoTokenizer

    from mmrm.data import FilledTemplate

    renderer = None
    for loader in (AutoProcessor, AutoTokenizer):
        try:
            renderer = loader.from_pretrained(str(folder), local_files_only=True)
            if getattr(renderer, "chat_template", None):
                break
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            renderer = None
    if renderer is None or not getattr(renderer, "chat_template", None):
        raise ValueError(f"policy_template={folder}: no chat template there (a tokenizer or "
                         f"processor folder with chat_template)")
    for with_image in (True, False):
        try:
            parts = FilledTemplate(renderer, with_image)._full
        except Exception:      # noqa: BLE001 - a text template may not take image parts
            parts = None
        if parts is not None:
            tokenizer = getattr(renderer, "tokenizer", renderer)
            ends = tuple(t for t in (tokenizer.eos_token, tokenizer.pad_token) if t)
            return literal_shape(str(folder), *parts, ends=ends)
    raise ValueError(f"policy_template={folder}: its chat template does not render a "
                     f"(prompt, response) conversation")


def policy_shapes(policy: str | None) -> list[Shape]:
    """The shapes a query may come in: the known families (default), or the one family or
    tokenizer folder named by ``policy_template=``."""
    if policy is None:
        return list(FAMILIES.values())
    if policy in FAMILIES:
        return [FAMILIES[policy]]
    if Path(policy).is_dir():
        return [shape_of_folder(policy)]
    raise ValueError(f"policy_template={policy}: neither a known family "
                     f"({', '.join(FAMILIES)}) nor a tokenizer folder")


def split_query(query: str, shapes: list[Shape]) -> tuple[str, str, str] | None:
    """``(user prompt, response, the shape's name)`` of a query in the first shape that fits
    it with a non-empty user text, or None. The response may be empty (a policy's empty
    completion)."""
    for shape in shapes:
        found = shape.pattern().match(query)
        if found is None:
            continue
        user = user_text(found["user"])
        if user:
            return user, strip_ends(found["response"], shape.ends), shape.name
    return None


def split_prompt(prompt: str, shapes: list[Shape]) -> str:
    """The user text of a rendered prompt (it ends with the generation prompt), or the
    prompt itself (without image placeholders) where no shape fits."""
    for shape in shapes:
        found = re.match(f"^{shape.head}(?P<user>.*){shape.between}\\s*$", prompt, re.S)
        if found and user_text(found["user"]):
            return user_text(found["user"])
    return user_text(prompt)


def policy_ends(shapes: list[Shape]) -> tuple[str, ...]:
    """Every end token the shapes know (what trails a response after a given prompt)."""
    return tuple(dict.fromkeys(t for s in shapes for t in s.ends))
