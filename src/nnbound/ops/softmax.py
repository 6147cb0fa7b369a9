"""``softmax`` along one axis (attr ``axis``, per sample), relaxed soundly from its input box.

Write ``s_i = 1 / T_i`` with ``T_i = sum_j exp(d_ij)`` and ``d_ij = x_j - x_i`` (``d_ii = 0``).

* Interval (exact on the box): ``s_i`` falls as any ``x_j`` (``j != i``) grows and rises with
  ``x_i``, so ``lower_i = exp(l_i) / (exp(l_i) + sum_{j != i} exp(u_j))`` and symmetrically,
  each computed as ``exp(l_i - logsumexp(...))``.
* Lines: ``d_ij`` lies in ``[l_j - u_i, u_j - l_i]``; ``exp`` is convex, so its chord there is
  above it and its tangent at the midpoint below, which makes ``Tup(x)`` / ``Tlo(x)``, linear
  in ``x``, bound ``T_i`` from above / below. ``1 / T`` is convex and decreasing on ``T > 0``:
  its tangent at any ``t0 > 0`` lies below it, and its chord on ``[T_lo, T_hi]`` (the interval
  of ``T_i``) above it there. Both have negative slopes in ``T``, hence
  ``s_i >= 2 / t0 - Tup(x) / t0^2`` and ``s_i <= 1 / T_lo + 1 / T_hi - Tlo(x) / (T_lo T_hi)``;
  ``t0 = Tup(centre)`` maximises the lower line at the centre of the box.

A line is used where it is tighter than the interval bound at the centre of the box and its
coefficients stay moderate; elsewhere the constant interval bound (slope 0) is, which is
always sound. Everything is computed in float64 and moved outward by a few ulps of the working
precision.

:func:`strip_final_softmax` drops a softmax at the output for specifications that only compare
outputs of one softmax group pairwise (softmax preserves their order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Graph, Node, Shape
from nnbound.ops.base import Backward, Interval, Names, Op, OpKind, RelaxOptions, Traits
from nnbound.ops.relaxed_lines import ulp_margin, widen

_MAX_EXPONENT = 30.0
"""Lines only where every ``d_ij`` stays below this (``exp`` of it is ~1e13): beyond, the
chords' slopes grow so large that rounding downstream would dominate the bound."""

_MAX_TERMS = 1e3
"""Lines only where the sum of ``|coefficient| * |x|`` over the box stays below this."""


def _axis(node: Node, rank: int) -> int:
    axis = int(node.attrs.get("axis", -1))
    if not -rank <= axis < rank:
        raise InputError(f"softmax axis {axis} is out of range for rank {rank}")
    return axis % rank


def _last(t: Tensor, axis: int, lead: int) -> Tensor:
    """``t`` (``lead`` leading axes, then a per-sample shape) with ``axis`` moved last and the
    other per-sample axes flattened: ``(*lead axes, R, n)``."""
    t = t.movedim(lead + axis, -1)
    return t.reshape(*t.shape[:lead], -1, t.shape[-1])


def _back(t: Tensor, axis: int, lead: int, shape: Shape) -> Tensor:
    """The inverse of :func:`_last` for per-sample ``shape``."""
    moved = (*shape[:axis], *shape[axis + 1 :], shape[axis])
    return t.reshape(*t.shape[:lead], *moved).movedim(-1, lead + axis)


def softmax_interval(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Exact float64 bounds of softmax over the last axis on the box (``(..., n)``)."""
    n = lower.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=lower.device)
    # row i: l_i on the diagonal, u_j elsewhere (the smallest s_i); the other way round
    worst = torch.where(eye, lower.unsqueeze(-1), upper.unsqueeze(-2))
    best = torch.where(eye, upper.unsqueeze(-1), lower.unsqueeze(-2))
    lo = torch.exp(lower - torch.logsumexp(worst, -1))
    up = torch.exp(upper - torch.logsumexp(best, -1))
    # infinite ends (inf - inf): the trivial bounds
    return lo.nan_to_num(0.0), up.nan_to_num(1.0)


@dataclass(frozen=True)
class SoftmaxLines:
    """Per output ``i``: ``W_lo[i] . x + b_lo[i] <= s_i <= W_up[i] . x + b_up[i]`` over the
    last axis, in the working dtype (``W`` ``(..., n, n)``, ``b`` ``(..., n)``)."""

    w_lo: Tensor
    b_lo: Tensor
    w_up: Tensor
    b_up: Tensor


def softmax_lines(lower: Tensor, upper: Tensor, dtype: torch.dtype) -> SoftmaxLines:
    """Sound lines of softmax over the last axis on the float64 box (see the module
    docstring), rounded to ``dtype``."""
    l, u = lower, torch.maximum(upper, lower)
    n = l.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=l.device)
    s_lo, s_up = softmax_interval(l, u)
    zero = torch.zeros((), dtype=l.dtype, device=l.device)
    # d_ij = x_j - x_i in [dl, du]; exactly 0 on the diagonal
    dl = torch.where(eye, zero, l.unsqueeze(-2) - u.unsqueeze(-1))
    du = torch.where(eye, zero, u.unsqueeze(-2) - l.unsqueeze(-1))
    usable = du.amax(-1) <= _MAX_EXPONENT  # (..., n)
    du = du.clamp(max=_MAX_EXPONENT)
    dl = torch.minimum(dl, du)
    e_l, e_u = torch.exp(dl), torch.exp(du)
    width = du - dl
    flat = width == 0
    chord = torch.where(flat, e_l, (e_u - e_l) / torch.where(flat, 1.0, width))
    chord_b = e_l - chord * dl
    mid = 0.5 * (dl + du)
    tan = torch.exp(mid)
    tan_b = tan * (1.0 - mid)
    t_lo, t_hi = e_l.sum(-1), e_u.sum(-1)  # interval of T_i

    def coefficients(slopes: Tensor) -> Tensor:
        """W[i, j] of sum_j slopes_ij (x_j - x_i)."""
        return slopes - torch.diag_embed(slopes.sum(-1))

    centre = 0.5 * (l + u)
    w_tup = coefficients(chord)
    k_up = chord_b.sum(-1)
    t0 = (w_tup * centre.unsqueeze(-2)).sum(-1) + k_up  # Tup(centre) >= T(centre) >= 1
    t0 = t0.clamp(min=1.0)
    w_lo = -w_tup / t0.square().unsqueeze(-1)
    b_lo = 2.0 / t0 - k_up / t0.square()
    w_tlo = coefficients(tan)
    h_lo = tan_b.sum(-1)
    prod = (t_lo * t_hi).unsqueeze(-1)
    w_up = -w_tlo / prod
    b_up = 1.0 / t_lo + 1.0 / t_hi - h_lo / (t_lo * t_hi)

    reach = torch.maximum(l.abs(), u.abs()).unsqueeze(-2)
    terms_lo = (w_lo.abs() * reach).sum(-1)
    terms_up = (w_up.abs() * reach).sum(-1)
    at_centre_lo = (w_lo * centre.unsqueeze(-2)).sum(-1) + b_lo
    at_centre_up = (w_up * centre.unsqueeze(-2)).sum(-1) + b_up
    line_lo = usable & (terms_lo <= _MAX_TERMS) & (at_centre_lo > s_lo)
    line_up = usable & (terms_up <= _MAX_TERMS) & (at_centre_up < s_up)
    b_lo = b_lo - ulp_margin(dtype, b_lo, terms_lo)
    b_up = b_up + ulp_margin(dtype, b_up, terms_up)
    c_lo, c_up = widen(s_lo, s_up, dtype)
    return SoftmaxLines(
        torch.where(line_lo.unsqueeze(-1), w_lo, zero).to(dtype),
        torch.where(line_lo, b_lo.to(dtype), c_lo.clamp(min=0)),
        torch.where(line_up.unsqueeze(-1), w_up, zero).to(dtype),
        torch.where(line_up, b_up.to(dtype), c_up.clamp(max=1)),
    )


@dataclass(frozen=True)
class SoftmaxOp(Op):
    """Softmax along attr ``axis`` of the per-sample shape."""

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"softmax takes one input, got {len(in_shapes)}")
        if node.params or set(node.attrs) - {"axis"}:
            raise InputError("softmax takes only the attr axis")
        _axis(node, len(in_shapes[0]))
        return in_shapes[0]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        x = xs[0]
        return torch.softmax(x, dim=1 + _axis(node, x.dim() - 1))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        shape = tuple(lo.shape[1:])
        axis = _axis(node, len(shape))
        l64 = _last(lo.to(torch.float64), axis, 1)
        u64 = torch.maximum(_last(up.to(torch.float64), axis, 1), l64)
        s_lo, s_up = widen(*softmax_interval(l64, u64), lo.dtype)
        return (
            _back(s_lo.clamp(min=0), axis, 1, shape),
            _back(s_up.clamp(max=1), axis, 1, shape),
        )

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
        lo, up = bounds[0]
        shape = in_shapes[0]
        axis = _axis(node, len(shape))
        l64 = _last(lo.to(torch.float64), axis, 1)
        u64 = _last(up.to(torch.float64), axis, 1)
        lines = softmax_lines(l64, u64, lo.dtype)
        out: list[Tensor | None] = [None, None]
        consts: list[Tensor | None] = [None, None]
        for side, a in enumerate((a_lower, a_upper)):
            if a is None:
                continue
            a3 = _last(a, axis, 2)  # (N, S, R, n)
            pos, neg = a3.clamp(min=0), a3.clamp(max=0)
            if side == 1:
                w_p, b_p, w_n, b_n = lines.w_up, lines.b_up, lines.w_lo, lines.b_lo
            else:
                w_p, b_p, w_n, b_n = lines.w_lo, lines.b_lo, lines.w_up, lines.b_up
            coef = torch.einsum("nsri,nrij->nsrj", pos, w_p) + torch.einsum(
                "nsri,nrij->nsrj", neg, w_n
            )
            consts[side] = torch.einsum("nsri,nri->ns", pos, b_p) + torch.einsum(
                "nsri,nri->ns", neg, b_n
            )
            out[side] = _back(coef, axis, 2, shape)
        return Backward([out[0]], [out[1]], consts[0], consts[1])

    def summary(self, node: Node) -> str:
        return f"softmax(axis={node.attrs.get('axis', -1)})"


SOFTMAX = SoftmaxOp(
    "softmax",
    OpKind.RELAXED,
    traits=Traits(smooth=True),
    names=Names(onnx=("Softmax",), torch=("Softmax", "softmax"), keras=("Softmax", "softmax")),
)

OPS = (SOFTMAX,)


# -- order preservation ---------------------------------------------------------------------------
_RESHAPES = ("flatten", "reshape")


def _final_softmax(graph: Graph) -> Node | None:
    """The softmax node the output is (possibly through trailing flatten / reshape nodes), or
    None."""
    producers = graph.producers
    name = graph.output
    while True:
        node = producers.get(name)
        if node is None:
            return None
        if node.op == "softmax":
            return node
        if node.op not in _RESHAPES or len(node.inputs) != 1:
            return None
        name = node.inputs[0]


def strip_final_softmax(graph: Graph) -> Graph | None:
    """The graph without the softmax its output ends in, or ``None`` when it ends in none.

    The output may be a softmax node or a flatten / reshape of one; the softmax becomes an
    identity reshape, so the outputs are the logits, each at its flat position.

    When it is valid: softmax preserves order within each of its groups (the entries that
    share every index but the softmax axis): ``s_i > s_j`` iff ``x_i > x_j`` and ``s_i = s_j``
    iff ``x_i = x_j``. So a specification (each disjunct a conjunction of rows) whose every
    row compares two outputs of one group, ``c (y_i - y_j) > 0`` or ``>= 0`` with ``c > 0`` and
    no constant term, holds on the softmax outputs iff it holds on the logits (arg max specs,
    robustness specs). Use :func:`softmax_groups` and :func:`compares_within_groups` to check a
    specification. It is NOT valid for thresholds on probabilities (``y_i >= 0.9``), nonzero
    constants, comparisons across groups, or sums of several outputs.
    """
    soft = _final_softmax(graph)
    if soft is None:
        return None
    # an identity reshape in its place keeps every tensor name (and a one-node graph valid)
    same = Node(
        "reshape",
        soft.inputs,
        soft.output,
        attrs={"shape": graph.shapes[soft.output]},
        label=f"{soft.label or soft.output} (softmax stripped)",
    )
    return replace(graph, nodes=tuple(same if n is soft else n for n in graph.nodes))


def softmax_groups(graph: Graph) -> Tensor | None:
    """For a graph whose output is a softmax (see :func:`strip_final_softmax`), the group of
    each flat output (outputs in one group share a softmax normaliser), else None."""
    soft = _final_softmax(graph)
    if soft is None:
        return None
    shape = graph.shapes[soft.output]
    axis = _axis(soft, len(shape))
    idx = torch.arange(math.prod(shape)).reshape(shape)
    stride = math.prod(shape[axis + 1 :])
    coord = torch.arange(shape[axis]).reshape(-1, *([1] * (len(shape) - axis - 1)))
    return (idx - coord * stride).reshape(-1)


def compares_within_groups(C: Tensor, groups: Tensor) -> bool:
    """Whether every row of ``C`` (``(..., S, outputs)``) is ``c (e_i - e_j)`` with ``c > 0``
    and ``i``, ``j`` in one group: a pairwise comparison softmax preserves (the constant term
    of the specification must be 0 as well; the caller checks that)."""
    rows = C.reshape(-1, C.shape[-1])
    for row in rows:
        nz = row.nonzero().reshape(-1)
        if nz.numel() != 2:
            return False
        i, j = int(nz[0]), int(nz[1])
        if float(row[i]) != -float(row[j]) or int(groups[i]) != int(groups[j]):
            return False
    return True


__all__ = [
    "OPS",
    "SOFTMAX",
    "SoftmaxLines",
    "compares_within_groups",
    "softmax_groups",
    "softmax_interval",
    "softmax_lines",
    "strip_final_softmax",
]
