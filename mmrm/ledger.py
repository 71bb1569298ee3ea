"""Errors with a precise location, and the ledger that makes every skipped record count.

Every reader and converter in mmrm keeps one :class:`Ledger`. Under ``on_error="raise"`` the
first bad record stops the run with ``file:line: field: problem``; under ``on_error="skip"``
the record is counted under a short reason and the run goes on. Either way
``read == written + skipped`` holds at the end, and :meth:`Ledger.check_balanced` says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

MAX_EXAMPLES = 5


class OnError(str, Enum):
    """What to do with a bad record: stop with its location, or count it and go on."""

    RAISE = "raise"
    SKIP = "skip"


class FieldProblem(Exception):
    """A problem with one field of a record, raised before its location is known.

    Args:
        field: dotted name of the field, e.g. ``completions[2].annotations``.
        problem: what is wrong, in words.
        reason: short stable key under which a skip is counted, e.g. ``missing_field``.
    """

    def __init__(self, field: str, problem: str, reason: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.reason = reason


class RecordError(ValueError):
    """A bad record at a known place: ``str(err)`` is ``file:line: field: problem``.

    ``line`` is the 1-based line of a JSONL file or of the start of a JSON array element, or
    the 1-based row of a parquet file (then ``unit`` is ``"row"``).
    """

    def __init__(self, path: str | Path, line: int, field: str, problem: str, reason: str,
                 unit: str = "line"):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.reason = reason
        self.unit = unit
        where = f"{self.path}:{line}" if unit == "line" else f"{self.path}:{unit} {line}"
        super().__init__(f"{where}: {field}: {problem}")

    @classmethod
    def at(cls, path: str | Path, line: int, problem: FieldProblem, unit: str = "line"):
        return cls(path, line, problem.field, problem.problem, problem.reason, unit)


@dataclass
class Ledger:
    """Counts of records read, written and skipped (by reason) for one pass over a source.

    ``written`` is whatever unit the consumer emits for a good record (a pair, a line); for
    sources where one record yields several pairs, a second ledger counts the pairs.
    """

    on_error: OnError = OnError.RAISE
    read: int = 0
    written: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    #: Called with every skipped bad record (for an errors file that lists them all).
    on_bad: Callable[[RecordError], None] | None = field(default=None, repr=False,
                                                          compare=False)

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def bad(self, err: RecordError) -> None:
        """Raise ``err`` under ``raise``; count it (and keep the first few) under ``skip``."""
        if OnError(self.on_error) is OnError.RAISE:
            raise err
        self.skip(err.reason, str(err))
        if self.on_bad is not None:
            self.on_bad(err)

    def skip(self, reason: str, example: str | None = None) -> None:
        """Count a record that is dropped by design (a tie, say) under any policy."""
        self.skipped_by_reason[reason] += 1
        if example is not None and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def absorb(self, other: Ledger) -> None:
        """Add another ledger's counts (and examples, while there is room) to this one."""
        self.read += other.read
        self.written += other.written
        self.skipped_by_reason.update(other.skipped_by_reason)
        self.examples.extend(other.examples[:MAX_EXAMPLES - len(self.examples)])

    def check_balanced(self) -> None:
        """Raise if any record went unaccounted for."""
        if self.read != self.written + self.skipped:
            raise AssertionError(
                f"ledger out of balance: read {self.read} != written {self.written} "
                f"+ skipped {self.skipped} ({dict(self.skipped_by_reason)})")

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "written": self.written,
            "skipped": self.skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "examples": list(self.examples),
        }

    def summary(self) -> str:
        text = f"read {self.read}, written {self.written}, skipped {self.skipped}"
        if self.skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_reason.items()))
            text += f" ({reasons})"
        return text
