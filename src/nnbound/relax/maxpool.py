"""Linear relaxation of max pooling, for the backward linear pass.

Each output ``y = max_{i in W} x_i`` of a window ``W`` (padding taps never win) gets, from the
bounds ``l <= x <= u`` of its inputs, two lines in a single input ``x_j`` of the window:

* lower: ``y >= x_j``, sound for any ``j`` in the window since ``y`` is the maximum. We pick
  ``j = argmax_i l_i`` (ties: the first tap torch's ``max`` returns), which makes the line's
  own minimum ``l_j = max_i l_i`` the best constant lower bound as well.
* upper: with ``M_j = max_{i != j} u_i`` (``-inf`` when ``j`` is alone in the window) and
  ``gap = max(0, M_j - l_j)``, the line ``y <= x_j + gap``. Proof: if the maximum is ``x_j``,
  ``y = x_j <= x_j + gap``; otherwise it is some ``x_i``, ``i != j``, and
  ``y = x_i <= u_i <= M_j = l_j + (M_j - l_j) <= x_j + gap``. When ``l_j >= M_j`` (one input
  dominates the window) ``gap = 0`` and the line is exact: ``y = x_j``. Otherwise the constant
  ``y <= max_i u_i`` is also sound; per window we keep the line when its mean over the box,
  ``(l_j + u_j) / 2 + gap``, is no larger than that constant (always so when exact), else the
  constant. Both choices are sound; the choice only affects tightness.

``gap`` is rounded up (one ulp) when positive so that the line stays above the maximum despite
the rounding of ``M_j - l_j``.

A backward step through a max pool then takes, per window and per spec row, the upper line
where the coefficient is positive and the lower line elsewhere for an upper bound (the other
way round for a lower bound), and scatters the coefficient onto input ``j``; overlapping
windows that pick the same input add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.network.layers import MaxPool2d, Shape


@dataclass(frozen=True)
class MaxPoolLines:
    """Lines of every window: ``x_j <= y <= upper_slope * x_j + upper_bias`` with
    ``j = index``. Each tensor is ``(N, C * H_out * W_out)``; ``index`` holds flat positions
    in the ``(C * H * W)`` input, ``upper_slope`` is 0 or 1."""

    index: Tensor
    upper_slope: Tensor
    upper_bias: Tensor

    def rows(self, rows: Tensor) -> MaxPoolLines:
        """The lines of input-set rows ``rows``."""
        return MaxPoolLines(self.index[rows], self.upper_slope[rows], self.upper_bias[rows])


def _windows(pool: MaxPool2d, in_shape: Shape, x: Tensor) -> Tensor:
    """``(N, C, K, L)`` the value at every kernel tap of every window, ``-inf`` on padding."""
    idx, valid = pool.windows(in_shape)
    idx, valid = idx.to(x.device), valid.to(x.device)
    n, c = x.shape[0], in_shape[0]
    taps = x.reshape(n, c, -1)[:, :, idx]
    return taps.masked_fill(~valid, -math.inf)


def maxpool_lines(pool: MaxPool2d, in_shape: Shape, lower: Tensor, upper: Tensor) -> MaxPoolLines:
    """The lines of ``pool`` given input bounds ``lower <= x <= upper`` (``(N, *in_shape)``,
    ``lower <= upper``); see the module docstring for the choice and its soundness."""
    n, c = lower.shape[0], in_shape[0]
    # Valid taps must beat padding taps (-inf) in the argmax even where a bound is -inf; no
    # finite input lies below the most negative float, so the clamp keeps the bound sound.
    lower = lower.clamp(min=torch.finfo(lower.dtype).min)
    lo = _windows(pool, in_shape, lower)  # (N, C, K, L)
    up = _windows(pool, in_shape, upper)
    best_lo, tap = lo.max(dim=2)  # (N, C, L): l_j and the tap j
    u_max = up.max(dim=2).values
    others = up.scatter(2, tap.unsqueeze(2), -math.inf).max(dim=2).values  # M_j
    gap = (others - best_lo).clamp(min=0.0)
    gap = torch.where(gap > 0, torch.nextafter(gap, torch.full_like(gap, math.inf)), gap)
    u_j = up.gather(2, tap.unsqueeze(2)).squeeze(2)
    use_line = (best_lo + u_j) / 2 + gap <= u_max
    upper_slope = use_line.to(lower.dtype)
    upper_bias = torch.where(use_line, gap, u_max)
    idx, _ = pool.windows(in_shape)
    idx = idx.to(lower.device)
    plane = idx.expand(n, c, *idx.shape).gather(2, tap.unsqueeze(2)).squeeze(2)
    plane_size = in_shape[1] * in_shape[2]
    offset = torch.arange(c, device=lower.device).reshape(1, c, 1) * plane_size
    index = (plane + offset).reshape(n, -1)
    return MaxPoolLines(index, upper_slope.reshape(n, -1), upper_bias.reshape(n, -1))


def maxpool_backward(
    a: Tensor, lines: MaxPoolLines, in_shape: Shape, *, upper: bool
) -> tuple[Tensor, Tensor]:
    """Carry the coefficients ``a`` (``(N, S, *out_shape)``) on the pool's output back to its
    input: returns ``(a_in (N, S, *in_shape), const (N, S))`` with ``a . y <= a_in . x + const``
    (``upper``) or ``a . y >= a_in . x + const`` (lower) for every ``x`` in the box the lines
    were built from."""
    n, s = a.shape[:2]
    flat = a.reshape(n, s, -1)
    us = lines.upper_slope.unsqueeze(1)
    ub = lines.upper_bias.unsqueeze(1)
    # Upper bound: a > 0 needs y from above (upper line); a <= 0 from below (y >= x_j).
    # Lower bound: the other way round.
    take_upper = flat > 0 if upper else flat <= 0
    slope = torch.where(take_upper, us, torch.ones_like(us))
    const = torch.where(take_upper, flat * ub, torch.zeros_like(flat)).sum(-1)
    out = torch.zeros(n, s, math.prod(in_shape), dtype=a.dtype, device=a.device)
    out.scatter_add_(2, lines.index.unsqueeze(1).expand(n, s, -1), flat * slope)
    return out.reshape(n, s, *in_shape), const


def maxpool_interval(pool: MaxPool2d, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Exact output bounds over the box ``[lower, upper]``: max pooling is monotone in every
    input, so its range is ``[pool(lower), pool(upper)]``."""
    return pool.forward(lower), pool.forward(upper)


def maxpool_lipschitz(pool: MaxPool2d, in_shape: Shape, p: float) -> float:
    """A Lipschitz constant of the pool from ``||.||_p`` to ``||.||_p``.

    With ``d = x - x'`` and ``c`` the largest number of windows an input belongs to:
    ``|max_W x - max_W x'| <= max_{i in W} |d_i|``. For p = inf that is ``<= ||d||_inf``
    (constant 1). For p = 1, summing over windows gives
    ``sum_W max_{i in W} |d_i| <= sum_W sum_{i in W} |d_i| <= c ||d||_1`` (constant c). For
    p = 2, ``sum_W max_{i in W} d_i^2 <= sum_W sum_{i in W} d_i^2 <= c ||d||_2^2`` (constant
    ``sqrt(c)``). Without overlapping windows c = 1 and the pool is 1-Lipschitz in every norm.
    """
    if p == math.inf:
        return 1.0
    c = pool.coverage(in_shape)
    return float(c) if p == 1.0 else math.sqrt(c)


__all__ = ["MaxPoolLines", "maxpool_backward", "maxpool_interval", "maxpool_lines"]
