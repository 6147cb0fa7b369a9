"""Forward-mode linear bounds of every tensor of a graph over boxes with few free coordinates.

Each tensor ``t`` gets two affine functions of the box's free coordinates ``z in [-1, 1]^K``
(the input is ``x = mid + sum_k rad_k e_k z_k``), ``L(z) <= t(x) <= U(z)`` element-wise;
their extremes over the box are its interval bounds. A linear operator maps the midpoint
function exactly and the half-width function by the absolute value of its matrix
(``W L + W^- (U - L)`` written as ``W M -+ |W| R``); an element-wise activation composes its
relaxation lines with ``L`` and ``U`` by the sign of each slope, a product or quotient of
two computed tensors its McCormick planes term by term; every other operator falls back to
its interval rule (constant functions from then on).

Why: a backward (CROWN) pass costs the number of bounded entries times the network, so a
generator with 30,000-entry feature maps costs minutes per box, while these functions cost
``2 (K + 1)`` columns per tensor -- a few forward passes when the box lets few coordinates
vary (VNN-COMP's GAN and database-index properties: 1-5 of them). Where an operator fell
back, the functions below it are as loose as interval arithmetic: :attr:`ForwardBounds.exact`
names the tensors whose functions never passed through a fallback, for which the bounds are
worth keeping instead of a backward pass.

The arithmetic is the graph's dtype with no outward rounding, as the verifier's float64
passes are: meant for float64 graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nnbound.bounds.work_size import work_elements
from nnbound.network.graph import Graph, Node
from nnbound.ops.add import align, broadcast_shape
from nnbound.ops.base import Interval, Op, OpKind
from nnbound.ops.bilinear import MulOp
from nnbound.ops.registry import DEFAULT_OPTIONS, get_op
from nnbound.sets.box import Box

# The parameters whose signs make a linear operator's matrix (|W| takes their absolute
# values; the other parameters are offsets, which cancel in f(x) - f(0)).
_SIGNED_PARAMS: dict[str, tuple[str, ...]] = {
    "dense": ("weight",),
    "conv2d": ("weight",),
    "conv_transpose2d": ("weight",),
    "scale": ("scale",),
    "normalize": ("std",),
    "avgpool2d": (),
    "flatten": (),
    "reshape": (),
}
# Coefficients one chunk of rows may hold per tensor (rows x K x entries): also the step
# between deadline checks (a float64 transposed conv of a 1,024-box chunk ran 1.5 s).
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class _Affine:
    """Lower and upper affine functions of one tensor: ``lower_a`` / ``upper_a``
    ``(N, K, *shape)`` on the free coordinates, ``lower_c`` / ``upper_c`` ``(N, *shape)``."""

    lower_a: Tensor
    lower_c: Tensor
    upper_a: Tensor
    upper_c: Tensor

    def interval(self) -> Interval:
        return (
            self.lower_c - self.lower_a.abs().sum(1),
            self.upper_c + self.upper_a.abs().sum(1),
        )

    @staticmethod
    def constant(lo: Tensor, up: Tensor, k: int) -> _Affine:
        zeros = lo.new_zeros(lo.shape[0], k, *lo.shape[1:])
        return _Affine(zeros, lo, zeros, up)


@dataclass(frozen=True)
class ForwardBounds:
    """Interval bounds of every tensor (``(N, *shape)`` each, the input's included) and the
    names of those whose affine functions never fell back to an interval rule."""

    pre: dict[str, Interval]
    exact: frozenset[str]

    def exact_pre(self, graph: Graph) -> dict[str, Interval]:
        """The bounds of the exact tensors other than the input: what may stand in for
        their backward passes."""
        return {k: v for k, v in self.pre.items() if k in self.exact and k != graph.input_name}


def free_coordinates(box: Box) -> int:
    """The largest number of coordinates any row of ``box`` lets vary."""
    n = box.lower.shape[0]
    return int((box.upper > box.lower).reshape(n, -1).sum(1).max()) if n else 0


def forward_bounds(
    graph: Graph, box: Box, checkpoint: Callable[[], None] | None = None
) -> ForwardBounds:
    """Bounds of every tensor of ``graph`` on each row of ``box`` (see the module docstring),
    in chunks of rows so that no chunk's coefficients pass :data:`_CHUNK_ELEMENTS` per
    tensor (more on a GPU, see :mod:`~nnbound.bounds.work_size`); ``checkpoint`` runs before
    each node."""
    n = box.lower.shape[0]
    k = max(1, free_coordinates(box))
    budget = work_elements(box.lower.device, box.lower.dtype, _CHUNK_ELEMENTS)
    rows = max(1, budget // (k * graph.widest))
    parts = [
        _chunk_bounds(graph, box.lower[r : r + rows], box.upper[r : r + rows], checkpoint)
        for r in range(0, n, rows)
    ]
    pre = {
        name: (
            torch.cat([p.pre[name][0] for p in parts]),
            torch.cat([p.pre[name][1] for p in parts]),
        )
        for name in parts[0].pre
    }
    return ForwardBounds(pre, frozenset.intersection(*(p.exact for p in parts)))


def _chunk_bounds(
    graph: Graph, lower: Tensor, upper: Tensor, checkpoint: Callable[[], None] | None
) -> ForwardBounds:
    n = lower.shape[0]
    flat_lo, flat_up = lower.reshape(n, -1), upper.reshape(n, -1)
    free = flat_up > flat_lo
    k = max(1, int(free.sum(1).max()))
    # The first k columns of each row's order are its free coordinates (then fixed ones,
    # whose columns get a zero half-width).
    order = torch.argsort((~free).to(torch.int8), dim=1, stable=True)[:, :k]
    half = ((flat_up - flat_lo) / 2).gather(1, order) * free.gather(1, order)
    a = flat_lo.new_zeros(n, k, flat_lo.shape[1])
    a.scatter_(2, order.unsqueeze(-1), half.unsqueeze(-1))
    mid = (flat_lo + flat_up) / 2
    a = a.reshape(n, k, *graph.input_shape)
    mid = mid.reshape(lower.shape)
    fns: dict[str, _Affine] = {graph.input_name: _Affine(a, mid, a, mid)}
    pre: dict[str, Interval] = {graph.input_name: (lower, upper)}
    exact = {graph.input_name}
    users = {name: len(nodes) for name, nodes in graph.consumers().items()}
    for node in graph.nodes:
        if checkpoint is not None:
            checkpoint()
        op = get_op(node.op, node)
        ins = [fns[i] for i in node.inputs]
        lo, up = op.interval(node, [pre[i] for i in node.inputs])
        fn = _through(op, node, ins, [pre[i] for i in node.inputs], k)
        if fn is None or not all(i in exact for i in node.inputs):
            fn = fn or _Affine.constant(lo, up, k)
        else:
            exact.add(node.output)
        f_lo, f_up = fn.interval()
        good = torch.isfinite(f_lo).all() and torch.isfinite(f_up).all()
        if good:
            lo, up = lo.maximum(f_lo), up.minimum(f_up)
        else:
            fn = _Affine.constant(lo, up, k)
            exact.discard(node.output)
        pre[node.output] = (lo, up.maximum(lo))
        fns[node.output] = fn
        for i in dict.fromkeys(node.inputs):
            users[i] -= 1
            if users[i] <= 0 and i != graph.output:
                fns.pop(i, None)  # its functions are no longer needed
    return ForwardBounds(pre, frozenset(exact))


def _through(
    op: Op, node: Node, ins: list[_Affine], bounds: list[Interval], k: int
) -> _Affine | None:
    """The node's output functions, or ``None`` where it has no forward rule here (an
    operator that does not take the batch of columns is one: its interval rule serves)."""
    try:
        return _rule(op, node, ins, bounds, k)
    except (NotImplementedError, RuntimeError, ValueError):
        return None


def _rule(op: Op, node: Node, ins: list[_Affine], bounds: list[Interval], k: int) -> _Affine | None:
    if op.kind is OpKind.LINEAR:
        abs_map = _abs_map(op, node)
        return None if abs_map is None else _linear(op, node, abs_map, ins, k)
    if op.kind is OpKind.ELEMENTWISE:
        (fn,) = ins
        lines = op.relaxation(node, DEFAULT_OPTIONS).linear(*bounds[0])
        lo_a, lo_c = _compose(
            lines.lower_slope, lines.lower_bias, fn.lower_a, fn.lower_c, fn.upper_a, fn.upper_c
        )
        up_a, up_c = _compose(
            lines.upper_slope, lines.upper_bias, fn.upper_a, fn.upper_c, fn.lower_a, fn.lower_c
        )
        return _Affine(lo_a, lo_c, up_a, up_c)
    if isinstance(op, MulOp):
        return _product(op, node, ins, bounds)
    return None


def _product(op: MulOp, node: Node, ins: list[_Affine], bounds: list[Interval]) -> _Affine:
    """``x * y`` (or ``x / y``) between its McCormick planes in ``(x, y)``, each plane's terms
    bounded on its side by the inputs' functions by the sign of their coefficients."""
    out_shape = broadcast_shape([tuple(b[0].shape[1:]) for b in bounds], op.name)
    rank = len(out_shape)
    planes = op.planes(node, bounds, out_shape)
    fx, fy = (
        _Affine(
            align(f.lower_a, 2, rank),
            align(f.lower_c, 1, rank),
            align(f.upper_a, 2, rank),
            align(f.upper_c, 1, rank),
        )
        for f in ins
    )
    sides = []
    for upper in (False, True):
        ax, ay, c = planes.side(upper)
        terms = [
            _compose(ax, c, *(_sides(fx, upper))),
            _compose(ay, torch.zeros_like(c), *(_sides(fy, upper))),
        ]
        sides.append((terms[0][0] + terms[1][0], terms[0][1] + terms[1][1]))
    (lo_a, lo_c), (up_a, up_c) = sides
    return _Affine(lo_a, lo_c, up_a, up_c)


def _sides(fn: _Affine, upper: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The function pair ordered (same side, other side) for ``_compose``."""
    if upper:
        return fn.upper_a, fn.upper_c, fn.lower_a, fn.lower_c
    return fn.lower_a, fn.lower_c, fn.upper_a, fn.upper_c


def _compose(
    slope: Tensor, bias: Tensor, same_a: Tensor, same_c: Tensor, other_a: Tensor, other_c: Tensor
) -> tuple[Tensor, Tensor]:
    """``slope * v + bias`` bounded on the same side by a function pair of ``v``: the
    positive part of the slope takes the same-side function, the negative part the other."""
    pos, neg = slope.clamp(min=0), slope.clamp(max=0)
    a = pos.unsqueeze(1) * same_a + neg.unsqueeze(1) * other_a
    return a, pos * same_c + neg * other_c + bias


def _abs_map(op: Op, node: Node) -> Callable[..., Tensor] | None:
    """``x -> f_abs(x)``, an affine map whose linear part is ``|W|`` for the node's linear
    part ``W``; ``None`` for a linear operator not known here."""
    if op.traits.monotone:  # a non-negative matrix: |W| = W
        return lambda *xs: op.forward(node, *xs)
    if op.name == "sub":
        add = get_op("add")
        return lambda *xs: add.forward(node, *xs)
    signed = _SIGNED_PARAMS.get(op.name)
    if signed is None:
        return None
    params = {key: (v.abs() if key in signed else v) for key, v in node.params.items()}
    abs_node = replace(node, params=params)
    return lambda *xs: op.forward(abs_node, *xs)


def _linear(
    op: Op, node: Node, abs_map: Callable[..., Tensor], ins: list[_Affine], k: int
) -> _Affine:
    """``W M + b`` and ``|W| R`` for the midpoint ``M`` and half-width ``R`` of the inputs'
    function pairs (columns and constants in one batch per map)."""
    n = ins[0].lower_c.shape[0]
    mids, rads = [], []
    for fn in ins:
        shape = fn.lower_c.shape[1:]
        m_a, r_a = (fn.upper_a + fn.lower_a) / 2, (fn.upper_a - fn.lower_a) / 2
        m_c, r_c = (fn.upper_c + fn.lower_c) / 2, (fn.upper_c - fn.lower_c) / 2
        zero = m_c.new_zeros(1, *shape)
        # rows: n*k columns, then n constants, then one zero (f(0): the offsets to remove)
        mids.append(torch.cat([m_a.reshape(n * k, *shape), m_c, zero]))
        rads.append(torch.cat([r_a.reshape(n * k, *shape), r_c, zero]))
    mid_out = op.forward(node, *mids)
    rad_out = abs_map(*rads)
    out_shape = mid_out.shape[1:]
    f0, g0 = mid_out[-1:], rad_out[-1:]
    m_a = (mid_out[: n * k] - f0).reshape(n, k, *out_shape)
    r_a = (rad_out[: n * k] - g0).reshape(n, k, *out_shape)
    m_c = mid_out[n * k : n * k + n]
    r_c = rad_out[n * k : n * k + n] - g0
    return _Affine(m_a - r_a, m_c - r_c, m_a + r_a, m_c + r_c)


__all__ = ["ForwardBounds", "forward_bounds", "free_coordinates"]
