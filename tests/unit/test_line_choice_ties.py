"""Relaxations that pick the best of several candidate lines (GELU and the smooth activation
derivatives across an inflection, the product planes' mix) must pick the same line for bounds
that differ only in their last bits, as bounds summed in another order do (another slicing of
a pass, another device). Candidates often tie exactly: a chord moved down until it is valid
at the grid's midpoint scores what the midpoint's tangent scores, so a plain ``argmax`` picked
by rounding noise, and a final bound moved by 7e-4 when a pass was sliced differently."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nnbound.ops.derivative import SMOOTH_DERIVATIVES, derivative_relaxation
from nnbound.ops.gelu import GeluRelaxation
from nnbound.ops.registry import DEFAULT_OPTIONS
from nnbound.ops.relaxed_lines import first_near_best
from nnbound.relax.base import LinearRelaxation, Relaxation


def _lines(relaxation: Relaxation, l: float, u: float) -> LinearRelaxation:
    lo = torch.tensor([l], dtype=torch.float64)
    up = torch.tensor([u], dtype=torch.float64)
    return relaxation.linear(lo, up)


def _assert_same_lines(a: LinearRelaxation, b: LinearRelaxation) -> None:
    for x, y in zip(
        (a.lower_slope, a.lower_bias, a.upper_slope, a.upper_bias),
        (b.lower_slope, b.lower_bias, b.upper_slope, b.upper_bias),
        strict=True,
    ):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_the_tie_found_by_slicing_picks_one_line() -> None:
    # the GELU input bounds of random graph seed 1640 (test_work_size), summed in two orders
    gelu = GeluRelaxation()
    a = _lines(gelu, -5.044551191153117, 4.909043253307899)
    b = _lines(gelu, -5.044551191153117, 4.9090432533079)
    _assert_same_lines(a, b)


_ENDS = st.floats(-8.0, 8.0, allow_nan=False)
GELU_PIECES = (-math.sqrt(2.0), math.sqrt(2.0))  # where GELU changes convexity


@settings(max_examples=300, deadline=None)
@given(
    a=_ENDS, b=_ENDS, ulps=st.integers(1, 8), which=st.sampled_from(["gelu", *SMOOTH_DERIVATIVES])
)
def test_lines_do_not_jump_when_bounds_move_by_ulps(
    a: float, b: float, ulps: int, which: str
) -> None:
    l, u = min(a, b), max(a, b)
    # a point interval's slopes are arbitrary (any line through the point is exact)
    assume(u - l > 1e-3)
    # An end on a convexity change moves the interval from one piece (exact chord and
    # tangent) into two (grid lines with a slack): a boundary of the rule, not a tie.
    pieces = GELU_PIECES if which == "gelu" else SMOOTH_DERIVATIVES[which].inflections
    assume(all(abs(end - p) > 1e-9 for end in (l, u) for p in pieces))
    relaxation = (
        GeluRelaxation() if which == "gelu" else derivative_relaxation(which, 0.0, DEFAULT_OPTIONS)
    )
    moved_l, moved_u = l, u
    for _ in range(ulps):
        moved_l = math.nextafter(moved_l, -math.inf)
        moved_u = math.nextafter(moved_u, math.inf)
    _assert_same_lines(_lines(relaxation, l, u), _lines(relaxation, moved_l, moved_u))


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ([1.0, 3.0, 2.0], 1),  # a clear best
        ([3.0, 3.0 - 1e-15, 2.0], 0),  # a tie goes to the first
        ([3.0 - 1e-15, 3.0, 2.0], 0),  # whichever of the two is larger by rounding
        ([-1e9, -1e9 * (1 + 1e-14), 0.0], 2),
        ([2.0, 2.0 + 1e-6], 1),  # not a tie
    ],
)
def test_first_near_best(score: list[float], expected: int) -> None:
    t = torch.tensor([score], dtype=torch.float64)
    assert int(first_near_best(t)[0, 0]) == expected
