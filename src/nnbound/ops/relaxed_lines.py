"""Shared arithmetic of the ``RELAXED`` non-linear operators (products, softmax, arg max, ...).

A relaxed operator bounds each output entry ``z`` by linear functions of its inputs over their
box, ``lower(x) <= z <= upper(x)``. Carrying a coefficient ``a`` on ``z`` back is then the same
for every operator: an upper bound of ``a z`` takes the upper function where ``a > 0`` and the
lower one where ``a < 0`` (a lower bound the other way round). The helpers here do that pick,
the sums that turn per-entry intercepts into the ``(N, S)`` constants of
:class:`~nnbound.ops.base.Backward`, the interval-only rule (slope 0: a coefficient ``a`` on
an output in ``[lo, up]`` contributes ``min(a lo, a up)`` to a lower bound), and the outward
margin that keeps lines computed in float64 sound once rounded to the working precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnbound.ops.base import Backward


def ulp_margin(dtype: torch.dtype, *magnitudes: Tensor) -> Tensor:
    """A few units in the last place of ``dtype`` at the scale of a line's terms: moving an
    intercept outward by it keeps a line sound after its coefficients are rounded to
    ``dtype`` (and covers the float64 rounding of the line's own construction)."""
    scale = torch.ones_like(magnitudes[0])
    for m in magnitudes:
        scale = scale + m.abs()
    return 8.0 * torch.finfo(dtype).eps * scale


def pick(a: Tensor, when_positive: Tensor, when_negative: Tensor) -> Tensor:
    """``a * when_positive`` where ``a > 0``, ``a * when_negative`` elsewhere."""
    return a.clamp(min=0) * when_positive + a.clamp(max=0) * when_negative


def total(t: Tensor) -> Tensor:
    """Sum over every axis after the first two: ``(N, S, ...) -> (N, S)``."""
    return t.reshape(*t.shape[:2], -1).sum(-1)


def rows(t: Tensor) -> Tensor:
    """Bounds ``(N, *shape)`` as ``(N, 1, *shape)`` so they broadcast over spec rows."""
    return t.unsqueeze(1)


def interval_backward(
    a_lower: Tensor | None,
    a_upper: Tensor | None,
    out_lower: Tensor,
    out_upper: Tensor,
    n_inputs: int,
) -> Backward:
    """The interval-only rule: slope 0 on every input, the output's interval as constants.

    Sound for any operator whose output lies in ``[out_lower, out_upper]`` (``(N, *shape)``)
    over its inputs' box: ``a z >= min(a lo, a up)`` and ``a z <= max(a lo, a up)``.
    """
    lo, up = rows(out_lower), rows(out_upper)
    c_lo = total(pick(a_lower, lo, up)) if a_lower is not None else None
    c_up = total(pick(a_upper, up, lo)) if a_upper is not None else None
    none: list[Tensor | None] = [None] * n_inputs
    return Backward(list(none), list(none), c_lo, c_up)


def first_near_best(score: Tensor) -> Tensor:
    """Index (keepdim) along the last axis of the first candidate whose score is within a
    relative ``2^-40`` of the best.

    Candidate lines often tie exactly in exact arithmetic (a chord made valid at the grid's
    midpoint scores the same as the midpoint's tangent), so a plain ``argmax`` would pick by
    the last bits of the bounds, and bounds that differ in their summation order only (another
    slicing, another device) would get different, equally sound lines, and final bounds apart
    by far more than the rounding. Within the tolerance the order of the candidates decides.
    """
    best = score.amax(-1, keepdim=True)
    tolerance = 2.0**-40 * (1.0 + best.abs())
    return (score >= best - tolerance).to(torch.int8).argmax(-1, keepdim=True)


def best_valid_line(
    candidates: list[tuple[Tensor, Tensor]],
    grid: Tensor,
    f_grid: Tensor,
    slack: Tensor,
    mid: Tensor,
    upper: bool,
) -> tuple[Tensor, Tensor]:
    """Each candidate line ``(slope, intercept)`` moved until it is valid on the grid
    (``f_grid`` is ``f`` on ``grid``, ``(..., G)``) plus ``slack``, and the one nearest ``f``
    at ``mid`` (least area) kept, per entry (ties: :func:`first_near_best`)."""
    slopes = torch.stack([s for s, _ in candidates], -1)  # (..., C)
    biases = torch.stack([b for _, b in candidates], -1)
    lines = slopes.unsqueeze(-2) * grid.unsqueeze(-1) + biases.unsqueeze(-2)  # (..., G, C)
    gap = f_grid.unsqueeze(-1) - lines
    if upper:
        biases = biases + gap.amax(-2) + slack.unsqueeze(-1)
        score = -(slopes * mid.unsqueeze(-1) + biases)
    else:
        biases = biases - (-gap).amax(-2) - slack.unsqueeze(-1)
        score = slopes * mid.unsqueeze(-1) + biases
    best = first_near_best(score)
    return slopes.gather(-1, best)[..., 0], biases.gather(-1, best)[..., 0]


def widen(lower: Tensor, upper: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Float64 bounds moved outward by a few ulps of ``dtype`` and cast to it."""
    m = ulp_margin(dtype, lower, upper)
    return (lower - m).to(dtype), (upper + m).to(dtype)


__all__ = [
    "best_valid_line",
    "first_near_best",
    "interval_backward",
    "pick",
    "rows",
    "total",
    "ulp_margin",
    "widen",
]
