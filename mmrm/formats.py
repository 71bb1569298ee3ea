"""Record schemas of mmrm's three JSONL formats, and readers that validate every line.

Pairwise (training and evaluation)::

    {"id": "...", "prompt": "...", "img_path": "img.jpg", "chosen": "...", "rejected": "..."}

Multi-completion (VLFeedback's shape; ``completions`` as a list of objects or as a dict of
equal-length lists)::

    {"id": "...", "prompt": "...", "img_path": "...",
     "completions": [{"annotations": {...}, "model": "...", "response": "..."}, ...]}

Inference (scoring)::

    {"id": "... (optional)", "prompt": "...", "img_path": "...", "responses": ["...", ...]}

Fields beyond these are kept in ``extra`` and written back unchanged (``subset``, ``source``).
Readers stream line by line; each bad line raises :class:`~mmrm.ledger.RecordError`
(``file:line: field: problem``) or, under ``on_error="skip"``, is counted in the ledger.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from mmrm.images import DEFAULT_MAX_PIXELS, inspect_image, resolve_image_path
from mmrm.ledger import FieldProblem, Ledger, OnError, RecordError


class ImageCheck(str, Enum):
    """How hard a reader looks at each record's image."""

    NONE = "none"        # path syntax and root only
    EXISTS = "exists"    # ... and the file exists
    HEADER = "header"    # ... and it identifies as an image within the pixel cap
    DECODE = "decode"    # ... and it decodes fully


# --------------------------------------------------------------------------- strict JSON

class JSONObject(dict):
    """A decoded JSON object that remembers the keys its text gave more than once (a plain
    ``json.loads`` keeps the last silently: a record with ``chosen`` twice would train with
    its labels swapped)."""

    twice: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> JSONObject:
    obj = JSONObject()
    twice = []
    for key, value in pairs:
        if key in obj:
            twice.append(key)
        obj[key] = value
    obj.twice = tuple(twice)
    return obj


def _not_json(literal: str):
    raise ValueError(f"{literal} is not JSON (numbers must be finite)")


#: The one JSON decoder of mmrm's readers: objects remember duplicate keys; the NaN and
#: Infinity literals Python's json module accepts are refused (no JSON writer emits them).
STRICT_JSON = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_not_json)


def duplicate_key(value: Any, prefix: str = "") -> str | None:
    """The dotted name of the first key given twice anywhere in a decoded value, or None."""
    if isinstance(value, JSONObject) and value.twice:
        return prefix + value.twice[0]
    children = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = duplicate_key(child, f"{prefix}{key}.")
        if found:
            return found
    return None


def decode_json(text: str, start: int = 0) -> tuple[Any, int]:
    """``STRICT_JSON.raw_decode`` whose failures are one-line problems: malformed text, nesting
    past Python's recursion limit, an integer over its digit limit, a key given twice.

    Raises:
        FieldProblem: on ``<line>`` (the record as a whole) or on the duplicated key.
        json.JSONDecodeError: malformed text (the caller knows the line and column).
    """
    try:
        value, end = STRICT_JSON.raw_decode(text, start)
    except RecursionError:
        raise FieldProblem("<line>", "JSON nested too deeply to read", "too_deep") from None
    except json.JSONDecodeError:
        raise
    except ValueError as err:        # e.g. "Exceeds the limit (4300 digits) for integer ..."
        raise FieldProblem("<line>", f"a number that cannot be read ({err})",
                           "bad_number") from None
    try:
        twice = duplicate_key(value)
    except RecursionError:
        raise FieldProblem("<line>", "JSON nested too deeply to read", "too_deep") from None
    if twice:
        raise FieldProblem(twice, "given twice (a record with a duplicate key is ambiguous)",
                           "duplicate_key")
    return value, end


# --------------------------------------------------------------------------- field checks

#: A lone UTF-16 surrogate (an escaped ``\ud800`` decodes to one): not text, and no UTF-8
#: writer can write it back.
_SURROGATE = re.compile("[\ud800-\udfff]")

def text_field(obj: dict, key: str, *, prefix: str = "", optional: bool = False) -> str | None:
    """A required non-blank string field."""
    name = prefix + key
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise FieldProblem(name, "missing", "missing_field")
    value = obj[key]
    if not isinstance(value, str):
        raise FieldProblem(name, f"expected a string, got {type(value).__name__}", "wrong_type")
    if not value.strip():
        raise FieldProblem(name, "empty", "empty_text")
    if "\x00" in value:
        raise FieldProblem(name, "contains a NUL character", "nul_character")
    if _SURROGATE.search(value):
        raise FieldProblem(name, "contains a lone UTF-16 surrogate (not text)", "surrogate")
    return value


def id_field(obj: dict, key: str = "id", *, optional: bool = False) -> str | None:
    """Ids are strings; integers (as some releases use) are accepted and kept as text."""
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise FieldProblem(key, "missing", "missing_field")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldProblem(key, f"expected a string, got {type(value).__name__}", "wrong_type")
    value = str(value)
    if not value.strip():
        raise FieldProblem(key, "empty", "empty_text")
    return value


def _extra(obj: dict, known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known}


# --------------------------------------------------------------------------- records

PAIR_FIELDS = ("id", "prompt", "img_path", "chosen", "rejected")
INFERENCE_FIELDS = ("id", "prompt", "img_path", "responses")
MULTI_FIELDS = ("id", "prompt", "img_path", "completions")


@dataclass(frozen=True)
class PairRecord:
    """One preference pair: ``chosen`` is preferred to ``rejected`` for ``prompt`` + image."""

    id: str
    prompt: str
    img_path: str
    chosen: str
    rejected: str
    extra: dict[str, Any] = field(default_factory=dict)
    image_file: Path | None = field(default=None, compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict) -> PairRecord:
        record = cls(id=id_field(obj), prompt=text_field(obj, "prompt"),
                     img_path=text_field(obj, "img_path"), chosen=text_field(obj, "chosen"),
                     rejected=text_field(obj, "rejected"), extra=_extra(obj, PAIR_FIELDS))
        if record.chosen.strip() == record.rejected.strip():
            raise FieldProblem("rejected", "identical to chosen", "chosen_equals_rejected")
        return record

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "img_path": self.img_path,
                "chosen": self.chosen, "rejected": self.rejected, **self.extra}


@dataclass(frozen=True)
class InferenceRecord:
    """One item to score: several candidate ``responses`` to ``prompt`` + image."""

    prompt: str
    img_path: str
    responses: tuple[str, ...]
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image_file: Path | None = field(default=None, compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict) -> InferenceRecord:
        responses = obj.get("responses")
        if responses is None:
            raise FieldProblem("responses", "missing", "missing_field")
        if not isinstance(responses, list):
            raise FieldProblem("responses", f"expected a list, got {type(responses).__name__}",
                               "wrong_type")
        if not responses:
            raise FieldProblem("responses", "empty list", "empty_text")
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise FieldProblem(f"responses[{i}]", f"expected a string, got "
                                                      f"{type(r).__name__}", "wrong_type")
            if not r.strip():
                raise FieldProblem(f"responses[{i}]", "empty", "empty_text")
        return cls(prompt=text_field(obj, "prompt"), img_path=text_field(obj, "img_path"),
                   responses=tuple(responses), id=id_field(obj, optional=True),
                   extra=_extra(obj, INFERENCE_FIELDS))

    def to_json(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "img_path": self.img_path,
               "responses": list(self.responses), **self.extra}
        if self.id is not None:
            out = {"id": self.id, **out}
        return out


@dataclass(frozen=True)
class Completion:
    response: str
    model: str | None
    annotations: dict[str, Any]


@dataclass(frozen=True)
class MultiRecord:
    """One prompt + image with several rated completions (VLFeedback's shape)."""

    id: str
    prompt: str
    img_path: str | None
    completions: tuple[Completion, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    image_file: Path | None = field(default=None, compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict, *, require_img_path: bool = True) -> MultiRecord:
        img_path = text_field(obj, "img_path", optional=not require_img_path)
        return cls(id=id_field(obj), prompt=text_field(obj, "prompt"), img_path=img_path,
                   completions=tuple(parse_completions(obj.get("completions"))),
                   extra=_extra(obj, MULTI_FIELDS))


def parse_completions(value: Any) -> list[Completion]:
    """Accept ``completions`` as a list of objects or as a dict of equal-length lists.

    Raises:
        FieldProblem: missing, wrong type, mismatched list lengths, or a bad entry.
    """
    if value is None:
        raise FieldProblem("completions", "missing", "missing_field")
    if isinstance(value, dict):
        value = _rows_from_columns(value)
    if not isinstance(value, list):
        raise FieldProblem("completions", f"expected a list or a dict of lists, got "
                                          f"{type(value).__name__}", "wrong_type")
    completions = []
    for i, entry in enumerate(value):
        name = f"completions[{i}]"
        if not isinstance(entry, dict):
            raise FieldProblem(name, f"expected an object, got {type(entry).__name__}",
                               "wrong_type")
        annotations = entry.get("annotations")
        if annotations is None:
            raise FieldProblem(f"{name}.annotations", "missing", "missing_field")
        if not isinstance(annotations, dict) or not annotations:
            raise FieldProblem(f"{name}.annotations", "expected a non-empty object of aspects",
                               "wrong_type")
        model = entry.get("model")
        if model is not None and not isinstance(model, str):
            raise FieldProblem(f"{name}.model", "expected a string", "wrong_type")
        completions.append(Completion(response=text_field(entry, "response", prefix=f"{name}."),
                                      model=model, annotations=annotations))
    return completions


def _rows_from_columns(columns: dict) -> list[dict]:
    lengths = {}
    for key in ("annotations", "model", "response"):
        if key not in columns:
            raise FieldProblem(f"completions.{key}", "missing", "missing_field")
        if not isinstance(columns[key], list):
            raise FieldProblem(f"completions.{key}", "expected a list", "wrong_type")
        lengths[key] = len(columns[key])
    if len(set(lengths.values())) != 1:
        raise FieldProblem("completions", f"lists of different lengths {lengths}",
                           "mismatched_lengths")
    return [{key: columns[key][i] for key in columns if isinstance(columns[key], list)
             and len(columns[key]) == lengths["response"]} for i in range(lengths["response"])]


# --------------------------------------------------------------------------- readers

def iter_jsonl(path: Path, ledger: Ledger) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; count and judge bad JSON.

    Whitespace-only lines hold no record and are neither read nor skipped. Lines are decoded
    one by one, so a line that is not valid UTF-8 is one bad record (``invalid_utf8``), not
    a failed file; a UTF-8 byte-order mark at the start of the file is dropped.
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            ledger.read += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                ledger.bad(RecordError(path, line_no, "<line>", f"not valid UTF-8 (byte "
                                       f"0x{raw[err.start]:02x} at column {err.start + 1})",
                                       "invalid_utf8"))
                continue
            try:
                obj, end = decode_json(line, len(line) - len(line.lstrip()))
                if line[end:].strip():
                    raise json.JSONDecodeError("Extra data", line, end)
            except json.JSONDecodeError as err:
                ledger.bad(RecordError(path, line_no, "<line>", f"malformed JSON: {err.msg} at "
                                                                f"column {err.colno}",
                                       "malformed_json"))
                continue
            except FieldProblem as problem:
                ledger.bad(RecordError.at(path, line_no, problem))
                continue
            if not isinstance(obj, dict):
                ledger.bad(RecordError(path, line_no, "<line>", f"expected a JSON object, got "
                                                                f"{type(obj).__name__}",
                                       "wrong_type"))
                continue
            yield line_no, obj


@dataclass
class ImageRules:
    """Where record images live and how strictly they are checked.

    Args:
        root: the data root; ``None`` means the data file's own folder.
        check: how hard to look at each image.
        max_pixels: decompression-bomb cap on width*height.
    """

    root: Path | None = None
    check: ImageCheck = ImageCheck.EXISTS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def resolve(self, img_path: str, data_file: Path, field: str = "img_path") -> Path:
        root = Path(self.root) if self.root is not None else Path(data_file).parent
        return checked_image_path(img_path, root, self.root is not None, ImageCheck(self.check),
                              self.max_pixels, field)


@functools.lru_cache(maxsize=65536)
def checked_image_path(img_path: str, root: Path, root_is_explicit: bool, check: ImageCheck,
                   max_pixels: int, field: str) -> Path:
    """Resolve and check one image path; cached because pairs often share an image (a failed
    check raises and is not cached)."""
    path = resolve_image_path(img_path, root, root_is_explicit=root_is_explicit, field=field)
    if check is ImageCheck.EXISTS and not path.is_file():
        raise FieldProblem(field, f"image not found: {str(path)!r}", "image_missing")
    if check in (ImageCheck.HEADER, ImageCheck.DECODE):
        inspect_image(path, max_pixels=max_pixels, decode=check is ImageCheck.DECODE,
                      field=field)
    return path


def read_records(path: str | Path, record_type: type, *, on_error: OnError | str = "raise",
                 images: ImageRules | None = None, ledger: Ledger | None = None,
                 unique_ids: bool = True) -> Iterator[Any]:
    """Stream validated records of ``record_type`` from a JSONL file.

    Each yielded record has its image resolved and checked by ``images`` and carries the
    resolved path in ``image_file`` and its line number in ``line`` (neither is written back
    by ``to_json``). Records read = yielded + skipped: the caller counts what it writes into
    ``ledger.written``.

    Args:
        path: the JSONL file.
        record_type: :class:`PairRecord`, :class:`MultiRecord` or :class:`InferenceRecord`.
        on_error: ``raise`` (default) or ``skip``.
        images: image root and checks (default: the file's folder, file must exist).
        ledger: a ledger to count into (a new one if omitted).
        unique_ids: refuse a second record with an id already seen.

    Raises:
        RecordError: the first bad line under ``on_error="raise"``.
    """
    path = Path(path)
    images = images or ImageRules()
    ledger = ledger if ledger is not None else Ledger(on_error=OnError(on_error))
    seen: set[str] = set()
    for line_no, obj in iter_jsonl(path, ledger):
        try:
            record = record_type.from_json(obj)
            if unique_ids and record.id is not None:
                if record.id in seen:
                    raise FieldProblem("id", f"duplicate id {record.id!r}", "duplicate_id")
                seen.add(record.id)
            resolved = images.resolve(record.img_path, path)
        except FieldProblem as problem:
            ledger.bad(RecordError.at(path, line_no, problem))
            continue
        yield replace(record, image_file=resolved, line=line_no)


def read_pairs(path: str | Path, **kwargs) -> Iterator[PairRecord]:
    """Stream validated :class:`PairRecord` s; see :func:`read_records` for the arguments."""
    return read_records(path, PairRecord, **kwargs)


def read_inference(path: str | Path, **kwargs) -> Iterator[InferenceRecord]:
    """Stream validated :class:`InferenceRecord` s; ids need not be present."""
    return read_records(path, InferenceRecord, **kwargs)


def read_multi(path: str | Path, **kwargs) -> Iterator[MultiRecord]:
    """Stream validated :class:`MultiRecord` s (multi-completion JSONL)."""
    return read_records(path, MultiRecord, **kwargs)
