"""Where every converter writes: pairwise JSONL, a content-hashed image folder, a manifest.

A converter reads source records and, for each, either writes pairs or reports a problem::

    with PairSink(out, "povid", sources=[src], on_error="skip") as sink:
        for line, obj in iter_json_array(src, sink.records):
            with sink.record(src, line):
                sink.write(pair_dict)           # or raise FieldProblem(...)

The JSONL is written to a temporary file and renamed only when the conversion succeeds, so a
failed run leaves no partial output. The manifest (``<out stem>.manifest.json``) records the
source files and their sha256, the counts (read, written, skipped by reason), and the sha256
of the outputs. It holds no timestamps, so the same input gives the same manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from mmrm import __version__
from mmrm.formats import PairRecord
from mmrm.images import DEFAULT_MAX_PIXELS, ImageStore, sha256_file
from mmrm.ledger import FieldProblem, Ledger, OnError, RecordError
from mmrm.outputs import exclusive, refuse_overwriting_inputs


def manifest_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".manifest.json")


def remove_stale_temporaries(folder: Path, prefix: str) -> list[Path]:
    """Delete ``<prefix>*.tmp<pid>`` files in ``folder`` left by a process that no longer runs
    (a converter killed with SIGKILL cannot clean up after itself)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).glob(f"{prefix}*.tmp*"):
        pid = path.name.rpartition(".tmp")[2]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PairSink:
    """Collects converted pairs, images and counts for one output file.

    Args:
        out: the pairwise JSONL to write; images go to ``images/`` beside it.
        fmt: the source format's name (recorded in the manifest and as each pair's ``source``).
        sources: the files read (hashed into the manifest).
        on_error: ``raise`` or ``skip``.
        max_pixels: decompression-bomb cap for every image.
        one_pair_per_record: when False, ``pairs`` keeps a second ledger of candidate pairs
            (multi-completion sources) and a record that yields no pair is skipped as
            ``no_pairs``.
    """

    def __init__(self, out: Path, fmt: str, *, sources: list[Path], on_error: OnError | str,
                 max_pixels: int = DEFAULT_MAX_PIXELS, one_pair_per_record: bool = True):
        self.out = Path(out)
        self.fmt = fmt
        self.sources = [Path(s) for s in sources]
        self.records = Ledger(on_error=OnError(on_error))
        self.pairs = None if one_pair_per_record else Ledger(on_error=OnError(on_error))
        self.images = ImageStore(self.out.parent / "images", self.out.parent,
                                 max_pixels=max_pixels)
        self.notes: dict[str, dict[str, int]] = {}
        self._ids: set[str] = set()
        self._tmp = self.out.with_name(self.out.name + f".tmp{os.getpid()}")
        self._file = None
        self._pending: list[str] = []
        self.record_pairs = Ledger(on_error=self.records.on_error)

    def __enter__(self) -> PairSink:
        self._made = [p for p in (self.out.parent, *self.out.parent.parents) if not p.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # one converter at a time per output folder: its images/ are shared, and a failed
        # run's rollback must not delete images another run wrote and recorded
        self._lock = exclusive(self.out.parent, f"pairs into {self.out.parent}")
        try:
            self._lock.__enter__()
            remove_stale_temporaries(self.out.parent, self.out.name)
            remove_stale_temporaries(self.images.folder, "")
            if self.images.folder.is_dir():
                self.images.remove_abandoned()
            self._file = open(self._tmp, "w", encoding="utf-8")
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        try:
            if exc_type is None:
                # an OUT that is one of the images read (or a hard link to one) would be
                # replaced by the JSONL: refused before it is published
                existing = {name: path for name, path in (("OUT", self.out), (
                    "OUT's manifest", manifest_path(self.out))) if path.exists()}
                if existing:      # an image read is a file that exists
                    refuse_overwriting_inputs(self.images.inputs, existing)
                self.images.publish()
                os.replace(self._tmp, self.out)
                self.manifest = self._write_manifest()
        except BaseException:
            self._release(failed=True)
            raise
        self._release(failed=exc_type is not None)

    def _release(self, failed: bool) -> None:
        """Drop the lock; after a failure, what this run wrote (no partial output: neither
        the JSONL nor the images it added, nor the folders it made for them)."""
        if failed:
            self._tmp.unlink(missing_ok=True)
            self.images.remove_created()
        self._lock.__exit__(None, None, None)
        if failed:
            for folder in self._made:          # innermost first; only if left empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    @contextlib.contextmanager
    def record(self, path: Path, position: int, unit: str = "line") -> Iterator[None]:
        """Scope of one source record: its pairs are kept only if it raises no problem.

        Candidate pairs of a multi-completion record are counted in ``record_pairs`` and
        join ``pairs`` only when the record as a whole is good.
        """
        self._pending = []
        self.record_pairs = Ledger(on_error=self.records.on_error)
        try:
            yield
        except FieldProblem as problem:
            self.records.bad(RecordError.at(path, position, problem, unit))
            return
        if self.pairs is not None:
            self.record_pairs.written = len(self._pending)
            self.pairs.absorb(self.record_pairs)
            if not self._pending:
                self.records.skip("no_pairs")
                return
        for line in self._pending:
            self._file.write(line)
        self.records.written += 1

    def write(self, pair: dict) -> None:
        """Validate one pair (schema, unique id) and queue it for the current record."""
        pair = {**pair, "source": pair.get("source", self.fmt)}
        record = PairRecord.from_json(pair)
        if record.id in self._ids:
            raise FieldProblem("id", f"duplicate id {record.id!r}", "duplicate_id")
        self._ids.add(record.id)
        self._pending.append(json.dumps(record.to_json(), ensure_ascii=False) + "\n")

    def note(self, key: str, value: str) -> None:
        """Count something worth knowing about the source (e.g. which path reading matched)."""
        counts = self.notes.setdefault(key, {})
        counts[value] = counts.get(value, 0) + 1

    def _write_manifest(self) -> dict:
        self.records.check_balanced()
        if self.pairs is not None:
            self.pairs.check_balanced()
        relative = self.out.parent
        manifest = {
            "format": self.fmt,
            "mmrm_version": __version__,
            "on_error": self.records.on_error.value,
            "sources": [{"path": os.path.relpath(s, relative), "sha256": sha256_file(s)}
                        for s in self.sources],
            "output": {"file": self.out.name, "sha256": sha256_file(self.out),
                       "pairs": (self.pairs or self.records).written},
            "images": {"folder": "images", "count": self.images.count,
                       "names_sha256": self.images.digest()},
            "records": self.records.as_dict(),
        }
        if self.pairs is not None:
            manifest["pairs"] = self.pairs.as_dict()
        if self.notes:
            manifest["notes"] = self.notes
        path = manifest_path(self.out)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return manifest

