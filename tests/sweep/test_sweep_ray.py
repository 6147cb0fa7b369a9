"""The sweep on Ray (a local instance started once for this module): the same records as the
single-process run, and a Ray worker killed by PID mid-task loses nothing (Ray retries it).
Skipped when Ray is not installed (``pip install -e '.[cluster]'``)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sweep_grid import comparable, grid_plan

from nnbound.sweep.execute import TaskResult
from nnbound.sweep.executors import parse_executor
from nnbound.sweep.run import run_sweep

# Without this, Ray's progress bars replace builtins.print in the whole test process (a later
# test that pickles print would record Ray's function); nnbound's executor sets it too.
os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    # One Ray start for every test here (it costs seconds); the executor uses an initialised
    # Ray as it is and leaves it running.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _running_task_pids() -> list[int]:
    """PIDs of Ray workers executing a sweep task: Ray titles a worker process
    ``ray::<function>`` while it runs that function (``ray::IDLE`` otherwise)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if cmd.startswith(b"ray::_ray_task"):
            pids.append(int(entry))
    return pids


def test_ray_equals_single_process(
    ray_instance: None, tmp_path: Path, second_model: Path, reference_records: dict[Any, Any]
) -> None:
    plan = grid_plan(tmp_path, second_model)
    summary = run_sweep(plan, parse_executor("auto", None), quiet=True)
    assert not summary.failed and len(summary.executed) == 8
    assert comparable(plan.results / "records.jsonl") == reference_records


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_ray_worker_killed_mid_task_is_retried(
    ray_instance: None, tmp_path: Path, second_model: Path, reference_records: dict[Any, Any]
) -> None:
    # Slower tasks (more PGD steps and a new task id) so that a task is surely in flight.
    plan = grid_plan(
        tmp_path,
        second_model,
        methods={"crown": {"steps": 10}, "pgd": {"pgd_steps": 60, "pgd_search_steps": 6}},
    )
    killed: list[int] = []

    class KillOnce:
        def started(self, task_id: str) -> None: ...

        def retried(self, task_id: str, reason: str) -> None: ...

        def finished(self, result: TaskResult) -> None:
            if killed:
                return
            deadline = time.monotonic() + 10
            while not killed and time.monotonic() < deadline:
                pids = _running_task_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                else:
                    time.sleep(0.02)

    summary = run_sweep(plan, parse_executor("auto", None), quiet=True, observer=KillOnce())
    assert killed, "no running Ray task found to kill"
    assert not summary.failed and len(summary.executed) == 8
    records = comparable(plan.results / "records.jsonl")
    assert len(records) == 80
    crown = {k: v for k, v in records.items() if k[1] == "crown"}
    assert crown == {k: v for k, v in reference_records.items() if k[1] == "crown"}
    again = run_sweep(plan, parse_executor("auto", None), quiet=True)
    assert again.skipped == 8 and again.executed == []
