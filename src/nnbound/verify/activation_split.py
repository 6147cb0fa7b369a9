"""Branch and bound on the pre-activation intervals of smooth (and any other element-wise)
activations: sigmoid, tanh, arctan, softplus, ELU, GELU...

ReLU splitting fixes a phase and ends at affine leaves; a smooth activation has no phase, but
its relaxation lines tighten as its input interval shrinks (the gap between the tangent and
the chord of ``sigmoid`` on ``[l, u]`` falls like ``(u - l)^2``). So a sub-domain here is the
disjunct's box restricted to ``z_j in [l_j, u_j]`` for the entries split so far: one split
halves one entry's interval (at 0 when the interval straddles it well, where S-shaped
functions change curvature, else at its midpoint), and the two children cover the parent.
Each child's bounds enter the bound engine as the prior of that tensor (intersected before
any line is built), so every bound is sound on the child's sub-domain; a child whose
computed interval misses its prior is proven empty. The last split of each entry is also
passed as a constraint ``s (z - t) >= 0`` with a beta-CROWN multiplier (the engine's
``split_points``): without it the final bound still ranges over the whole box, where the
narrowed relaxation is extrapolated, and tightens little.

The entry split is the one with the largest ``|coefficient| * (u - l)^2`` in the open rows'
final bound (how much its relaxation costs them). The search is not complete -- an interval
narrower than :data:`_MIN_WIDTH` relative to its magnitude is not split -- so it answers
``unsat`` (every sub-domain refuted), ``sat`` (a counterexample re-checked by running the
network), ``unknown`` or ``timeout``.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from nnbound.bounds.alpha_crown import Pre
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.ops.base import OpKind
from nnbound.ops.registry import get_op
from nnbound.verify.bab import (
    SAT,
    TIMEOUT,
    UNKNOWN,
    UNSAT,
    BabResult,
    _bound,
    _candidates,
    _fields_pre,
    _pre_fields,
    _Stack,
    _stop,
    as_graph,
)
from nnbound.verify.deadline import DeadlineReached
from nnbound.verify.spec import StackedSpec, find_counterexample

# An interval narrower than this (relative to 1 + its magnitude) is not split further.
_MIN_WIDTH = 1e-7


def split_tensors(graph: Graph) -> dict[str, list[str]]:
    """Tensors read by an element-wise activation, with the outputs of the activations
    reading each."""
    out: dict[str, list[str]] = {}
    for node in graph.ancestors(graph.output):
        if get_op(node.op, node).kind is OpKind.ELEMENTWISE:
            out.setdefault(node.inputs[0], []).append(node.output)
    return out


def activation_split(
    net: Network | Graph,
    spec: StackedSpec,
    deadline: float,
    *,
    root_pre: Pre | None = None,
    batch: int = 64,
    alpha_steps: int = 8,
    max_domains: int = 20_000,
) -> BabResult:
    """Branch and bound on activation input intervals over the disjunct's box (see the
    module docstring).

    Args:
        net: a network or graph with element-wise activations.
        spec: the disjunct.
        deadline: ``time.monotonic()`` value at which to stop with ``timeout`` (also checked
            inside every bound pass).
        root_pre: bounds valid on the whole box, by tensor name (each ``(1, *shape)``).
        batch: sub-domains bounded together.
        alpha_steps: alpha-CROWN steps per batch on the final bound's parameters and the
            beta multipliers of the last split of each entry (0: CROWN, no multipliers;
            measured on 12-12 tanh nets: 0 steps left cases open after 25,000 sub-domains
            that 8 steps close in 5 to 17).
        max_domains: open sub-domains allowed before giving up with ``unknown``.
    """
    counters = {"domains": 0, "rounds": 0}
    try:
        return _search(net, spec, deadline, root_pre, batch, alpha_steps, max_domains, counters)
    except DeadlineReached:
        return _stop(TIMEOUT, counters["domains"], counters["rounds"])


def _search(
    net: Network | Graph,
    spec: StackedSpec,
    deadline: float,
    root_pre: Pre | None,
    batch: int,
    alpha_steps: int,
    max_domains: int,
    counters: dict[str, int],
) -> BabResult:
    graph = as_graph(net)
    readers = split_tensors(graph)
    dev = spec.lower.device
    root_lo, root_hi = spec.lower.unsqueeze(0), spec.upper.unsqueeze(0)
    all_open = torch.ones(1, spec.num_groups, dtype=torch.bool, device=dev)
    res0, _ = _bound(graph, spec, root_lo, root_hi, all_open, prior=root_pre, deadline=deadline)
    names = list(res0.pre)
    # Not the graph input: the box is the domain there (that is input splitting), and the
    # engine's coefficient hook never sees the input, so a multiplier on it would be unsound.
    acts = [t for t in readers if t in res0.pre and t != graph.input_name]
    if not acts:
        return _stop(UNKNOWN, 0, 0, reason="no activation to split")
    outputs = tuple(out for t in acts for out in readers[t])
    position = {t: names.index(t) for t in acts}
    first = {"open": all_open, **_pre_fields(res0.pre, names)}
    for p, t in enumerate(acts):
        # The last split of each entry as a constraint ``s (z - t) >= 0`` for the beta
        # multipliers (earlier ones live on in the intervals).
        first[f"s{p}"] = torch.zeros_like(res0.pre[t][0], dtype=torch.int8)
        first[f"t{p}"] = torch.zeros_like(res0.pre[t][0])
    stack = _Stack(first)
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
        lo, hi = root_lo.expand(m, -1), root_hi.expand(m, -1)
        res, refuted = _bound(
            graph,
            spec,
            lo,
            hi,
            open_groups,
            prior=_fields_pre(block, names),
            splits={t: block[f"s{p}"] for p, t in enumerate(acts)},
            split_points={t: block[f"t{p}"] for p, t in enumerate(acts)},
            alpha_steps=alpha_steps,
            keep=outputs,
            deadline=deadline,
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
        scores, widths = [], [0]
        for t in acts:
            low, up = (b[idx].reshape(k, -1) for b in res.pre[t])
            pressure = torch.zeros_like(low)
            for out in readers[t]:
                if out in res.coef:
                    coef = res.coef[out][idx].reshape(k, spec.num_rows, -1).abs()
                    pressure = pressure + (weight.unsqueeze(-1) * coef).sum(1)
            width = up - low
            splittable = width > _MIN_WIDTH * (1 + torch.maximum(low.abs(), up.abs()))
            # The small width term ranks entries the open rows do not see.
            score = (pressure + 1e-6) * width * width
            scores.append(torch.where(splittable, score, torch.full_like(score, -1.0)))
            widths.append(widths[-1] + low.shape[1])
        best, flat = torch.cat(scores, 1).max(1)
        stuck = best < 0
        if bool(stuck.any()):
            # Every interval is as narrow as splitting goes: undecided.
            unresolved += int(stuck.sum())
            keep = ~stuck
            if not bool(keep.any()):
                continue
            idx, flat, open_groups, k = idx[keep], flat[keep], open_groups[keep], int(keep.sum())
        children: dict[str, Tensor] = {"open": torch.cat([open_groups, open_groups])}
        children.update(_pre_fields(res.pre, names, idx, repeat=2))
        for p in range(len(acts)):
            for key in (f"s{p}", f"t{p}"):
                children[key] = torch.cat([block[key][idx]] * 2)
        for p, t in enumerate(acts):
            sel = torch.nonzero((flat >= widths[p]) & (flat < widths[p + 1])).squeeze(1)
            if sel.numel() == 0:
                continue
            local = flat[sel] - widths[p]
            i = position[t]
            low = children[f"l{i}"].reshape(2 * k, -1)
            up = children[f"u{i}"].reshape(2 * k, -1)
            l_j, u_j = low[sel, local], up[sel, local]
            # At 0 when it splits the interval into parts of at least a tenth (S-shaped
            # functions are convex on one side of 0 and concave on the other: each part then
            # gets tangent-and-chord lines), else at the midpoint.
            straddles = (l_j < 0) & (u_j > 0) & (torch.minimum(-l_j, u_j) >= 0.1 * (u_j - l_j))
            mid = torch.where(straddles, torch.zeros_like(l_j), (l_j + u_j) / 2)
            up[sel, local] = mid  # first child: z_j <= mid
            low[k + sel, local] = mid  # second child: z_j >= mid
            sign = children[f"s{p}"].reshape(2 * k, -1)
            point = children[f"t{p}"].reshape(2 * k, -1)
            sign[sel, local], sign[k + sel, local] = -1, 1
            point[sel, local], point[k + sel, local] = mid, mid
        stack.push(children)
        if stack.size > max_domains:
            return _stop(UNKNOWN, visited, rounds, reason="domain limit")
    if unresolved:
        return _stop(UNKNOWN, visited, rounds, reason=f"{unresolved} domains too narrow")
    return _stop(UNSAT, visited, rounds)


__all__ = ["activation_split", "split_tensors"]
