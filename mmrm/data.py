"""Pairs in, model inputs out: the dataset and the collator that builds chosen/rejected batches.

The conversation of a pair comes from the processor's own chat template: the user turn holds
the image and the prompt, the assistant turn the response. Three input modes:

* ``multimodal`` — the image and the text (the MM-RM);
* ``text_only`` — the same conversation without the image (the shortcut proxy);
* ``blank_image`` — one white 224-pixel tile instead of the real image (the paper's
  reference code feeds its text-only proxy this way).
"""

from __future__ import annotations

import hashlib
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mmrm.config import InputMode
from mmrm.formats import ImageCheck, ImageRules, PairRecord, read_pairs
from mmrm.images import open_rgb
from mmrm.ledger import Ledger, OnError


def load_pairs(path: str | Path, *, on_error: OnError | str = OnError.RAISE,
               image_root: Path | None = None, check: ImageCheck = ImageCheck.EXISTS
               ) -> list[PairRecord]:
    """Read and validate a whole pairwise file into memory (training sets fit)."""
    ledger = Ledger(on_error=OnError(on_error))
    return list(read_pairs(path, images=ImageRules(root=image_root, check=check), ledger=ledger))


def fold_of(pair_id: str, folds: int) -> int:
    """The fold (0..folds-1) of a pair: a stable hash of its id, the same on every machine.

    >>> [fold_of(i, 2) for i in ("a", "b", "c")] == [fold_of(i, 2) for i in ("a", "b", "c")]
    True
    """
    digest = hashlib.sha256(pair_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def select_folds(pairs: list[PairRecord], folds: int, holdout: int | None) -> list[PairRecord]:
    """The pairs outside fold ``holdout`` (all of them when ``holdout`` is None)."""
    if holdout is None:
        return pairs
    return [p for p in pairs if fold_of(p.id, folds) != holdout]


def pairs_with_unknown_tokens(processor, pairs: list[PairRecord], chunk: int = 4096
                              ) -> list[str]:
    """Ids of the pairs whose prompt or responses hold text that the tokenizer maps to its
    unknown token, i.e. that the model cannot read. A word-level tokenizer, like the tiny
    base's (it knows only the words of its own corpus), loses every other word this way;
    byte-level tokenizers lose nothing (never an id here).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return []
    texts = [text for p in pairs for text in (p.prompt, p.chosen, p.rejected)]
    ids = []
    for start in range(0, len(texts), chunk):
        ids += tokenizer(texts[start:start + chunk], add_special_tokens=False)["input_ids"]
    return [p.id for n, p in enumerate(pairs)
            if any(unknown in ids[3 * n + k] for k in range(3))]


def unknown_tokens_note(source: str, total: int, unknown: int, first: str | None = None) -> str:
    """One line on the ``unknown`` of ``total`` pairs of ``source`` that the tokenizer cannot
    fully read, naming the ``first`` if given (empty if none)."""
    if not unknown:
        return ""
    named = f"; first: pair {first}" if first is not None else ""
    return (f"warning: {source}: {unknown} of {total} pairs hold words the tokenizer does not "
            f"know (read as its unknown token{named})")


def conversation(prompt: str, response: str | None, with_image: bool) -> list[dict]:
    """Chat messages of one (prompt, response): the image first in the user turn, if any."""
    user = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": user}]
    if response is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return messages


class FilledTemplate:
    """The chat template of (image, prompt, response), rendered once and filled per item.

    Rendering the template is the costliest per-item step on small models, and it does not
    depend on the text: the conversation is rendered once with placeholders for the prompt and
    the response (and once as the prompt alone, with the generation prompt), and items are
    rendered by putting their text in the placeholders' place. That is exact only if the
    template inserts the text verbatim; probes with leading/trailing whitespace, newlines and
    template syntax check it at construction (a template that trims or escapes falls back to
    rendering every item), and :meth:`check` compares one real rendering per batch.
    """

    PROMPT, RESPONSE = "\x00mmrm-prompt\x00", "\x00mmrm-response\x00"
    PROBES = ((" Is the {{ shape }} red?\n", " Yes,\n it is {% raw %}red{% endraw %}. "),
              ("What colour?", "Blue."))

    def __init__(self, processor, with_image: bool = True):
        self.processor, self.with_image = processor, with_image
        self._full = self._parts(self.render(self.PROMPT, self.RESPONSE),
                                 (self.PROMPT, self.RESPONSE))
        self._prefix = self._parts(self.render(self.PROMPT, None), (self.PROMPT,))
        self.exact = self._full is not None and self._prefix is not None and all(
            self.check(p, r) for p, r in self.PROBES)

    def render(self, prompt: str, response: str | None) -> str:
        """The template's own rendering (the prompt alone ends with the generation prompt)."""
        return self.processor.apply_chat_template(
            conversation(prompt, response, self.with_image), tokenize=False,
            add_generation_prompt=response is None)

    @staticmethod
    def _parts(rendered: str, slots: tuple[str, ...]) -> list[str] | None:
        """The text around each slot, or None if a slot is missing or repeated."""
        parts, rest = [], rendered
        for slot in slots:
            if rest.count(slot) != 1:
                return None
            head, _, rest = rest.partition(slot)
            parts.append(head)
        return parts + [rest]

    def full(self, prompt: str, response: str) -> str:
        if not self.exact:
            return self.render(prompt, response)
        a, b, c = self._full
        return a + prompt + b + response + c

    def prefix(self, prompt: str) -> str:
        if not self.exact:
            return self.render(prompt, None)
        a, b = self._prefix
        return a + prompt + b

    def check(self, prompt: str, response: str) -> bool:
        """Whether filling equals rendering for this (prompt, response)."""
        a, b, c = self._full
        d, e = self._prefix
        return (a + prompt + b + response + c == self.render(prompt, response)
                and d + prompt + e == self.render(prompt, None))


_templates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def filled_template(processor, first: tuple[str, str] | None = None, with_image: bool = True
                    ) -> FilledTemplate:
    """The processor's :class:`FilledTemplate` (built once per processor and input mode); with
    ``first``, a (prompt, response) checked against a real rendering, which turns filling off
    if it differs."""
    templates = _templates.setdefault(processor, {})
    template = templates.get(with_image)
    if template is None:
        template = templates[with_image] = FilledTemplate(processor, with_image)
    if first is not None and template.exact and not template.check(*first):
        template.exact = False
    return template


def blank_image() -> Image.Image:
    """What the proxy sees in ``blank_image`` mode: one white 224-pixel tile, as the paper's
    reference code feeds its text-only branch (``Image.new('RGB', (224, 224), (255, 255,
    255))`` in AlignRM/Generalizable-MM-RM ``train_rm_robust.py``), whatever the real
    image's size (so tiling processors give it one tile)."""
    return Image.new("RGB", (224, 224), (255, 255, 255))


def load_image(path: Path) -> Image.Image:
    """The image a model sees (:func:`mmrm.images.open_rgb`)."""
    return open_rgb(path)


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
        share_prompt: each pair's prompt once, continued by chosen and rejected
            (:meth:`RewardModel.forward_shared_prefix`), where the tokenization allows.
        cache_mib: keep up to this many MiB of encoded pairs (:class:`EncodingCache`), so
            that a later epoch pads and stacks instead of encoding again; 0 turns it off.
    """

    processor: object
    mode: InputMode = InputMode.MULTIMODAL
    max_length: int = 2048
    share_prompt: bool = False
    cache_mib: float = 0.0

    def __post_init__(self):
        self.cache = EncodingCache(int(self.cache_mib * 2**20), self._pad_id()) \
            if self.cache_mib > 0 else None

    def __call__(self, pairs: list[PairRecord]) -> dict:
        batch = self.cache.get(pairs) if self.cache is not None else None
        if batch is None:
            batch = self._encode(pairs)
            if self.cache is not None:
                self.cache.put(pairs, batch)
        return batch

    def _encode(self, pairs: list[PairRecord]) -> dict:
        if self.share_prompt:
            batch = self._shared_prompt(pairs)
            if batch is not None:
                return batch
        with_image = InputMode(self.mode) is not InputMode.TEXT_ONLY
        template = filled_template(self.processor, (pairs[0].prompt, pairs[0].chosen),
                                   with_image=with_image)
        texts = [template.full(p.prompt, getattr(p, side))
                 for side in ("chosen", "rejected") for p in pairs]
        if with_image:
            images = [self._image(p) for p in pairs]
            with preprocess_images_once(self.processor):
                chosen = self.processor(text=texts[:len(pairs)], images=images,
                                        return_tensors="pt", padding=True)
                rejected = self.processor(text=texts[len(pairs):], images=images,
                                          return_tensors="pt", padding=True)
            image_inputs = image_tensors(chosen)
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

    def _shared_prompt(self, pairs: list[PairRecord]) -> dict | None:
        """The batch as B prompts and 2B continuations ``[chosen..., rejected...]`` (see
        :func:`encode_shared_prompts`), or ``None`` where the split is not exact."""
        with_image = InputMode(self.mode) is not InputMode.TEXT_ONLY
        split = split_prompts(self.processor, [p.prompt for p in pairs],
                              [[p.chosen for p in pairs], [p.rejected for p in pairs]],
                              with_image=with_image, check_all=True)
        if split is None:
            return None
        images = [self._image(p) for p in pairs] if with_image else None
        batch = encode_shared_prompts(self.processor, *split, images)
        longest = batch["prefix_input_ids"].shape[1] + batch["input_ids"].shape[1]
        if longest > self.max_length:
            raise ValueError(f"a sequence of up to {longest} tokens exceeds max_length "
                             f"{self.max_length} (pairs {[p.id for p in pairs]})")
        return {**batch, "ids": [p.id for p in pairs]}

    def _image(self, pair: PairRecord) -> Image.Image:
        if InputMode(self.mode) is InputMode.BLANK_IMAGE:
            return blank_image()
        return load_image(pair.image_file)

    def _pad_id(self) -> int:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


#: Per-sequence keys of a batch; the ``prefix_*`` ones are left-padded, the others right-padded.
PADDED_KEYS = ("prefix_input_ids", "prefix_attention_mask", "input_ids", "attention_mask",
               "mm_token_type_ids")


class EncodingCache:
    """Each pair's part of an encoded batch, kept after its first batch, so that a batch of
    pairs seen before is padded and stacked rather than encoded again (chat template,
    tokenizer, image loading and preprocessing): TRL and LLaMA-Factory tokenize a data set
    once before training for the same reason. The result equals a fresh encoding of the same
    pairs, tensor for tensor.

    A pair is kept as its sequences without padding (one prompt row and two continuation rows
    with ``share_prompt``, else a chosen and a rejected row) and its image tensors' rows. A
    batch is rebuilt as the collator builds it: each half (the chosen rows, the rejected
    rows) padded on the side the processor pads (as seen in the batches encoded so far; some
    processors, e.g. InternVL's, pad on the left whatever the tokenizer says), then both
    right-padded to one length. Up to ``limit_bytes`` of tensors are kept; later pairs are
    encoded each time. Processors whose image tensors are not one row per image (Qwen2-VL's
    flattened patches) turn the cache off at the first batch, and images of different shapes
    (tiles) are encoded again rather than stacked.
    """

    def __init__(self, limit_bytes: int, pad_id: int):
        self.limit_bytes, self.pad_id = limit_bytes, pad_id
        self.entries: dict[tuple, dict[str, list[torch.Tensor]]] = {}
        self.bytes = 0
        self.usable = True
        #: per attention mask, whether the processor pads its halves on the left (unknown
        #: until a batch with rows of different lengths shows it)
        self.left: dict[str, bool] = {}

    @staticmethod
    def key(pair: PairRecord) -> tuple:
        return (pair.id, pair.prompt, pair.chosen, pair.rejected, str(pair.image_file))

    def get(self, pairs: list[PairRecord]) -> dict | None:
        """The batch of ``pairs`` from kept entries, or ``None`` if one is missing."""
        entries = [self.entries.get(self.key(p)) for p in pairs]
        if not self.usable or any(e is None for e in entries):
            return None
        batch = {}
        for key in entries[0]:
            if key in PADDED_KEYS:
                fill = self.pad_id if key.endswith("input_ids") else 0
                halves = [[e[key][j] for e in entries] for j in range(len(entries[0][key]))]
                left = self.left.get(_mask_of(key))
                if left is None and any(len({len(r) for r in half}) > 1 for half in halves):
                    return None                 # padding side not seen yet
                padded = [_pad_rows(half, fill, left=bool(left)) for half in halves]
                length = max(t.shape[1] for t in padded)
                batch[key] = torch.cat([torch.nn.functional.pad(t, (0, length - t.shape[1]),
                                                                value=fill) for t in padded])
            else:
                parts = [e[key][0] for e in entries]
                if any(t.shape[1:] != parts[0].shape[1:] for t in parts):
                    return None
                batch[key] = torch.cat(parts)
        return {**batch, "ids": [p.id for p in pairs]}

    def put(self, pairs: list[PairRecord], batch: dict) -> None:
        """Keep each pair's part of ``batch`` (as long as the budget lasts)."""
        n = len(pairs)
        tensors = {k: v for k, v in batch.items() if k != "ids"}
        if any(k not in PADDED_KEYS and (not isinstance(v, torch.Tensor) or v.shape[0] != n)
               for k, v in tensors.items()):
            self.usable = False             # not one row per image: nothing to split
        if not self.usable:
            return
        masks = {name: tensors[name].bool()
                 for name in {_mask_of(k) for k in tensors if k in PADDED_KEYS}}
        for name, mask in masks.items():
            for half in mask.split(n):
                if not bool(half[:, 0].all()):
                    self._side(name, left=True)
                elif len(set(half.sum(dim=1).tolist())) > 1:
                    self._side(name, left=False)
        if not self.usable:
            return
        for i, pair in enumerate(pairs):
            if self.bytes >= self.limit_bytes or self.key(pair) in self.entries:
                continue
            entry = {}
            for key, value in tensors.items():
                if key in PADDED_KEYS:
                    mask = masks[_mask_of(key)]
                    entry[key] = [value[j * n + i][mask[j * n + i]].clone()
                                  for j in range(value.shape[0] // n)]
                else:
                    entry[key] = [value[i:i + 1].clone()]
            self.entries[self.key(pair)] = entry
            self.bytes += sum(t.nbytes for rows in entry.values() for t in rows)

    def _side(self, mask: str, *, left: bool) -> None:
        if self.left.setdefault(mask, left) != left:
            self.usable = False             # padded on both sides: do not guess


def _mask_of(key: str) -> str:
    return "prefix_attention_mask" if key.startswith("prefix_") else "attention_mask"


def _pad_rows(rows: list[torch.Tensor], fill: int, *, left: bool) -> torch.Tensor:
    out = rows[0].new_full((len(rows), max(len(r) for r in rows)), fill)
    for i, row in enumerate(rows):
        if left:
            out[i, out.shape[1] - len(row):] = row
        else:
            out[i, :len(row)] = row
    return out


def split_prompts(processor, prompts: list[str], continuations: list[list[str]], *,
                  with_image: bool = True, check_all: bool = False
                  ) -> tuple[list[str], list[str]] | None:
    """Rendered prompts and what each response adds to its prompt's rendering.

    Args:
        prompts: ``M`` prompts.
        continuations: ``n`` lists of ``M`` responses (``continuations[k][i]`` answers
            ``prompts[i]``).
        check_all: check the tokenization of every sequence (else of the first only).

    Returns:
        ``(prefixes, suffixes)``: the ``M`` prompt renderings (with the generation prompt) and
        the ``n·M`` suffixes ordered like ``continuations`` flattened; ``None`` if a rendering
        does not start with its prompt's, or if the tokens of prefix + suffix differ from the
        tokens of the whole (a merge across the boundary).
    """
    template = filled_template(processor, (prompts[0], continuations[0][0]),
                               with_image=with_image)
    tokenizer = getattr(processor, "tokenizer", processor)
    m = len(prompts)
    prefixes = [template.prefix(p) for p in prompts]
    fulls = [template.full(p, r) for responses in continuations
             for p, r in zip(prompts, responses)]
    if not all(full.startswith(prefixes[i % m]) for i, full in enumerate(fulls)):
        return None
    suffixes = [full[len(prefixes[i % m]):] for i, full in enumerate(fulls)]
    checked = len(fulls) if check_all else 1
    whole = tokenizer(fulls[:checked])["input_ids"]
    heads = tokenizer(prefixes[:checked])["input_ids"]
    tails = tokenizer(suffixes[:checked], add_special_tokens=False)["input_ids"]
    if any(w != heads[i % m] + t for i, (w, t) in enumerate(zip(whole, tails))):
        return None
    return prefixes, suffixes


def encode_shared_prompts(processor, prefixes: list[str], suffixes: list[str],
                          images: list | None) -> dict[str, torch.Tensor]:
    """Model inputs for :meth:`RewardModel.forward_shared_prefix`: ``prefix_input_ids`` /
    ``prefix_attention_mask`` (the prompts with their images, left-padded so that they end
    where the continuations start), the image tensors, and ``input_ids`` / ``attention_mask``
    of the suffixes (right-padded)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        if images is not None:
            prefix = processor(text=prefixes, images=images, return_tensors="pt",
                               padding=True)
        else:
            prefix = tokenizer(prefixes, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    suffix = tokenizer(suffixes, add_special_tokens=False, padding=True, padding_side="right",
                       return_tensors="pt")
    return {"prefix_input_ids": prefix["input_ids"],
            "prefix_attention_mask": prefix["attention_mask"],
            "input_ids": suffix["input_ids"], "attention_mask": suffix["attention_mask"],
            **image_tensors(prefix)}


#: Per-sequence tensors of a processor's output (the rest are per-image tensors).
#: ``mm_token_type_ids`` marks image tokens; Qwen2-VL needs it for its 3-D rotary positions.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def image_tensors(encoded) -> dict[str, torch.Tensor]:
    """A processor output's per-image tensors (``pixel_values``, ``image_grid_thw``, ...)."""
    return {k: v for k, v in encoded.items() if k not in SEQUENCE_KEYS and k != "token_type_ids"}


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
