"""Result shards: one JSON-lines file per finished task, written so that a reader never sees a
partial one.

``results/shards/<task-id>.jsonl`` appears only by an atomic rename of a fully written and
fsynced temporary file (``.<task-id>.jsonl.<pid>.tmp``) in the same folder. A shard's
existence therefore means its task finished, and a writer killed halfway leaves only a
temporary file, which nothing reads (:func:`finished_ids` and :func:`read_shard` look at
``*.jsonl`` only). A failed task leaves ``results/failures/<task-id>.json`` with its error
instead, removed when a later run finishes the task.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nnbound.errors import InputError

SHARD_SUFFIX = ".jsonl"


def shard_dir(results: Path) -> Path:
    return results / "shards"


def failure_dir(results: Path) -> Path:
    return results / "failures"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename
    (atomic on POSIX and Windows): ``path`` is either absent or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _line(record: dict[str, Any]) -> str:
    # NaN/inf (no certificate, no attack example found) round-trip through Python's json.
    return json.dumps(record, sort_keys=True, allow_nan=True)


def write_shard(results: Path, task_id: str, records: Iterable[dict[str, Any]]) -> Path:
    """The shard of ``task_id`` (atomic); clears a failure note of the same task."""
    path = shard_dir(results) / f"{task_id}{SHARD_SUFFIX}"
    write_atomic(path, "".join(_line(r) + "\n" for r in records))
    with contextlib.suppress(FileNotFoundError):
        (failure_dir(results) / f"{task_id}.json").unlink()
    return path


def write_failure(results: Path, task_id: str, error: str, worker: str) -> Path:
    path = failure_dir(results) / f"{task_id}.json"
    write_atomic(path, json.dumps({"task_id": task_id, "error": error, "worker": worker}) + "\n")
    return path


def finished_ids(results: Path) -> set[str]:
    """Ids of the tasks with a shard (temporary files are not shards)."""
    d = shard_dir(results)
    if not d.is_dir():
        return set()
    return {
        p.name[: -len(SHARD_SUFFIX)]
        for p in d.iterdir()
        if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith(".")
    }


def read_shard(results: Path, task_id: str) -> list[dict[str, Any]]:
    """The records of a finished task; InputError naming the file if it is not valid JSON
    lines (a shard nnbound did not write)."""
    path = shard_dir(results) / f"{task_id}{SHARD_SUFFIX}"
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{path}:{n}: not a JSON record ({exc.msg}); delete the file to rerun its task"
                ) from None
            if not isinstance(rec, dict) or rec.get("task_id") != task_id:
                raise InputError(
                    f"{path}:{n}: a record of another task; delete the file to rerun its task"
                )
            out.append(rec)
    return out


def read_failures(results: Path) -> dict[str, str]:
    """task id -> error of every failure note."""
    d = failure_dir(results)
    if not d.is_dir():
        return {}
    out = {}
    for p in sorted(d.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            note = json.loads(p.read_text(encoding="utf-8"))
            out[str(note["task_id"])] = str(note["error"])
        except (json.JSONDecodeError, KeyError, TypeError):
            out[p.stem] = "unreadable failure note"
    return out


__all__ = [
    "failure_dir",
    "finished_ids",
    "read_failures",
    "read_shard",
    "shard_dir",
    "write_atomic",
    "write_failure",
    "write_shard",
]
