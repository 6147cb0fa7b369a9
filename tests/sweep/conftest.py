"""Fixtures of the sweep tests: the second model and the grid's records computed once in this
process, the reference every executor must reproduce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sweep_grid import comparable, grid_plan, perturbed_model

from nnbound.sweep.executors import parse_executor
from nnbound.sweep.run import run_sweep


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return perturbed_model(tmp_path_factory.mktemp("models") / "fc3-perturbed.safetensors")


@pytest.fixture(scope="session")
def reference_records(
    tmp_path_factory: pytest.TempPathFactory, second_model: Path
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The grid run task after task in this process (``--workers 0``)."""
    tmp = tmp_path_factory.mktemp("reference")
    plan = grid_plan(tmp, second_model)
    summary = run_sweep(plan, parse_executor(None, 0), quiet=True)
    assert not summary.failed and len(summary.executed) == 8
    assert summary.merge is not None and not summary.merge.bugs
    return comparable(plan.results / "records.jsonl")
