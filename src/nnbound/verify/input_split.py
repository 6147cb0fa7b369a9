"""Branch and bound by bisecting input coordinates, over many disjuncts at once.

Every open sub-domain is a box of one disjunct (its index travels with the box), so the
sub-domains of all the disjuncts a property leaves open after the root bounds share each
batch: a property of hundreds of small-box disjuncts (nn4sys) costs a few bound passes, not
a few per disjunct. Per sub-domain the search keeps the output groups of its disjunct not
yet refuted there; it is closed when every group is refuted (or the box is proven empty).
Open boxes offer counterexample candidates (the corner minimising each row's linear lower
bound, and the centre); the others are split at the midpoint of one coordinate: the best
weighted geometric mean of its weight in the open rows' bounds (``|A_i| * width_i``) and its
width relative to its disjunct's box. Coordinates a box fixes (``lower == upper``) are never
split: the search runs over the free ones only.

``unsat`` means every sub-domain of every disjunct was closed with sound bounds.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from nnbound.bounds.alpha_crown import LinearBoundResult, Pre, linear_bounds
from nnbound.bounds.forward_linear import forward_bounds
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.box import Box
from nnbound.verify.bab import (
    SAT,
    TIMEOUT,
    UNKNOWN,
    UNSAT,
    BabResult,
    _candidates,
    _fields_pre,
    _pre_fields,
    _Stack,
    _stop,
    as_graph,
)
from nnbound.verify.deadline import Deadline, DeadlineReached
from nnbound.verify.spec import StackedSpec
from nnbound.verify.spec_batch import SpecBatch, find_counterexample_batch


def input_split(
    net: Network | Graph,
    spec: StackedSpec | SpecBatch,
    deadline: float,
    *,
    root_pre: Pre | None = None,
    batch: int = 1024,
    alpha_steps: int = 0,
    max_domains: int = 500_000,
    forward: bool = False,
) -> BabResult:
    """Decide one disjunct, or all disjuncts of a :class:`SpecBatch` together (``unsat``:
    none has a counterexample; ``sat``: the first one found).

    Args:
        net: the network or graph (float64 recommended).
        spec: the disjunct(s) (each box is a root domain).
        deadline: ``time.monotonic()`` value at which to stop with ``timeout`` (also checked
            inside every bound pass).
        root_pre: bounds valid on each disjunct's whole box, by tensor name (each
            ``(D, *shape)``, a row per disjunct).
        batch: sub-domains bounded together.
        alpha_steps: alpha-CROWN steps per batch (0: CROWN only).
        max_domains: open sub-domains allowed before giving up with ``unknown``.
        forward: intermediate bounds of each batch of boxes by forward mode where exact
            (:mod:`nnbound.bounds.forward_linear`) instead of backward passes.
    """
    specs = spec if isinstance(spec, SpecBatch) else SpecBatch.make([spec])
    counters = {"domains": 0, "rounds": 0}
    try:
        return _search(
            net, specs, deadline, root_pre, batch, alpha_steps, max_domains, counters, forward
        )
    except DeadlineReached:
        return _stop(TIMEOUT, counters["domains"], counters["rounds"])


def _bound_boxes(
    graph: Graph,
    specs: SpecBatch,
    lo: Tensor,
    hi: Tensor,
    open_groups: Tensor,
    prior: Pre | None,
    alpha_steps: int,
    deadline: float,
    forward: bool,
) -> tuple[LinearBoundResult, Tensor]:
    """Bounds of each box's own disjunct rows (``specs`` a row per box); returns the engine
    result and the ``(M, G)`` groups refuted (an empty box refutes everything)."""
    m = lo.shape[0]
    box = Box(lo.reshape(m, *graph.input_shape), hi.reshape(m, *graph.input_shape), (m,))
    rows = specs.C.reshape(m, specs.num_rows, *graph.output_shape)

    def refuted(lower: Tensor, empty: Tensor) -> Tensor:
        return (specs.group_max(lower) > 0) | ~specs.exists | empty.unsqueeze(1)

    checkpoint = Deadline(deadline).checkpoint
    known = forward_bounds(graph, box, checkpoint).exact_pre(graph) if forward else None
    res = linear_bounds(
        graph,
        box,
        rows,
        -specs.d,
        prior=prior,
        crown_pre=known,
        steps=alpha_steps,
        optimize_intermediate=False,
        stop=lambda lower, empty: bool((refuted(lower, empty) | ~open_groups).all()),
        checkpoint=checkpoint,
    )
    return res, refuted(res.lower, res.empty)


def _search(
    net: Network | Graph,
    specs: SpecBatch,
    deadline: float,
    root_pre: Pre | None,
    batch: int,
    alpha_steps: int,
    max_domains: int,
    counters: dict[str, int],
    forward: bool,
) -> BabResult:
    """:func:`input_split`'s search; ``counters`` (domains, rounds) stay readable when a
    bound pass raises :class:`DeadlineReached`."""
    dev = specs.lower.device
    first = {
        "k": torch.arange(specs.size, device=dev),
        "lo": specs.lower,
        "hi": specs.upper,
        "open": specs.exists.clone(),
    }
    graph = as_graph(net)
    acts = list(root_pre) if root_pre else []
    if root_pre:
        first.update(_pre_fields(root_pre, acts))
    stack = _Stack(first)
    visited = rounds = 0
    while stack.size:
        if time.monotonic() > deadline:
            return _stop(TIMEOUT, visited, rounds, open=stack.size)
        block = stack.pop(batch)
        k, lo, hi, open_groups = block["k"], block["lo"], block["hi"], block["open"]
        own = specs.select(k)  # each box's disjunct, a row per box
        rounds += 1
        visited += lo.shape[0]
        counters["rounds"], counters["domains"] = rounds, visited
        # Children inherit the parent's pre-activation bounds: valid on any sub-box, and
        # they leave far fewer neurons needing a backward pass.
        prior = _fields_pre(block, acts) if acts else None
        res, refuted = _bound_boxes(
            graph, own, lo, hi, open_groups, prior, alpha_steps, deadline, forward
        )
        open_groups = open_groups & ~refuted
        alive = open_groups.any(1)
        if not bool(alive.any()):
            continue
        idx = torch.nonzero(alive).squeeze(1)
        k, lo, hi, open_groups, own = k[idx], lo[idx], hi[idx], open_groups[idx], own.select(idx)
        a = res.a_input.reshape(alive.shape[0], specs.num_rows, -1)[idx]
        points = _candidates(a, lo, hi).reshape(lo.shape[0], -1, lo.shape[1])
        found = find_counterexample_batch(net, own, points)
        if found is not None:
            return BabResult(SAT, (found[1], found[2]), {"domains": visited, "rounds": rounds})
        dim, stuck = _split_coordinate(own, a, lo, hi, open_groups)
        if stuck:
            return _stop(UNKNOWN, visited, rounds, reason="width limit")
        rows = torch.arange(lo.shape[0], device=dev)
        mid = (lo[rows, dim] + hi[rows, dim]) / 2
        left_hi = hi.clone()
        left_hi[rows, dim] = mid
        right_lo = lo.clone()
        right_lo[rows, dim] = mid
        children = {
            "k": torch.cat([k, k]),
            "lo": torch.cat([lo, right_lo]),
            "hi": torch.cat([left_hi, hi]),
            "open": torch.cat([open_groups, open_groups]),
        }
        if acts:
            children.update(_pre_fields(res.pre, acts, idx, repeat=2))
        stack.push(children)
        if stack.size > max_domains:
            return _stop(UNKNOWN, visited, rounds, reason="domain limit")
    return _stop(UNSAT, visited, rounds)


def _split_coordinate(
    own: SpecBatch, a: Tensor, lo: Tensor, hi: Tensor, open_groups: Tensor
) -> tuple[Tensor, bool]:
    """``(M,)`` the coordinate to bisect in each box, and whether some box has none left
    wider than ``1e-12`` of its disjunct's width.

    The score is the weighted geometric mean of the coordinate's weight in the open rows'
    bounds (``|A_i| * width_i``) and its width relative to the disjunct's box: the weight
    alone keeps halving one coordinate whose influence the linear bound overstates, the
    width alone ignores the network. Measured on five hard ACAS Xu instances: exponent 1
    (weight only) leaves 3 of them open after 30 s, 0.85 leaves 2 after 25 s, 0.5 needs
    2-10x the sub-domains of 0.65-0.75 (all closed in 1-14 s)."""
    width = hi - lo
    root = own.upper - own.lower
    relative = width / root.clamp_min(1e-300)
    weight = (open_groups.gather(1, own.group) & own.real).to(a.dtype)  # (M, S) open rows
    influence = (a.abs() * weight.unsqueeze(-1)).sum(1) * width
    # The small term ranks coordinates the bound does not see (they still shrink the
    # relaxations).
    score = influence**0.7 * relative**0.3 + 1e-9 * relative
    splittable = width > root * 1e-12
    score = torch.where(splittable, score, torch.full_like(score, -1.0))
    dim = score.argmax(1)
    stuck = not bool(splittable.gather(1, dim.unsqueeze(1)).all())
    return dim, stuck


__all__ = ["input_split"]
