"""The Ray executor: the same task function on a Ray cluster (``pip install 'nnbound[cluster]'``).

Each model is put into Ray's object store once; tasks carry a reference to it inside a list
(a bare reference argument would be fetched and deserialised for every task), and a worker
fetches it on its first task and keeps it (:data:`~nnbound.sweep.execute.WORKER_MODELS`).
A task whose worker process or node dies is retried by Ray (``max_retries``); an error raised
by the task itself is returned as data and not retried (it would fail again).

Every node needs nnbound (and the plan's model files are read by the driver only: models
travel through the object store, images inside the tasks).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from nnbound.errors import InputError, UnsupportedError
from nnbound.sweep.execute import TaskPayload, TaskResult, run_on_worker
from nnbound.sweep.executors import Listener
from nnbound.sweep.models import Model


def _import_ray() -> Any:
    # Ray's progress bars otherwise replace builtins.print in this whole process.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    try:
        import ray
    except ImportError:
        raise UnsupportedError(
            "--ray needs Ray: pip install 'nnbound[cluster]' (or run without --ray: local "
            "worker processes)"
        ) from None
    return ray


def _ray_task(payload: TaskPayload, boxed_model: list[Any]) -> TaskResult:
    import ray

    return run_on_worker(payload, lambda: ray.get(boxed_model[0]))


class RayExecutor:
    """Tasks on Ray: ``address`` is ``auto`` (the running cluster this machine belongs to),
    ``local`` (a private instance with ``workers`` CPUs, stopped afterwards) or a head's
    ``host:port``. A Ray already initialised in this process is used as it is."""

    def __init__(
        self, address: str, workers: int, max_retries: int, gpus_per_task: float = 0.0
    ) -> None:
        self.address = address
        self.workers = workers
        self.max_retries = max_retries
        self.gpus_per_task = gpus_per_task

    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless it already is; True when this call started it."""
        if ray.is_initialized():
            return False
        try:
            # Ray's INFO lines would interleave with the progress line; warnings still show.
            quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
            if self.address == "local":
                ray.init(num_cpus=self.workers, include_dashboard=False, **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(
                f"cannot reach a Ray cluster at {self.address!r} ({exc}); start one with "
                "`ray start --head`, or use --ray local"
            ) from None
        return True

    def run(
        self, payloads: Sequence[TaskPayload], models: Mapping[str, Model], listener: Listener
    ) -> None:
        ray = _import_ray()
        started_here = self._connect(ray)
        try:
            refs = {sha: ray.put(net) for sha, net in models.items()}
            remote = ray.remote(_ray_task).options(
                max_retries=self.max_retries,
                retry_exceptions=False,
                num_cpus=1,
                num_gpus=self.gpus_per_task,
            )
            futures: dict[Any, TaskPayload] = {}
            for p in payloads:
                futures[remote.remote(p, [refs[p.task.model_sha256]])] = p
                listener.started(p.task.task_id)
            try:
                self._collect(ray, futures, listener)
            except BaseException:
                # Interrupted (Ctrl-C): do not leave the rest of the grid running on the
                # cluster; finished tasks are already written.
                for ref in futures:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
        finally:
            if started_here:
                ray.shutdown()

    def _collect(self, ray: Any, futures: dict[Any, TaskPayload], listener: Listener) -> None:
        """Hand each result to ``listener`` as it arrives."""
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1)
            for ref in done:
                p = futures.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    # Retries used up (worker or node lost each time), or cancelled.
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    result = TaskResult(
                        p.task.task_id,
                        error=f"{type(exc).__name__}: {first} (after {self.max_retries} retries)",
                        num_images=p.task.num_images,
                    )
                listener.finished(result)


__all__ = ["RayExecutor"]
