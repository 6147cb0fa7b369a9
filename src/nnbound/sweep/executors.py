"""How a sweep's tasks are executed: the choice (parsed once from the command line) and the
interface every executor implements.

* ``inline``: one after the other in this process (the reference for the others);
* ``local``: a pool of worker processes on this machine (the default);
* ``ray``: tasks on a Ray cluster (``--ray auto`` joins a running one, ``--ray ADDRESS`` a
  given head, ``--ray local`` starts a private one on this machine).

All three call :func:`nnbound.sweep.execute.run_on_worker` on each task and hand its
:class:`~nnbound.sweep.execute.TaskResult` to the driver, which alone writes shards: the
results folder need not be shared with the workers, and a task is written once however many
times a dead worker made it run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from nnbound.errors import InputError
from nnbound.sweep.execute import TaskPayload, TaskResult
from nnbound.sweep.models import Model

ExecutorKind = Literal["inline", "local", "ray"]
DEFAULT_MAX_RETRIES = 3


class Listener(Protocol):
    """What an executor reports to the driver."""

    def started(self, task_id: str) -> None: ...

    def finished(self, result: TaskResult) -> None: ...

    def retried(self, task_id: str, reason: str) -> None: ...


class Executor(Protocol):
    def run(
        self, payloads: Sequence[TaskPayload], models: Mapping[str, Model], listener: Listener
    ) -> None:
        """Run every payload (its model is ``models[payload.task.model_sha256]``) and call
        ``listener.finished`` once per payload, with its records or its error."""
        ...


@dataclass(frozen=True)
class ExecutorChoice:
    """``kind``; ``workers`` (local pool size, or CPUs of a private Ray instance);
    ``ray_address`` (``auto``, ``local`` or ``host:port``); ``max_retries`` (re-runs of a task
    whose worker died); ``gpus_per_task`` (Ray: GPUs each task reserves)."""

    kind: ExecutorKind
    workers: int
    ray_address: str | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    gpus_per_task: float = 0.0

    def describe(self) -> str:
        if self.kind == "inline":
            return "in this process"
        if self.kind == "local":
            return f"{self.workers} local worker process(es)"
        return f"Ray ({self.ray_address})"


def parse_executor(
    ray: str | None,
    workers: int | None,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    gpus_per_task: float = 0.0,
) -> ExecutorChoice:
    """The executor from ``--ray`` / ``--workers`` (``--workers 0``: in this process)."""
    if workers is not None and (isinstance(workers, bool) or workers < 0):
        raise InputError(f"--workers must be >= 0, got {workers}")
    if max_retries < 0:
        raise InputError(f"--max-retries must be >= 0, got {max_retries}")
    if not gpus_per_task >= 0:
        raise InputError(f"--gpus-per-task must be >= 0, got {gpus_per_task}")
    default_workers = max(1, min(os.cpu_count() or 1, 8))
    if ray is not None:
        address = ray.strip()
        if not address:
            raise InputError("--ray needs auto, local or a head address host:port")
        return ExecutorChoice(
            "ray", workers or default_workers, address, max_retries, gpus_per_task
        )
    if gpus_per_task:
        raise InputError("--gpus-per-task applies to --ray only")
    if workers == 0:
        return ExecutorChoice("inline", 0, None, max_retries)
    return ExecutorChoice("local", workers or default_workers, None, max_retries)


def make_executor(choice: ExecutorChoice) -> Executor:
    if choice.kind == "inline":
        from nnbound.sweep.local_pool import InlineExecutor

        return InlineExecutor()
    if choice.kind == "local":
        from nnbound.sweep.local_pool import LocalPoolExecutor

        return LocalPoolExecutor(choice.workers, choice.max_retries)
    from nnbound.sweep.ray_cluster import RayExecutor

    return RayExecutor(
        choice.ray_address or "auto", choice.workers, choice.max_retries, choice.gpus_per_task
    )


__all__ = [
    "DEFAULT_MAX_RETRIES",
    "Executor",
    "ExecutorChoice",
    "Listener",
    "make_executor",
    "parse_executor",
]
