"""Sweep throughput: images per second per method with 1 and 2 local workers (and Ray), the
overhead per task, and an estimate for 10,000 MNIST images x (CROWN + CLEVER) on a cluster.

Workload: the built-in ``mnist-fc-3layer`` on the built-in MNIST test images, L_inf,
untargeted, the sweep's default settings (CROWN: binary search from eps 0.005, 15 steps;
CLEVER: 128 samples x 40 batches per target, 9 targets per image). Each configuration runs
in a fresh results folder (nothing reused), so its wall clock includes starting the workers.

Rows:

* ``throughput``: per executor and method, wall-clock seconds for ``--images`` images and
  images per second;
* ``overhead``: per executor, a plan of ``--tiny-tasks`` one-image IBP tasks (a few ms of
  work each) against a plan of one such task: the start-up (one-task wall clock less its
  work) and the marginal cost of each further task (shipping, scheduling, shard, merge):
  ``((wall_n - work_n / workers) - (wall_1 - work_1)) / (n - 1)``.

The estimate multiplies the measured single-worker cost per image of each method by 10,000
images and divides by 16 workers; a GPU's speed-up over one CPU core is NOT measured here
(the run machine has none), so the figure is the time if each of the 16 GPU workers only
matched one core of this machine -- an upper bound for well-batched GPU work.

Usage: python bench/bench_sweep.py [--images 12] [--chunk 3] [--workers 1,2] [--ray]
       [--tiny-tasks 24]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nnbound.report.tables import render_table
from nnbound.sweep.executors import ExecutorChoice, parse_executor
from nnbound.sweep.plan import plan_from_dict
from nnbound.sweep.run import run_sweep


class TaskSeconds:
    """Observer summing the seconds tasks report (their compute time)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def started(self, task_id: str) -> None: ...

    def retried(self, task_id: str, reason: str) -> None: ...

    def finished(self, result: Any) -> None:
        self.seconds += result.seconds


def _plan(root: Path, methods: dict[str, dict[str, Any]], count: int, chunk: int) -> Any:
    return plan_from_dict(
        {
            "results": "results",
            "models": ["mnist-fc-3layer"],
            "norms": ["inf"],
            "targets": ["untargeted"],
            "device": "cpu",
            "report": False,
            "data": {"dataset": "mnist100", "start": 0, "count": count, "chunk": chunk},
            "methods": methods,
        },
        root,
    )


def _run(
    choice: ExecutorChoice, methods: dict[str, dict[str, Any]], count: int, chunk: int
) -> tuple[float, float, int]:
    """(wall seconds, summed task seconds, tasks) of one fresh sweep."""
    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(Path(tmp), methods, count, chunk)
        obs = TaskSeconds()
        t0 = time.perf_counter()
        summary = run_sweep(plan, choice, quiet=True, observer=obs, merge=True)
        wall = time.perf_counter() - t0
        if summary.failed:
            raise SystemExit(f"tasks failed: {summary.failed}")
        return wall, obs.seconds, len(summary.executed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ray", action="store_true", help="also a private Ray instance")
    ap.add_argument("--tiny-tasks", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(1)
    choices = [parse_executor(None, int(w)) for w in args.workers.split(",")]
    if args.ray:
        choices.append(parse_executor("local", max(int(w) for w in args.workers.split(","))))
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch "
        f"{torch.__version__}, {args.images} MNIST images, chunk {args.chunk}"
    )
    rows = []
    per_image: dict[str, float] = {}
    for choice in choices:
        for method in ("crown", "clever"):
            wall, task_s, n = _run(choice, {method: {}}, args.images, args.chunk)
            rows.append(
                [choice.describe(), method, n, args.images, wall, args.images / wall, task_s]
            )
            if choice.kind == "local" and choice.workers == 1:
                per_image[method] = task_s / args.images
            print(f"  {choice.describe()}, {method}: {wall:.1f} s", flush=True)
    print()
    print(
        render_table(
            ["executor", "method", "tasks", "images", "wall s", "images/s", "task s"], rows, 4
        )
    )
    over_rows = []
    for choice in [parse_executor(None, 0), *choices]:
        tiny = {"ibp": {"steps": 1}}
        wall1, task1, _ = _run(choice, tiny, 1, 1)
        wall, task_s, n = _run(choice, tiny, args.tiny_tasks, 1)
        workers = max(1, choice.workers)
        # Marginal cost of one more task: the n-task sweep minus the one-task sweep (which
        # carries the start-up), less the work itself spread over the workers.
        per_task = ((wall - task_s / workers) - (wall1 - task1)) / (n - 1)
        over_rows.append([choice.describe(), n, wall, per_task, wall1 - task1])
    print()
    print(
        render_table(
            ["executor", "tiny tasks", "wall s", "overhead s/task", "start-up s"], over_rows, 4
        )
    )
    if {"crown", "clever"} <= per_image.keys():
        c, k = per_image["crown"], per_image["clever"]
        total = 10_000 * (c + k)
        print()
        print(
            f"estimate: 10,000 MNIST images x (CROWN {c:.3f} s + CLEVER {k:.3f} s per image on "
            f"one worker) = {total / 3600:.2f} worker-hours; on 16 workers "
            f"{total / 16 / 60:.1f} min if each GPU worker only matched one CPU core here"
        )


if __name__ == "__main__":
    main()
