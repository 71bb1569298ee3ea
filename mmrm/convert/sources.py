"""Streaming readers of the released container formats: JSON arrays and parquet files.

Both yield ``(position, record)`` so that errors name the place: the 1-based line where a JSON
array element starts, or the 1-based row of a parquet file. JSONL is read by
:func:`mmrm.formats.iter_jsonl`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmrm.formats import decode_json
from mmrm.ledger import FieldProblem, Ledger, RecordError

_WHITESPACE = " \t\n\r"


def iter_json_array(path: Path, ledger: Ledger) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, element)`` for each element of a JSON array file.

    Elements that are not objects are judged by the ledger. A syntax error inside the array
    always raises: past it there is no reliable way to find the next element.

    Raises:
        RecordError: the file is not a JSON array, or its text breaks off.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecordError(path, data.count(b"\n", 0, err.start) + 1, "<file>",
                          f"not valid UTF-8 (byte 0x{data[err.start]:02x})",
                          "invalid_utf8") from None
    pos, line = _skip_ws(text, 0, 1)
    if pos >= len(text) or text[pos] != "[":
        raise RecordError(path, line, "<file>", "expected a JSON array ('[')", "malformed_json")
    pos, line = _skip_ws(text, pos + 1, line)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        obj, end, problem = _element(path, text, pos, line)
        ledger.read += 1
        if problem is not None:                 # a key given twice: this element only
            ledger.bad(RecordError.at(path, line, problem))
        elif isinstance(obj, dict):
            yield line, obj
        else:
            ledger.bad(RecordError(path, line, "<element>", f"expected a JSON object, got "
                                                            f"{type(obj).__name__}",
                                   "wrong_type"))
        line += text.count("\n", pos, end)
        pos, line = _skip_ws(text, end, line)
        if pos < len(text) and text[pos] == ",":
            pos, line = _skip_ws(text, pos + 1, line)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise RecordError(path, line, "<file>", "expected ',' or ']' between array elements",
                          "malformed_json")


def _element(path: Path, text: str, pos: int, line: int):
    """The array element at ``pos``: ``(value, end, None)``, or ``(None, end, problem)`` for
    an element whose only fault is a key given twice (it can be skipped).

    Raises:
        RecordError: text that cannot be read past (malformed, nested too deeply, a number
            too long): nothing after it can be found reliably.
    """
    try:
        obj, end = decode_json(text, pos)
        return obj, end, None
    except json.JSONDecodeError as err:
        raise RecordError(path, err.lineno, "<element>", f"malformed JSON: {err.msg} at "
                                                         f"column {err.colno}",
                          "malformed_json") from None
    except FieldProblem as problem:
        if problem.reason != "duplicate_key":
            raise RecordError.at(path, line, problem) from None
        return None, json.JSONDecoder().raw_decode(text, pos)[1], problem


def _skip_ws(text: str, pos: int, line: int) -> tuple[int, int]:
    while pos < len(text) and text[pos] in _WHITESPACE:
        if text[pos] == "\n":
            line += 1
        pos += 1
    return pos, line


def parquet_files(src: Path) -> list[Path]:
    """A parquet file, or the sorted ``*.parquet`` shards of a folder."""
    src = Path(src)
    if src.is_dir():
        files = sorted(src.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{src}: no *.parquet files in this folder")
        return files
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    return [src]


def iter_parquet_rows(path: Path, columns: list[str], ledger: Ledger,
                      batch_size: int = 256) -> Iterator[tuple[int, dict]]:
    """Yield ``(row, {column: value})`` for each row, reading ``batch_size`` rows at a time.

    Raises:
        ValueError: a required column is absent (names the file and the columns it has).
    """
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    names = parquet.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has {names}")
    row = 0
    batches = parquet.iter_batches(batch_size=batch_size, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: row {row + 1}: the parquet data does not read "
                             f"({err})") from None
        if batch is None:
            return
        for values in batch.to_pylist():
            row += 1
            ledger.read += 1
            yield row, values
