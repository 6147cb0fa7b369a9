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

Optional params ``mix_lower`` / ``mix_upper`` (``(N, S, *shape)`` in ``[0, 1]``, one per
bounded quantity) pick a convex combination of two valid planes per side instead of the
default, for alpha-optimised Jacobian bounds (:mod:`nnbound.jacobian.alpha_jacobian`): the two
McCormick planes of that side (``d_interval = False``), or the interval-factor plane (weight
1) and McCormick's in ``(d, h)`` (weight 0, ``d`` then relaxed by its own lines in ``z``)
(``d_interval = True``). A convex combination of planes that hold on the box holds on it.

Planes are built in float64 and moved outward by a few ulps of the working precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Backward, Interval, Names, OpKind, RelaxOptions
from nnbound.ops.bilinear import (
    MulOp,
    Planes,
    _two_input_backward,
    best_mix_weight,
    mccormick,
    outward,
)

MIX_PARAMS = ("mix_lower", "mix_upper")
"""The optional params of a ``grad_mul`` node (see the module docstring)."""

Plane = tuple[Tensor, Tensor, Tensor]
"""``(coefficient on d, coefficient on h, constant)``, float64 ``(N, *shape)``."""


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


def exact_points(planes: Planes, dl: Tensor, du: Tensor) -> Planes:
    """Where the derivative is a point (``dl == du``, a stable neuron) the product is the
    linear map ``dl * h`` exactly: that plane on both sides, with no rounding margin (``dl``
    is already a number of the working dtype)."""
    point = dl == du
    if not bool(point.any()):
        return planes
    dtype = planes.ax_l.dtype
    if planes.ax_l.dim() > point.dim():  # per-row planes
        point, dl = point.unsqueeze(1), dl.unsqueeze(1)
    zero, slope = torch.zeros((), dtype=dtype), dl.to(dtype)
    ax = torch.where(point, zero, planes.ax_l)
    return Planes(
        ax,
        torch.where(point, slope, planes.ay_l),
        torch.where(point, zero, planes.c_l),
        torch.where(point, zero, planes.ax_u),
        torch.where(point, slope, planes.ay_u),
        torch.where(point, zero, planes.c_u),
    )


def _box(bounds: list[Interval]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    (dl, du), (hl, hu) = ((lo.double(), up.double()) for lo, up in bounds)
    return dl, torch.maximum(du, dl), hl, torch.maximum(hu, hl)


def plane_pairs(d_interval: bool, bounds: list[Interval]) -> tuple[tuple[Plane, Plane], ...]:
    """``((p_lower, q_lower), (p_upper, q_upper))``: the two planes each side mixes (weight 1
    on ``p``)."""
    dl, du, hl, hu = _box(bounds)
    if d_interval:
        fac, mc = interval_factor_planes(dl, du, hl, hu), mccormick(dl, du, hl, hu)
        return (
            (fac.side(False), mc.side(False)),
            (fac.side(True), mc.side(True)),
        )
    p1, p2 = (hl, dl, -dl * hl), (hu, du, -du * hu)
    p3, p4 = (hu, dl, -dl * hu), (hl, du, -du * hl)
    return (p1, p2), (p3, p4)


def default_mix(d_interval: bool, bounds: list[Interval]) -> tuple[Tensor, Tensor]:
    """The weights ``(N, *shape)`` that give the default planes (float64)."""
    if d_interval:
        one = torch.ones_like(bounds[0][0], dtype=torch.float64)
        return one, one
    (low, up), box = plane_pairs(False, bounds), _box(bounds)
    return best_mix_weight(*low, box, upper=False), best_mix_weight(*up, box, upper=True)


def _mixed_planes(
    d_interval: bool, bounds: list[Interval], mix_lower: Tensor, mix_upper: Tensor
) -> Planes:
    """Float64 per-row planes ``(N, S, *shape)`` of the weights, moved outward."""
    dtype = bounds[0][0].dtype
    dl, du, hl, hu = _box(bounds)
    sides = []
    for (p, q), theta in zip(plane_pairs(d_interval, bounds), (mix_lower, mix_upper), strict=True):
        t = theta.to(torch.float64).clamp(0.0, 1.0)
        sides.append(tuple(q[k].unsqueeze(1) + t * (p[k] - q[k]).unsqueeze(1) for k in range(3)))
    planes = Planes(*sides[0], *sides[1])
    reach_d = torch.maximum(dl.abs(), du.abs()).unsqueeze(1)
    reach_h = torch.maximum(hl.abs(), hu.abs()).unsqueeze(1)
    return exact_points(outward(planes, reach_d, reach_h, dtype), dl, du)


@dataclass(frozen=True)
class GradientProductOp(MulOp):
    """``d * h`` (see the module docstring)."""

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 2 or in_shapes[0] != in_shapes[1]:
            raise InputError(f"grad_mul takes two inputs (d, h) of one shape, got {in_shapes}")
        if set(node.params) - set(MIX_PARAMS) or set(node.attrs) - {"d_interval"}:
            raise InputError(
                "grad_mul takes only the params mix_lower / mix_upper and the attr d_interval"
            )
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
        d_interval = bool(node.attrs.get("d_interval", False))
        if "mix_lower" in node.params:
            planes = _mixed_planes(
                d_interval, bounds, node.params["mix_lower"], node.params["mix_upper"]
            )
            return _two_input_backward(planes, a_lower, a_upper, in_shapes)
        if not d_interval:
            return super().backward(node, a_lower, a_upper, bounds, in_shapes, out_shape, options)
        dtype = bounds[0][0].dtype
        (dl, du), (hl, hu) = ((lo.double(), up.double()) for lo, up in bounds)
        du, hu = torch.maximum(du, dl), torch.maximum(hu, hl)
        planes = interval_factor_planes(dl, du, hl, hu)
        reach_d = torch.maximum(dl.abs(), du.abs())
        reach_h = torch.maximum(hl.abs(), hu.abs())
        planes = exact_points(outward(planes, reach_d, reach_h, dtype), dl, du)
        out = _two_input_backward(planes, a_lower, a_upper, in_shapes)
        # coefficient 0 on d: handing nothing to d spares the backward pass the forward
        # network behind it (a zero tensor carried through every layer to the input)
        return Backward(
            [None, out.lower[1]], [None, out.upper[1]], out.const_lower, out.const_upper
        )

    def summary(self, node: Node) -> str:
        return "grad_mul(d, h)"


GRAD_MUL = GradientProductOp("grad_mul", OpKind.RELAXED, names=Names())

OPS = (GRAD_MUL,)

__all__ = [
    "GRAD_MUL",
    "MIX_PARAMS",
    "OPS",
    "GradientProductOp",
    "default_mix",
    "interval_factor_planes",
    "plane_pairs",
]
