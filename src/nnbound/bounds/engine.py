"""The backward (CROWN-family) engine over a computation graph.

A linear bound of ``A . t + c`` for a tensor ``t`` of the graph is carried back node by node
in reverse topological order to the graph input, where the input set concretizes it
(``||A||_q * eps`` for an Lp ball). Each tensor collects the coefficients of all its consumers
before its producer is visited (a residual tensor gets the sum of both branches'
coefficients), and each operator maps the coefficients on its output to its inputs by its
kind (:mod:`nnbound.ops.base`): linear operators by their transpose plus a constant from the
bias, element-wise activations by their relaxation lines (the upper line where a coefficient
is positive for an upper bound, the lower line elsewhere, and the other way round for a lower
bound), other operators by their own ``backward`` from their inputs' bounds.

The lower and the upper bound are carried separately; while both sides hold the very same
tensor (linear operators, Fast-Lin's parallel lines) one product serves both.

Which bounds the relaxations use is the caller's business (:mod:`nnbound.bounds.graph_bounds`
computes them on demand, IBP-intersected, only for unstable entries); ``line_hook`` lets
alpha-CROWN substitute optimisable lines. Nothing here stores state between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nnbound.bounds import patches_rules
from nnbound.bounds.interval import box_concretize
from nnbound.bounds.linear import through_lines
from nnbound.bounds.patches import Coefficients, Patches
from nnbound.network.graph import Graph, Node, Shape
from nnbound.ops.base import Interval, Op, OpKind, RelaxOptions
from nnbound.ops.registry import get_op
from nnbound.relax.base import LinearRelaxation
from nnbound.sets.box import Box, InputSet
from nnbound.sets.lp_ball import LpBall

LineHook = Callable[[Node, LinearRelaxation, Interval], LinearRelaxation]
"""``(node, default lines, input bounds) -> lines`` used instead of the default (alpha-CROWN's
optimised slopes: tensors ``(N, S, *shape)`` per bounded quantity, or ``(N, *shape)``)."""

CoefHook = Callable[[str, Tensor | None, Tensor | None], tuple[Tensor | None, Tensor | None]]
"""``(tensor, a_lower, a_upper) -> (a_lower, a_upper)``: rewrites the coefficients a tensor
collected from all its consumers before they go on to its producer (beta-CROWN adds the
multipliers of split constraints on the tensor here)."""


@dataclass(eq=False)
class BoundState:
    """The bounds one engine run relaxes with.

    Attributes:
        graph: the graph.
        input_set: the input set (``N`` rows).
        options: the relaxation choices.
        bounds: known element-wise bounds ``{tensor: (lower, upper)}``, each ``(N, *shape)``;
            every input of an element-wise or relaxed node the backward pass reaches must be
            here.
        line_hook: optional override of element-wise relaxation lines (see :data:`LineHook`).
        coef_hook: optional rewrite of each computed tensor's coefficients (see
            :data:`CoefHook`).
        checkpoint: optional callable run before each node of a backward pass; it may raise
            to abandon the pass (a verifier's time limit), nothing is left half-updated.
        patches: start intermediate-bound passes on image tensors as
            :class:`~nnbound.bounds.patches.Patches` (``False``: dense coefficients
            throughout; same bounds up to rounding, slower on CNNs).
    """

    graph: Graph
    input_set: InputSet
    options: RelaxOptions
    bounds: dict[str, Interval] = field(default_factory=dict)
    line_hook: LineHook | None = None
    coef_hook: CoefHook | None = None
    checkpoint: Callable[[], None] | None = None
    patches: bool = True
    _lines: dict[str, LinearRelaxation] = field(default_factory=dict)

    def lines(self, node: Node) -> LinearRelaxation:
        """The relaxation lines of element-wise ``node`` from its input's bounds (cached)."""
        cached = self._lines.get(node.output)
        if cached is None:
            box = self.bounds[node.inputs[0]]
            cached = get_op(node.op, node).relaxation(node, self.options).linear(*box)
            self._lines[node.output] = cached
        if self.line_hook is not None:
            return self.line_hook(node, cached, self.bounds[node.inputs[0]])
        return cached

    def rows(self, rows: Tensor) -> BoundState:
        """The same state restricted to input-set rows ``rows``."""
        sub = BoundState(
            self.graph,
            self.input_set.rows(rows),
            self.options,
            {k: (lo[rows], up[rows]) for k, (lo, up) in self.bounds.items()},
            self.line_hook,
            self.coef_hook,
            self.checkpoint,
            self.patches,
        )
        for k, rl in self._lines.items():
            sub._lines[k] = LinearRelaxation(
                rl.lower_slope[rows], rl.lower_bias[rows], rl.upper_slope[rows], rl.upper_bias[rows]
            )
        return sub

    def forget_lines(self, tensors: list[str] | None = None) -> None:
        """Drop cached lines (after the bounds they came from changed)."""
        if tensors is None:
            self._lines.clear()
        for t in tensors or ():
            self._lines.pop(t, None)


def _contract(a: Coefficients, b: Tensor) -> Tensor:
    """Sum of ``a * b`` over every axis after the first two, ``b`` (broadcastable to ``a``'s
    trailing shape) shared by every row: one matrix-vector product, no ``a``-sized temporary."""
    if isinstance(a, Patches):
        return a.contract(b)
    flat = a.reshape(*a.shape[:2], -1)
    vec = b.to(device=a.device, dtype=a.dtype).expand(a.shape[2:]).reshape(-1)
    return flat @ vec


def _add(x: Coefficients | None, y: Coefficients | None) -> Coefficients | None:
    if x is None:
        return y
    if y is None:
        return x
    if isinstance(x, Patches) and isinstance(y, Patches):
        total = x.add(y)
        if total is not None:
            return total
    return _dense(x) + _dense(y)


def _dense(a: Coefficients) -> Tensor:
    return a.to_dense() if isinstance(a, Patches) else a


def _dense_pair(
    a_lo: Coefficients | None, a_up: Coefficients | None
) -> tuple[Tensor | None, Tensor | None]:
    """Both sides dense, still one tensor where they shared one."""
    up = _dense(a_up) if a_up is not None else None
    if a_lo is a_up:
        return up, up
    return (_dense(a_lo) if a_lo is not None else None), up


class _Coefficients:
    """Coefficients collected per tensor, lower and upper side, keeping shared tensors shared
    (one product then serves both sides)."""

    def __init__(self) -> None:
        self._acc: dict[str, tuple[Coefficients | None, Coefficients | None]] = {}

    def add(self, name: str, lo: Coefficients | None, up: Coefficients | None) -> None:
        if lo is None and up is None:
            return
        if name not in self._acc:
            self._acc[name] = (lo, up)
            return
        old_lo, old_up = self._acc[name]
        if old_lo is old_up and lo is up:
            total = _add(old_lo, lo)
            self._acc[name] = (total, total)
        else:
            self._acc[name] = (_add(old_lo, lo), _add(old_up, up))

    def pop(self, name: str) -> tuple[Coefficients | None, Coefficients | None] | None:
        return self._acc.pop(name, None)


def backward(
    state: BoundState,
    target: str,
    a: Coefficients,
    const: Tensor,
    *,
    lower: bool = True,
    upper: bool = True,
    keep: frozenset[str] = frozenset(),
    stop: frozenset[str] = frozenset(),
) -> tuple[Tensor | None, Tensor | None, dict[str, tuple[Tensor | None, Tensor | None]]]:
    """Bounds of ``a . target + const`` over the input set.

    Args:
        state: the bounds the relaxations use (see :class:`BoundState`).
        target: the tensor bounded.
        a: ``(N, S, *shape of target)`` coefficients, or :class:`Patches` on an image tensor
            (carried as patches through the operators that keep them so, dense after).
        const: ``(N, S)`` constant.
        lower, upper: which side(s) to compute (the other is returned as ``None``).
        keep: tensors whose collected coefficients to return (e.g. ReLU outputs for a
            branching score, the input for an attack's starting point).
        stop: tensors where the pass ends: their coefficients are concretized over their
            interval bounds in ``state.bounds`` instead of going on to their producers (IBP
            with the linear layers after the last relaxed node folded into the spec).

    Returns:
        ``(lower, upper, kept)``: ``(N, S)`` each (or ``None``), and the coefficients
        ``{tensor: (a_lower, a_upper)}`` each tensor in ``keep`` received.
    """
    graph = state.graph
    shapes = graph.shapes
    acc = _Coefficients()
    acc.add(target, a if lower else None, a if upper else None)
    c_lo = const if lower else None
    c_up = const if upper else None
    kept: dict[str, tuple[Tensor | None, Tensor | None]] = {}
    for node in reversed(graph.ancestors(target)):
        pair = acc.pop(node.output)
        if pair is None:
            continue
        if state.checkpoint is not None:
            state.checkpoint()
        a_lo, a_up = pair
        op = get_op(node.op, node)
        in_shapes = [shapes[i] for i in node.inputs]
        out_shape = shapes[node.output]
        if (
            (isinstance(a_lo, Patches) or isinstance(a_up, Patches))
            and state.coef_hook is None
            and node.output not in keep
            and node.output not in stop
        ):
            step = _patches_step(state, node, op, a_lo, a_up, c_lo, c_up, in_shapes, out_shape)
            if step is not None:
                c_lo, c_up, new_lo, new_up = step
                for name, lo_i, up_i in zip(node.inputs, new_lo, new_up, strict=True):
                    acc.add(name, lo_i, up_i)
                continue
        a_lo, a_up = _dense_pair(a_lo, a_up)
        if state.coef_hook is not None:
            a_lo, a_up = state.coef_hook(node.output, a_lo, a_up)
        if node.output in keep:
            kept[node.output] = (a_lo, a_up)
        if node.output in stop:
            box = state.bounds[node.output]
            if c_lo is not None and a_lo is not None:
                c_lo = box_concretize(a_lo, c_lo, *box)[0]
            if c_up is not None and a_up is not None:
                c_up = box_concretize(a_up, c_up, *box)[1]
            continue
        if op.kind is OpKind.LINEAR:
            same = a_lo is a_up
            c_lo, c_up = _bias_shift(op, node, out_shape, a_lo, a_up, c_lo, c_up)
            none: list[Tensor | None] = [None] * len(node.inputs)
            new_up = op.transpose(node, a_up, in_shapes, out_shape) if a_up is not None else none
            if same:
                new_lo = new_up
            else:
                new_lo = (
                    op.transpose(node, a_lo, in_shapes, out_shape) if a_lo is not None else none
                )
        elif op.kind is OpKind.ELEMENTWISE:
            a_lo, c_lo, a_up, c_up = through_lines(a_lo, c_lo, a_up, c_up, state.lines(node))
            new_lo, new_up = [a_lo], [a_up]
        else:
            bw = op.backward(
                node,
                a_lo,
                a_up,
                [state.bounds[i] for i in node.inputs],
                in_shapes,
                out_shape,
                state.options,
            )
            new_lo, new_up = bw.lower, bw.upper
            if c_lo is not None and bw.const_lower is not None:
                c_lo = c_lo + bw.const_lower
            if c_up is not None and bw.const_upper is not None:
                c_up = c_up + bw.const_upper
        for name, lo_i, up_i in zip(node.inputs, new_lo, new_up, strict=True):
            acc.add(name, lo_i, up_i)
    pair = acc.pop(graph.input_name)
    if pair is not None and graph.input_name not in keep:
        ends = _patches_at_input(state.input_set, pair, c_lo, c_up)
        if ends is not None:
            return ends[0], ends[1], kept
    a_lo, a_up = _dense_pair(*pair) if pair is not None else (None, None)
    if graph.input_name in keep and pair is not None:
        kept[graph.input_name] = (a_lo, a_up)
    out_lo = out_up = None
    if c_lo is not None:
        out_lo = state.input_set.concretize(a_lo, c_lo)[0] if a_lo is not None else c_lo
    if c_up is not None:
        out_up = state.input_set.concretize(a_up, c_up)[1] if a_up is not None else c_up
    return out_lo, out_up, kept


def _patches_at_input(
    input_set: InputSet,
    pair: tuple[Coefficients | None, Coefficients | None],
    c_lo: Tensor | None,
    c_up: Tensor | None,
) -> tuple[Tensor | None, Tensor | None] | None:
    """The pass's bounds where it reaches a box or an Lp ball input with patches on every side
    it carries (each row's window concretized alone: no dense rows), else None. A ball with a
    domain takes the tighter of its own and its box's bounds, as ``LpBall.concretize``."""
    a_lo, a_up = pair
    if not all(a is None or isinstance(a, Patches) for a in (a_lo, a_up)):
        return None
    if isinstance(input_set, Box):
        lo, up = input_set.box()

        def ends(a: Patches) -> tuple[Tensor, Tensor]:
            return a.box_bounds(lo, up)

    elif isinstance(input_set, LpBall):
        ball = input_set
        box = ball.box() if ball.domain is not None else None

        def ends(a: Patches) -> tuple[Tensor, Tensor]:
            lower, upper = a.ball_bounds(ball.center, ball.eps, ball.q)
            if box is not None:
                box_lo, box_up = a.box_bounds(*box)
                lower, upper = torch.maximum(lower, box_lo), torch.minimum(upper, box_up)
            return lower, upper

    else:
        return None
    shared = ends(a_up) if a_lo is a_up and isinstance(a_up, Patches) else None
    out_lo, out_up = c_lo, c_up
    if isinstance(a_lo, Patches) and c_lo is not None:
        out_lo = c_lo + (shared or ends(a_lo))[0]
    if isinstance(a_up, Patches) and c_up is not None:
        out_up = c_up + (shared or ends(a_up))[1]
    return out_lo, out_up


def _bias_shift(
    op: Op,
    node: Node,
    out_shape: Shape,
    a_lo: Coefficients | None,
    a_up: Coefficients | None,
    c_lo: Tensor | None,
    c_up: Tensor | None,
) -> tuple[Tensor | None, Tensor | None]:
    """The constants after linear ``op``'s bias (one product where both sides share ``a``)."""
    bias = op.bias(node, out_shape)
    if bias is None:
        return c_lo, c_up
    shift_up = _contract(a_up, bias) if a_up is not None else None
    if c_up is not None and shift_up is not None:
        c_up = c_up + shift_up
    if c_lo is not None and a_lo is not None:
        c_lo = c_lo + (shift_up if a_lo is a_up and shift_up is not None else _contract(a_lo, bias))
    return c_lo, c_up


def _patches_step(
    state: BoundState,
    node: Node,
    op: Op,
    a_lo: Coefficients | None,
    a_up: Coefficients | None,
    c_lo: Tensor | None,
    c_up: Tensor | None,
    in_shapes: list[Shape],
    out_shape: Shape,
) -> (
    tuple[Tensor | None, Tensor | None, list[Coefficients | None], list[Coefficients | None]] | None
):
    """One node of the pass on patches: ``(c_lo, c_up, inputs' lower, inputs' upper)``, or
    ``None`` where the node has no patches rule (the caller goes on densely)."""
    if op.kind is OpKind.ELEMENTWISE:
        lines = state.lines(node)
        if lines.lower_slope.dim() != 1 + len(out_shape):
            return None  # per-row lines (alpha-CROWN's): read densely
        if not all(a is None or isinstance(a, Patches) for a in (a_lo, a_up)):
            return None
        lo, c_lo, up, c_up = patches_rules.through_lines_patches(
            a_lo,  # type: ignore[arg-type]
            c_lo,
            a_up,  # type: ignore[arg-type]
            c_up,
            lines,
        )
        return c_lo, c_up, [lo], [up]
    if op.kind is not OpKind.LINEAR:
        return None

    def through(a: Coefficients | None) -> list[Coefficients | None] | None:
        if a is None:
            return [None] * len(in_shapes)
        if not isinstance(a, Patches):
            return None
        moved = patches_rules.transpose(op, node, a, in_shapes, out_shape)
        return None if moved is None else list(moved)

    new_up = through(a_up)
    new_lo = new_up if a_lo is a_up else through(a_lo)
    if new_up is None or new_lo is None:
        return None
    c_lo, c_up = _bias_shift(op, node, out_shape, a_lo, a_up, c_lo, c_up)
    return c_lo, c_up, new_lo, new_up


__all__ = ["BoundState", "CoefHook", "LineHook", "backward"]
