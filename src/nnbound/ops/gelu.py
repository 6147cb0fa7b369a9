"""GELU, ``x Phi(x)`` (the exact form: ONNX ``Gelu`` with ``approximate="none"``,
``nn.GELU()``), as an element-wise activation: this file and its line in
:mod:`nnbound.ops.registry` are all there is to it.

GELU is neither convex nor monotone: ``f''(x) = phi(x) (2 - x^2)``, so it is convex on
``[-sqrt 2, sqrt 2]`` and concave outside, and it falls to its minimum ``f(x*) ~ -0.17`` at
``x* ~ -0.7518`` (where ``f'(x) = Phi(x) + x phi(x) = 0``) before rising.

* Interval: ``max(f(l), f(u))`` above; below ``f(x*)`` when ``x*`` is in ``[l, u]``, else
  ``min(f(l), f(u))`` (exact).
* Derivative interval: ``f'`` rises on ``[-sqrt 2, sqrt 2]`` and falls outside, so its extremes
  on ``[l, u]`` are at the ends or at ``-sqrt 2`` (its minimum) / ``sqrt 2`` (its maximum, the
  Lipschitz constant ``~1.129``) when inside.
* Lines: on an interval inside the convex part, the chord above and the tangent at the
  midpoint below; inside a concave part the other way round (both exact by convexity).
  Elsewhere each side takes the best of a few candidate lines (chord, tangents at the ends,
  the midpoint and the clamped midpoint, the constant interval bound), each moved until it is
  valid: by the largest violation on a grid of ``G`` points plus ``K h^2 / 8``, where ``h`` is
  the grid step and ``K = 2 phi(0) = max |f''|`` (between two grid points, ``f`` minus a line
  exceeds the chord of its grid values by at most ``K h^2 / 8``), which makes the shift
  rigorous. "Best" is the line nearest ``f`` in area (its value at the midpoint).

Everything is computed in float64 and moved outward by a few ulps of the working precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nnbound.ops.activation import Spelling, activation_op
from nnbound.ops.base import Names, Traits
from nnbound.ops.relaxed_lines import best_valid_line, ulp_margin, widen
from nnbound.relax.base import LinearRelaxation

_SQRT2 = math.sqrt(2.0)
_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)
_K = 2.0 * _PHI0
"""``max |f''| = phi(0) * 2`` (at 0; beyond ``sqrt 2`` it stays below ``2 phi(2) ~ 0.11``)."""
_GRID = 65


def _f(x: Tensor) -> Tensor:
    """GELU in float64, accurate in both tails (``erfc`` rather than ``1 + erf``)."""
    return 0.5 * x * torch.erfc(-x / _SQRT2)


def _df(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x / _SQRT2) + x * _PHI0 * torch.exp(-0.5 * x * x)


def _df_scalar(x: float) -> float:
    return 0.5 * math.erfc(-x / _SQRT2) + x * _PHI0 * math.exp(-0.5 * x * x)


def _argmin() -> float:
    """``x*`` with ``f'(x*) = 0`` (Newton on ``f'``, ``f'' = phi (2 - x^2)``)."""
    x = -0.75
    for _ in range(50):
        x -= _df_scalar(x) / (_PHI0 * math.exp(-0.5 * x * x) * (2.0 - x * x))
    return x


X_MIN = _argmin()
F_MIN = 0.5 * X_MIN * math.erfc(-X_MIN / _SQRT2) - 1e-15
"""The global minimum of GELU (a hair below, for rounding)."""
LIPSCHITZ = _df_scalar(_SQRT2) + 1e-12
"""``max |f'| = f'(sqrt 2) ~ 1.129`` (``|f'(-sqrt 2)| ~ 0.129`` is smaller)."""


def _tangent(d: Tensor) -> tuple[Tensor, Tensor]:
    s = _df(d)
    return s, _f(d) - s * d


def _chord(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    width = u - l
    same = width == 0
    s = torch.where(same, _df(l), (_f(u) - _f(l)) / torch.where(same, 1.0, width))
    return s, _f(l) - s * l


def _interval64(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    f_l, f_u = _f(l), _f(u)
    has_min = (l <= X_MIN) & (u >= X_MIN)
    lo = torch.where(has_min, torch.full_like(l, F_MIN), torch.minimum(f_l, f_u))
    return lo, torch.maximum(f_l, f_u)


def _mixed_lines(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Upper and lower lines (slope, intercept each) on intervals that reach both a convex
    and a concave part: the best candidates made valid on a grid with a rigorous slack."""
    mid = 0.5 * (l + u)
    t = torch.linspace(0.0, 1.0, _GRID, dtype=torch.float64, device=l.device)
    grid = l.unsqueeze(-1) + (u - l).unsqueeze(-1) * t
    f_grid = _f(grid)
    h = (u - l) / (_GRID - 1)
    slack = _K * h.square() / 8.0
    i_lo, i_up = _interval64(l, u)
    zero = torch.zeros_like(l)
    chord, tan_mid, ends = _chord(l, u), _tangent(mid), [_tangent(l), _tangent(u)]
    up_s, up_b = best_valid_line(
        [chord, tan_mid, *ends, (zero, i_up)], grid, f_grid, slack, mid, upper=True
    )
    centre = _tangent(torch.minimum(torch.maximum(mid.clamp(-_SQRT2, _SQRT2), l), u))
    lo_s, lo_b = best_valid_line(
        [chord, tan_mid, centre, *ends, (zero, i_lo)], grid, f_grid, slack, mid, upper=False
    )
    return up_s, up_b, lo_s, lo_b


@dataclass(frozen=True)
class GeluRelaxation:
    """Sound lines, interval and derivative interval of GELU (see the module docstring)."""

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        dtype = lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        mid = 0.5 * (l + u)
        chord = _chord(l, u)
        tan_mid = _tangent(mid)
        convex = (l >= -_SQRT2) & (u <= _SQRT2)
        concave = (u <= -_SQRT2) | (l >= _SQRT2)
        up_s = torch.where(convex, chord[0], tan_mid[0])
        up_b = torch.where(convex, chord[1], tan_mid[1])
        lo_s = torch.where(convex, tan_mid[0], chord[0])
        lo_b = torch.where(convex, tan_mid[1], chord[1])
        mixed = ~(convex | concave)
        if bool(mixed.any()):
            s_u, b_u, s_l, b_l = _mixed_lines(l[mixed], u[mixed])
            up_s, up_b = up_s.masked_scatter(mixed, s_u), up_b.masked_scatter(mixed, b_u)
            lo_s, lo_b = lo_s.masked_scatter(mixed, s_l), lo_b.masked_scatter(mixed, b_l)
        i_lo, i_up = _interval64(l, u)
        reach = torch.maximum(l.abs(), u.abs())
        # ``reach`` itself too: torch's vectorised float32 GELU is off by up to ~2.4 ulps of
        # ``1 + |x|`` (1.3e-6 near |x| = 3.5, where ``1 + erf`` cancels), and the lines must
        # hold for the forward the network actually computes.
        m_up = ulp_margin(dtype, up_b, up_s * reach, i_up, reach)
        m_lo = ulp_margin(dtype, lo_b, lo_s * reach, i_lo, reach)
        return LinearRelaxation(
            lo_s.to(dtype), (lo_b - m_lo).to(dtype), up_s.to(dtype), (up_b + m_up).to(dtype)
        )

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        i_lo, i_up = _interval64(l, u)
        m = ulp_margin(lower.dtype, i_lo, i_up, torch.maximum(l.abs(), u.abs()))  # see linear
        return (i_lo - m).to(lower.dtype), (i_up + m).to(lower.dtype)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        d_l, d_u = _df(l), _df(u)
        inf = torch.full_like(l, math.inf)
        low_point = torch.where((l <= -_SQRT2) & (u >= -_SQRT2), _df(-_SQRT2 + 0 * l), inf)
        high_point = torch.where((l <= _SQRT2) & (u >= _SQRT2), _df(_SQRT2 + 0 * l), -inf)
        lo = torch.minimum(torch.minimum(d_l, d_u), low_point)
        hi = torch.maximum(torch.maximum(d_l, d_u), high_point)
        return widen(lo, hi, lower.dtype)


GELU = activation_op(
    "gelu",
    lambda alpha: F.gelu,
    lambda alpha, options: GeluRelaxation(),
    Traits(lipschitz=LIPSCHITZ, smooth=True),
    Names(onnx=("Gelu",), torch=("GELU", "gelu"), keras=("gelu",)),
    # only the exact form: the tanh approximation is another function
    onnx_settings=Spelling(fixed=(("approximate", "none"),)),
    torch_settings=Spelling(fixed=(("approximate", "none"),)),
    keras_settings=Spelling(fixed=(("approximate", False),)),
)

OPS = (GELU,)

__all__ = ["F_MIN", "GELU", "LIPSCHITZ", "OPS", "X_MIN", "GeluRelaxation"]
