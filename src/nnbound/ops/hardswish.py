"""Hardswish ``h(z) = z * relu6(z + 3) / 6`` (MobileNetV3; torch ``nn.Hardswish``, ONNX
``HardSwish``): 0 for ``z <= -3``, the convex parabola ``z (z + 3) / 6`` on ``[-3, 3]``, the
identity for ``z >= 3``. It is neither monotone nor convex (concave kinks at -3 and 3).

Relaxation on ``[l, u]``: the chord slope above and the derivative at the midpoint below, each
line moved until it touches ``h``. ``h(z) - s z`` is piecewise linear / convex-quadratic /
linear, so its extremes over ``[l, u]`` are at ``l``, ``u``, the kinks -3 and 3 and (for the
minimum) the parabola's stationary point ``3 s - 3/2``: evaluating those candidates gives the
exact offsets, so both lines are sound and touch ``h``. Inside ``[-3, 3]`` this is the chord and
the midpoint tangent of a convex function; beyond the kinks it is exact (0 or the identity).
Everything is computed in float64 and widened by a few units in the last place of the bounds'
dtype (torch's float32 forward rounds too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nnbound.ops.activation import activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.base import LinearRelaxation


def _h(z: Tensor) -> Tensor:
    return z * torch.clamp(z + 3.0, 0.0, 6.0) / 6.0


def _dh(z: Tensor) -> Tensor:
    """The derivative (the right one at the kinks)."""
    return torch.where(z < -3.0, 0.0, torch.where(z >= 3.0, 1.0, z / 3.0 + 0.5))


def _margin(dtype: torch.dtype, *magnitudes: Tensor) -> Tensor:
    scale = torch.ones_like(magnitudes[0])
    for m in magnitudes:
        scale = scale + m.abs()
    return 8.0 * torch.finfo(dtype).eps * scale


def _candidates(l: Tensor, u: Tensor, *points: Tensor | float) -> Tensor:
    """``l``, ``u`` and each point clipped into ``[l, u]``, stacked on a last axis."""
    out = [l, u]
    for p in points:
        p_t = torch.as_tensor(p, dtype=l.dtype, device=l.device).expand_as(l)
        out.append(torch.minimum(torch.maximum(p_t, l), u))
    return torch.stack(out, dim=-1)


@dataclass(frozen=True)
class HardswishRelaxation:
    """Sound lines, interval and derivative interval of hardswish on ``[l, u]``."""

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
        same = u == l
        width = torch.where(same, torch.ones_like(u), u - l)
        up_s = torch.where(same, _dh(l), (_h(u) - _h(l)) / width)
        lo_s = _dh(0.5 * (l + u))
        up_pts = _candidates(l, u, -3.0, 3.0)
        lo_pts = _candidates(l, u, -3.0, 3.0, torch.clamp(3.0 * lo_s - 1.5, -3.0, 3.0))
        up_b = (_h(up_pts) - up_s.unsqueeze(-1) * up_pts).amax(-1)
        lo_b = (_h(lo_pts) - lo_s.unsqueeze(-1) * lo_pts).amin(-1)
        reach = torch.maximum(l.abs(), u.abs())
        lo_m = _margin(dtype, lo_b, lo_s * reach, reach)
        up_m = _margin(dtype, up_b, up_s * reach, reach)
        return LinearRelaxation(
            lo_s.to(dtype), (lo_b - lo_m).to(dtype), up_s.to(dtype), (up_b + up_m).to(dtype)
        )

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        dtype = lower.dtype
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        values = _h(_candidates(l, u, -1.5))  # -1.5: the parabola's minimum
        lo, hi = values.amin(-1), values.amax(-1)
        return (lo - _margin(dtype, lo)).to(dtype), (hi + _margin(dtype, hi)).to(dtype)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """The hull of the one-sided derivatives on ``[l, u]`` (-1/2 and 3/2 at most), a few
        ulps wider (torch computes ``z / 3 + 1/2`` in the bounds' dtype)."""
        l, u = lower, torch.maximum(upper, lower)
        left_u = torch.where(u <= -3.0, 0.0, torch.where(u > 3.0, 1.0, u / 3.0 + 0.5))
        ends = torch.stack([_dh(l), left_u.to(l.dtype)], -1)
        lo, hi = ends.amin(-1), ends.amax(-1)
        at_low = (l <= -3.0) & (u >= -3.0)  # both sides of -3: 0 and -1/2
        at_high = (l <= 3.0) & (u >= 3.0)  # both sides of 3: 3/2 and 1
        lo = torch.where(at_low, torch.minimum(lo, torch.full_like(lo, -0.5)), lo)
        hi = torch.where(at_low, torch.maximum(hi, torch.zeros_like(hi)), hi)
        hi = torch.where(at_high, torch.maximum(hi, torch.full_like(hi, 1.5)), hi)
        lo = torch.where(at_high, torch.minimum(lo, torch.ones_like(lo)), lo)
        slack = 4.0 * torch.finfo(lo.dtype).eps  # |h'| <= 3/2: a few ulps of rounding
        return lo - slack, hi + slack


HARDSWISH = activation_op(
    "hardswish",
    lambda alpha: F.hardswish,
    lambda alpha, opt: HardswishRelaxation(),
    # |h'| <= 3/2 (the parabola's slope at 3)
    Traits(lipschitz=1.5),
    Names(
        onnx=("HardSwish",),
        torch=("Hardswish", "hardswish", "hardswish_"),
        keras=("hard_swish", "hard_silu"),
    ),
)

OPS = (HARDSWISH,)
