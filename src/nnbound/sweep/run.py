"""The sweep task: load the plan's models and images once, run every task that has no shard
yet on the chosen executor, write each result as it arrives, then merge.

Rerunning the same plan is idempotent: a task with a shard is skipped (its id covers
everything that determines its numbers), a task without one runs, including one that failed or
whose worker died last time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.sweep.execute import TaskPayload, TaskResult
from nnbound.sweep.executors import ExecutorChoice, Listener, make_executor
from nnbound.sweep.grid import SweepTask, split_plan
from nnbound.sweep.merge import MergeResult, merge_results
from nnbound.sweep.models import SweepModel, load_sweep_models
from nnbound.sweep.plan import SweepPlan, plan_summary
from nnbound.sweep.progress import SweepProgress
from nnbound.sweep.shards import finished_ids, write_atomic, write_failure, write_shard


@dataclass
class SweepSummary:
    """What a run did: tasks in the plan, skipped as finished before, executed now (ids),
    failed (id -> error), the merge, wall-clock seconds and images per second of the tasks
    run now."""

    tasks: int
    skipped: int
    executed: list[str]
    failed: dict[str, str]
    retries: int
    seconds: float
    images_per_second: float
    executor: str
    merge: MergeResult | None = None
    notes: list[str] = field(default_factory=list)


def _load_images(plan: SweepPlan, models: list[SweepModel]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per model hash: the plan's images (scaled to that model's data range) and labels."""
    from nnbound.data.registry import load_dataset

    d = plan.data
    by_range: dict[tuple[float, float], tuple[Tensor, Tensor]] = {}
    out = {}
    for m in models:
        rng = m.net.input_range
        assert rng is not None  # load_sweep_model refuses models without one
        key = (float(rng[0]), float(rng[1]))
        if key not in by_range:
            ds = load_dataset(d.dataset, split="test", input_range=key, data_dir=d.data_dir)
            if d.start + d.count > len(ds):
                raise InputError(
                    f"[data] images {d.start}..{d.start + d.count - 1} requested but "
                    f"{d.dataset} has {len(ds)} test images"
                )
            sl = slice(d.start, d.start + d.count)
            by_range[key] = (ds.images[sl].contiguous(), ds.labels[sl].contiguous())
        x, y = by_range[key]
        if math.prod(x.shape[1:]) != math.prod(m.net.input_shape):
            raise InputError(
                f"{m.entry} expects inputs of shape {tuple(m.net.input_shape)}; {d.dataset} "
                f"images are {tuple(x.shape[1:])}"
            )
        out[m.sha256] = (x.reshape(x.shape[0], *m.net.input_shape), y)
    return out


def build_payloads(
    plan: SweepPlan, models: list[SweepModel], tasks: list[SweepTask]
) -> list[TaskPayload]:
    images = _load_images(plan, models)
    entries = {m.sha256: m.entry for m in models}
    out = []
    for t in tasks:
        x, y = images[t.model_sha256]
        lo, hi = t.start - plan.data.start, t.stop - plan.data.start
        out.append(
            TaskPayload(
                task=t,
                x=x[lo:hi].clone(),
                labels=y[lo:hi].clone(),
                dataset=plan.data.dataset,
                model_entry=entries[t.model_sha256],
                device=plan.device,
                dtype=plan.dtype,
                seed=plan.seed,
                threads=plan.threads,
            )
        )
    return out


class _Recorder:
    """The listener the driver gives the executor: writes each result as it arrives (a shard,
    or a failure note) and forwards the events to the progress line and ``observer``."""

    def __init__(self, results: Path, progress: SweepProgress, observer: Listener | None) -> None:
        self.results = results
        self.progress = progress
        self.observer = observer
        self.executed: list[str] = []
        self.failed: dict[str, str] = {}
        self.retries = 0

    def started(self, task_id: str) -> None:
        self.progress.started(task_id)
        if self.observer is not None:
            self.observer.started(task_id)

    def finished(self, result: TaskResult) -> None:
        if result.error is None:
            write_shard(self.results, result.task_id, result.records)
            self.executed.append(result.task_id)
        else:
            write_failure(self.results, result.task_id, result.error, result.worker)
            self.failed[result.task_id] = result.error
        self.progress.finished(result)
        if self.observer is not None:
            self.observer.finished(result)

    def retried(self, task_id: str, reason: str) -> None:
        self.retries += 1
        self.progress.retried(task_id, reason)
        if self.observer is not None:
            self.observer.retried(task_id, reason)


def plan_tasks(plan: SweepPlan) -> tuple[list[SweepModel], list[SweepTask]]:
    """The plan's models (loaded, each method checked against each model) and tasks."""
    models = load_sweep_models(plan.models)
    check_methods(plan, models)
    return models, split_plan(plan, models)


def check_methods(plan: SweepPlan, models: list[SweepModel]) -> None:
    """Refuse, before any task runs, a method a model cannot take (e.g. ``crown`` on a tanh
    network, ``recurjac`` on a CNN): that is an error in the plan, not a task failure."""
    from nnbound.errors import NnboundError
    from nnbound.tasks.evaluate import parse_methods

    for m in models:
        for method in plan.methods:
            try:
                parse_methods([method.name], m.net)
            except NnboundError as exc:
                raise type(exc)(f"{m.entry}: {exc}") from None


def check_device(plan: SweepPlan, executor: ExecutorChoice) -> None:
    """On this machine (not Ray, whose workers may have GPUs the driver lacks) a CUDA device
    must exist before any task is started."""
    if executor.kind != "ray" and plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device = {plan.device!r} but CUDA is not available on this machine")


def run_sweep(
    plan: SweepPlan,
    executor: ExecutorChoice,
    *,
    max_tasks: int | None = None,
    merge: bool = True,
    quiet: bool = False,
    observer: Listener | None = None,
    progress_stream: Any = None,
) -> SweepSummary:
    """Run the plan's unfinished tasks (at most ``max_tasks`` of them) and merge.

    Args:
        plan: the parsed plan.
        executor: where tasks run (:func:`~nnbound.sweep.executors.parse_executor`).
        max_tasks: run only this many of the unfinished tasks (a trial run; rerun for more).
        merge: write ``records.jsonl`` / ``records.csv`` / the report afterwards.
        quiet: no progress on stderr.
        observer: also told of every task start, result and retry.
        progress_stream: where the progress line goes (default stderr).
    """
    if max_tasks is not None and max_tasks < 0:
        raise InputError(f"--max-tasks must be >= 0, got {max_tasks}")
    check_device(plan, executor)
    t0 = time.perf_counter()
    models, tasks = plan_tasks(plan)
    results = plan.results
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(
        results / "plan.json",
        json.dumps(
            {**plan_summary(plan), "tasks": [t.task_id for t in tasks]}, indent=1, allow_nan=True
        )
        + "\n",
    )
    done = finished_ids(results)
    todo = [t for t in tasks if t.task_id not in done]
    if max_tasks is not None:
        todo = todo[:max_tasks]
    progress = SweepProgress(len(todo), stream=progress_stream, quiet=quiet)
    recorder = _Recorder(results, progress, observer)
    if todo:
        payloads = build_payloads(plan, models, todo)
        nets: Mapping[str, Any] = {m.sha256: m.net for m in models}
        try:
            make_executor(executor).run(payloads, nets, recorder)
        finally:
            progress.close()
    summary = SweepSummary(
        tasks=len(tasks),
        skipped=len(tasks) - len([t for t in tasks if t.task_id not in done]),
        executed=recorder.executed,
        failed=recorder.failed,
        retries=recorder.retries,
        seconds=time.perf_counter() - t0,
        images_per_second=progress.images_per_second,
        executor=executor.describe(),
    )
    if merge:
        summary.merge = merge_results(results, tasks, report=plan.report)
        if summary.merge.report_note:
            summary.notes.append(summary.merge.report_note)
    return summary


__all__ = [
    "SweepSummary",
    "build_payloads",
    "check_device",
    "check_methods",
    "plan_tasks",
    "run_sweep",
]
