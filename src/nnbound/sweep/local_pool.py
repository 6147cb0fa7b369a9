"""Executors on this machine: in this process, or in a pool of worker processes.

The pool gets every model once per worker process (the initializer's arguments), not once per
task. At most ``workers`` tasks are submitted at a time, so a submitted task is a running one:
when a worker process dies (killed, out of memory) the pool breaks, every task then in flight
is charged one attempt and resubmitted to a fresh pool, and a task that has used up its retries
is reported as failed with the reason.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from nnbound.allocator import keep_freed_memory
from nnbound.sweep.execute import TaskPayload, TaskResult, run_on_worker
from nnbound.sweep.executors import Listener
from nnbound.sweep.models import Model

# This worker process's models by hash, set once by the pool's initializer.
_POOL_MODELS: dict[str, Model] = {}


def _init_worker(models: Mapping[str, Model]) -> None:
    keep_freed_memory()  # a worker process is nnbound's own, as the command's is
    _POOL_MODELS.update(models)


def _pool_run(payload: TaskPayload) -> TaskResult:
    return run_on_worker(payload, lambda: _POOL_MODELS[payload.task.model_sha256])


def _context() -> multiprocessing.context.BaseContext:
    """Where available a fork server that has imported nnbound and torch once: each worker
    (and each replacement after a death) is then forked from it in milliseconds instead of
    importing torch for seconds. The server itself never runs torch, so forking it is safe,
    unlike forking this process. Elsewhere (Windows, macOS default) fresh spawned processes."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["nnbound.sweep.local_pool"])
        return ctx
    return multiprocessing.get_context("spawn")


class InlineExecutor:
    """Every task in this process, one after the other."""

    def run(
        self, payloads: Sequence[TaskPayload], models: Mapping[str, Model], listener: Listener
    ) -> None:
        for p in payloads:
            listener.started(p.task.task_id)
            listener.finished(run_on_worker(p, lambda p=p: models[p.task.model_sha256]))


class LocalPoolExecutor:
    """A pool of ``workers`` processes, never forked from this process (whose torch thread
    pools may already run, which can deadlock a forked child): see :func:`_context`."""

    def __init__(self, workers: int, max_retries: int) -> None:
        self.workers = workers
        self.max_retries = max_retries

    def _pool(self, models: Mapping[str, Model]) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=_context(),
            initializer=_init_worker,
            initargs=(dict(models),),
        )

    def run(
        self, payloads: Sequence[TaskPayload], models: Mapping[str, Model], listener: Listener
    ) -> None:
        pending: deque[TaskPayload] = deque(payloads)
        attempts: Counter[str] = Counter()
        inflight: dict[Future[TaskResult], TaskPayload] = {}
        pool = self._pool(models)
        try:
            while pending or inflight:
                while pending and len(inflight) < self.workers:
                    p = pending.popleft()
                    try:
                        fut = pool.submit(_pool_run, p)
                    except BrokenProcessPool:
                        pending.appendleft(p)
                        break
                    inflight[fut] = p
                    listener.started(p.task.task_id)
                if not inflight:
                    pool = self._restart(pool, models)
                    continue
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    p = inflight.pop(fut)
                    try:
                        listener.finished(fut.result())
                    except BrokenProcessPool:
                        broken = True
                        self._charge(p, attempts, pending, listener)
                    except Exception as exc:  # the payload could not reach the worker
                        listener.finished(
                            TaskResult(
                                p.task.task_id,
                                error=f"{type(exc).__name__}: {exc}",
                                num_images=p.task.num_images,
                            )
                        )
                if broken:
                    # A broken pool fails every future still in flight: those tasks ran on
                    # the same pool and are charged and resubmitted as well.
                    for p in inflight.values():
                        self._charge(p, attempts, pending, listener)
                    inflight.clear()
                    pool = self._restart(pool, models)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _restart(
        self, pool: ProcessPoolExecutor, models: Mapping[str, Model]
    ) -> ProcessPoolExecutor:
        pool.shutdown(wait=True, cancel_futures=True)
        return self._pool(models)

    def _charge(
        self,
        p: TaskPayload,
        attempts: Counter[str],
        pending: deque[TaskPayload],
        listener: Listener,
    ) -> None:
        tid = p.task.task_id
        attempts[tid] += 1
        if attempts[tid] > self.max_retries:
            listener.finished(
                TaskResult(
                    tid,
                    error=f"its worker process died {attempts[tid]} times (killed, or out of "
                    "memory); not retried again",
                    num_images=p.task.num_images,
                )
            )
            return
        listener.retried(tid, "worker process died")
        pending.appendleft(p)


__all__ = ["InlineExecutor", "LocalPoolExecutor"]
