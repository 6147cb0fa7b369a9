"""``reciprocal`` (ONNX ``Reciprocal``): ``1 / z`` on an interval that does not contain 0.

On ``z > 0`` the reciprocal is convex and decreasing (the chord above, the tangent at the
midpoint below), on ``z < 0`` concave and decreasing (the tangent above, the chord below). An
interval containing 0 has no finite bound and is refused. :func:`reciprocal_lines` also
serves ``div`` (:mod:`nnbound.ops.bilinear`), which bounds ``x / y`` as ``x * (1 / y)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.ops.base import Names, OpKind, Traits
from nnbound.ops.pointwise import PointwiseOp, curvature_lines, rounded
from nnbound.ops.relaxed_lines import widen
from nnbound.relax.base import LinearRelaxation


def check_nonzero(lower: Tensor, upper: Tensor, what: str = "reciprocal") -> None:
    """UnsupportedError when some interval ``[lower, upper]`` contains 0."""
    across = (lower <= 0) & (upper >= 0)
    if bool(across.any()):
        i = int(across.reshape(-1).to(torch.int8).argmax())
        lo, up = float(lower.reshape(-1)[i]), float(upper.reshape(-1)[i])
        raise UnsupportedError(f"{what} of an input whose interval [{lo:.4g}, {up:.4g}] contains 0")


def _d_reciprocal(z: Tensor) -> Tensor:
    return -1.0 / z.square()


def reciprocal_lines(lower: Tensor, upper: Tensor) -> LinearRelaxation:
    """Float64 lines of ``1 / z`` on float64 intervals of one sign each (no margin)."""
    return curvature_lines(torch.reciprocal, _d_reciprocal, lower, upper, lower > 0)


def reciprocal_interval(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """``[1 / u, 1 / l]`` in float64 (decreasing on each side of 0), slightly widened."""
    lo, up = 1.0 / upper, 1.0 / lower
    pad = 4.0 * torch.finfo(torch.float64).eps
    return lo - pad * lo.abs(), up + pad * up.abs()


@dataclass(frozen=True)
class ReciprocalRelaxation:
    """``1 / z`` on intervals of one sign."""

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def _f64(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l = lower.to(torch.float64)
        u = torch.maximum(upper.to(torch.float64), l)
        check_nonzero(l, u)
        return l, u

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        l, u = self._f64(lower, upper)
        return rounded(reciprocal_lines(l, u), l, u, lower.dtype, 1.0 / l, 1.0 / u)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l, u = self._f64(lower, upper)
        return widen(*reciprocal_interval(l, u), lower.dtype)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        l, u = self._f64(lower, upper)
        near = torch.minimum(l.abs(), u.abs())
        far = torch.maximum(l.abs(), u.abs())
        return widen(-1.0 / near.square(), -1.0 / far.square(), lower.dtype)


RECIPROCAL = PointwiseOp(
    "reciprocal",
    OpKind.ELEMENTWISE,
    traits=Traits(smooth=True),
    names=Names(onnx=("Reciprocal",), torch=("reciprocal",)),
    function=torch.reciprocal,
    make_relaxation=ReciprocalRelaxation,
)

OPS = (RECIPROCAL,)

__all__ = [
    "OPS",
    "RECIPROCAL",
    "ReciprocalRelaxation",
    "check_nonzero",
    "reciprocal_interval",
    "reciprocal_lines",
]
