"""Sums and differences of computed tensors (residual connections), plus an optional constant.

``add`` is ``x1 + ... + xk + constant`` and ``sub`` is ``x - y + constant``, with numpy
broadcasting over the per-sample shapes (a tensor of lower rank gains leading axes after the
batch axis). Both are linear, so the backward engine needs only the transpose: each input
gets the output's coefficients (negated for ``y`` of ``sub``), summed over the axes it was
broadcast along, which is the exact adjoint of the broadcast. Node: inputs ``x1 .. xk`` for
``add`` (``k >= 1``) and ``x, y`` for ``sub``; param ``constant`` (optional, per-sample
shape: importers drop the batch axis of an ONNX constant).

The broadcasting helpers here also serve :mod:`nnbound.ops.scale`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


def broadcast_shape(shapes: Sequence[Shape], what: str) -> Shape:
    """The numpy broadcast of per-sample ``shapes``; InputError naming ``what`` otherwise."""
    try:
        return tuple(int(s) for s in np.broadcast_shapes(*shapes))
    except ValueError:
        raise InputError(f"{what} shapes {', '.join(map(str, shapes))} do not broadcast") from None


def align(t: Tensor, lead: int, rank: int) -> Tensor:
    """``t`` (``lead`` leading axes, then a per-sample shape) with size-1 axes inserted after
    the leading ones up to per-sample rank ``rank`` (so torch broadcasts per sample, never
    across the batch axis)."""
    missing = rank - (t.dim() - lead)
    if missing <= 0:
        return t
    return t.reshape(*t.shape[:lead], *([1] * missing), *t.shape[lead:])


def unbroadcast(a: Tensor, in_shape: Shape, lead: int = 2) -> Tensor:
    """The adjoint of broadcasting ``in_shape`` up to ``a``'s per-sample shape: ``a``
    (``lead`` leading axes, then the broadcast shape) summed over the axes ``in_shape`` lacks
    or has as 1, returned as ``(*a.shape[:lead], *in_shape)``."""
    missing = a.dim() - lead - len(in_shape)
    if missing > 0:
        a = a.sum(dim=tuple(range(lead, lead + missing)))
    ones = tuple(lead + i for i, s in enumerate(in_shape) if s == 1 and a.shape[lead + i] != 1)
    if ones:
        a = a.sum(dim=ones, keepdim=True)
    return a.reshape(*a.shape[:lead], *in_shape)


def _shapes_with_constant(node: Node, in_shapes: list[Shape]) -> list[Shape]:
    const = node.params.get("constant")
    return [*in_shapes, tuple(const.shape)] if const is not None else list(in_shapes)


def _constant(node: Node) -> Tensor | None:
    return node.params.get("constant")


@dataclass(frozen=True)
class AddOp(Op):
    """``x1 + ... + xk + constant`` (``sign`` ``-1`` on the second input: ``sub``)."""

    subtract: bool = False

    def _signs(self, k: int) -> list[float]:
        return [1.0, -1.0] if self.subtract else [1.0] * k

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if self.subtract and len(in_shapes) != 2:
            raise InputError(f"sub takes two inputs (x - y), got {len(in_shapes)}")
        if not in_shapes:
            raise InputError("add takes at least one input")
        extra = set(node.params) - {"constant"}
        if extra:
            raise InputError(f"{self.name} has unknown params {sorted(extra)}")
        return broadcast_shape(_shapes_with_constant(node, in_shapes), self.name)

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        rank = max(x.dim() - 1 for x in xs)
        const = _constant(node)
        if const is not None:
            rank = max(rank, const.dim())
        out: Tensor | None = None
        for sign, x in zip(self._signs(len(xs)), xs, strict=True):
            term = align(x, 1, rank)
            out = term if out is None else (out + term if sign > 0 else out - term)
        assert out is not None
        return out + const if const is not None else out

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        rank = max(b[0].dim() - 1 for b in bounds)
        const = _constant(node)
        if const is not None:
            rank = max(rank, const.dim())
        lo: Tensor | None = None
        up: Tensor | None = None
        for sign, (b_lo, b_up) in zip(self._signs(len(bounds)), bounds, strict=True):
            b_lo, b_up = align(b_lo, 1, rank), align(b_up, 1, rank)
            if sign < 0:
                b_lo, b_up = -b_up, -b_lo
            lo = b_lo if lo is None else lo + b_lo
            up = b_up if up is None else up + b_up
        assert lo is not None and up is not None
        if const is not None:
            lo, up = lo + const, up + const
        return lo, up

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for sign, shape in zip(self._signs(len(in_shapes)), in_shapes, strict=True):
            a_i = unbroadcast(a, shape)
            out.append(a_i if sign > 0 else -a_i)
        return out

    def bias(self, node: Node, out_shape: Shape) -> Tensor | None:
        return _constant(node)

    def summary(self, node: Node) -> str:
        const = _constant(node)
        text = f"{self.name}({len(node.inputs)} inputs"
        if const is not None:
            text += f", constant {tuple(const.shape)}"
        return text + ")"


ADD = AddOp(
    "add",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(
        onnx=("Add", "Sum"),
        torch=("add", "add_", "__add__", "__radd__", "__iadd__", "iadd"),
        keras=("Add", "add"),
    ),
)
SUB = AddOp(
    "sub",
    OpKind.LINEAR,
    names=Names(
        onnx=("Sub",),
        torch=("sub", "sub_", "subtract", "__sub__", "__isub__", "isub"),
        keras=("Subtract", "subtract"),
    ),
    subtract=True,
)

OPS = (ADD, SUB)

__all__ = ["ADD", "OPS", "SUB", "align", "broadcast_shape", "unbroadcast"]
