"""Running one sweep task: the single code path every executor calls (in this process, in a
local worker process, or in a Ray worker), so all of them produce the same records.

The numbers come from :func:`nnbound.tasks.evaluate.evaluate` (one method per call); this
module only selects each image's target, turns the result into flat records and reports an
error as data instead of raising it, so that one bad task is listed and the sweep goes on.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from nnbound.sets.norms import norm_name
from nnbound.sweep.grid import SweepTask
from nnbound.sweep.models import Model
from nnbound.sweep.plan import relevant_settings

STATUS_OK = "ok"
STATUS_MISCLASSIFIED = "misclassified"
STATUS_LABEL_IS_TARGET = "label_is_target"
"""Record statuses: evaluated; the model gets the image wrong (no sandwich); the target class
is the image's own label (a numeric target type)."""


@dataclass(frozen=True, eq=False)
class TaskPayload:
    """What a worker needs besides the model: the task, its images and how to run it."""

    task: SweepTask
    x: Tensor
    labels: Tensor
    dataset: str
    model_entry: str
    device: str
    dtype: str
    seed: int
    threads: int


@dataclass(frozen=True)
class TaskResult:
    """A task's records, or the error that stopped it (then ``records`` is empty)."""

    task_id: str
    records: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""
    num_images: int = 0


@dataclass
class _WorkerModels:
    """Models already on this worker's device, by (hash, device, dtype): a worker process
    receives and moves a model once, however many of its tasks it runs."""

    nets: dict[tuple[str, str, str], Model] = field(default_factory=dict)

    def get(self, key: tuple[str, str, str], fetch: Callable[[], Model]) -> Model:
        if key not in self.nets:
            _, device, dtype = key
            dt = torch.float64 if dtype == "float64" else torch.float32
            self.nets[key] = fetch().to(device=device, dtype=dt)
        return self.nets[key]


WORKER_MODELS = _WorkerModels()


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` where this worker has a GPU, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from nnbound.errors import InputError

        raise InputError(f"device {name} requested but this worker has no CUDA device")
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _target_of(logits: Tensor, label: int, target: str, seed: int) -> tuple[str, int]:
    """(status, target class or -1) for one image. Random targets draw from ``seed`` (the
    plan's seed plus the image index), so they do not depend on how images are chunked."""
    from nnbound.tasks.targets import select_targets

    if int(logits.argmax()) != label:
        return STATUS_MISCLASSIFIED, -1
    sel = select_targets(
        logits[None], torch.tensor([label]), target, num_images=1, start=0, seed=seed
    )
    if len(sel.indices) == 0:
        return STATUS_LABEL_IS_TARGET, -1
    return STATUS_OK, int(sel.targets[0])


def run_task(payload: TaskPayload, net: Model) -> TaskResult:
    """Evaluate ``payload``'s method on its images with ``net`` (already on the payload's
    device and dtype); an exception becomes ``TaskResult.error``."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    task = payload.task
    threads = torch.get_num_threads()
    try:
        # Fixed per task, not per machine: the same thread count everywhere keeps results
        # equal across executors, and many processes sharing cores are slower with more.
        torch.set_num_threads(payload.threads)
        records = _records(payload, net)
    except Exception as exc:  # reported with the task, not raised: the sweep goes on
        from nnbound.errors import NnboundError

        if isinstance(exc, NnboundError):
            error = f"{type(exc).__name__}: {exc}"
        else:
            tb = traceback.format_exc(limit=-3).strip().splitlines()
            error = f"{type(exc).__name__}: {exc} ({' | '.join(t.strip() for t in tb[-4:])})"
        return TaskResult(
            task.task_id,
            error=error,
            seconds=time.perf_counter() - t0,
            worker=worker,
            num_images=task.num_images,
        )
    finally:
        torch.set_num_threads(threads)  # the inline executor runs in the caller's process
    return TaskResult(
        task.task_id,
        records=tuple(records),
        seconds=time.perf_counter() - t0,
        worker=worker,
        num_images=task.num_images,
    )


def run_on_worker(payload: TaskPayload, fetch: Callable[[], Model]) -> TaskResult:
    """What every executor's worker runs: the payload's model from this worker's cache
    (``fetch`` gives it on first use), then :func:`run_task`."""
    task = payload.task
    try:
        device = resolve_device(payload.device)
        net = WORKER_MODELS.get((task.model_sha256, device, payload.dtype), fetch)
    except Exception as exc:  # e.g. no GPU on this worker: reported with the task
        return TaskResult(
            task.task_id,
            error=f"{type(exc).__name__}: {exc}",
            worker=f"{socket.gethostname()}:{os.getpid()}",
            num_images=task.num_images,
        )
    return run_task(payload, net)


def _records(payload: TaskPayload, net: Model) -> list[dict[str, Any]]:
    from nnbound.report.provenance import provenance
    from nnbound.tasks.evaluate import evaluate, method_kind

    task = payload.task
    method = task.method
    x = payload.x.to(device=net.device, dtype=net.dtype)
    with torch.no_grad():
        logits = net(x).to(torch.float64).cpu()
    indices = list(range(task.start, task.stop))
    chosen: list[int] = []
    status: list[str] = []
    targets: list[int] = []
    for i, index in enumerate(indices):
        st, t = _target_of(logits[i], int(payload.labels[i]), task.target, payload.seed + index)
        status.append(st)
        targets.append(t)
        if st == STATUS_OK:
            chosen.append(i)
    values: dict[int, tuple[float, float, float]] = {}
    if chosen:
        sel = torch.tensor(chosen)
        ev = evaluate(
            net,
            x[sel],
            payload.labels[sel],
            torch.tensor([targets[i] for i in chosen]),
            norm=task.norm,
            methods=[method.name],
            indices=[indices[i] for i in chosen],
            settings=method.settings,
        )
        for i, r in zip(chosen, ev.records, strict=True):
            values[i] = (ev.values_of(r, method.name), r.margin, r.seconds.get(method.name, 0.0))
    prov = provenance(device=net.device, dtype=net.dtype, seed=payload.seed)
    common = {
        "task_id": task.task_id,
        "model": task.model_label,
        "model_entry": payload.model_entry,
        "model_sha256": task.model_sha256,
        "dataset": payload.dataset,
        "method": method.name,
        "kind": method_kind(method.name),
        "norm": norm_name(task.norm),
        "targettype": task.target,
        "settings": relevant_settings(method.name, method.settings),
        **prov,
        "finished_at": _now(),
    }
    out = []
    for i, index in enumerate(indices):
        value, margin, seconds = values.get(i, (math.nan, math.nan, 0.0))
        out.append(
            {
                **common,
                "image": index,
                "label": int(payload.labels[i]),
                "target": targets[i],
                "status": status[i],
                "value": value,
                "margin": margin,
                "seconds": seconds,
            }
        )
    return out


__all__ = [
    "STATUS_LABEL_IS_TARGET",
    "STATUS_MISCLASSIFIED",
    "STATUS_OK",
    "WORKER_MODELS",
    "TaskPayload",
    "TaskResult",
    "resolve_device",
    "run_on_worker",
    "run_task",
]
