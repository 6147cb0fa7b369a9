"""Output files written whole or not at all.

Writing a result in place leaves a mix when two runs write it at once (a ``sat`` witness under
an ``unsat`` line in 384 of 3,000 trials, issue 19) and a half-written file when a run is
killed. Every file nnbound writes goes to a temporary name in the target's own folder (same
file system, so the final :func:`os.replace` is atomic) and is renamed over the target only
once complete: a reader sees the previous file or the new one, never a part.

A report folder is built the same way (:func:`replacing_folder`), and a run that is stopped
before it finishes leaves :data:`INTERRUPTED_MARK` in the previous report, saying it is not
this run's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from nnbound.errors import InputError

# Written into an existing report folder when a new run starts, removed with the folder when
# the run replaces it: if it is still there, the run that was to replace it was interrupted.
INTERRUPTED_MARK = "INTERRUPTED.txt"


def _temp_name(target: Path) -> Path:
    """A fresh name beside ``target`` keeping its suffix (``savefig`` and ``np.savez`` read
    the format from it)."""
    fd, name = tempfile.mkstemp(
        prefix=f".{target.stem}.partial-", suffix=target.suffix, dir=target.parent
    )
    os.close(fd)
    # mkstemp makes the file private (0600); the file it becomes gets the usual mode
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed to ``path`` when the block
    ends normally, deleted when it raises (or is interrupted)."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"cannot write {target}: it is a folder")
    try:
        tmp = _temp_name(target)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc}") from None
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path`` holds ``text`` (UTF-8) in full, or keeps what it held."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def mark_run_started(path: str | Path) -> None:
    """Put :data:`INTERRUPTED_MARK` into an existing report folder at the start of a run that
    will replace it (so that if the run never gets there, the old report says so)."""
    target = Path(path)
    if target.is_dir():
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        write_text_atomic(
            target / INTERRUPTED_MARK,
            f"A new run started at {stamp} to replace this report and did not finish: "
            "everything here is from an earlier run.\n",
        )


@contextlib.contextmanager
def replacing_folder(path: str | Path) -> Iterator[Path]:
    """A new empty staging folder beside ``path``; when the block ends normally it replaces
    ``path`` (which may exist: a previous report) as a whole. Until then an existing ``path``
    carries :data:`INTERRUPTED_MARK`, which stays if the block never finishes."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise InputError(f"cannot write the report folder {target}: {exc}") from None
    mark_run_started(target)
    try:
        yield staging
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise InputError(f"cannot write the report folder {target}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "INTERRUPTED_MARK",
    "atomic_path",
    "mark_run_started",
    "replacing_folder",
    "write_text_atomic",
]
