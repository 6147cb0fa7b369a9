"""``exp`` and ``log`` (ONNX ``Exp``, ``Log``) as element-wise graph operators.

``exp`` is convex and increasing: the chord above, the tangent at the midpoint below. ``log``
is concave and increasing on ``z > 0``: the tangent above, the chord below; an input interval
reaching ``z <= 0`` (where ``log`` is ``-inf`` or NaN) is refused. Lines are built in float64
and moved outward by a few ulps of the working precision; an ``exp`` whose upper line would
overflow the working precision is refused rather than given an infinite coefficient (the
network itself overflows there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.ops.base import Names, OpKind, Traits
from nnbound.ops.pointwise import PointwiseOp, curvature_lines, rounded
from nnbound.ops.relaxed_lines import widen
from nnbound.relax.base import LinearRelaxation


def _f64(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    l = lower.to(torch.float64)
    return l, torch.maximum(upper.to(torch.float64), l)


@dataclass(frozen=True)
class ExpRelaxation:
    """``exp``: convex and increasing (its own derivative)."""

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        dtype = lower.dtype
        l, u = _f64(lower, upper)
        limit = math.log(torch.finfo(dtype).max) - 1.0
        if bool((u > limit).any()):
            raise UnsupportedError(
                f"exp of inputs up to {float(u.max()):.4g} overflows {dtype} (no finite line)"
            )
        lines = curvature_lines(torch.exp, torch.exp, l, u, torch.ones_like(l, dtype=torch.bool))
        return rounded(lines, l, u, dtype, torch.exp(u))

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l, u = _f64(lower, upper)
        lo, up = widen(torch.exp(l), torch.exp(u), lower.dtype)
        return lo.clamp(min=0), up

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.interval(lower, upper)


@dataclass(frozen=True)
class LogRelaxation:
    """``log`` on ``z > 0``: concave and increasing."""

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    @staticmethod
    def _check(l: Tensor) -> None:
        if bool((l <= 0).any()):
            raise UnsupportedError(
                f"log of an input that may be <= 0 (lower bound {float(l.min()):.4g})"
            )

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        l, u = _f64(lower, upper)
        self._check(l)
        concave = torch.zeros_like(l, dtype=torch.bool)
        lines = curvature_lines(torch.log, torch.reciprocal, l, u, concave)
        return rounded(lines, l, u, lower.dtype, torch.log(l), torch.log(u))

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l, u = _f64(lower, upper)
        self._check(l)
        return widen(torch.log(l), torch.log(u), lower.dtype)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l, u = _f64(lower, upper)
        self._check(l)
        return widen(1.0 / u, 1.0 / l, lower.dtype)


EXP = PointwiseOp(
    "exp",
    OpKind.ELEMENTWISE,
    traits=Traits(monotone=True, smooth=True),
    names=Names(onnx=("Exp",), torch=("exp",)),
    function=torch.exp,
    make_relaxation=ExpRelaxation,
)
LOG = PointwiseOp(
    "log",
    OpKind.ELEMENTWISE,
    traits=Traits(monotone=True, smooth=True),
    names=Names(onnx=("Log",), torch=("log",)),
    function=torch.log,
    make_relaxation=LogRelaxation,
)

OPS = (EXP, LOG)

__all__ = ["EXP", "LOG", "OPS", "ExpRelaxation", "LogRelaxation"]
