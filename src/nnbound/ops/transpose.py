"""A permutation of the per-sample axes (ONNX ``Transpose``, torch ``permute`` /
``transpose``, Keras ``Permute``): linear, with the inverse permutation as its transpose.
Node attr: ``perm`` (a permutation of ``0 .. rank - 1``; per-sample axes, so an ONNX ``perm``
that keeps the batch axis first loses its leading 0 and every other entry drops by one)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


def _perm(node: Node, rank: int) -> tuple[int, ...]:
    raw = node.attrs.get("perm")
    if raw is None:
        return tuple(reversed(range(rank)))  # ONNX's default: reverse the axes
    perm = tuple(int(p) for p in raw)
    if sorted(perm) != list(range(rank)):
        raise InputError(f"transpose perm {perm} is not a permutation of {rank} axes")
    return perm


def _permute(t: Tensor, perm: tuple[int, ...], lead: int) -> Tensor:
    return t.permute(*range(lead), *(lead + p for p in perm))


@dataclass(frozen=True)
class TransposeOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"transpose takes one input, got {len(in_shapes)}")
        shape = in_shapes[0]
        return tuple(shape[p] for p in _perm(node, len(shape)))

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return _permute(xs[0], _perm(node, xs[0].dim() - 1), 1)

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        perm = _perm(node, lo.dim() - 1)
        return _permute(lo, perm, 1), _permute(up, perm, 1)

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        perm = _perm(node, len(in_shapes[0]))
        inverse = tuple(sorted(range(len(perm)), key=perm.__getitem__))
        return [_permute(a, inverse, 2)]

    def summary(self, node: Node) -> str:
        return f"transpose(perm {node.attrs.get('perm')})"


TRANSPOSE = TransposeOp(
    "transpose",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(
        onnx=("Transpose",),
        torch=("permute", "transpose", "t", "swapaxes", "swapdims", "movedim"),
        keras=("Permute",),
    ),
)

OPS = (TRANSPOSE,)

__all__ = ["OPS", "TRANSPOSE"]
