"""alpha-CROWN on a computation graph: CROWN with free relaxation lines optimised by gradient
ascent, plus what branch and bound needs (prior bounds, split phases, beta-CROWN multipliers,
empty-domain detection, warm starts).

CROWN relaxes each element-wise node by fixed lines. Where a whole family of lines is sound
(:mod:`nnbound.bounds.alpha`: the lower slope of an unstable ReLU anywhere in
``[alpha_leak, 1]``, tangent points of S-shaped and convex functions, the bounded ReLU's kink
slopes), the bound is a function of the family's parameters that can be maximised: every
iterate is a certified bound (parameters are projected onto their sound range after each
step), and the best value seen per spec row is kept. Parameters are free per entry *and* per
bounded quantity: each spec row of the final bound has its own, and when intermediate tensors
are optimised too (within :data:`INTERMEDIATE_BUDGET`), each bound of each entry still
across a kink after CROWN has its own (Xu et al. 2021, "Fast and Complete").

The graph engine (:func:`nnbound.bounds.engine.backward`) does every backward pass; the
optimised lines enter through its ``line_hook``, the beta multipliers through its
``coef_hook``. So alpha-CROWN bounds residual and branching graphs and every operator the
engine supports (operators without parameters keep their fixed lines).

Branch and bound extras, all keyed by tensor name:

* ``prior`` bounds (known to hold over the row's domain, e.g. the parent domain's) are
  intersected with every tensor's bounds;
* ``splits`` fix the sign of entries of a tensor (a ReLU's input): ``+1`` restricts the
  domain to ``z >= 0`` (``l = max(l, 0)``), ``-1`` to ``z <= 0`` (``u = min(u, 0)``). The
  clamp is applied before any line is built from the bounds, so a split neuron is relaxed
  exactly -- sound on the sub-domain where the phase holds. When optimising, the final bound
  also gets multipliers ``beta >= 0`` of the split constraints themselves (beta-CROWN, Wang
  et al. 2021): on the sub-domain ``s z >= 0``, so ``f - beta s z <= f`` and a lower bound of
  the former is one of ``f``: ``-s beta`` is added to the coefficient on ``z``.
* a domain whose bounds cross (``lower > upper`` beyond rounding) is proven empty.

Shapes: ``N`` rows (input sets), ``S`` spec rows, tensor shapes without the batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nnbound.bounds.alpha import LineTable, ParamKey, defaults, param_sides
from nnbound.bounds.engine import BoundState, backward
from nnbound.bounds.graph_bounds import _candidates, needs_bounds
from nnbound.bounds.linear import padded_indices, start_rows
from nnbound.bounds.methods import _spec_tensor, get_method
from nnbound.bounds.patches import Coefficients, Patches
from nnbound.bounds.patches_rules import row_elements
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.bounds.work_size import group_end, work_elements
from nnbound.errors import InputError
from nnbound.network.chain_graph import network_to_graph, node_layer
from nnbound.network.graph import Graph, Node
from nnbound.network.layers import Conv2d, Dense
from nnbound.network.network import Network
from nnbound.ops.base import Interval, OpKind, RelaxOptions
from nnbound.ops.registry import DEFAULT_OPTIONS, get_op
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.box import InputSet

Pre = dict[str, Interval]
"""Bounds by tensor name: ``(lower, upper)``, each ``(N, *shape)``."""
Params = dict[str, dict]
"""``{"alpha": {ParamKey: theta (N, S, *shape)}, "beta": {tensor: beta (N, S, *shape)}}``."""

DEFAULT_STEPS = 20
DEFAULT_LR = 0.1
# Parameters of intermediate bounds hold N * (2 U_t) * width_k entries for every tensor t
# bounded and every parameterised node k before it; above this many the intermediate bounds
# keep CROWN's lines (memory).
INTERMEDIATE_BUDGET = 2**24
# Lower minus upper beyond this (relative) gap proves a domain empty; anything smaller may be
# float rounding of a point interval and proves nothing (float32 needs more: 64 ulps).
_EMPTY_TOL = 1e-8
# Row groups of the first (CROWN) pass: rows and coefficients bounded together.
_GROUP_ROWS = 256
_GROUP_ELEMENTS = 1 << 23
# Branch and bound bounds hundreds of sub-domains at once: few large groups (counts within a
# factor 2) matter more there than the padding.
_GROUP_SLACK = 0.5
# Coefficients of one first-pass backward pass at most: row groups already fit, except a
# single row whose entries alone exceed it (a wide conv layer), which is sliced. Smaller
# slices cost branch and bound time (measured: 1 << 21 took an MNIST 256x4 instance from
# 13 s to 19 s); this size keeps a time limit within ~0.5 s on a 32-channel CNN.
_PASS_ELEMENTS = _GROUP_ELEMENTS


@dataclass(frozen=True, eq=False)
class LinearBoundResult:
    """What one :func:`linear_bounds` run returns.

    Attributes:
        lower: ``(N, S)`` certified lower bounds of ``spec . y + const`` (best seen).
        pre: bounds of every tensor a relaxed node reads (the tightest seen), by name.
        a_input: ``(N, S, *input_shape)`` the last final bound's coefficients on the input
            (its minimiser over a box is a good counterexample candidate).
        coef: ``{tensor: (N, S, *shape)}`` the last final pass's coefficients on each tensor
            asked for in ``keep`` (e.g. ReLU outputs, for branching heuristics).
        empty: ``(N,)`` rows whose domain (with its splits) was proven empty.
        steps: optimisation steps taken.
        params: the last parameters, ``{"alpha": {ParamKey: (N, S, *shape)}, "beta":
            {tensor: (N, S, *shape)}}``, to warm-start a later run (``{}`` without steps).
    """

    lower: Tensor
    pre: Pre
    a_input: Tensor
    coef: dict[str, Tensor]
    empty: Tensor
    steps: int
    params: Params = field(default_factory=dict)


class _Run:
    """The bounds of one :func:`linear_bounds` call: the nodes the output depends on, which
    tensors need bounds, and the backward passes with or without parameters."""

    def __init__(
        self,
        graph: Graph,
        input_set: InputSet,
        options: RelaxOptions,
        prior: Pre | None,
        splits: dict[str, Tensor] | None,
        checkpoint: Callable[[], None] | None = None,
        split_points: dict[str, Tensor] | None = None,
        crown_pre: Pre | None = None,
        settled: dict[str, Tensor] | None = None,
    ) -> None:
        self.graph, self.input_set, self.options = graph, input_set, options
        self.crown_pre = crown_pre or {}
        self.settled = settled or {}
        self.checkpoint = checkpoint
        self.n = input_set.center.shape[0]
        self.device = input_set.center.device
        self.prior = prior or {}
        self.splits = splits or {}
        self.split_points = split_points or {}
        self.nodes = graph.ancestors(graph.output)
        self.need = needs_bounds(graph, self.nodes)
        # Tensors affine in the input: the first pass bounds them exactly, no parameter can
        # improve that.
        affine = {graph.input_name}
        for node in self.nodes:
            if get_op(node.op, node).kind is OpKind.LINEAR and all(
                i in affine for i in node.inputs
            ):
                affine.add(node.output)
        self.affine = affine
        self.sides = {node.output: param_sides(node, options) for node in self.nodes}
        self.param_nodes = [node for node in self.nodes if self.sides[node.output]]
        self.elementwise: dict[str, list[Node]] = {}
        for node in self.nodes:
            if get_op(node.op, node).kind is OpKind.ELEMENTWISE:
                self.elementwise.setdefault(node.inputs[0], []).append(node)
        # Entries of each tensor that optimised passes re-bound (those still across a kink,
        # or all, after the first pass); fixed then so that parameters keep their shapes.
        self.idx: dict[str, Tensor] = {}

    # -- bounds of the tensors ---------------------------------------------------------------
    def clamp(self, name: str, lo: Tensor, up: Tensor) -> Interval:
        """Intersect with the prior and apply the splits of tensor ``name``."""
        if name in self.prior:
            lo, up = lo.maximum(self.prior[name][0]), up.minimum(self.prior[name][1])
        if name in self.splits:
            s = self.splits[name].reshape(lo.shape)
            if name in self.split_points:
                t = self.split_points[name].reshape(lo.shape)
                lo = torch.where(s > 0, lo.maximum(t), lo)
                up = torch.where(s < 0, up.minimum(t), up)
            else:
                lo = torch.where(s > 0, lo.clamp_min(0), lo)
                up = torch.where(s < 0, up.clamp_max(0), up)
        return lo, up

    def hidden(
        self, tables: dict[str, dict[ParamKey, Tensor]] | None, base: Pre | None
    ) -> tuple[BoundState, Tensor]:
        """Bounds of every tensor the output depends on, in topological order: the interval
        rule from the inputs' bounds, intersected with ``base``, the prior and the splits,
        then backward passes for the entries that matter.

        The first pass (``tables`` and ``base`` ``None``) is CROWN's and records which entries
        later passes re-bound; a later pass re-bounds those with the parameters
        ``tables[tensor]`` (rows: the entries' lower bounds, then their negated upper bounds).
        Returns the state and the ``(N,)`` rows proven empty.
        """
        graph = self.graph
        state = BoundState(graph, self.input_set, self.options, checkpoint=self.checkpoint)
        state.bounds[graph.input_name] = self.input_set.box()
        empty = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        first = tables is None and base is None
        hook = LineTable(self.options)
        if tables is not None:
            state.line_hook = hook
        for node in self.nodes:
            op = get_op(node.op, node)
            name = node.output
            lo, up = op.interval(node, [state.bounds[i] for i in node.inputs])
            if base is not None and name in base:
                lo, up = lo.maximum(base[name][0]), up.minimum(base[name][1])
            lo, up = self.clamp(name, lo, up)
            # The output of a monotone relaxed operator is bounded exactly by its interval
            # rule, and a backward pass through its own lines cannot beat that.
            exact = op.kind is not OpKind.LINEAR and op.traits.monotone
            if name in self.need and not exact:
                if first:
                    lo, up = self._first_tighten(state, name, lo, up)
                elif tables is not None and name in self.idx:
                    hook.table = tables.get(name, {})
                    lo, up = self._tighten(state, name, lo, up)
            if name in self.need or name in self.splits:
                gap = lo - up
                scale = 1.0 + torch.maximum(lo.abs(), up.abs())
                tol = max(_EMPTY_TOL, 64 * torch.finfo(lo.dtype).eps)
                empty |= (gap > tol * scale).reshape(self.n, -1).any(1)
            # Rounding (or an empty domain) can cross them.
            state.bounds[name] = (lo, torch.maximum(up, lo))
            if first:
                # The lines of its element-wise consumers, once for all rows (row groups of
                # later backward passes slice them).
                for consumer in self.elementwise.get(name, ()):
                    state.lines(consumer)
        # The final pass reuses the hook (and its families: a tensor's bounds never change
        # once set).
        state.line_hook = hook
        return state, empty

    def _first_tighten(self, state: BoundState, name: str, lo: Tensor, up: Tensor) -> Interval:
        """CROWN bounds of the entries of ``name`` that matter, rows grouped by how many they
        have (see :func:`_row_groups`); records the entries still across a kink."""
        known = self.crown_pre.get(name)
        if known is not None:
            # This very pass, done before on the same domains: its backward passes would only
            # reproduce these bounds.
            lo, up = lo.maximum(known[0]), up.minimum(known[1])
        candidates = _candidates(self.need[name], lo, up, True, self.options)
        settled = self.settled.get(name)
        if settled is not None:
            # Rows whose prior is already this pass's bound for the tensor.
            candidates = candidates & ~settled.reshape(-1, 1)
        if known is None and bool(candidates.any()):
            if len(self.graph.shapes[name]) == 3:
                width = row_elements(self.graph, name)  # rows start as patches (see start)
            else:
                width = max(
                    math.prod(self.graph.shapes[k.output]) for k in self.graph.ancestors(name)
                )
                width = max(width, self.graph.num_inputs)
            flat_lo, flat_up = lo.reshape(self.n, -1).clone(), up.reshape(self.n, -1).clone()
            for rows, group_idx in _row_groups(candidates, width, lo.dtype):
                sub = state if rows is None else state.rows(rows)
                # Entries in slices of at most _PASS_ELEMENTS coefficients per pass: each
                # entry's bound is its own, and a wide layer's thousands of entries would
                # otherwise be one pass of GBs that no time limit can interrupt.
                budget = work_elements(lo.device, lo.dtype, _PASS_ELEMENTS)
                cols = max(1, budget // (group_idx.shape[0] * width))
                for c0 in range(0, group_idx.shape[1], cols):
                    idx = group_idx[:, c0 : c0 + cols]
                    target, a, const = self.start(name, idx, patches=True)
                    c_lo, c_up, _ = backward(sub, target, a, const)
                    assert c_lo is not None and c_up is not None
                    for flat, new, take in (
                        (flat_lo, c_lo, torch.maximum),
                        (flat_up, c_up, torch.minimum),
                    ):
                        block = flat if rows is None else flat[rows]
                        # Padding repeats a real index: every write is that entry's own bound.
                        block = block.scatter(1, idx, take(block.gather(1, idx), new))
                        if rows is None:
                            flat.copy_(block)
                        else:
                            flat[rows] = block
            lo, up = flat_lo.reshape(lo.shape), flat_up.reshape(up.shape)
        if name not in self.affine:
            left = _candidates(self.need[name], lo, up, True, self.options)
            if bool(left.any()):
                self.idx[name] = padded_indices(left)
        return lo, up

    def start(
        self, name: str, idx: Tensor, patches: bool = False
    ) -> tuple[str, Coefficients, Tensor]:
        """Rows selecting entries ``idx`` ``(N, U)`` of tensor ``name``: ``(tensor the rows
        sit on, a (N, U, *its shape), const (N, U))``; rows of a dense / conv output start one
        node lower, as the weight rows (no one-hot product). With ``patches``, rows on an
        image tensor are :class:`~nnbound.bounds.patches.Patches` (CROWN's first pass: its
        lines are shared by every row, which patches need)."""
        graph = self.graph
        dtype = self.input_set.center.dtype
        if patches and len(graph.shapes[name]) == 3:
            const = torch.zeros(idx.shape, dtype=dtype, device=self.device)
            return name, Patches.identity(idx, graph.shapes[name], dtype), const
        producer = graph.producers.get(name)
        layer = node_layer(producer) if producer is not None else None
        if producer is not None and isinstance(layer, (Dense, Conv2d)):
            src = producer.inputs[0]
            shapes = [graph.shapes[src], graph.shapes[name]]
            a, const, _ = start_rows((layer,), shapes, 1, idx, dtype, self.device)
            return src, a, const
        n, u = idx.shape
        a = torch.zeros(n, u, math.prod(graph.shapes[name]), dtype=dtype, device=self.device)
        a.scatter_(2, idx.unsqueeze(-1), 1.0)
        const = torch.zeros(n, u, dtype=dtype, device=self.device)
        return name, a.reshape(n, u, *graph.shapes[name]), const

    def _tighten(self, state: BoundState, name: str, lo: Tensor, up: Tensor) -> Interval:
        """Re-bound entries ``idx[name]`` with the parameters the state's hook holds."""
        idx = self.idx[name]
        u = idx.shape[1]
        target, a, const = self.start(name, idx)
        assert isinstance(a, Tensor)
        # Upper bounds are lower bounds of the negated rows: one pass serves both sides.
        lb, _, _ = backward(
            state, target, torch.cat([a, -a], 1), torch.cat([const, -const], 1), upper=False
        )
        assert lb is not None
        flat_lo, flat_up = lo.reshape(self.n, -1), up.reshape(self.n, -1)
        new_lo = _keep_tighter(flat_lo.gather(1, idx), lb[:, :u], lower=True)
        new_up = _keep_tighter(flat_up.gather(1, idx), -lb[:, u:], lower=False)
        # Padding repeats a real index, so every written value is a bound of its own entry.
        flat_lo = flat_lo.scatter(1, idx, new_lo)
        flat_up = flat_up.scatter(1, idx, new_up)
        return flat_lo.reshape(lo.shape), flat_up.reshape(up.shape)

    # -- the bounded quantity ----------------------------------------------------------------
    def final(
        self,
        state: BoundState,
        spec: Tensor,
        const: Tensor,
        table: dict[ParamKey, Tensor] | None,
        betas: dict[str, Tensor] | None,
        keep: frozenset[str],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Lower bound ``(N, S)`` of ``spec . output + const`` over the bounds of ``state``
        (from :meth:`hidden`) with the parameters ``table`` and split multipliers ``betas``,
        and the coefficients on the tensors ``keep`` (the input always)."""
        graph = self.graph
        hook = state.line_hook
        assert isinstance(hook, LineTable)
        hook.table = table or {}
        state.coef_hook = None
        if betas:
            signs = {k: self.splits[k].to(spec.dtype).unsqueeze(1) for k in betas}

            def add_betas(
                name: str, a_lo: Tensor | None, a_up: Tensor | None
            ) -> tuple[Tensor | None, Tensor | None]:
                if name in betas and a_lo is not None:
                    a_lo = (
                        a_lo - signs[name].reshape(a_lo.shape[0], 1, *a_lo.shape[2:]) * betas[name]
                    )
                return a_lo, a_up

            state.coef_hook = add_betas
        lower, _, kept = backward(
            state, graph.output, spec, const, upper=False, keep=keep | {graph.input_name}
        )
        assert lower is not None
        for name, beta in (betas or {}).items():
            if name in self.split_points:
                # A split at t: the multiplier's term -beta s (z - t) brings the constant
                # +beta s t (the coefficient part went through the hook).
                n_rows = beta.shape[0]
                point = self.split_points[name].to(spec.dtype).reshape(n_rows, 1, -1)
                st = signs[name].reshape(n_rows, 1, -1) * point
                lower = lower + (beta.reshape(*beta.shape[:2], -1) * st).sum(-1)
        coef = {k: v[0] for k, v in kept.items() if v[0] is not None}
        if graph.input_name not in coef:
            shape = (*spec.shape[:2], *graph.input_shape)
            coef[graph.input_name] = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        return lower, coef


def _keep_tighter(old: Tensor, new: Tensor, lower: bool) -> Tensor:
    """The tighter of two sound bounds (exactly its value), with the gradient of ``new``
    everywhere (straight through).

    The first optimised pass starts from the very bounds it is intersected with, so ``new``
    ties with ``old`` up to rounding, and a plain ``max`` would route the gradient to the
    constant ``old`` wherever rounding favours it: those parameters would never move.
    ``new - new.detach()`` is exactly 0 (NaN only for an infinite ``new``), so adding it
    keeps ``old``'s value to the last bit.
    """
    better = new >= old if lower else new <= old
    zero = torch.nan_to_num(new - new.detach(), nan=0.0)
    return torch.where(better, new, old + zero)


def _row_groups(mask: Tensor, width: int, dtype: torch.dtype) -> list[tuple[Tensor | None, Tensor]]:
    """Rows of ``mask`` ``(N, M)`` with at least one candidate, grouped by candidate count
    (largest first, a group's counts within a factor 2 (:data:`_GROUP_SLACK`), at most
    :data:`_GROUP_ROWS` rows and about :data:`_GROUP_ELEMENTS` coefficients of ``width`` each,
    more on a GPU) so that padding each group to its largest count wastes little work:
    ``[(rows or None for all, padded indices (R, U))]``."""
    counts = mask.sum(1)
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    budget = work_elements(mask.device, dtype, _GROUP_ELEMENTS)
    n = len(sorted_counts)
    out: list[tuple[Tensor | None, Tensor]] = []
    start = 0
    while start < n and sorted_counts[start] > 0:
        top = sorted_counts[start]
        limit = min(_GROUP_ROWS, max(1, budget // (top * width)))
        stop = group_end(sorted_counts, start, limit, slack=_GROUP_SLACK, row_work=1, overhead=0)
        if start == 0 and stop == n:
            out.append((None, padded_indices(mask)))
        else:
            rows = order[start:stop]
            out.append((rows, padded_indices(mask[rows])))
        start = stop
    return out


class _Adam:
    """Adam with an exponentially decaying step (x0.98 per step), written out because
    ``torch.optim`` imports the compiler stack (seconds of start-up on a small machine)."""

    def __init__(self, params: list[Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[Tensor | None, ...]) -> None:
        b1, b2, eps = 0.9, 0.999, 1e-8
        self.t += 1
        lr = self.lr * 0.98 ** (self.t - 1)
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if g is None:
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**self.t))


def _expand(t: Tensor, rows: int) -> Tensor:
    """``(N, *shape)`` -> a fresh leaf ``(N, rows, *shape)`` requiring grad."""
    return t.unsqueeze(1).expand(t.shape[0], rows, *t.shape[1:]).clone().requires_grad_(True)


def linear_bounds(
    graph: Graph,
    input_set: InputSet,
    spec: Tensor,
    const: Tensor | None = None,
    *,
    prior: Pre | None = None,
    splits: dict[str, Tensor] | None = None,
    steps: int = 0,
    lr: float = DEFAULT_LR,
    optimize_intermediate: bool | None = None,
    stop: Callable[[Tensor, Tensor], bool] | None = None,
    keep: tuple[str, ...] = (),
    warm: Params | None = None,
    options: RelaxOptions = DEFAULT_OPTIONS,
    checkpoint: Callable[[], None] | None = None,
    split_points: dict[str, Tensor] | None = None,
    crown_pre: Pre | None = None,
    settled: dict[str, Tensor] | None = None,
) -> LinearBoundResult:
    """CROWN (``steps = 0``) or alpha-CROWN lower bounds of ``spec @ graph(x) + const``.

    Args:
        graph: the graph (any operator the engine supports).
        input_set: the input sets (``N`` rows; an :class:`~nnbound.sets.LpBall` or a
            :class:`~nnbound.sets.box.Box`), matching the graph's dtype.
        spec: ``(N, S, *output_shape)`` rows to bound from below.
        const: ``(N, S)`` added to each row (default 0).
        prior: bounds known to hold on each row's domain, by tensor name.
        splits: ``{tensor: (N, *shape)}`` int tensors of fixed signs (+1: ``>= 0``, -1:
            ``<= 0``, 0 free), restricting each row's domain.
        steps: Adam steps on the parameters, and with ``splits`` on the beta multipliers of
            the split constraints (0: plain CROWN).
        lr: Adam learning rate.
        optimize_intermediate: also optimise the parameters of intermediate bounds (each
            entry's lower and upper bound gets its own); default: when they fit
            :data:`INTERMEDIATE_BUDGET`.
        stop: ``stop(lower, empty)`` -> True ends the optimisation early (e.g. once every
            row is proven); called with the best ``(N, S)`` bounds and the ``(N,)`` empty rows.
        keep: tensors whose coefficients to return in ``coef`` (e.g. ReLU outputs).
        warm: starting parameters (``LinearBoundResult.params`` of an earlier run on the same
            rows or their parents; any values are sound, they are projected; NaN entries
            start from the default).
        options: the relaxation choices of the first (CROWN) pass, which the parameters
            start from.
        checkpoint: run before every node of every backward pass and every optimisation
            step; it may raise to abandon the call (a verifier's time limit).
        split_points: ``{tensor: (N, *shape)}`` where the ``splits`` of that tensor cut
            (default 0): ``+1`` then means ``z >= t``, ``-1`` ``z <= t`` (interval splits of
            smooth activations); the beta multipliers carry the matching constant.
        crown_pre: the ``pre`` of an earlier call with ``steps=0`` and the same arguments
            otherwise (domains, ``prior``, splits, ``options``): the first (CROWN) pass takes
            these bounds as its own instead of recomputing them, and the result is the same
            (alpha-CROWN on what CROWN left open).
        settled: ``{tensor: (N,) bool}`` rows whose ``prior`` for that tensor is already what
            the first pass would compute (branch and bound: a child whose new split is not
            upstream of the tensor has its parent's bounds); their backward passes for it
            are skipped. Any rows may be marked: ``prior`` holds, so bounds stay sound.

    Returns:
        :class:`LinearBoundResult`; ``lower`` is never below the first pass's (the first
        iterate is CROWN and the best value seen per entry is kept).
    """
    n = input_set.center.shape[0]
    if const is None:
        const = torch.zeros(n, spec.shape[1], dtype=spec.dtype, device=spec.device)
    run = _Run(
        graph, input_set, options, prior, splits, checkpoint, split_points, crown_pre, settled
    )
    keep_set = frozenset(keep)
    with torch.no_grad():
        state0, empty = run.hidden(None, None)
        lower0, coef = run.final(state0, spec, const, None, None, keep_set)
    best = lower0
    best_pre = {k: state0.bounds[k] for k in run.need}
    a_in = coef[graph.input_name]

    def proven(values: Tensor) -> bool:
        return stop is not None and stop(values, empty)

    def result(taken: int = 0, params: Params | None = None) -> LinearBoundResult:
        pre = {k: (lo.detach(), up.detach()) for k, (lo, up) in best_pre.items()}
        out = {k: v.detach() for k, v in coef.items() if k != graph.input_name}
        return LinearBoundResult(best.detach(), pre, a_in.detach(), out, empty, taken, params or {})

    if steps <= 0 or not run.param_nodes or proven(best):
        return result()
    s = spec.shape[1]
    # Families of the first pass: their defaults are where the parameters start.
    hook0 = state0.line_hook
    assert isinstance(hook0, LineTable)
    start: dict[ParamKey, Tensor] = {}
    free = False
    for node in run.param_nodes:
        fam = hook0.family_of(node, state0.bounds[node.inputs[0]])
        assert fam is not None
        for side in run.sides[node.output]:
            start[(node.output, side)] = defaults(fam, side).detach()
        masks = (fam.free_lower, fam.free_upper)
        free = free or any(m is not None and bool(m.any()) for m in masks)
    if not free:
        # Every line is fixed (all neurons stable or split): nothing to optimise.
        return result()
    if optimize_intermediate is None:
        size = sum(
            n * 2 * idx.shape[1] * sum(start[k][0].numel() for k in _keys_before(run, t, start))
            for t, idx in run.idx.items()
        )
        optimize_intermediate = size <= INTERMEDIATE_BUDGET
    warm = warm or {}
    limits: dict[int, tuple[float, float]] = {}

    def warm_start(kind: str, key: object, default: Tensor, low: float, high: float) -> Tensor:
        given = warm.get(kind, {}).get(key)
        t = default
        if given is not None:
            t = given.to(dtype=default.dtype, device=default.device).reshape(default.shape)
            # NaN entries mean "no value yet": they start from the default.
            t = torch.where(torch.isnan(t), default.detach(), t.clamp(low, high))
            t = t.clone().requires_grad_(True)
        limits[id(t)] = (low, high)
        return t

    final: dict[ParamKey, Tensor] = {
        k: warm_start("alpha", k, _expand(v, s), 0.0, 1.0) for k, v in start.items()
    }
    betas = {
        k: warm_start(
            "beta",
            k,
            torch.zeros(
                n, s, *graph.shapes[k], dtype=spec.dtype, device=spec.device
            ).requires_grad_(True),
            0.0,
            math.inf,
        )
        for k, sp in run.splits.items()
        if k in graph.shapes and bool((sp != 0).any())
    }
    tables: dict[str, dict[ParamKey, Tensor]] = {}
    if optimize_intermediate:
        for t, idx in run.idx.items():
            rows = 2 * idx.shape[1]
            tables[t] = {k: _expand(start[k], rows) for k in _keys_before(run, t, start)}
            for v in tables[t].values():
                limits[id(v)] = (0.0, 1.0)
    params = [*final.values(), *(v for tb in tables.values() for v in tb.values())]
    params += list(betas.values())
    adam = _Adam(params, lr)
    taken = 0
    with torch.enable_grad():
        for _ in range(steps):
            if checkpoint is not None:
                checkpoint()
            taken += 1
            if optimize_intermediate:
                state, emp = run.hidden(tables, state0.bounds)
                empty = empty | emp
            else:
                state = state0
            lower, coef_t = run.final(state, spec, const, final, betas, keep_set)
            with torch.no_grad():
                best = torch.maximum(best, lower)
                coef = coef_t
                a_in = coef_t[graph.input_name]
                if optimize_intermediate:
                    best_pre = {
                        k: (lo.maximum(state.bounds[k][0]), up.minimum(state.bounds[k][1]))
                        for k, (lo, up) in best_pre.items()
                    }
            if proven(best):
                break
            grads = torch.autograd.grad(-lower.sum(), params, allow_unused=True)
            adam.step(grads)
            with torch.no_grad():
                for t in params:
                    t.clamp_(*limits[id(t)])  # projection: every iterate stays sound
    out: Params = {
        "alpha": {k: t.detach() for k, t in final.items()},
        "beta": {k: t.detach() for k, t in betas.items()},
    }
    return result(taken, out)


def _keys_before(run: _Run, tensor: str, start: dict[ParamKey, Tensor]) -> list[ParamKey]:
    """The parameters of nodes ``tensor`` depends on."""
    before = {node.output for node in run.graph.ancestors(tensor)}
    return [k for k in start if k[0] in before]


def _base_method(graph: Graph) -> str:
    """CROWN where every element-wise node is piecewise linear, CROWN-general otherwise."""
    for node in graph.nodes:
        op = get_op(node.op, node)
        if op.kind is OpKind.ELEMENTWISE and not op.traits.piecewise_linear:
            return "crown-general"
    return "crown"


def alpha_crown_bounds(
    graph: Graph,
    input_set: InputSet,
    C: Tensor | None = None,
    *,
    prior: Pre | None = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    optimize_intermediate: bool | None = None,
    baseline: Bounds | None = None,
) -> Bounds:
    """alpha-CROWN bounds of ``C @ graph(x)`` over ``input_set`` (the ``alpha-crown`` method
    of :func:`nnbound.bounds.bounds`).

    Lower and upper bounds get parameters of their own (the upper bound is the lower bound
    of ``-C``). The result is intersected with CROWN's (CROWN-general's where an activation
    is not piecewise linear), so it is never looser.

    Args:
        graph: the graph.
        input_set: input sets (``N`` rows).
        C: spec ``(S, outputs)`` or ``(B, S, outputs)``; ``None`` bounds the outputs.
        prior: bounds known to hold over the set, by tensor name.
        steps, lr, optimize_intermediate: see :func:`linear_bounds`.
        baseline: the CROWN bounds to intersect with, when the caller has them (its
            ``intermediate.pre`` by tensor name); computed otherwise.

    Returns:
        :class:`Bounds` with ``lower``/``upper`` of shape ``(*input_set.batch_shape, S)`` and
        ``intermediate.pre`` by tensor name.
    """
    from nnbound.bounds.graph_bounds import graph_bounds

    if tuple(input_set.center.shape[1:]) != graph.input_shape:
        raise InputError(
            f"input set has shape {tuple(input_set.center.shape[1:])}, the graph expects "
            f"{graph.input_shape}"
        )
    if input_set.center.dtype != graph.dtype:
        raise InputError(
            f"input dtype {input_set.center.dtype} differs from the graph's {graph.dtype}"
        )
    method = get_method(_base_method(graph))
    base = baseline or graph_bounds(graph, input_set, method, C, prior=prior)
    n = input_set.center.shape[0]
    spec = _spec_tensor(C, n, input_set.batch_shape, graph)  # type: ignore[arg-type]
    s = spec.shape[1]
    known: Pre = dict(base.intermediate.pre)  # type: ignore[arg-type]
    for k, (lo, up) in (prior or {}).items():
        known[k] = (known[k][0].maximum(lo), known[k][1].minimum(up)) if k in known else (lo, up)
    res = linear_bounds(
        graph,
        input_set,
        torch.cat([spec, -spec], 1),
        prior=known,
        steps=steps,
        lr=lr,
        optimize_intermediate=optimize_intermediate,
        options=RelaxOptions(method.relu_lower, TangentRule.EXACT),
    )
    lower = torch.maximum(base.lower.reshape(n, s), res.lower[:, :s])
    upper = torch.minimum(base.upper.reshape(n, s), -res.lower[:, s:])
    upper = torch.maximum(upper, lower)  # both sound; rounding at a point interval can cross
    shape = tuple(base.lower.shape)
    return Bounds(
        lower.reshape(shape),
        upper.reshape(shape),
        "alpha-crown",
        IntermediateBounds(res.pre),  # type: ignore[arg-type]
    )


def chain_alpha_crown_bounds(
    net: Network,
    input_set: InputSet,
    C: Tensor | None = None,
    *,
    prior: dict[int, Interval] | None = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    optimize_intermediate: bool | None = None,
) -> Bounds:
    """:func:`alpha_crown_bounds` of a chain :class:`Network`, run on its graph
    (:func:`~nnbound.network.chain_graph.network_to_graph`), with ``prior`` and
    ``intermediate.pre`` keyed by layer index as the chain methods key them (``j``: the input
    of layer ``j``) and intersected with the chain path's own CROWN bounds (so never looser
    than ``bounds(net, ..., "crown")`` to the last bit)."""
    from nnbound.bounds.methods import layerwise_bounds

    graph = network_to_graph(net)
    base = layerwise_bounds(net, input_set, _base_method(graph), C, prior=prior)
    tensor_of = {j: graph.nodes[j].inputs[0] for j in range(1, len(graph.nodes))}
    index_of = {name: j for j, name in tensor_of.items()}

    def named(pre: dict[int, Interval]) -> Pre:
        return {tensor_of[j]: v for j, v in pre.items() if j in tensor_of}

    baseline = Bounds(
        base.lower,
        base.upper,
        base.method,
        IntermediateBounds(named(base.intermediate.pre)),  # type: ignore[arg-type]
    )
    res = alpha_crown_bounds(
        graph,
        input_set,
        C,
        prior=named(prior) if prior else None,
        steps=steps,
        lr=lr,
        optimize_intermediate=optimize_intermediate,
        baseline=baseline,
    )
    pre = {index_of[k]: v for k, v in res.intermediate.pre.items() if k in index_of}
    return Bounds(res.lower, res.upper, res.method, IntermediateBounds(pre))


__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "INTERMEDIATE_BUDGET",
    "LinearBoundResult",
    "Pre",
    "alpha_crown_bounds",
    "chain_alpha_crown_bounds",
    "linear_bounds",
]
