"""Branch and bound over input boxes or ReLU phases, batched over many sub-domains.

Both searches keep a stack of open sub-domains, each with the set of output groups not yet
refuted on it. A batch of sub-domains is bounded at once (CROWN, optionally alpha-CROWN); a
group is refuted on a sub-domain when one of its rows has a certified ``C_s y - d_s > 0``
there, and a sub-domain is closed when every group is refuted (or the domain is proven
empty). Open sub-domains offer counterexample candidates (the corner of the box minimising
each row's linear lower bound, and the centre), which are checked by running the network;
the others are split in two and pushed back.

* :func:`~nnbound.verify.input_split.input_split` bisects one input coordinate: complete in
  the limit, for low-dimensional inputs (ACAS Xu has 5); it lives in its own module and
  shares this one's stack and helpers.
* :func:`relu_split` fixes the phase of one unstable ReLU (``z >= 0`` in one child,
  ``z <= 0`` in the other; see :mod:`nnbound.bounds.alpha_crown` for how the bounds honour
  it), picked by a BaBSR-like score: the open rows' coefficient on the neuron times the
  intercept ``-l u / (u - l)`` of its upper line. Children inherit their parent's
  pre-activation bounds (valid on any sub-domain) and, as warm starts, its slopes and split
  multipliers. A sub-domain with no unstable neuron left (the network is affine there) is
  decided by a linear program whose dual gives a lower bound recomputed exactly in float64.

Both work on a computation graph (:class:`~nnbound.network.graph.Graph`; a chain
:class:`~nnbound.network.network.Network` is converted), so residual and branching networks
are searched the same way; bounds, splits and warm starts are keyed by tensor name (a split
fixes the sign of entries of a ReLU's input tensor). Input splitting works on any graph the
bound engine supports; ReLU splitting needs every non-linear node to be a ReLU or leaky ReLU
(its leaves are decided as affine maps).

``unsat`` only ever comes from sound bounds: every sub-domain of the partition was closed.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from nnbound.bounds.alpha import param_keys
from nnbound.bounds.alpha_crown import LinearBoundResult, Params, Pre, linear_bounds
from nnbound.errors import UnsupportedError
from nnbound.network.chain_graph import network_to_graph
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.ops.base import OpKind
from nnbound.ops.registry import DEFAULT_OPTIONS, get_op
from nnbound.sets.box import Box
from nnbound.verify.deadline import Deadline, DeadlineReached
from nnbound.verify.spec import StackedSpec, find_counterexample

UNSAT, SAT, UNKNOWN, TIMEOUT = "unsat", "sat", "unknown", "timeout"


@dataclass
class BabResult:
    """Outcome of one search: ``status`` (unsat / sat / unknown / timeout), the checked
    counterexample ``(x, y)`` for sat, and counters."""

    status: str
    counterexample: tuple[Tensor, Tensor] | None = None
    stats: dict[str, float | str] = field(default_factory=dict)


def as_graph(net: Network | Graph) -> Graph:
    """The graph the bounds run on (a chain is converted: layer ``j`` reads tensor ``t{j}``)."""
    return net if isinstance(net, Graph) else network_to_graph(net)


def relu_tensors(graph: Graph) -> dict[str, list[tuple[str, float]]]:
    """The tensors ReLU splitting branches on: each ReLU / leaky ReLU input, with the output
    and negative-side slope of every ReLU node reading it. Raises UnsupportedError when
    another non-linear node exists (a leaf would not be affine)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for node in graph.ancestors(graph.output):
        op = get_op(node.op, node)
        if op.kind is OpKind.LINEAR:
            continue
        leak = float(op.alpha(node)) if node.op == "leaky_relu" else 0.0  # type: ignore[attr-defined]
        if node.op not in ("relu", "leaky_relu") or not 0.0 <= leak <= 1.0:
            raise UnsupportedError(
                f"ReLU splitting handles graphs of linear operators and ReLU / leaky-ReLU "
                f"activations; {node.where} is {node.op}"
            )
        out.setdefault(node.inputs[0], []).append((node.output, leak))
    return out


def _bound(
    graph: Graph,
    spec: StackedSpec,
    lo: Tensor,
    hi: Tensor,
    open_groups: Tensor,
    *,
    prior: Pre | None = None,
    splits: dict[str, Tensor] | None = None,
    alpha_steps: int = 0,
    optimize_intermediate: bool | None = False,
    keep: tuple[str, ...] = (),
    warm: Params | None = None,
    deadline: float = math.inf,
    split_points: dict[str, Tensor] | None = None,
    settled: dict[str, Tensor] | None = None,
) -> tuple[LinearBoundResult, Tensor]:
    """Bounds of every row over the boxes ``lo``/``hi`` ``(M, n)``; returns the engine result
    and ``(M, G)`` groups refuted (an empty domain refutes everything)."""
    m = lo.shape[0]
    box = Box(lo.reshape(m, *graph.input_shape), hi.reshape(m, *graph.input_shape), (m,))
    out_shape = graph.output_shape
    rows = spec.C.reshape(1, spec.num_rows, *out_shape).expand(m, -1, *out_shape)
    const = (-spec.d).unsqueeze(0).expand(m, -1)

    def done(lower: Tensor, empty: Tensor) -> bool:
        return bool(((spec.group_max(lower) > 0) | ~open_groups | empty.unsqueeze(1)).all())

    res = linear_bounds(
        graph,
        box,
        rows,
        const,
        prior=prior,
        splits=splits,
        steps=alpha_steps,
        optimize_intermediate=optimize_intermediate,
        stop=done,
        keep=keep,
        warm=warm,
        checkpoint=Deadline(deadline).checkpoint,
        split_points=split_points,
        settled=settled,
    )
    refuted = (spec.group_max(res.lower) > 0) | res.empty.unsqueeze(1)
    return res, refuted


def _candidates(a: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Per domain, the box corner minimising each row's linear lower bound (``a``
    ``(M, S, n)`` its input coefficients), plus the centre: ``(M * (S + 1), n)``."""
    corner = torch.where(a > 0, lo.unsqueeze(1), hi.unsqueeze(1))
    centre = ((lo + hi) / 2).unsqueeze(1)
    return torch.cat([corner, centre], 1).reshape(-1, lo.shape[1])


class _Stack:
    """Open sub-domains as a stack of blocks; each block is a dict of tensors sharing their
    first (row) axis. Popping takes rows from the top (depth first), which keeps the stack
    short while every batch stays full."""

    def __init__(self, first: dict[str, Tensor]) -> None:
        self.blocks = [first]
        self.size = _rows(first)

    def push(self, block: dict[str, Tensor]) -> None:
        self.blocks.append(block)
        self.size += _rows(block)

    def pop(self, batch: int) -> dict[str, Tensor]:
        taken: list[dict[str, Tensor]] = []
        need = batch
        while need > 0 and self.blocks:
            top = self.blocks[-1]
            k = _rows(top)
            if k <= need:
                taken.append(self.blocks.pop())
                need -= k
            else:
                taken.append({key: t[k - need :] for key, t in top.items()})
                self.blocks[-1] = {key: t[: k - need] for key, t in top.items()}
                need = 0
        out = {key: torch.cat([b[key] for b in taken]) for key in taken[0]}
        self.size -= _rows(out)
        return out


def _rows(block: dict[str, Tensor]) -> int:
    return int(next(iter(block.values())).shape[0])


def _pre_fields(
    pre: Pre, names: list[str], rows: Tensor | None = None, repeat: int = 1
) -> dict[str, Tensor]:
    """Bounds of tensors ``names`` as stack fields (``l<i>``/``u<i>``, ``i`` the position in
    ``names``), rows picked and repeated."""
    out = {}
    for i, name in enumerate(names):
        lo, up = pre[name]
        if rows is not None:
            lo, up = lo[rows], up[rows]
        out[f"l{i}"] = torch.cat([lo] * repeat)
        out[f"u{i}"] = torch.cat([up] * repeat)
    return out


def _fields_pre(block: dict[str, Tensor], names: list[str]) -> Pre:
    return {name: (block[f"l{i}"], block[f"u{i}"]) for i, name in enumerate(names)}


def widths_of(t: Tensor) -> int:
    """Neurons per row of a ``(rows, *shape)`` tensor."""
    return math.prod(t.shape[1:])


def _stop(status: str, visited: int, rounds: int, **extra: float | str) -> BabResult:
    return BabResult(status, None, {"domains": visited, "rounds": rounds, **extra})


def relu_split(
    net: Network | Graph,
    spec: StackedSpec,
    deadline: float,
    *,
    root_pre: Pre | None = None,
    batch: int = 64,
    alpha_steps: int = 8,
    max_domains: int = 20_000,
) -> BabResult:
    """Branch and bound on ReLU phases over the disjunct's box (see the module docstring).

    Args:
        net: a network or graph of linear operators and ReLU / leaky-ReLU activations.
        spec: the disjunct.
        deadline: ``time.monotonic()`` value at which to stop with ``timeout`` (also checked
            inside every bound pass).
        root_pre: bounds valid on the whole box (e.g. from alpha-CROWN), by tensor name, each
            ``(1, *shape)``: the root's prior.
        batch: sub-domains bounded together.
        alpha_steps: alpha-CROWN steps per batch (final-bound parameters).
        max_domains: open sub-domains allowed before giving up with ``unknown``.
    """
    counters = {"domains": 0, "rounds": 0}
    try:
        return _relu_split(net, spec, deadline, root_pre, batch, alpha_steps, max_domains, counters)
    except DeadlineReached:
        return _stop(TIMEOUT, counters["domains"], counters["rounds"])


def _relu_split(
    net: Network | Graph,
    spec: StackedSpec,
    deadline: float,
    root_pre: Pre | None,
    batch: int,
    alpha_steps: int,
    max_domains: int,
    counters: dict[str, int],
) -> BabResult:
    """:func:`relu_split`'s search; ``counters`` as in :func:`_input_split`."""
    graph = as_graph(net)
    relus = relu_tensors(graph)
    dev = spec.lower.device
    root_lo, root_hi = spec.lower.unsqueeze(0), spec.upper.unsqueeze(0)
    all_open = torch.ones(1, spec.num_groups, dtype=torch.bool, device=dev)
    res0, _ = _bound(graph, spec, root_lo, root_hi, all_open, prior=root_pre, deadline=deadline)
    # The tensors split on (ReLU inputs), and every tensor whose bounds children inherit.
    acts = [t for t in relus if t in res0.pre]
    names = list(res0.pre)
    relu_outputs = tuple(out for t in acts for out, _ in relus[t])
    keys = param_keys(graph, graph.ancestors(graph.output), DEFAULT_OPTIONS)
    first: dict[str, Tensor] = {"open": all_open, **_pre_fields(res0.pre, names)}
    # Per domain, the tensors whose bounds its parent already computed with the same splits
    # upstream (its own split is not an ancestor of them): no backward passes for those.
    first["settled"] = torch.zeros(1, len(names), dtype=torch.bool, device=dev)
    unaffected = _unaffected(graph, acts, names).to(dev)
    s_rows = spec.num_rows
    for i, t in enumerate(acts):
        first[f"s{i}"] = torch.zeros_like(res0.pre[t][0], dtype=torch.int8)
        # Split multipliers carried from parent to children (warm starts), kept in float32:
        # they are parameters, any value of which gives a sound bound.
        shape = graph.shapes[t]
        first[f"b{i}"] = torch.zeros(1, s_rows, *shape, dtype=torch.float32, device=dev)
    for i, (node_out, _) in enumerate(keys):
        # Relaxation parameters likewise; NaN means "start from CROWN's".
        shape = graph.shapes[node_out]
        first[f"a{i}"] = torch.full((1, s_rows, *shape), math.nan, dtype=torch.float32, device=dev)
    stack = _Stack(first)
    widths = [widths_of(res0.pre[t][0]) for t in acts]
    offsets = [0, *itertools.accumulate(widths)]
    visited = rounds = unresolved = 0
    while stack.size:
        if time.monotonic() > deadline:
            return _stop(TIMEOUT, visited, rounds, open=stack.size)
        block = stack.pop(batch)
        open_groups = block["open"]
        m = open_groups.shape[0]
        rounds += 1
        visited += m
        counters["rounds"], counters["domains"] = rounds, visited
        splits = {t: block[f"s{i}"] for i, t in enumerate(acts)}
        lo = root_lo.expand(m, -1)
        hi = root_hi.expand(m, -1)
        res, refuted = _bound(
            graph,
            spec,
            lo,
            hi,
            open_groups,
            prior=_fields_pre(block, names),
            splits=splits,
            alpha_steps=alpha_steps,
            keep=relu_outputs,
            warm={
                "alpha": {k: block[f"a{i}"] for i, k in enumerate(keys)},
                "beta": {t: block[f"b{i}"] for i, t in enumerate(acts)},
            },
            deadline=deadline,
            settled={name: block["settled"][:, j] for j, name in enumerate(names)},
        )
        open_groups = open_groups & ~refuted
        alive = open_groups.any(1)
        if not bool(alive.any()):
            continue
        idx = torch.nonzero(alive).squeeze(1)
        k = idx.numel()
        a = res.a_input.reshape(m, spec.num_rows, -1)[idx]
        found = find_counterexample(net, spec, _candidates(a, lo[idx], hi[idx]))
        if found is not None:
            return BabResult(SAT, found, {"domains": visited, "rounds": rounds})
        open_groups = open_groups[idx]
        weight = open_groups[:, spec.group].to(spec.C.dtype)  # (K, S): rows of open groups
        scores = []
        for t in acts:
            lo_j, up_j = (b[idx].reshape(k, -1) for b in res.pre[t])
            free = (lo_j < 0) & (up_j > 0) & (splits[t][idx].reshape(k, -1) == 0)
            lam = sum(res.coef[out][idx].reshape(k, spec.num_rows, -1) for out, _ in relus[t])
            assert isinstance(lam, Tensor)
            # Upper lines are used where the coefficient is negative; their intercept
            # -l u / (u - l) is what the relaxation gives away there.
            pressure = (weight.unsqueeze(-1) * (-lam).clamp_min(0)).sum(1)
            intercept = -lo_j * up_j / (up_j - lo_j).clamp_min(1e-300)
            # The small intercept term ranks neurons the open rows do not see.
            score = (pressure + 1e-6) * intercept
            scores.append(torch.where(free, score, torch.full_like(score, -1.0)))
        best, flat = torch.cat(scores, 1).max(1)
        leaves = torch.nonzero(best < 0).squeeze(1)
        if leaves.numel():
            # No free unstable neuron: the network is affine on the domain, which the bound
            # over the whole box ignores. An LP over the domain decides it (with a dual
            # certificate checked in float64 for unsat, a network run for sat).
            for r in leaves.tolist():
                row = int(idx[r])
                verdict, x = _decide_leaf(
                    graph,
                    spec,
                    {t: splits[t][row] for t in acts},
                    {t: (res.pre[t][0][row], res.pre[t][1][row]) for t in acts},
                    relus,
                    open_groups[r],
                )
                if verdict == SAT:
                    assert x is not None
                    found = find_counterexample(net, spec, x.unsqueeze(0))
                    if found is not None:
                        return BabResult(SAT, found, {"domains": visited, "rounds": rounds})
                if verdict != UNSAT:
                    unresolved += 1
            keep = best >= 0
            if not bool(keep.any()):
                continue
            idx, flat, open_groups, k = idx[keep], flat[keep], open_groups[keep], int(keep.sum())
        children: dict[str, Tensor] = {"open": torch.cat([open_groups, open_groups])}
        split_at = torch.bucketize(flat, torch.tensor(offsets[1:], device=dev), right=True)
        children["settled"] = torch.cat([unaffected[split_at]] * 2)
        children.update(_pre_fields(res.pre, names, idx, repeat=2))
        for field_name, got in [
            *((f"a{i}", res.params.get("alpha", {}).get(key)) for i, key in enumerate(keys)),
            *((f"b{i}", res.params.get("beta", {}).get(t)) for i, t in enumerate(acts)),
        ]:
            v = block[field_name] if got is None else got.to(torch.float32)
            children[field_name] = torch.cat([v[idx], v[idx]])
        for p, t in enumerate(acts):
            s_j = splits[t][idx].reshape(k, -1)
            plus, minus = s_j.clone(), s_j.clone()
            sel = torch.nonzero((flat >= offsets[p]) & (flat < offsets[p + 1])).squeeze(1)
            local = flat[sel] - offsets[p]
            plus[sel, local] = 1
            minus[sel, local] = -1
            children[f"s{p}"] = torch.cat([plus, minus]).reshape(2 * k, *splits[t].shape[1:])
        stack.push(children)
        if stack.size > max_domains:
            return _stop(UNKNOWN, visited, rounds, reason="domain limit")
    if unresolved:
        return _stop(UNKNOWN, visited, rounds, reason=f"{unresolved} leaves undecided")
    return _stop(UNSAT, visited, rounds)


def _unaffected(graph: Graph, acts: list[str], names: list[str]) -> Tensor:
    """``(len(acts), len(names))``: whether tensor ``names[j]``'s bounds do not depend on the
    relaxation of ``acts[p]`` (it is not a strict ancestor of ``names[j]``), so a split on
    ``acts[p]`` leaves them as they were."""
    out = torch.ones(len(acts), len(names), dtype=torch.bool)
    for j, name in enumerate(names):
        upstream = {t for node in graph.ancestors(name) for t in node.inputs}
        for p, act in enumerate(acts):
            out[p, j] = act == name or act not in upstream
    return out


# Margin a float64 dual certificate must clear (its own rounding is ~1e-15 of the terms).
_CERT_TOL = 1e-9


def _affine_pieces(
    graph: Graph, slopes: dict[str, Tensor], tensors: list[str]
) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor, Tensor]:
    """With every ReLU node (by output name) replaced by the fixed per-entry slope
    ``slopes[output]``, the graph is affine: returns each of ``tensors`` ``(A (W, n),
    b (W,))`` and the output ``(A (m, n), c (m,))`` as maps of the flat input (the graph run
    on the origin and the unit vectors)."""
    n = graph.num_inputs
    dtype, dev = graph.dtype, graph.device
    pts = torch.cat(
        [torch.zeros(1, n, dtype=dtype, device=dev), torch.eye(n, dtype=dtype, device=dev)]
    )
    values = {graph.input_name: pts.reshape(n + 1, *graph.input_shape)}

    def split(t: Tensor) -> tuple[Tensor, Tensor]:
        flat = t.reshape(n + 1, -1)
        return (flat[1:] - flat[0]).T.contiguous(), flat[0]

    with torch.no_grad():
        for node in graph.ancestors(graph.output):
            x = [values[i] for i in node.inputs]
            if node.output in slopes:
                values[node.output] = x[0] * slopes[node.output].reshape(1, *x[0].shape[1:])
            else:
                values[node.output] = get_op(node.op, node).forward(node, *x)
    a, c = split(values[graph.output])
    return {t: split(values[t]) for t in tensors}, a, c


def _certificate(
    rows_a: np.ndarray, rows_b: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> float:
    """``min`` over the box of ``sum_i w_i (a_i . x + b_i)`` (``w >= 0``): exact box
    concretisation of one linear function, in float64."""
    lin = weights @ rows_a
    const = float(weights @ rows_b)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    return float(lin @ mid - np.abs(lin) @ rad + const)


def _decide_leaf(
    graph: Graph,
    spec: StackedSpec,
    splits: dict[str, Tensor],
    pre: Pre,
    relus: dict[str, list[tuple[str, float]]],
    open_groups: Tensor,
) -> tuple[str, Tensor | None]:
    """Decide a domain on which every neuron is split or stable.

    The domain is ``{x in box : sign constraints of the split neurons}`` and the graph is
    affine on it. Per open group an LP minimises ``t`` with ``C_s y(x) - d_s <= t``; its dual
    multipliers (any non-negative ones are valid) give a lower bound by weak duality,
    recomputed exactly over the box: ``> 0`` refutes the group. An infeasible LP gets the same
    treatment for ``max_k g_k(x)`` over the split constraints ``g_k <= 0`` (an empty domain).
    Returns ``(unsat | sat | unknown, candidate input)``.
    """
    from scipy.optimize import linprog

    slopes = {}
    for t, (lo_j, _) in pre.items():
        s = splits[t].reshape(lo_j.shape)
        active = (s > 0) | ((s == 0) & (lo_j >= 0))
        for out, leak in relus[t]:
            slopes[out] = torch.where(active, 1.0, leak).to(lo_j.dtype)
    maps, a_out, c_out = _affine_pieces(graph, slopes, list(pre))
    # Split constraints g(x) = sign * (A x + b) <= 0 (active: -z <= 0, inactive: z <= 0).
    g_a, g_b = [], []
    for t, (a_j, b_j) in maps.items():
        s = splits[t].reshape(-1)
        for k in torch.nonzero(s).squeeze(1).tolist():
            sign = -1.0 if s[k] > 0 else 1.0
            g_a.append(sign * a_j[k].cpu().numpy())
            g_b.append(sign * float(b_j[k]))
    n = graph.num_inputs
    lo, hi = spec.lower.cpu().numpy(), spec.upper.cpu().numpy()
    ga = np.array(g_a).reshape(len(g_a), n)
    gb = np.array(g_b)
    bounds = [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)] + [(None, None)]
    y_a = spec.C.cpu().numpy() @ a_out.cpu().numpy()  # (S, n): rows as maps of x
    y_b = spec.C.cpu().numpy() @ c_out.cpu().numpy() - spec.d.cpu().numpy()
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    candidate = None
    for g in torch.nonzero(open_groups).squeeze(1).tolist():
        sel = (spec.group == g).cpu().numpy()
        ra, rb = y_a[sel], y_b[sel]
        a_ub = np.vstack(
            [np.hstack([ga, np.zeros((len(gb), 1))]), np.hstack([ra, -np.ones((len(rb), 1))])]
        )
        b_ub = np.concatenate([-gb, -rb])
        res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status == 2:  # infeasible: certify that the domain is empty
            return (UNSAT, None) if _empty_domain(ga, gb, lo, hi) else (UNKNOWN, None)
        if res.status != 0:
            return UNKNOWN, None
        lam = np.clip(-np.asarray(res.ineqlin.marginals), 0.0, None)
        mu, w = lam[: len(gb)], lam[len(gb) :]
        if w.sum() > 0:
            # Stationarity in t makes the row weights sum to 1; renormalising keeps any
            # solver slack from scaling the bound.
            w = w / w.sum()
            bound = _certificate(
                np.vstack([ra, ga]), np.concatenate([rb, gb]), np.concatenate([w, mu]), lo, hi
            )
            if bound > _CERT_TOL:
                continue
        if res.fun <= 0:
            candidate = torch.as_tensor(res.x[:n], dtype=spec.lower.dtype, device=spec.lower.device)
            return SAT, candidate
        return UNKNOWN, None
    return UNSAT, candidate


def _empty_domain(ga: np.ndarray, gb: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether ``max_k g_k(x) > 0`` on the whole box (no input meets every split), certified
    by the dual of ``min s`` s.t. ``g_k(x) <= s``."""
    from scipy.optimize import linprog

    if len(gb) == 0:
        return False
    n = lo.size
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    bounds = [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)] + [(None, None)]
    a_ub = np.hstack([ga, -np.ones((len(gb), 1))])
    res = linprog(cost, A_ub=a_ub, b_ub=-gb, bounds=bounds, method="highs")
    if res.status != 0:
        return False
    mu = np.clip(-np.asarray(res.ineqlin.marginals), 0.0, None)
    if mu.sum() <= 0:
        return False
    return _certificate(ga, gb, mu / mu.sum(), lo, hi) > _CERT_TOL


__all__ = [
    "SAT",
    "TIMEOUT",
    "UNKNOWN",
    "UNSAT",
    "BabResult",
    "as_graph",
    "relu_split",
    "relu_tensors",
]
