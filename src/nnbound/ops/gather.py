"""Gather with constant indices along one per-sample axis (ONNX ``Gather``, torch
``index_select`` / ``select``): the output's shape is ``x.shape[:axis] + indices.shape +
x.shape[axis + 1:]``; a scalar index drops the axis. Negative indices count from the end.

Linear: the transpose scatter-adds the coefficients back (``index_add``), so an index taken
twice gets the sum of both copies' coefficients. Node attrs: ``axis`` (per-sample),
``indices`` (an int or a nested tuple of ints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


@dataclass(frozen=True)
class _Plan:
    axis: int  # per-sample, non-negative
    flat: tuple[int, ...]  # non-negative indices, C-order
    index_shape: Shape
    out_shape: Shape


def plan(node: Node, in_shape: Shape) -> _Plan:
    """The axis and indices of ``node`` for an input of shape ``in_shape``."""
    rank = len(in_shape)
    axis = int(node.attrs.get("axis", 0))
    if not -rank <= axis < rank:
        raise InputError(f"gather axis {axis} is out of range for input shape {in_shape}")
    axis %= rank
    if "indices" not in node.attrs:
        raise InputError("gather needs attr 'indices'")
    try:
        idx = torch.tensor(node.attrs["indices"], dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"gather indices are not a nested tuple of ints: {exc}") from None
    size = in_shape[axis]
    if idx.numel() == 0:
        raise InputError("gather indices are empty")
    if bool(((idx < -size) | (idx >= size)).any()):
        raise InputError(f"gather indices out of range for axis {axis} of size {size}")
    idx = idx % size
    index_shape = tuple(int(s) for s in idx.shape)
    out = (*in_shape[:axis], *index_shape, *in_shape[axis + 1 :])
    return _Plan(axis, tuple(int(i) for i in idx.reshape(-1)), index_shape, out)


def _take(x: Tensor, p: _Plan, lead: int) -> Tensor:
    idx = torch.tensor(p.flat, dtype=torch.long, device=x.device)
    y = x.index_select(lead + p.axis, idx)
    return y.reshape(*x.shape[:lead], *p.out_shape)


@dataclass(frozen=True)
class GatherOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"gather takes one input, got {len(in_shapes)}")
        return plan(node, in_shapes[0]).out_shape

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return _take(xs[0], plan(node, tuple(xs[0].shape[1:])), 1)

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        p = plan(node, tuple(lo.shape[1:]))
        return _take(lo, p, 1), _take(up, p, 1)

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        in_shape = in_shapes[0]
        p = plan(node, in_shape)
        lead = a.shape[:2]
        src = a.reshape(*lead, *in_shape[: p.axis], len(p.flat), *in_shape[p.axis + 1 :])
        idx = torch.tensor(p.flat, dtype=torch.long, device=a.device)
        zeros = a.new_zeros(*lead, *in_shape)
        return [zeros.index_add(2 + p.axis, idx, src)]

    def summary(self, node: Node) -> str:
        p = node.attrs.get("indices")
        n = torch.tensor(p).numel() if p is not None else 0
        return f"gather(axis {node.attrs.get('axis', 0)}, {n} indices)"


GATHER = GatherOp(
    "gather",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(onnx=("Gather",), torch=("index_select", "select", "unbind")),
)

OPS = (GATHER,)

__all__ = ["GATHER", "OPS", "plan"]
