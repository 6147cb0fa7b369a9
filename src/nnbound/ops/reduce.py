"""Sums and means over per-sample axes (ONNX ``ReduceSum`` / ``ReduceMean``, torch ``sum`` /
``mean``): linear and monotone (the interval is the map of the two box corners, exact). The
transpose copies each output coefficient to every entry it summed (divided by the count for
the mean). Node attrs: ``axes`` (per-sample; ``None`` or empty: every axis), ``keepdims``
(default true, as in ONNX)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


def _axes(node: Node, rank: int) -> tuple[int, ...]:
    raw = node.attrs.get("axes")
    if raw is None or (not isinstance(raw, int) and len(raw) == 0):
        return tuple(range(rank))
    values = (raw,) if isinstance(raw, int) else tuple(int(a) for a in raw)
    for a in values:
        if not -rank <= a < rank:
            raise InputError(f"reduce axis {a} is out of range for rank {rank}")
    axes = tuple(sorted({a % rank for a in values}))
    if len(axes) != len(values):
        raise InputError(f"reduce axes {values} repeat an axis")
    return axes


def _keepdims(node: Node) -> bool:
    return bool(node.attrs.get("keepdims", True))


@dataclass(frozen=True)
class ReduceOp(Op):
    mean: bool = False

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"{self.name} takes one input, got {len(in_shapes)}")
        shape = in_shapes[0]
        axes = _axes(node, len(shape))
        if _keepdims(node):
            return tuple(1 if i in axes else s for i, s in enumerate(shape))
        return tuple(s for i, s in enumerate(shape) if i not in axes)

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        x = xs[0]
        dims = tuple(1 + a for a in _axes(node, x.dim() - 1))
        if self.mean:
            return x.mean(dim=dims, keepdim=_keepdims(node))
        return x.sum(dim=dims, keepdim=_keepdims(node))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        return self.forward(node, bounds[0][0]), self.forward(node, bounds[0][1])

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        shape = in_shapes[0]
        axes = _axes(node, len(shape))
        kept = tuple(1 if i in axes else s for i, s in enumerate(shape))
        out = a.reshape(*a.shape[:2], *kept).expand(*a.shape[:2], *shape)
        if self.mean:
            return [out / math.prod(shape[i] for i in axes)]
        return [out.contiguous()]

    def summary(self, node: Node) -> str:
        return f"{self.name}(axes {node.attrs.get('axes')}, keepdims {_keepdims(node)})"


REDUCE_SUM = ReduceOp(
    "reduce_sum",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(onnx=("ReduceSum",), torch=("sum",)),
)
REDUCE_MEAN = ReduceOp(
    "reduce_mean",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(onnx=("ReduceMean",), torch=("mean",)),
    mean=True,
)

OPS = (REDUCE_SUM, REDUCE_MEAN)

__all__ = ["OPS", "REDUCE_MEAN", "REDUCE_SUM"]
