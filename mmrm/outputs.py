"""What every command that writes files goes through before it writes: outputs that would
destroy an input are refused, and a run owns what it writes (a lock other mmrm processes
respect).

* :func:`refuse_overwriting_inputs`: an output that is an input (the same path, through
  symlinks, or a hard link to the same file), or two outputs of one command that are one
  file, is refused before anything is opened for writing.
* :func:`exclusive`: an exclusive, non-blocking lock (``fcntl.flock``) on what a run writes;
  a second mmrm process that wants to write there is refused at once with the holder's pid,
  instead of the two interleaving (or one's rollback deleting the other's files). The lock
  file lies in the machine's temporary folder, named by the target's resolved path, so
  outputs (which DVC hashes) hold no lock files; the kernel releases the lock if the process
  dies, so a killed run never leaves one held.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or (both existing)
    the same inode (a hard link)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(inputs: Iterable[Path | None], outputs: dict[str, Path | None]
                              ) -> None:
    """Raise ``ValueError`` naming both when an output is one of the inputs, or when two
    outputs are one file (``outputs``: name -> path). ``None`` entries are ignored.

    Raises:
        ValueError: ``OUTPUT (its name): is the input INPUT; writing would overwrite it``.
    """
    sources = [Path(p) for p in inputs if p is not None]
    named_outputs = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    for out_name, out in named_outputs:
        for src in sources:
            if same_file(out, src):
                raise ValueError(f"{out} ({out_name}): is the input {src}; writing would "
                                 f"overwrite it: choose another {out_name}")
    for i, (name_a, a) in enumerate(named_outputs):
        for name_b, b in named_outputs[i + 1:]:
            if same_file(a, b):
                raise ValueError(f"{a}: given as both {name_a} and {name_b}; one would "
                                 f"overwrite the other: choose another {name_b}")


def lock_path(target: Path) -> Path:
    """The lock file of ``target`` (a file or folder a run writes), outside it."""
    import hashlib
    import tempfile

    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "mmrm-locks" / f"{key}.lock"


@contextmanager
def exclusive(target: Path, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (:func:`lock_path`) while writing ``what``.

    Raises:
        ValueError: another process holds it: ``another mmrm process (pid N) is writing ...``.
    """
    import fcntl

    lock_file = lock_path(target)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise ValueError(f"another mmrm process (pid {holder}) is writing {what}; wait "
                             f"for it, or write elsewhere") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield lock_file
    finally:
        handle.close()
