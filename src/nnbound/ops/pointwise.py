"""Element-wise operators that are not activations of the chain IR (exp, log, reciprocal,
sign, the rounding steps): the ``ELEMENTWISE`` contract without the chain's training, export
and import machinery of :class:`~nnbound.ops.activation.ActivationOp`.

They are graph-only on purpose: the chain IR's activations are what ``train`` and the
recipes offer, and a network of ``log`` or ``sign`` layers is nothing to train. The backward
engine relaxes them exactly like activations (two lines per entry from the input bounds);
the ONNX graph importer maps them by their ONNX names (no attributes, one input).

The shared line rule for a function that is convex or concave on the input interval (the
chord on one side, the tangent at the midpoint on the other, CROWN-general's rule) lives here
too, computed in float64 and moved outward by a few ulps of the working precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Op, RelaxOptions
from nnbound.ops.relaxed_lines import ulp_margin
from nnbound.relax.base import LinearRelaxation, Relaxation

Fn = Callable[[Tensor], Tensor]


def curvature_lines(
    f: Fn, df: Fn, lower: Tensor, upper: Tensor, convex: Tensor
) -> LinearRelaxation:
    """Float64 lines of ``f`` on ``[lower, upper]`` (float64) where ``f`` is convex
    (``convex`` true: the chord above, the tangent at the midpoint below) or concave (the
    other way round). No margin: see :func:`rounded`."""
    width = upper - lower
    same = width == 0
    f_l, f_u = f(lower), f(upper)
    chord_s = torch.where(same, df(lower), (f_u - f_l) / torch.where(same, 1.0, width))
    chord_b = f_l - chord_s * lower
    mid = 0.5 * (lower + upper)
    tan_s = df(mid)
    tan_b = f(mid) - tan_s * mid
    return LinearRelaxation(
        torch.where(convex, tan_s, chord_s),
        torch.where(convex, tan_b, chord_b),
        torch.where(convex, chord_s, tan_s),
        torch.where(convex, chord_b, tan_b),
    )


def rounded(
    lines: LinearRelaxation, lower: Tensor, upper: Tensor, dtype: torch.dtype, *values: Tensor
) -> LinearRelaxation:
    """Float64 ``lines`` on ``[lower, upper]`` with their intercepts moved outward by a few
    ulps of ``dtype`` (at the scale of the lines' terms and of ``values``, e.g. ``f`` at the
    ends), cast to ``dtype``."""
    reach = torch.maximum(lower.abs(), upper.abs())
    m_lo = ulp_margin(dtype, lines.lower_bias, lines.lower_slope * reach, *values)
    m_up = ulp_margin(dtype, lines.upper_bias, lines.upper_slope * reach, *values)
    return LinearRelaxation(
        lines.lower_slope.to(dtype),
        (lines.lower_bias - m_lo).to(dtype),
        lines.upper_slope.to(dtype),
        (lines.upper_bias + m_up).to(dtype),
    )


@dataclass(frozen=True)
class _Named:
    """A relaxation whose UnsupportedErrors name the node it relaxes."""

    inner: Relaxation
    where: str

    def _call(self, method: str, *args: Tensor) -> Any:
        try:
            return getattr(self.inner, method)(*args)
        except UnsupportedError as exc:
            raise UnsupportedError(f"{self.where}: {exc}") from None

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        return self._call("linear", lower, upper)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self._call("interval", lower, upper)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self._call("derivative_interval", lower, upper)

    @property
    def is_piecewise_linear(self) -> bool:
        return self.inner.is_piecewise_linear

    @property
    def kinks(self) -> tuple[float, ...]:
        return self.inner.kinks


@dataclass(frozen=True)
class PointwiseOp(Op):
    """A one-input element-wise operator of the graph IR only (no parameter, no attrs).

    Attributes:
        function: the torch function (batched, differentiable where it can be).
        make_relaxation: builds the relaxation object (lines, interval, derivative interval).
    """

    function: Fn | None = None
    make_relaxation: Callable[[], Relaxation] | None = None

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"{self.name} takes one input, got {len(in_shapes)}")
        if node.params or node.attrs:
            raise InputError(f"{self.name} takes no params or attrs")
        return in_shapes[0]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        assert self.function is not None
        return self.function(xs[0])

    def relaxation(self, node: Node, options: RelaxOptions) -> Relaxation:
        assert self.make_relaxation is not None
        return _Named(self.make_relaxation(), node.where)

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        from nnbound.ops.registry import DEFAULT_OPTIONS

        return self.relaxation(node, DEFAULT_OPTIONS).interval(*bounds[0])


__all__ = ["PointwiseOp", "curvature_lines", "rounded"]
