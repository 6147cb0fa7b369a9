"""Linear operators whose behaviour is a chain layer record's (:mod:`nnbound.network.layers`).

The chain IR's Dense, Conv2d, AvgPool2d, Flatten, Reshape and Normalize records already hold
forward, ``forward_abs`` (``|L| r``), the exact transpose and the bias map; the graph operator
builds the record from the node (``params`` and ``attrs`` are its fields) and delegates, so
the chain and the graph share one implementation of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.network.layers import LinearLayer
from nnbound.ops.base import Interval, Op, OpKind


@dataclass(frozen=True)
class LayerOp(Op):
    """A one-input linear operator backed by a layer record type ``layer_type``."""

    layer_type: Callable[..., LinearLayer] | None = None

    def layer(self, node: Node) -> LinearLayer:
        assert self.layer_type is not None
        return self.layer_type(**node.params, **node.attrs)

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"{self.name} takes one input, got {len(in_shapes)}")
        return self.layer(node).out_shape(in_shapes[0])

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return self.layer(node).forward(xs[0])

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        layer = self.layer(node)
        lo, up = bounds[0]
        mid = layer.forward((up + lo) / 2)
        rad = layer.forward_abs((up - lo) / 2)
        return mid - rad, mid + rad

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        return [self.layer(node).transpose(a, in_shapes[0])]

    def bias(self, node: Node, out_shape: Shape) -> Tensor | None:
        return self.layer(node).bias_map(out_shape)

    def summary(self, node: Node) -> str:
        from nnbound.network.network import layer_summary

        return layer_summary(self.layer(node))


def layer_op(
    name: str, layer_type: Callable[..., LinearLayer], **names: tuple[str, ...]
) -> LayerOp:
    """A :class:`LayerOp` named ``name`` with its framework ``names``."""
    from nnbound.ops.base import Names

    return LayerOp(name, OpKind.LINEAR, names=Names(**names), layer_type=layer_type)


__all__ = ["LayerOp", "layer_op"]
