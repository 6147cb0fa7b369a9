"""Products of two computed tensors: ``mul`` (element-wise, broadcasting), ``div`` (``x / y``)
and ``matmul`` (batched matrix product), relaxed by McCormick planes.

For ``z = x y`` with ``x`` in ``[lx, ux]`` and ``y`` in ``[ly, uy]`` the McCormick planes

* below: ``P1 = ly x + lx y - lx ly`` and ``P2 = uy x + ux y - ux uy``,
* above: ``P3 = uy x + lx y - lx uy`` and ``P4 = ly x + ux y - ux ly``

hold on the box (``z - P1 = (x - lx)(y - ly) >= 0`` and so on), and so does every convex
combination of the two planes on one side. Per entry we take the combination whose own bound
over the box is best (the lower plane with the largest minimum over the box, the upper plane
with the smallest maximum): that objective is concave and piecewise linear in the mixing weight,
so its optimum is at 0, 1 or where a coefficient changes sign, and it reproduces the exact
interval of ``x y`` (the pair of planes is the convex envelope of ``x y`` on the box). For a
box around 0 this is the averaged plane ``cy x + cx y - ...`` (centres ``c``), for a box of
one sign the single plane exact at the extreme corner (auto_LiRPA always takes ``P1`` / ``P3``).

``div`` is ``x * r`` with ``r = 1 / y``: McCormick planes in ``(x, r)`` on the box
``[lx, ux] x [1 / uy, 1 / ly]``, then ``r`` replaced by its lower or upper line in ``y``
(:func:`nnbound.ops.reciprocal.reciprocal_lines`) by the sign of its plane coefficient. A
denominator whose interval contains 0 is refused.

``matmul`` of per-sample ``(..., m, k) @ (..., k, n)`` (leading axes broadcast) is a sum of
``k`` products per output entry, each relaxed by its own planes.

Planes are built in float64 and their intercepts moved outward by a few ulps of the working
precision. Node: inputs ``x, y``; no params, no attrs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Node, Shape
from nnbound.ops.add import align, broadcast_shape, unbroadcast
from nnbound.ops.base import Backward, Interval, Names, Op, OpKind, RelaxOptions
from nnbound.ops.reciprocal import check_nonzero, reciprocal_interval, reciprocal_lines
from nnbound.ops.relaxed_lines import first_near_best, pick, rows, total, ulp_margin


# -- McCormick planes --------------------------------------------------------------------------
@dataclass(frozen=True)
class Planes:
    """Per-entry planes ``ax_l x + ay_l y + c_l <= z <= ax_u x + ay_u y + c_u``."""

    ax_l: Tensor
    ay_l: Tensor
    c_l: Tensor
    ax_u: Tensor
    ay_u: Tensor
    c_u: Tensor

    def to(self, dtype: torch.dtype) -> Planes:
        return Planes(
            *(t.to(dtype) for t in (self.ax_l, self.ay_l, self.c_l, self.ax_u, self.ay_u, self.c_u))
        )

    def side(self, upper: bool) -> tuple[Tensor, Tensor, Tensor]:
        if upper:
            return self.ax_u, self.ay_u, self.c_u
        return self.ax_l, self.ay_l, self.c_l


def _breakpoint(top: Tensor, span: Tensor) -> Tensor:
    """``top / span`` clamped to ``[0, 1]`` (0 where ``span == 0``): where a coefficient that is
    ``top`` at weight 0 and falls by ``span`` per unit weight crosses 0."""
    safe = torch.where(span == 0, torch.ones_like(span), span)
    return torch.where(span == 0, torch.zeros_like(top), (top / safe).clamp(0.0, 1.0))


def _best_mix(
    p: tuple[Tensor, Tensor, Tensor],
    q: tuple[Tensor, Tensor, Tensor],
    box: tuple[Tensor, Tensor, Tensor, Tensor],
    upper: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The combination ``t p + (1 - t) q`` (``t`` in ``[0, 1]``, per entry) of two planes on one
    side whose bound over the box is best."""
    t = best_mix_weight(p, q, box, upper)
    return q[0] + t * (p[0] - q[0]), q[1] + t * (p[1] - q[1]), q[2] + t * (p[2] - q[2])


def best_mix_weight(
    p: tuple[Tensor, Tensor, Tensor],
    q: tuple[Tensor, Tensor, Tensor],
    box: tuple[Tensor, Tensor, Tensor, Tensor],
    upper: bool,
) -> Tensor:
    """The weight ``t`` of :func:`_best_mix` (the starting point of an optimised mix)."""
    lx, ux, ly, uy = box
    ts = [
        torch.zeros_like(lx),
        torch.ones_like(lx),
        _breakpoint(q[0], q[0] - p[0]),
        _breakpoint(q[1], q[1] - p[1]),
    ]
    t = torch.stack(ts, -1)
    a = q[0].unsqueeze(-1) + t * (p[0] - q[0]).unsqueeze(-1)
    b = q[1].unsqueeze(-1) + t * (p[1] - q[1]).unsqueeze(-1)
    c = q[2].unsqueeze(-1) + t * (p[2] - q[2]).unsqueeze(-1)
    ax = torch.stack([a * lx.unsqueeze(-1), a * ux.unsqueeze(-1)], 0)
    by = torch.stack([b * ly.unsqueeze(-1), b * uy.unsqueeze(-1)], 0)
    value = -(c + ax.amax(0) + by.amax(0)) if upper else c + ax.amin(0) + by.amin(0)
    best = first_near_best(value)
    return t.gather(-1, best)[..., 0]


def mccormick(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Planes:
    """Float64 McCormick planes of ``x y`` on the box (see the module docstring), no margin."""
    box = (lx, ux, ly, uy)
    p1 = (ly, lx, -lx * ly)
    p2 = (uy, ux, -ux * uy)
    p3 = (uy, lx, -lx * uy)
    p4 = (ly, ux, -ux * ly)
    ax_l, ay_l, c_l = _best_mix(p1, p2, box, upper=False)
    ax_u, ay_u, c_u = _best_mix(p3, p4, box, upper=True)
    return Planes(ax_l, ay_l, c_l, ax_u, ay_u, c_u)


def outward(planes: Planes, reach_x: Tensor, reach_y: Tensor, dtype: torch.dtype) -> Planes:
    """Float64 planes with their intercepts moved outward by a few ulps of ``dtype`` (at the
    scale of their terms on the box), cast to ``dtype``."""
    m_l = ulp_margin(dtype, planes.c_l, planes.ax_l * reach_x, planes.ay_l * reach_y)
    m_u = ulp_margin(dtype, planes.c_u, planes.ax_u * reach_x, planes.ay_u * reach_y)
    return Planes(
        planes.ax_l, planes.ay_l, planes.c_l - m_l, planes.ax_u, planes.ay_u, planes.c_u + m_u
    ).to(dtype)


def _reach(lo: Tensor, up: Tensor) -> Tensor:
    return torch.maximum(lo.abs(), up.abs())


def product_interval(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    """The exact interval of ``x y`` on the box (its corners)."""
    corners = torch.stack([lx * ly, lx * uy, ux * ly, ux * uy], 0)
    return corners.amin(0), corners.amax(0)


# -- element-wise products ---------------------------------------------------------------------
def _expand(t: Tensor, rank: int, shape: Shape) -> Tensor:
    """Bounds ``(N, *s)`` broadcast to ``(N, *shape)``."""
    return align(t, 1, rank).expand(t.shape[0], *shape)


def _f64_box(bounds: list[Interval], out_shape: Shape) -> list[Tensor]:
    rank = len(out_shape)
    out = []
    for lo, up in bounds:
        lo64 = _expand(lo.to(torch.float64), rank, out_shape)
        up64 = _expand(up.to(torch.float64), rank, out_shape)
        out += [lo64, torch.maximum(up64, lo64)]
    return out


def _two_input_backward(
    planes: Planes,
    a_lower: Tensor | None,
    a_upper: Tensor | None,
    in_shapes: list[Shape],
) -> Backward:
    """Coefficients on ``x`` and ``y`` and constants from per-entry planes (in the working
    dtype; ``(N, *shape)``, or ``(N, S, *shape)`` per spec row), each input's coefficients
    summed over the axes it was broadcast along."""
    lower: list[Tensor | None] = [None, None]
    upper: list[Tensor | None] = [None, None]
    consts: list[Tensor | None] = [None, None]
    for k, a in enumerate((a_lower, a_upper)):
        if a is None:
            continue
        is_upper = k == 1

        def per_row(t: Tensor, a: Tensor = a) -> Tensor:  # planes may already be per spec row
            return t if t.dim() == a.dim() else rows(t)

        ax_p, ay_p, c_p = (per_row(t) for t in planes.side(is_upper))
        ax_n, ay_n, c_n = (per_row(t) for t in planes.side(not is_upper))
        coef = [
            unbroadcast(pick(a, ax_p, ax_n), in_shapes[0]),
            unbroadcast(pick(a, ay_p, ay_n), in_shapes[1]),
        ]
        consts[k] = total(pick(a, c_p, c_n))
        (upper if is_upper else lower)[:] = coef
    return Backward(lower, upper, consts[0], consts[1])


@dataclass(frozen=True)
class MulOp(Op):
    """``x * y`` (``divide``: ``x / y``) of two computed tensors, broadcasting per sample."""

    divide: bool = False

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 2:
            raise InputError(f"{self.name} takes two inputs (x, y), got {len(in_shapes)}")
        if node.params or node.attrs:
            raise InputError(f"{self.name} takes no params or attrs")
        return broadcast_shape(in_shapes, self.name)

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        rank = max(x.dim() - 1 for x in xs)
        x, y = (align(t, 1, rank) for t in xs)
        return x / y if self.divide else x * y

    def _box(self, node: Node, bounds: list[Interval], out_shape: Shape) -> list[Tensor]:
        lx, ux, ly, uy = _f64_box(bounds, out_shape)
        if self.divide:
            try:
                check_nonzero(ly, uy, "a division by y")
            except UnsupportedError as exc:
                raise self.unsupported(node, str(exc)) from None
            ly, uy = reciprocal_interval(ly, uy)  # r = 1 / y
        return [lx, ux, ly, uy]

    def planes(self, node: Node, bounds: list[Interval], out_shape: Shape) -> Planes:
        """Per-entry planes in ``(x, y)`` bounding the output on the inputs' box (``(N,
        *out_shape)`` each, the working dtype, intercepts moved outward)."""
        dtype = bounds[0][0].dtype
        lx, ux, lr, ur = self._box(node, bounds, out_shape)
        planes = mccormick(lx, ux, lr, ur)
        reach_y = _reach(lr, ur)
        if self.divide:
            ly, uy = _f64_box(bounds, out_shape)[2:]
            r = reciprocal_lines(ly, uy)
            # z >= ax x + ar r + c: r by its lower line where ar >= 0, its upper line elsewhere
            planes = Planes(
                planes.ax_l,
                pick(planes.ay_l, r.lower_slope, r.upper_slope),
                planes.c_l + pick(planes.ay_l, r.lower_bias, r.upper_bias),
                planes.ax_u,
                pick(planes.ay_u, r.upper_slope, r.lower_slope),
                planes.c_u + pick(planes.ay_u, r.upper_bias, r.lower_bias),
            )
            reach_y = _reach(ly, uy)
        return outward(planes, _reach(lx, ux), reach_y, dtype)

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        dtype = bounds[0][0].dtype
        out_shape = broadcast_shape([tuple(b[0].shape[1:]) for b in bounds], self.name)
        if self.divide:
            lx, ux, ly, uy = _f64_box(bounds, out_shape)
            self._box(node, bounds, out_shape)  # refuses a denominator across 0
            corners = torch.stack([lx / ly, lx / uy, ux / ly, ux / uy], 0)
            lo, up = corners.amin(0), corners.amax(0)
        else:
            lo, up = product_interval(*_f64_box(bounds, out_shape))
        m = ulp_margin(dtype, lo, up)
        return (lo - m).to(dtype), (up + m).to(dtype)

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
        planes = self.planes(node, bounds, out_shape)
        return _two_input_backward(planes, a_lower, a_upper, in_shapes)

    def summary(self, node: Node) -> str:
        return f"{self.name}(x, y)"


# -- matrix products ---------------------------------------------------------------------------
def _matmul_shapes(in_shapes: list[Shape]) -> tuple[Shape, int, int, int]:
    """(broadcast leading shape, m, k, n) of per-sample ``(..., m, k) @ (..., k, n)``."""
    if len(in_shapes) != 2:
        raise InputError(f"matmul takes two inputs (x, y), got {len(in_shapes)}")
    xs, ys = in_shapes
    if len(xs) < 2 or len(ys) < 2:
        raise InputError(f"matmul needs per-sample shapes of rank >= 2, got {xs} and {ys}")
    if xs[-1] != ys[-2]:
        raise InputError(f"matmul cannot multiply shapes {xs} and {ys}")
    lead = broadcast_shape([xs[:-2], ys[:-2]], "matmul leading")
    return lead, xs[-2], xs[-1], ys[-1]


@dataclass(frozen=True)
class MatMulOp(Op):
    """``x @ y`` of two computed tensors (per-sample ``(..., m, k) @ (..., k, n)``)."""

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if node.params or node.attrs:
            raise InputError("matmul takes no params or attrs")
        lead, m, _, n = _matmul_shapes(in_shapes)
        return (*lead, m, n)

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        rank = max(x.dim() - 1 for x in xs)
        x, y = (align(t, 1, rank) for t in xs)
        return torch.matmul(x, y)

    def _terms(self, bounds: list[Interval], in_shapes: list[Shape]) -> list[Tensor]:
        """Float64 bounds of ``x[..., i, k]`` and ``y[..., k, j]`` per product term, each
        ``(N, B, m, k, n)`` (``B`` the flattened broadcast leading axes)."""
        lead, m, k, n = _matmul_shapes(in_shapes)
        b = math.prod(lead)
        out = []
        for (lo, up), (mm, nn) in zip(bounds, ((m, k), (k, n)), strict=True):
            for t in (lo, up):
                t = _expand(t.to(torch.float64), len(lead) + 2, (*lead, mm, nn))
                t = t.reshape(t.shape[0], b, mm, nn)
                out.append(t)
        lx, ux, ly, uy = out
        ux, uy = torch.maximum(ux, lx), torch.maximum(uy, ly)
        shape = (lx.shape[0], b, m, k, n)
        return [
            lx.unsqueeze(-1).expand(shape),
            ux.unsqueeze(-1).expand(shape),
            ly.unsqueeze(-3).expand(shape),
            uy.unsqueeze(-3).expand(shape),
        ]

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        in_shapes = [tuple(b[0].shape[1:]) for b in bounds]
        lead, m, _, n = _matmul_shapes(in_shapes)
        dtype = bounds[0][0].dtype
        lo, up = product_interval(*self._terms(bounds, in_shapes))
        lo, up = lo.sum(-2), up.sum(-2)  # over k
        mag = torch.maximum(lo.abs(), up.abs()) * in_shapes[0][-1]
        pad = ulp_margin(dtype, mag)
        shape = (lo.shape[0], *lead, m, n)
        return (lo - pad).to(dtype).reshape(shape), (up + pad).to(dtype).reshape(shape)

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
        lead, m, k, n = _matmul_shapes(in_shapes)
        dtype = bounds[0][0].dtype
        lx, ux, ly, uy = self._terms(bounds, in_shapes)
        planes = outward(mccormick(lx, ux, ly, uy), _reach(lx, ux), _reach(ly, uy), dtype)
        lower: list[Tensor | None] = [None, None]
        upper: list[Tensor | None] = [None, None]
        consts: list[Tensor | None] = [None, None]
        for side, a in enumerate((a_lower, a_upper)):
            if a is None:
                continue
            is_upper = side == 1
            nb, s = a.shape[:2]
            a5 = a.reshape(nb, s, -1, m, n)  # (N, S, B, m, n)
            pos, neg = a5.clamp(min=0), a5.clamp(max=0)
            ax_p, ay_p, c_p = planes.side(is_upper)
            ax_n, ay_n, c_n = planes.side(not is_upper)
            cx = torch.einsum("nsbij,nbikj->nsbik", pos, ax_p) + torch.einsum(
                "nsbij,nbikj->nsbik", neg, ax_n
            )
            cy = torch.einsum("nsbij,nbikj->nsbkj", pos, ay_p) + torch.einsum(
                "nsbij,nbikj->nsbkj", neg, ay_n
            )
            const = torch.einsum("nsbij,nbij->ns", pos, c_p.sum(-2)) + torch.einsum(
                "nsbij,nbij->ns", neg, c_n.sum(-2)
            )
            coef = [
                unbroadcast(cx.reshape(nb, s, *lead, m, k), in_shapes[0]),
                unbroadcast(cy.reshape(nb, s, *lead, k, n), in_shapes[1]),
            ]
            (upper if is_upper else lower)[:] = coef
            consts[side] = const
        return Backward(lower, upper, consts[0], consts[1])

    def summary(self, node: Node) -> str:
        return "matmul(x, y)"


MUL = MulOp(
    "mul",
    OpKind.RELAXED,
    names=Names(
        onnx=("Mul",),
        torch=("mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__", "imul"),
        keras=("Multiply", "multiply"),
    ),
)
DIV = MulOp(
    "div",
    OpKind.RELAXED,
    names=Names(
        onnx=("Div",),
        torch=("div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__"),
    ),
    divide=True,
)
MATMUL = MatMulOp(
    "matmul",
    OpKind.RELAXED,
    names=Names(onnx=("MatMul",), torch=("matmul", "bmm", "__matmul__")),
)

OPS = (MUL, DIV, MATMUL)

__all__ = ["DIV", "MATMUL", "MUL", "OPS", "Planes", "mccormick", "product_interval"]
