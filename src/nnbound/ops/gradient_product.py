"""``grad_mul``: the product ``d * h`` of an activation's derivative ``d`` and the upstream
gradient ``h`` in a gradient graph (:mod:`nnbound.jacobian.gradient_graph`).

Node: inputs ``d, h`` (same shape); attr ``d_interval`` (bool).

* ``d_interval = False`` (smooth activations): McCormick planes in ``(d, h)``, as ``mul``
  (:mod:`nnbound.ops.bilinear`). Keeping ``d``'s coefficient matters there: ``d``'s lines in
  ``z`` tend to its tangent as the ball shrinks, which is what makes the bound converge to
  the gradient at the centre.
* ``d_interval = True`` (ReLU family and activations whose derivative only has an interval):
  ``d`` is taken as an unknown value in ``[dl, du]``, so ``d h`` lies between the lines
  ``dl h`` and ``du h``; the relaxation is in ``h`` alone, ``min(dl h, du h) <= d h <=
  max(dl h, du h)``, and those two piecewise-linear functions of ``h`` are exact where ``h``
  has one sign and relaxed by their chords over ``[hl, hu]`` otherwise (the max is convex, the
  min concave). Its bound over the box equals McCormick's, but it keeps the dependence on
  ``h`` where McCormick's tie-break would keep a constant (``hu d`` with ``d <= 1``), which
  is what lets cancellations between neurons survive, as auto_LiRPA's ReLU-gradient node
  does.

Planes are built in float64 and moved outward by a few ulps of the working precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Backward, Interval, Names, OpKind, RelaxOptions
from nnbound.ops.bilinear import MulOp, Planes, _two_input_backward, outward


def _chord(f_l: Tensor, f_u: Tensor, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept through ``(l, f_l)`` and ``(u, f_u)`` (slope 0 where ``l == u``,
    intercept then the larger / smaller value is the caller's choice)."""
    width = u - l
    same = width <= 0
    s = torch.where(same, torch.zeros_like(l), (f_u - f_l) / torch.where(same, 1.0, width))
    return s, f_l - s * l


def interval_factor_planes(dl: Tensor, du: Tensor, hl: Tensor, hu: Tensor) -> Planes:
    """Float64 planes of ``d h`` with ``d`` in ``[dl, du]`` treated as unknown (coefficient 0
    on ``d``): the chords of ``max(dl h, du h)`` above and ``min(dl h, du h)`` below."""
    hi_l, hi_u = torch.maximum(dl * hl, du * hl), torch.maximum(dl * hu, du * hu)
    lo_l, lo_u = torch.minimum(dl * hl, du * hl), torch.minimum(dl * hu, du * hu)
    up_s, up_c = _chord(hi_l, hi_u, hl, hu)
    lo_s, lo_c = _chord(lo_l, lo_u, hl, hu)
    point = hu <= hl  # a point interval of h: the constants of the exact interval
    up_c = torch.where(point, torch.maximum(hi_l, hi_u), up_c)
    lo_c = torch.where(point, torch.minimum(lo_l, lo_u), lo_c)
    zero = torch.zeros_like(dl)
    return Planes(zero, lo_s, lo_c, zero, up_s, up_c)


@dataclass(frozen=True)
class GradientProductOp(MulOp):
    """``d * h`` (see the module docstring)."""

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 2 or in_shapes[0] != in_shapes[1]:
            raise InputError(f"grad_mul takes two inputs (d, h) of one shape, got {in_shapes}")
        if node.params or set(node.attrs) - {"d_interval"}:
            raise InputError("grad_mul takes no params and only the attr d_interval")
        return in_shapes[0]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return xs[0] * xs[1]

    def backward(
        self,
        node: Node,
        a_lower: Tensor | None,
        a_upper: Tensor | None,
        bounds: list[Interval],
        in_shapes: list[Shape],
        out_shape: Shape,
        options: RelaxOptions,
    ) -> Backward:
        if not node.attrs.get("d_interval", False):
            return super().backward(node, a_lower, a_upper, bounds, in_shapes, out_shape, options)
        dtype = bounds[0][0].dtype
        (dl, du), (hl, hu) = ((lo.double(), up.double()) for lo, up in bounds)
        du, hu = torch.maximum(du, dl), torch.maximum(hu, hl)
        planes = interval_factor_planes(dl, du, hl, hu)
        reach_d = torch.maximum(dl.abs(), du.abs())
        reach_h = torch.maximum(hl.abs(), hu.abs())
        planes = outward(planes, reach_d, reach_h, dtype)
        return _two_input_backward(planes, a_lower, a_upper, in_shapes)

    def summary(self, node: Node) -> str:
        return "grad_mul(d, h)"


GRAD_MUL = GradientProductOp("grad_mul", OpKind.RELAXED, names=Names())

OPS = (GRAD_MUL,)

__all__ = ["GRAD_MUL", "OPS", "GradientProductOp", "interval_factor_planes"]
