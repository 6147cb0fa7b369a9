"""The element-wise activation contract shared by the activation families.

An :class:`ActivationOp` is an ``ELEMENTWISE`` operator: a torch function and a relaxation
object (:mod:`nnbound.relax`) that gives sound lines, the output interval and the derivative
interval on ``[l, u]``. Node attrs: ``alpha`` where the family has a parameter (the leaky
slope, the ELU scale, the bounded ReLU's cap). A family file defines its ops with
:func:`activation_op` and lists them in ``OPS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, RelaxOptions, Traits
from nnbound.relax.base import Relaxation


@dataclass(frozen=True)
class ActivationOp(Op):
    """An element-wise activation.

    Attributes:
        function: ``alpha -> f`` (the torch function for the node's parameter).
        make_relaxation: ``(alpha, options) -> Relaxation``; raises UnsupportedError for a
            parameter it cannot relax soundly.
        default_alpha: the parameter when the node has none.
    """

    function: Callable[[float], Callable[[Tensor], Tensor]] | None = None
    make_relaxation: Callable[[float, RelaxOptions], Relaxation] | None = None
    default_alpha: float = 0.0

    def alpha(self, node: Node) -> float:
        return float(node.attrs.get("alpha", self.default_alpha))

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"{self.name} takes one input, got {len(in_shapes)}")
        return in_shapes[0]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        assert self.function is not None
        return self.function(self.alpha(node))(xs[0])

    def relaxation(self, node: Node, options: RelaxOptions) -> Relaxation:
        assert self.make_relaxation is not None
        try:
            return self.make_relaxation(self.alpha(node), options)
        except InputError as exc:
            raise InputError(f"{node.where}: {exc}") from None

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        from nnbound.ops.registry import DEFAULT_OPTIONS

        return self.relaxation(node, DEFAULT_OPTIONS).interval(*bounds[0])

    def summary(self, node: Node) -> str:
        return f"{self.name}(alpha={self.alpha(node):g})" if "alpha" in node.attrs else self.name


def activation_op(
    name: str,
    function: Callable[[float], Callable[[Tensor], Tensor]],
    make_relaxation: Callable[[float, RelaxOptions], Relaxation],
    traits: Traits,
    names: Names,
    default_alpha: float = 0.0,
) -> ActivationOp:
    """An :class:`ActivationOp` (a family file's one-liner per activation)."""
    return ActivationOp(
        name,
        OpKind.ELEMENTWISE,
        traits=traits,
        names=names,
        function=function,
        make_relaxation=make_relaxation,
        default_alpha=default_alpha,
    )


__all__ = ["ActivationOp", "activation_op"]
