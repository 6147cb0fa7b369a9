"""Parameterised relaxations for alpha-CROWN: which nodes have free lines, and the engine hook
that substitutes them.

An element-wise node is *parameterised* when its relaxation object offers
``parametric(lower, upper)`` (:class:`~nnbound.relax.base.ParametricLines`): a family of
sound lines indexed per entry by ``theta`` in ``[0, 1]`` (ReLU / leaky ReLU lower slopes, the
bounded ReLU's kink slopes, tangent points of S-shaped and convex functions). Every value of
``theta`` gives sound lines, so alpha-CROWN may optimise them freely and only has to project
onto ``[0, 1]``. Other nodes (max pooling, relaxed operators, activations without a family)
keep their fixed lines.

Parameters are keyed by :data:`ParamKey` ``(node output, side)`` with side ``"lower"`` or
``"upper"`` (which line of the node the parameter moves). One backward pass reads one
*table* ``{ParamKey: theta (N, S, *shape)}``: each bounded quantity (spec row, or intermediate
neuron bound) has its own parameters, as in Xu et al. 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnbound.network.graph import Graph, Node
from nnbound.ops.base import Interval, OpKind, RelaxOptions
from nnbound.ops.registry import get_op
from nnbound.relax.base import LinearRelaxation, ParametricLines

ParamKey = tuple[str, str]
"""``(output tensor of the element-wise node, "lower" | "upper")``."""

SIDES = ("lower", "upper")


def family(node: Node, options: RelaxOptions, bounds: Interval) -> ParametricLines | None:
    """The parameterised lines of element-wise ``node`` on its input's ``bounds``, or ``None``
    when its relaxation has no free parameter."""
    op = get_op(node.op, node)
    if op.kind is not OpKind.ELEMENTWISE:
        return None
    relax = op.relaxation(node, options)
    make = getattr(relax, "parametric", None)
    return None if make is None else make(*bounds)


def param_sides(node: Node, options: RelaxOptions) -> tuple[str, ...]:
    """Which lines of ``node`` have parameters (``()`` when none): probed on one unstable
    entry, since a family's sides do not depend on the bounds."""
    probe = (
        torch.tensor([-1.0], dtype=torch.float64),
        torch.tensor([2.0], dtype=torch.float64),
    )
    fam = family(node, options, probe)
    if fam is None:
        return ()
    return tuple(
        side
        for side, default in zip(SIDES, (fam.default_lower, fam.default_upper), strict=True)
        if default is not None
    )


def param_keys(graph: Graph, nodes: list[Node], options: RelaxOptions) -> list[ParamKey]:
    """Every parameter of ``nodes`` (in topological order)."""
    return [(node.output, side) for node in nodes for side in param_sides(node, options)]


def defaults(fam: ParametricLines, side: str) -> Tensor:
    """The parameter of ``side`` that gives the relaxation's own lines, ``(N, *shape)``."""
    out = fam.default_lower if side == "lower" else fam.default_upper
    assert out is not None
    return out


class LineTable:
    """The :data:`~nnbound.bounds.engine.LineHook` of one set of bounds: builds each
    parameterised node's family once (from the bounds the engine hands over) and returns the
    lines of the parameters in :attr:`table`, which the caller sets before each backward pass.

    A node without parameters in the table keeps the engine's default lines.
    """

    def __init__(self, options: RelaxOptions) -> None:
        self.options = options
        self.table: dict[ParamKey, Tensor] = {}
        self._families: dict[str, ParametricLines | None] = {}

    def family_of(self, node: Node, bounds: Interval) -> ParametricLines | None:
        if node.output not in self._families:
            self._families[node.output] = family(node, self.options, bounds)
        return self._families[node.output]

    def __call__(self, node: Node, default: LinearRelaxation, bounds: Interval) -> LinearRelaxation:
        lower = self.table.get((node.output, "lower"))
        upper = self.table.get((node.output, "upper"))
        if lower is None and upper is None:
            return default
        fam = self.family_of(node, bounds)
        if fam is None:
            return default
        return fam.make(lower, upper)


__all__ = ["SIDES", "LineTable", "ParamKey", "defaults", "family", "param_keys", "param_sides"]
