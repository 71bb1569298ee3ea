"""Where every converter writes: pairwise JSONL, a content-hashed image folder, a manifest.

A converter reads source records and, for each, either writes pairs or reports a problem::

    with PairSink(out, "povid", sources=[src], on_error="skip") as sink:
        for line, obj in iter_json_array(src, sink.records):
            with sink.record(src, line):
                sink.write(pair_dict)           # or raise FieldProblem(...)

The JSONL is written to a temporary file and renamed only when the conversion succeeds, so a
failed run leaves no partial output; the manifest is written (to its own temporary) before
anything is published, so a full disk never leaves an old manifest describing a new file.
The manifest (``<out stem>.manifest.json``) records the source files and their sha256, the
counts (read, written, skipped by reason), the sha256 of the output and of every image it
names (``mmrm validate`` and a second conversion find an image changed or torn on disk; the
second conversion repairs it). It holds no timestamps, so the same input gives the same
manifest.
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
from mmrm.outputs import (atomic_file, exclusive, full_disk_error, refuse_overwriting_inputs,
                          remove_stale_temporaries, temporary_name)


def manifest_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".manifest.json")


def check_manifest(out: Path) -> dict | None:
    """A converted file against its manifest (None where it has none): ``problems``, one
    line each, for the file and every image whose bytes are not what the manifest pinned
    (missing, edited in place, torn). A second conversion of the same source repairs
    them."""
    path = manifest_path(out)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        pinned = manifest["images"].get("sha256", {})
        expected = manifest["output"]["sha256"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return {"manifest": str(path), "problems": [f"{path}: not a manifest mmrm can read "
                                                   f"({type(err).__name__})"]}
    problems = []
    if sha256_file(out) != expected:
        problems.append(f"{out}: its sha256 is not the manifest's (changed since conversion)")
    folder = Path(out).parent / manifest["images"].get("folder", "images")
    for name, digest in sorted(pinned.items()):
        image = folder / name
        if not image.is_file():
            problems.append(f"{image}: missing")
        elif sha256_file(image) != digest:
            problems.append(f"{image}: its bytes are not the ones converted (edited or torn)")
    return {"manifest": str(path), "images_checked": len(pinned), "problems": problems}


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
        self._tmp = temporary_name(self.out)
        self._file = None
        self._pending: list[str] = []
        self.record_pairs = Ledger(on_error=self.records.on_error)

    def __enter__(self) -> PairSink:
        self._made = [p for p in (self.out.parent, *self.out.parent.parents) if not p.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # one converter at a time per output folder: its images/ are shared, and a failed
        # run's rollback must not delete images another run wrote and recorded; the file
        # too, so that any other command writing it (a scorer) is refused
        self._lock = exclusive([self.out.parent, self.out], f"pairs into {self.out.parent}")
        try:
            self._lock.__enter__()
            remove_stale_temporaries(self.out.parent)
            remove_stale_temporaries(self.images.folder)
            if self.images.folder.is_dir():
                self.images.remove_abandoned()
            self._file = open(self._tmp, "w", encoding="utf-8")
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        except OSError as err:            # the last buffered lines hit a full disk
            exc_type, exc = type(err), exc or err
        full = full_disk_error(self.out, exc)
        if full is not None:              # nothing was published: the previous output stands
            self._release(failed=True)
            raise full from None
        try:
            if exc_type is None:
                # an OUT that is one of the images read (or a hard link to one) would be
                # replaced by the JSONL: refused before it is published
                existing = {name: path for name, path in (("OUT", self.out), (
                    "OUT's manifest", manifest_path(self.out))) if path.exists()}
                if existing:      # an image read is a file that exists
                    refuse_overwriting_inputs(self.images.inputs, existing)
                # the manifest first (it is what a full disk could stop), then publish:
                # images, the JSONL, the manifest, each a rename
                with atomic_file(manifest_path(self.out)) as manifest:
                    self.manifest = self._manifest()
                    manifest.write(json.dumps(self.manifest, indent=2, ensure_ascii=False)
                                   + "\n")
                    self.images.publish()
                    os.replace(self._tmp, self.out)
        except BaseException as err:
            self._release(failed=True)
            full = full_disk_error(self.out, err)
            if full is not None:
                raise full from None
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

    def _manifest(self) -> dict:
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
            "output": {"file": self.out.name, "sha256": sha256_file(self._tmp),
                       "pairs": (self.pairs or self.records).written},
            "images": {"folder": "images", "count": self.images.count,
                       "names_sha256": self.images.digest(),
                       "sha256": self.images.contents()},
            "records": self.records.as_dict(),
        }
        if self.pairs is not None:
            manifest["pairs"] = self.pairs.as_dict()
        if self.notes:
            manifest["notes"] = self.notes
        return manifest

