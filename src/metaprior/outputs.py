"""Output paths and run folders: checked before any work starts (a late failed write keeps
the result in a named temporary file, :func:`write_or_keep`), locked while a run writes
(:class:`RunLock`). The promises are stated in ``docs/reliability.md`` and tested in
``tests/test_reliability.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Files and folders of a meta-training run (what ``overwrite`` removes; nothing else is).
RUN_FILES = ("config.json", "log.jsonl", "model.safetensors", "checkpoints")
LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (busy, holds another run, not writable)."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """``path`` is, or can be created as, a writable folder; else a one-line error naming
    ``flag``."""
    if str(path) == "":
        raise RunFolderError(f"{flag} is empty: give a folder path")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{flag} {path} is an existing file, not a folder: choose a "
                             f"folder path")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise RunFolderError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise RunFolderError(f"{flag} {path}: {base} is not writable: choose another path")
    probe_writable(base, f"{flag} {path}")
    return path


def probe_writable(folder: Path, label: str) -> None:
    """Create, write and remove a probe file in ``folder``: permissions alone do not show that
    a file system takes files (``/proc``, a read-only mount, a full disk); a one-line error
    starting with ``label`` if it does not."""
    probe = folder / f".metaprior-probe.tmp-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise RunFolderError(f"{label}: cannot write in {folder} ({e.strerror or e}): choose "
                             f"another path") from None


def write_or_keep(write: Callable[[Path], object], path: str | Path, flag: str, what: str):
    """``write(path)``; if that fails with an ``OSError`` (a full disk, an I/O error), the
    result is written into a new temporary folder instead and a one-line ``OSError`` names
    the failure and where the result is kept, so a late failure loses no work."""
    path = Path(path)
    try:
        return write(path)
    except OSError as e:
        reason = e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        keep = Path(tempfile.mkdtemp(prefix="metaprior-kept-")) / path.name
        try:
            write(keep)
        except OSError:
            raise OSError(f"{flag} {path} could not be written ({reason}), nor a copy in "
                          f"{keep.parent}: free space or choose another {flag}") from None
        raise OSError(f"{flag} {path} could not be written ({reason}): kept the {what} in "
                      f"{keep}; move it into place") from None


def check_output_file(path: str | Path, flag: str, suffix: str | None = None,
                      overwrite: bool = True) -> Path:
    """``path`` can be written as a file (its folder exists or can be created and is writable,
    it is not a folder, it ends in ``suffix``, and with ``overwrite=False`` it does not exist
    yet); else a one-line error naming ``flag``."""
    if str(path) == "":
        raise RunFolderError(f"{flag} is empty: give a file path")
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise RunFolderError(f"{flag} {path} must end in {suffix}")
    if path.is_dir():
        raise RunFolderError(f"{flag} {path} is a folder: give a file path")
    if not overwrite and path.exists():
        raise RunFolderError(f"{flag} {path} exists: pass --overwrite to replace it, or choose "
                             f"another {flag}")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunFolderError(f"{flag} {path} exists and is not writable")
    check_writable_dir(path.parent, flag)
    return path


def holds_run(out: str | Path) -> bool:
    """Whether ``out`` holds any file of a meta-training run."""
    return any((Path(out) / name).exists() for name in RUN_FILES)


def clear_run(out: str | Path) -> None:
    """Remove the files of an earlier run in ``out`` (only :data:`RUN_FILES`)."""
    out = Path(out)
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


#: The temporary file name of safetensors' own file writer (``.tmp`` and 6 characters), which
#: earlier versions used and a kill could leave behind.
SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (``.NAME.tmp-PID``, and safetensors' own
    ``.tmpXXXXXX``) that a killed writer left in ``folder``; call only while holding the
    folder's :class:`RunLock`."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    leftovers = [*folder.glob(".*.tmp-*"),
                 *(p for p in folder.glob(".tmp*") if SAFETENSORS_TMP.fullmatch(p.name))]
    for p in leftovers:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _holds_nothing(folder: Path) -> bool:
    """Whether ``folder`` holds only its lock file and empty folders."""
    return all(p.name == LOCK_NAME or (p.is_dir() and not p.is_symlink() and
                                       not any(p.iterdir())) for p in folder.iterdir())


class RunLock:
    """Exclusive lock of a run folder for the life of a ``with`` block.

    ``flock`` on ``folder/.lock`` (the file keeps the holder's pid, for the error message).
    A folder the lock created is removed again if the block fails before writing anything.
    The kernel drops the lock when the holder exits, however it exits. On platforms without
    ``fcntl`` the lock is a no-op.
    """

    def __init__(self, folder: str | Path, flag: str = "--out") -> None:
        self.folder = Path(folder)
        self.flag = flag
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFolderError(f"{self.flag} {self.folder} is in use by another process "
                                 f"(pid {holder}): wait for it to finish or choose another "
                                 f"folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        # A run that failed in a folder it created leaves nothing behind, nor the parents it
        # created (the lock file is removed while still held, so no other process can have
        # locked it meanwhile).
        if exc_type is not None and self._created and _holds_nothing(self.folder):
            for p in self.folder.iterdir():
                if p.name != LOCK_NAME:
                    p.rmdir()
            (self.folder / LOCK_NAME).unlink()
            for folder in self._created:  # innermost first; one another run filled stays
                try:
                    folder.rmdir()
                except OSError:
                    break
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
