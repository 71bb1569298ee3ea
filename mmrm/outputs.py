"""What every command that writes files goes through: outputs that would destroy an input
are refused, every file is written whole or not at all, and a run owns what it writes (a
lock no other user can redirect).

* :func:`refuse_overwriting_inputs`: an output that is an input (the same path, through
  symlinks, or a hard link to the same file), or two outputs of one command that are one
  file, is refused before anything is opened for writing; :func:`refuse_nesting` refuses an
  output folder that holds, or lies inside, one of its inputs.
* :func:`write_atomic` / :func:`atomic_file`: a temporary file in the same folder, flushed
  and fsynced, renamed over the target (and the folder fsynced): a full disk, a signal or a
  crash leaves the previous file as it was. A full disk (ENOSPC, EDQUOT) is one line naming
  the file. :func:`staged_folder` does the same for a folder (a saved model): written beside
  it, then swapped in.
* :func:`exclusive`: an exclusive, non-blocking lock (``fcntl.flock``) on what a run writes;
  a second mmrm process that wants to write there is refused at once with the holder's pid,
  instead of the two interleaving (or one's rollback deleting the other's files). Lock
  files live in a folder of the user's own (mode 0700, owner checked: ``MMRM_LOCK_DIR``,
  else ``$XDG_RUNTIME_DIR/mmrm-locks``, else ``~/.cache/mmrm/locks``), named by the target's
  resolved path and opened without following symlinks, so outputs (which DVC hashes) hold
  no lock files and no other user can plant one; the kernel releases the lock if the
  process dies, so a killed run never leaves one held.
"""

from __future__ import annotations

import errno
import os
import shutil
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


def refuse_nesting(inputs: dict[str, Path | None], output: Path, name: str) -> None:
    """Raise ``ValueError`` when the output folder ``output`` is one of the input paths,
    holds one, or lies inside one (a fine-tune whose output folder holds its starting model
    would overwrite it; a run writing inside its own data folder mixes the two).

    Args:
        inputs: what the command reads, by name (``model``, ``data.train``, ...).
    """
    out = Path(output).resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        src = Path(path).resolve()
        if out == src or out in src.parents or src in out.parents:
            relation = "is" if out == src else "holds" if out in src.parents else "lies in"
            raise ValueError(f"{output} ({name}): {relation} the input {path} ({what}); "
                             f"writing there would overwrite or mix with it: choose another "
                             f"{name}")


# ---------------------------------------------------------------------------- whole files
def full_disk_error(path: Path, err: BaseException | None) -> ValueError | None:
    """The one line a full disk (ENOSPC) or quota (EDQUOT) gets, naming ``path``; None for
    any other error."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        why = "no space left on the device" if err.errno == errno.ENOSPC else "disk quota " \
            "exceeded"
        return ValueError(f"{path}: {why}: nothing was written (the previous file, if any, "
                          f"is intact)")
    return None


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_file` writes before the rename: beside ``path``, named so that
    only mmrm's own temporaries match (:func:`remove_stale_temporaries`)."""
    return path.with_name(f".{path.name}.mmrm-tmp{os.getpid()}")


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"
                ) -> Iterator:
    """An open file whose contents replace ``path`` only when the block ends without an
    exception: written to a temporary file in the same folder, flushed, fsynced and
    renamed (POSIX ``rename`` is atomic within a file system). On any failure the temporary
    is removed and ``path`` is left as it was; a full disk is one ``ValueError`` line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        full = full_disk_error(path, err)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """``data`` as the whole of ``path`` (:func:`atomic_file`)."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """mmrm's own temporaries in ``folder`` (``.<name>.mmrm-tmp<pid>``) left by a process
    that no longer runs (a run killed with SIGKILL cannot clean up after itself). Nothing
    else is touched: a converter never deletes a file it did not create."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).glob(".*.mmrm-tmp*"):
        pid = path.name.rpartition(".mmrm-tmp")[2]
        if pid.isdigit() and not _alive(int(pid)) and (path.is_file() or path.is_symlink()):
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


@contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """A folder written whole: the block writes into a staging folder beside ``path``;
    when it ends without an exception the staging folder takes ``path``'s place (an earlier
    folder there is moved aside first, then removed), so ``path`` is never a mix of two
    writes. On a failure the staging folder is removed and ``path`` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.mmrm-staging{os.getpid()}")
    aside = path.with_name(f".{path.name}.mmrm-old{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        if path.exists():
            os.replace(path, aside)
        os.replace(staging, path)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if aside.exists() and not path.exists():
            os.replace(aside, path)
        full = full_disk_error(path, err)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    _fsync_folder(path.parent)


# ---------------------------------------------------------------------------- locks
def lock_folder() -> Path:
    """The user's private lock folder (made with mode 0700 if missing): ``MMRM_LOCK_DIR``,
    else ``$XDG_RUNTIME_DIR/mmrm-locks``, else ``~/.cache/mmrm/locks``.

    Raises:
        ValueError: it is a symlink, not a folder, not the user's own, or open to others:
        a lock there could be redirected or held by someone else.
    """
    chosen = os.environ.get("MMRM_LOCK_DIR")
    if chosen:
        folder = Path(chosen)
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "mmrm-locks"
    else:
        folder = Path.home() / ".cache" / "mmrm" / "locks"
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    import stat

    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or \
            info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ValueError(f"{folder}: mmrm's lock folder must be a folder of your own with "
                         f"mode 0700 (found uid {info.st_uid}, mode "
                         f"{oct(info.st_mode & 0o7777)}{', a symlink' if stat.S_ISLNK(info.st_mode) else ''}): "
                         f"remove it, or set MMRM_LOCK_DIR to one")
    return folder


def lock_path(target: Path) -> Path:
    """The lock file of ``target`` (a file or folder a run writes): in :func:`lock_folder`,
    named by its resolved path, so every command writing one output takes one lock."""
    import hashlib

    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:24]
    return lock_folder() / f"{key}.lock"


@contextmanager
def exclusive(target: Path | Iterable[Path], what: str) -> Iterator[list[Path]]:
    """Hold exclusive locks on ``target`` (one path or several: a converter locks its folder
    and its file, so a scorer writing that file is refused too) while writing ``what``.

    Raises:
        ValueError: another process holds one: ``another mmrm process (pid N) is writing
        ...``; or the lock file is not a plain file of the user's (a planted symlink).
    """
    import fcntl

    targets = [target] if isinstance(target, (str, Path)) else list(target)
    files = sorted({lock_path(t) for t in targets})
    handles = []
    try:
        for lock_file in files:
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise ValueError(f"{lock_file}: a symlink where mmrm's lock file should "
                                     f"be: refused (remove it)") from None
                raise
            handle = os.fdopen(fd, "a+")
            handles.append(handle)
            if os.fstat(fd).st_uid != os.getuid():
                raise ValueError(f"{lock_file}: not your file: refused")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise ValueError(f"another mmrm process (pid {holder}) is writing {what}; "
                                 f"wait for it, or write elsewhere") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        yield files
    finally:
        for handle in handles:
            handle.close()
