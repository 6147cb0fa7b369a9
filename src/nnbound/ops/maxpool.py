"""Max pooling: relaxed per window from its inputs' bounds (``x_j <= y <= x_j + gap`` or the
constant ``max u``; see :mod:`nnbound.relax.maxpool`); its interval is exact (monotone).
Node attrs: ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``ceil_mode``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.network.layers import MaxPool2d
from nnbound.network.network import layer_summary
from nnbound.ops.base import Backward, Interval, Names, Op, OpKind, RelaxOptions, Traits
from nnbound.relax.maxpool import maxpool_backward, maxpool_lines


@dataclass(frozen=True)
class MaxPoolOp(Op):
    def layer(self, node: Node) -> MaxPool2d:
        return MaxPool2d(**node.attrs)

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"maxpool2d takes one input, got {len(in_shapes)}")
        return self.layer(node).out_shape(in_shapes[0])

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return self.layer(node).forward(xs[0])

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        pool = self.layer(node)
        return pool.forward(bounds[0][0]), pool.forward(bounds[0][1])

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
        lines = maxpool_lines(self.layer(node), in_shapes[0], *bounds[0])
        lo = up = c_lo = c_up = None
        if a_lower is not None:
            lo, c_lo = maxpool_backward(a_lower, lines, in_shapes[0], upper=False)
        if a_upper is not None:
            up, c_up = maxpool_backward(a_upper, lines, in_shapes[0], upper=True)
        return Backward([lo], [up], c_lo, c_up)

    def summary(self, node: Node) -> str:
        return layer_summary(self.layer(node))


MAXPOOL2D = MaxPoolOp(
    "maxpool2d",
    OpKind.RELAXED,
    traits=Traits(monotone=True, lipschitz=None),
    names=Names(
        onnx=("MaxPool", "GlobalMaxPool"),
        torch=("MaxPool2d", "max_pool2d", "max_pool2d_with_indices"),
        keras=("MaxPooling2D", "GlobalMaxPooling2D"),
    ),
)

OPS = (MAXPOOL2D,)
