"""Work-tensor sizes per device (``nnbound.bounds.work_size``): cache-sized on a CPU, a share
of the free memory on a GPU. Bounds must not depend on them: a pass sliced into one
candidate at a time gives the same numbers as the default slices (a GPU's slices change
with the memory free when it runs)."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graph_factory import RandomChooser, random_graph, resnet_graph
from helpers import random_network
from nnbound.bounds import forward_linear, graph_bounds, methods
from nnbound.bounds import work_size as ws
from nnbound.bounds.api import bounds
from nnbound.bounds.centre_products import CentreProducts
from nnbound.jacobian import recurjac
from nnbound.jacobian.lipschitz import lipschitz_bounds
from nnbound.sets.lp_ball import LpBall

GiB = 1 << 30
SLICED_MODULES = (methods, graph_bounds, forward_linear, recurjac)
STRUCTURE_BLOCKS = ("residual", "concat", "slices", "linear_act")


def test_cpu_keeps_the_call_sites_size() -> None:
    assert ws.work_elements(torch.device("cpu"), torch.float32, 1 << 22) == 1 << 22


@pytest.mark.parametrize(
    ("free", "dtype", "expected"),
    [
        (64 * GiB, torch.float32, ws.GPU_MAX_ELEMENTS),  # capped
        (4 * GiB, torch.float32, (4 * GiB // 32) // 4),  # a 32nd of the free memory
        (4 * GiB, torch.float64, (4 * GiB // 32) // 8),
        (GiB // 64, torch.float32, 1 << 22),  # never below the CPU size
    ],
)
def test_gpu_size_follows_free_memory(monkeypatch, free, dtype, expected) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GiB))
    assert ws.work_elements(torch.device("cuda", 0), dtype, 1 << 22) == expected


def _one_at_a_time(monkeypatch) -> set[str]:
    """Every sliced pass takes one element at a time (so one row or candidate per slice);
    returns the set the modules whose sizes were asked for are added to."""
    asked: set[str] = set()
    for module in SLICED_MODULES:

        def one(device, dtype, cpu, name=module.__name__) -> int:  # type: ignore[no-untyped-def]
            asked.add(name)
            return 1

        monkeypatch.setattr(module, "work_elements", one)
    return asked


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.sampled_from([1.0, 2.0, math.inf]))
def test_graph_bounds_do_not_depend_on_the_slices(seed: int, p: float) -> None:
    rng = random.Random(seed)
    # Structure only: a product's relaxation (Mul, MatMul) picks its planes by comparing
    # bounds, and a 1e-16 change in them may pick other, equally sound planes.
    graph = random_graph(RandomChooser(rng), (6,), 3, seed=seed, only=STRUCTURE_BLOCKS)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ball = LpBall.make(x, 0.3, p)
    want = bounds(graph, ball, "crown-general")
    with pytest.MonkeyPatch.context() as mp:
        _one_at_a_time(mp)
        got = bounds(graph, ball, "crown-general")
    torch.testing.assert_close(got.lower, want.lower, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.upper, want.upper, rtol=1e-10, atol=1e-10)


def test_residual_network_bounds_do_not_depend_on_the_slices(monkeypatch) -> None:
    graph = resnet_graph((2, 4), 1, input_shape=(1, 6, 6), classes=3, seed=4)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ball = LpBall.make(x, 0.02, math.inf)
    want = bounds(graph, ball, "crown")
    asked = _one_at_a_time(monkeypatch)
    got = bounds(graph, ball, "crown")
    assert graph_bounds.__name__ in asked
    torch.testing.assert_close(got.lower, want.lower, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.upper, want.upper, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["crown-adaptive", "crown-general", "fastlin"])
def test_chain_bounds_and_centre_split_do_not_depend_on_the_slices(monkeypatch, method) -> None:
    net = random_network("relu", [8, 16, 12, 10, 4], seed=5)
    x = torch.rand(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 0.5
    ball = LpBall.make(x, 0.1, math.inf)
    want = methods.layerwise_bounds(net, ball, method, centre_cache=CentreProducts())
    asked = _one_at_a_time(monkeypatch)
    got = methods.layerwise_bounds(net, ball, method, centre_cache=CentreProducts())
    assert methods.__name__ in asked
    torch.testing.assert_close(got.lower, want.lower, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.upper, want.upper, rtol=1e-10, atol=1e-10)


def test_recurjac_does_not_depend_on_the_slices(monkeypatch) -> None:
    net = random_network("relu", [8, 16, 12, 10, 4], seed=6)
    x = torch.rand(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) - 0.5
    ball = LpBall.make(x, 0.05, 2.0)
    want = lipschitz_bounds(net, ball, method="recurjac")
    asked = _one_at_a_time(monkeypatch)
    got = lipschitz_bounds(net, ball, method="recurjac")
    assert recurjac.__name__ in asked
    torch.testing.assert_close(got.value, want.value, rtol=1e-10, atol=1e-10)


def test_rows_per_group_are_capped_on_a_cpu_only() -> None:
    assert ws.group_rows(torch.device("cpu"), 8) == 8
    assert ws.group_rows(torch.device("cuda", 0), 8) >= 1 << 31


@pytest.mark.parametrize(
    ("counts", "cap", "row_work", "expected"),
    [
        # 95: 5 slots of padding x 6 rows left x 1000 = 30,000 <= 40,000 joins; 91: 9 x 5 x
        # 1000 = 45,000 > 40,000 starts a new group
        ([100, 95, 91, 89, 88, 87, 10], 8, 1000, 2),
        ([100, 95, 91, 89, 88, 87, 10], 8, 500, 6),  # cheaper rows: 10 alone (90 x 1 x 500)
        ([100, 95, 91, 89, 88, 87, 10], 2, 1000, 2),  # the row cap
        ([100, 95, 91, 89, 88, 87, 10], 8, 1, 7),  # padding costs nothing worth a group
        ([7, 3, 0, 0], 8, 0, 2),  # rows without candidates are never bounded
    ],
)
def test_group_end_starts_a_group_where_it_saves_more_than_it_costs(
    counts, cap, row_work, expected
) -> None:
    assert ws.group_end(counts, 0, cap, slack=0, row_work=row_work, overhead=40_000) == expected


def test_group_end_with_a_slack_keeps_rows_within_it() -> None:
    counts = [100, 60, 49, 30]
    assert ws.group_end(counts, 0, 8, slack=0.5, row_work=1, overhead=0) == 2
    assert ws.group_end(counts, 2, 8, slack=0.5, row_work=1, overhead=0) == 4


def test_row_macs_counts_weighted_layers_by_their_fan_in() -> None:
    dense, conv = torch.zeros(16, 30), torch.zeros(8, 3, 3, 3)
    assert ws.row_macs([(dense, 16), (None, 16), (conv, 8 * 5 * 5), (torch.zeros(8), 200)]) == (
        16 * 30 + 16 + 200 * 27 + 200
    )


def test_a_gpu_never_starts_a_group_for_padding() -> None:
    assert ws.group_overhead(torch.device("cuda", 0), 1000) == math.inf
    cpu = ws.CPU_GROUP_OVERHEAD_MACS + ws.CPU_GROUP_WEIGHT_SLOTS * 1000
    assert ws.group_overhead(torch.device("cpu"), 1000) == cpu


def test_tighten_groups_rows_by_their_candidate_counts() -> None:
    """Rows are bounded in groups of similar counts, each row exactly once, every candidate
    written and nothing else."""
    counts = [50, 3, 48, 20, 0, 49, 19]
    candidates = torch.zeros(len(counts), 64, dtype=torch.bool)
    for row, c in enumerate(counts):
        candidates[row, torch.randperm(64, generator=torch.Generator().manual_seed(row))[:c]] = True
    lower, upper = torch.full((7, 64), -1.0), torch.full((7, 64), 1.0)
    groups: list[list[int]] = []

    def bound_rows(rows, idx):  # the bounds say which row asked
        groups.append(rows.tolist())
        value = rows.to(torch.float32).unsqueeze(1).expand(idx.shape)
        return -value / 100, value / 100

    work = ws.CPU_GROUP_OVERHEAD_MACS // 16
    # A new group pays where padding x rows left exceeds this many slots; the groups below
    # are the right ones for any threshold from 10 (48 joins 50) to 34 (3 starts a group).
    slots = ws.group_overhead(torch.device("cpu"), work) / work
    assert 10 <= slots < 34
    lo, up = methods._tighten(candidates, lower, upper, False, 64, work, 8, bound_rows)
    assert groups == [[0, 5, 2], [3, 6], [1]]
    for row in range(7):
        want = torch.where(candidates[row], torch.tensor(row / 100), torch.tensor(1.0))
        torch.testing.assert_close(up[row], want)
        torch.testing.assert_close(lo[row], -want)
