"""RLHF-V and RLAIF-V (openbmb): parquet with the image bytes embedded.

RLHF-V: one ``RLHF-V-Dataset.parquet``; ``text`` is a JSON *string* holding ``question``,
``chosen`` and ``rejected``; ``idx`` is an int64. RLAIF-V: shards ``RLAIF-V-Dataset_000.parquet``
..., with ``question``, ``chosen``, ``rejected`` as columns and ``idx`` a string. In both,
``image`` is a struct ``{bytes, path}``. A pair's id is the row's ``idx``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmrm.convert.sink import PairSink
from mmrm.convert.sources import iter_parquet_rows, parquet_files
from mmrm.formats import decode_json, id_field, text_field
from mmrm.ledger import FieldProblem


def image_bytes(row: dict) -> bytes:
    """The embedded bytes of a row's ``image`` struct."""
    image = row.get("image")
    if image is None:
        raise FieldProblem("image", "missing", "no_image_bytes")
    if not isinstance(image, dict):
        raise FieldProblem("image", "expected a struct {bytes, path}", "wrong_type")
    data = image.get("bytes")
    if not data:
        raise FieldProblem("image.bytes", "no image bytes", "no_image_bytes")
    return data


def rlhfv_text(row: dict) -> dict:
    """Parse RLHF-V's ``text`` column, a JSON string with question/chosen/rejected."""
    raw = row.get("text")
    if raw is None:
        raise FieldProblem("text", "missing", "missing_field")
    if not isinstance(raw, str):
        raise FieldProblem("text", f"expected a JSON string, got {type(raw).__name__}",
                           "wrong_type")
    try:
        text, end = decode_json(raw, len(raw) - len(raw.lstrip()))
        if raw[end:].strip():
            raise json.JSONDecodeError("Extra data", raw, end)
    except json.JSONDecodeError as err:
        raise FieldProblem("text", f"malformed JSON: {err.msg}", "malformed_json") from None
    except FieldProblem as problem:
        field = "text" if problem.field == "<line>" else f"text.{problem.field}"
        raise FieldProblem(field, problem.problem, problem.reason) from None
    if not isinstance(text, dict):
        raise FieldProblem("text", "expected a JSON object", "wrong_type")
    return {key: text_field(text, key, prefix="text.")
            for key in ("question", "chosen", "rejected")}


def _convert_parquet(fmt: str, src: Path, out: Path, columns: list[str], read_text, on_error,
                     max_pixels) -> dict:
    files = parquet_files(src)
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    with PairSink(out, fmt, sources=files, on_error=on_error, **kwargs) as sink:
        for path in files:
            for row_no, row in iter_parquet_rows(path, columns, sink.records):
                with sink.record(path, row_no, unit="row"):
                    text = read_text(row)
                    sink.write({"id": id_field(row, "idx"),
                                "prompt": text["question"],
                                "img_path": sink.images.add_bytes(image_bytes(row)),
                                "chosen": text["chosen"], "rejected": text["rejected"]})
    return sink.manifest


def convert_rlhfv(src: Path, out: Path, *, on_error: str = "raise",
                  image_root: Path | None = None, max_pixels: int | None = None) -> dict:
    """Convert RLHF-V's parquet (``text`` a JSON string) to pairwise JSONL."""
    return _convert_parquet("rlhfv", src, out, ["image", "text", "idx"], rlhfv_text,
                            on_error, max_pixels)


def convert_rlaifv(src: Path, out: Path, *, on_error: str = "raise",
                   image_root: Path | None = None, max_pixels: int | None = None) -> dict:
    """Convert RLAIF-V's parquet shards (a folder or one file) to pairwise JSONL."""
    def read_text(row: dict) -> dict:
        return {key: text_field(row, key) for key in ("question", "chosen", "rejected")}
    return _convert_parquet("rlaifv", src, out, ["image", "question", "chosen", "rejected",
                                                 "idx"], read_text, on_error, max_pixels)
