"""Concatenation of computed tensors along one per-sample axis (branches joined, several
outputs packed into one). Linear: the transpose splits the coefficients back into the pieces.
Node: inputs ``x1 .. xk``; attr ``axis`` (per-sample, negative counts from the end)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


def _axis(node: Node, rank: int) -> int:
    axis = int(node.attrs.get("axis", 0))
    if not -rank <= axis < rank:
        raise InputError(f"concat axis {axis} is out of range for rank {rank}")
    return axis % rank


@dataclass(frozen=True)
class ConcatOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if not in_shapes:
            raise InputError("concat takes at least one input")
        rank = len(in_shapes[0])
        if rank == 0:
            raise InputError("concat needs inputs of rank >= 1")
        axis = _axis(node, rank)
        first = in_shapes[0]
        for shape in in_shapes[1:]:
            same_rest = shape[:axis] + shape[axis + 1 :] == first[:axis] + first[axis + 1 :]
            if len(shape) != rank or not same_rest:
                raise InputError(
                    f"concat on axis {axis}: input shapes {in_shapes} differ off that axis"
                )
        total = sum(s[axis] for s in in_shapes)
        return (*first[:axis], total, *first[axis + 1 :])

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=1 + _axis(node, xs[0].dim() - 1))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        dim = 1 + _axis(node, bounds[0][0].dim() - 1)
        return torch.cat([b[0] for b in bounds], dim), torch.cat([b[1] for b in bounds], dim)

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        axis = _axis(node, len(out_shape))
        return list(torch.split(a, [s[axis] for s in in_shapes], dim=2 + axis))

    def summary(self, node: Node) -> str:
        return f"concat({len(node.inputs)} inputs, axis {node.attrs.get('axis', 0)})"


CONCAT = ConcatOp(
    "concat",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(
        onnx=("Concat",),
        torch=("cat", "concat", "concatenate"),
        keras=("Concatenate", "concatenate"),
    ),
)

OPS = (CONCAT,)

__all__ = ["CONCAT", "OPS"]
