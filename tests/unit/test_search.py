"""The batched binary search reproduces the reference's scalar ``binary_search`` per row."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnbound.tasks.search import batched_binary_search, bisect_down


def reference_binary_search(condition, current, max_steps, tol=1e-5, upper_limit=1e5):
    """Transcription of the reference's utils.binary_search (spec §9.1)."""
    upper, lower = math.inf, 0.0
    steps = 0
    while upper - lower > tol:
        if condition(current):
            lower = current
            current = current * 10 if upper == math.inf else (upper + lower) / 2
        else:
            upper = current
            current = current / 10 if lower == 0 else (upper + lower) / 2
        steps += 1
        if steps >= max_steps or current > upper_limit:
            break
    return lower


@settings(max_examples=200, deadline=None)
@given(
    thresholds=st.lists(st.floats(1e-7, 1e4), min_size=1, max_size=6),
    start=st.floats(1e-4, 10.0),
    steps=st.integers(1, 30),
)
def test_matches_reference_per_row(thresholds: list[float], start: float, steps: int) -> None:
    t = torch.tensor(thresholds, dtype=torch.float64)
    calls = []

    def cond(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        calls.append(len(rows))
        return eps <= t[rows]

    got = batched_binary_search(cond, len(thresholds), start, max_steps=steps)
    for i, th in enumerate(thresholds):
        want = reference_binary_search(lambda e, th=th: e <= th, start, steps)
        assert got[i].item() == want
    assert max(calls) <= len(thresholds)
    assert len(calls) <= steps


def test_never_certified_returns_zero() -> None:
    got = batched_binary_search(
        lambda r, e: torch.zeros_like(e, dtype=torch.bool), 3, 0.1, max_steps=15
    )
    assert torch.equal(got, torch.zeros(3, dtype=torch.float64))


def test_result_is_certified_and_close() -> None:
    t = torch.tensor([0.0123, 0.5, 3.0], dtype=torch.float64)
    got = batched_binary_search(lambda r, e: e <= t[r], 3, 0.005, max_steps=40)
    assert torch.all(got <= t)
    assert torch.allclose(got, t, rtol=1e-3)


def test_bisect_down_stays_below_threshold() -> None:
    t = torch.tensor([0.1, 0.3], dtype=torch.float64)
    got = bisect_down(lambda r, e: e <= t[r], torch.tensor([0.2, 0.25], dtype=torch.float64), 20)
    assert got[0] <= 0.1 and got[0] > 0.099
    assert got[1] == 0.25 * (1 - 2.0**-20)
