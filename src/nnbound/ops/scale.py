"""``y = x * scale + shift`` with constant ``scale`` / ``shift`` broadcast against ``x``.

One operator covers every element-wise affine map by constants: an unfused batch norm
(per-channel ``scale`` of shape ``(C, 1, 1)``), ``Mul`` / ``Div`` by a constant (``Div`` by
``c`` is ``scale = 1 / c``), ``Neg`` (``scale = -1``) and ``Add`` of a constant to ``Mul``'s
output. Unlike :mod:`nnbound.ops.normalize` it allows a zero or negative scale. Node: params
``scale``, ``shift`` (each optional, per-sample shapes broadcast with ``x`` numpy-style).

The interval is the exact image of the input box: per entry the smaller and the larger of
``lo * scale`` and ``up * scale``. That is what centre/radius with ``|scale|`` gives in exact
arithmetic, and in floating point it brackets the forward pass itself, because rounding is
monotone (``lo <= x`` gives ``fl(lo * s) <= fl(x * s)`` for ``s >= 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.add import align, broadcast_shape, unbroadcast
from nnbound.ops.base import Interval, Names, Op, OpKind


def _rank(node: Node, x_rank: int) -> int:
    return max([x_rank, *(t.dim() for t in node.params.values())])


@dataclass(frozen=True)
class ScaleOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"scale takes one input, got {len(in_shapes)}")
        extra = set(node.params) - {"scale", "shift"}
        if extra:
            raise InputError(f"scale has unknown params {sorted(extra)}")
        shapes = [in_shapes[0], *(tuple(t.shape) for t in node.params.values())]
        return broadcast_shape(shapes, "scale input / scale / shift")

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        x = align(xs[0], 1, _rank(node, xs[0].dim() - 1))
        scale, shift = node.params.get("scale"), node.params.get("shift")
        if scale is not None:
            x = x * scale
        if shift is not None:
            x = x + shift
        return x

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        rank = _rank(node, lo.dim() - 1)
        lo, up = align(lo, 1, rank), align(up, 1, rank)
        scale, shift = node.params.get("scale"), node.params.get("shift")
        if scale is not None:
            a, b = lo * scale, up * scale
            lo, up = a.minimum(b), a.maximum(b)
        if shift is not None:
            lo, up = lo + shift, up + shift
        return lo, up

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        scale = node.params.get("scale")
        if scale is not None:
            a = a * scale
        return [unbroadcast(a, in_shapes[0])]

    def bias(self, node: Node, out_shape: Shape) -> Tensor | None:
        return node.params.get("shift")

    def summary(self, node: Node) -> str:
        parts = [f"{k} {tuple(t.shape)}" for k, t in node.params.items()]
        return f"scale({', '.join(parts) or 'identity'})"


SCALE = ScaleOp(
    "scale",
    OpKind.LINEAR,
    names=Names(
        onnx=("Mul", "Div", "Neg", "BatchNormalization"),
        torch=(
            "mul",
            "mul_",
            "__mul__",
            "__rmul__",
            "div",
            "div_",
            "__truediv__",
            "neg",
            "__neg__",
            "BatchNorm1d",
            "BatchNorm2d",
            "batch_norm",
            "_native_batch_norm_legit_no_training",
        ),
        keras=("BatchNormalization", "Rescaling"),
    ),
)

OPS = (SCALE,)

__all__ = ["OPS", "SCALE"]
