"""The sweep in this process and in a local worker pool: equal records, every task once,
nothing lost when a worker process is killed mid-run, resumed runs skip finished tasks."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from sweep_grid import comparable, grid_plan

from nnbound.errors import InputError, UnsupportedError
from nnbound.sweep.execute import TaskResult
from nnbound.sweep.executors import parse_executor
from nnbound.sweep.run import run_sweep
from nnbound.sweep.shards import finished_ids, read_failures, shard_dir


class Observer:
    """Counts task starts, results and retries."""

    def __init__(self) -> None:
        self.started_ids: list[str] = []
        self.results: list[TaskResult] = []
        self.retries: list[str] = []

    def started(self, task_id: str) -> None:
        self.started_ids.append(task_id)

    def finished(self, result: TaskResult) -> None:
        self.results.append(result)

    def retried(self, task_id: str, reason: str) -> None:
        self.retries.append(task_id)


def test_reference_grid_is_sound_and_complete(reference_records: dict[Any, Any]) -> None:
    # 2 models x 20 images x 2 methods, one record each; every evaluated image has its CROWN
    # radius below its PGD distance (sound certificate vs a real adversarial example).
    assert len(reference_records) == 80
    statuses = {r["status"] for r in reference_records.values()}
    assert statuses <= {"ok", "misclassified"} and "ok" in statuses
    by_image: dict[tuple[str, int], dict[str, float]] = {}
    for (model, method, image), r in reference_records.items():
        if r["status"] == "ok":
            by_image.setdefault((model, image), {})[method] = r["value"]
            assert r["model_sha256"] and r["nnbound_version"] and r["device"] == "cpu"
    assert len(by_image) >= 30
    for v in by_image.values():
        assert 0 < v["crown"] <= v["pgd"] < math.inf
    models = {k[0] for k in reference_records}
    assert len(models) == 2


def test_local_pool_equals_single_process(
    tmp_path: Path, second_model: Path, reference_records: dict[Any, Any]
) -> None:
    plan = grid_plan(tmp_path, second_model)
    summary = run_sweep(plan, parse_executor(None, 2), quiet=True)
    assert not summary.failed and len(summary.executed) == 8
    assert comparable(plan.results / "records.jsonl") == reference_records


def test_killed_worker_loses_nothing_and_rerun_does_nothing(
    tmp_path: Path, second_model: Path, reference_records: dict[Any, Any]
) -> None:
    plan = grid_plan(tmp_path, second_model)
    killed: list[int] = []

    class KillOnce(Observer):
        def finished(self, result: TaskResult) -> None:
            super().finished(result)
            if not killed:
                # The pool's worker processes are this process's children: kill one by PID
                # while the other task of the pair is still in flight.
                victim = multiprocessing.active_children()[0]
                assert victim.pid is not None
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)

    obs = KillOnce()
    summary = run_sweep(plan, parse_executor(None, 2), quiet=True, observer=obs)
    assert killed and summary.retries >= 1 and obs.retries
    assert not summary.failed
    assert sorted(summary.executed) == sorted(set(summary.executed))  # each shard written once
    assert len(summary.executed) == 8
    assert comparable(plan.results / "records.jsonl") == reference_records
    again = run_sweep(plan, parse_executor(None, 2), quiet=True, observer=(obs2 := Observer()))
    assert again.skipped == 8 and again.executed == [] and obs2.started_ids == []


def test_resumed_run_does_no_finished_task_twice(
    tmp_path: Path, second_model: Path, reference_records: dict[Any, Any]
) -> None:
    plan = grid_plan(tmp_path, second_model)
    first = run_sweep(plan, parse_executor(None, 0), quiet=True, max_tasks=3)
    assert len(first.executed) == 3 and first.merge is not None and len(first.merge.missing) == 5
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_dir(plan.results).iterdir()}
    obs = Observer()
    second = run_sweep(plan, parse_executor(None, 0), quiet=True, observer=obs)
    assert second.skipped == 3 and len(second.executed) == 5
    assert set(obs.started_ids).isdisjoint(first.executed)
    assert len(obs.started_ids) == 5
    for name, stamp in stamps.items():
        assert (shard_dir(plan.results) / name).stat().st_mtime_ns == stamp
    assert comparable(plan.results / "records.jsonl") == reference_records


def test_failed_tasks_are_listed_not_written_and_retried_by_a_rerun(
    tmp_path: Path, second_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nnbound.tasks.evaluate as evaluate_module

    real = evaluate_module.evaluate

    def pgd_breaks(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("methods") == ["pgd"]:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    # The inline executor runs tasks in this process, where the patch applies.
    monkeypatch.setattr(evaluate_module, "evaluate", pgd_breaks)
    plan = grid_plan(tmp_path, second_model, models=["mnist-fc-3layer"])
    summary = run_sweep(plan, parse_executor(None, 0), quiet=True)
    assert len(summary.failed) == 2 and len(summary.executed) == 2
    assert all("RuntimeError: injected failure" in e for e in summary.failed.values())
    assert all("__pgd__" in tid for tid in summary.failed)
    assert finished_ids(plan.results) == set(summary.executed)
    assert set(read_failures(plan.results)) == set(summary.failed)
    assert summary.merge is not None and len(summary.merge.records) == 20  # crown only
    monkeypatch.undo()
    again = run_sweep(plan, parse_executor(None, 0), quiet=True)
    assert sorted(again.executed) == sorted(summary.failed) and not again.failed
    assert read_failures(plan.results) == {}


def test_plan_errors_are_refused_before_any_task_runs(tmp_path: Path, second_model: Path) -> None:
    from nnbound.network.layers import Activation, Dense, Flatten
    from nnbound.network.native import save_network
    from nnbound.network.network import Network

    gen = torch.Generator().manual_seed(0)
    tanh_net = Network(
        (
            Flatten(),
            Dense(0.03 * torch.randn(16, 784, generator=gen), torch.zeros(16)),
            Activation("tanh"),
            Dense(torch.randn(10, 16, generator=gen), torch.zeros(10)),
        ),
        (1, 28, 28),
        input_range=(0.0, 1.0),
    )
    tanh_file = save_network(tanh_net, tmp_path / "tanh.safetensors")
    # CROWN-adaptive is defined for piecewise-linear activations only
    plan = grid_plan(tmp_path, second_model, methods=["crown"], models=[str(tanh_file)])
    with pytest.raises(UnsupportedError, match=r"tanh\.safetensors: .*use crown-general"):
        run_sweep(plan, parse_executor(None, 0), quiet=True)
    if not torch.cuda.is_available():
        plan = grid_plan(tmp_path, second_model, device="cuda")
        with pytest.raises(InputError, match="CUDA is not available"):
            run_sweep(plan, parse_executor(None, 2), quiet=True)
    assert not (tmp_path / "results" / "shards").exists()
