"""A cheap falsifier over all disjuncts at once: random points of every box, then projected
gradient descent on the counterexample objective ``max_s (C_s y - d_s)`` of the most
promising (disjunct, output group) pairs, all in one batch.

It only ever *finds* counterexamples; every one it returns has been re-checked by running the
network on the (clipped) input alone
(:func:`nnbound.verify.spec_batch.find_counterexample_batch`). The deadline is checked
between forward chunks and before every PGD step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.verify.deadline import Deadline, DeadlineReached
from nnbound.verify.spec import StackedSpec, evaluate
from nnbound.verify.spec_batch import SpecBatch, find_counterexample_batch

# Points run through the network per forward call while sampling (memory, and how often the
# deadline is looked at).
_CHUNK_POINTS = 4096
_CHUNK_ELEMENTS = 1 << 22
# PGD runs at once (restarts x pairs), at most.
_MAX_PGD_ROWS = 1024


def attack_batch(
    net: Network,
    batch: SpecBatch,
    *,
    deadline: Deadline,
    samples: int = 512,
    restarts: int = 8,
    steps: int = 60,
    generator: torch.Generator | None = None,
) -> tuple[int, Tensor, Tensor] | None:
    """Search every box of ``batch`` for an input whose output meets its disjunct.

    Args:
        net: the network (its dtype is used throughout).
        batch: the disjuncts.
        deadline: when to give up.
        samples: uniform samples (and as many random corners) in all, shared out over the
            disjuncts (at least 4 of each per disjunct).
        restarts: PGD runs per (disjunct, group) pair, started at its best samples; with
            many pairs only the most promising ones (smallest violation) get runs, at most
            :data:`_MAX_PGD_ROWS` in all.
        steps: PGD steps per run (sign-gradient steps on a cosine schedule, from a tenth of
            the box width down to ~0).
        generator: random source (reproducible runs).

    Returns:
        ``(disjunct index, x, y)`` flat counterexample and its output, or None.
    """
    try:
        return _search(net, batch, deadline, samples, restarts, steps, generator)
    except DeadlineReached:
        # The attack's own time is up (it may be shorter than the run's): nothing found.
        return None


def _search(
    net: Network,
    batch: SpecBatch,
    deadline: Deadline,
    samples: int,
    restarts: int,
    steps: int,
    generator: torch.Generator | None,
) -> tuple[int, Tensor, Tensor] | None:
    lo, hi = batch.lower, batch.upper  # (D, n)
    n_d, n = lo.shape
    kw = {"dtype": lo.dtype, "device": lo.device}
    width = hi - lo
    per = max(4, samples // n_d)
    # Starting points: the centre, uniform samples and random corners (ReLU networks are
    # piecewise linear, so extremes often sit on the boundary).
    uni = lo.unsqueeze(1) + torch.rand(n_d, per, n, generator=generator, **kw) * width.unsqueeze(1)
    corner_pick = torch.rand(n_d, per, n, generator=generator, **kw) < 0.5
    corners = torch.where(corner_pick, lo.unsqueeze(1), hi.unsqueeze(1))
    pool = torch.cat([((lo + hi) / 2).unsqueeze(1), uni, corners], 1)  # (D, P, n)
    p = pool.shape[1]
    viol = torch.empty(n_d, p, batch.num_groups, **kw)
    # Whole disjuncts per forward call, within the point budget (one disjunct's points may
    # exceed it: they then run in slices, the deadline checked between them).
    chunk = _points_per_call(net)
    step = max(1, chunk // p)
    for k0 in range(0, n_d, step):
        sub = batch.select(torch.arange(k0, min(n_d, k0 + step), device=lo.device))
        x = pool[k0 : k0 + step]
        y = _outputs(net, x.reshape(-1, n), chunk, deadline).reshape(sub.size, p, -1)
        found = find_counterexample_batch(net, sub, x, y)
        if found is not None:
            return k0 + found[0], found[1], found[2]
        viol[k0 : k0 + step] = sub.violation(y)
    if deadline.passed() or steps <= 0:
        return None
    return _pgd(net, batch, pool, viol, deadline, restarts, steps)


def _points_per_call(net: Network) -> int:
    """Points per forward call: :data:`_CHUNK_ELEMENTS` activation entries in all (a wide
    CNN runs few points at a time, so the deadline is seen often)."""
    shapes = net.shapes.values() if isinstance(net, Graph) else net.shapes
    per_point = sum(math.prod(s) for s in shapes)
    return max(1, min(_CHUNK_POINTS, _CHUNK_ELEMENTS // max(1, per_point)))


def _outputs(net: Network, x: Tensor, chunk: int, deadline: Deadline) -> Tensor:
    """``net`` at flat inputs ``x`` ``(P, n)``, ``chunk`` at a time; raises
    :class:`~nnbound.verify.deadline.DeadlineReached` between chunks once the deadline has
    passed."""
    out = []
    for i in range(0, x.shape[0], chunk):
        deadline.check()
        out.append(evaluate(net, x[i : i + chunk]))
    return torch.cat(out)


def _pgd(
    net: Network,
    batch: SpecBatch,
    pool: Tensor,
    viol: Tensor,
    deadline: Deadline,
    restarts: int,
    steps: int,
) -> tuple[int, Tensor, Tensor] | None:
    """PGD from the best pool points of the most promising (disjunct, group) pairs."""
    _, p, n = pool.shape
    g = batch.num_groups
    r = min(restarts, p)
    # Per pair, its r best starts; pairs ranked by their best violation (missing groups are
    # +inf and rank last).
    best_v, start_idx = (-viol).topk(r, dim=1)  # (D, r, G)
    pair_score = -best_v[:, 0, :].reshape(-1)  # (D * G,)
    live = torch.isfinite(pair_score)
    pairs = torch.nonzero(live).squeeze(1)
    pairs = pairs[pair_score[pairs].argsort()][: max(1, _MAX_PGD_ROWS // r)]
    if pairs.numel() == 0:
        return None
    k_of, g_of = pairs // g, pairs % g  # (Q,)
    starts = start_idx[k_of, :, g_of]  # (Q, r)
    x = pool[k_of.unsqueeze(1), starts].reshape(-1, n).clone()  # (Q * r, n)
    k_row = k_of.repeat_interleave(r)
    g_row = g_of.repeat_interleave(r)
    rows = batch.select(k_row)  # one disjunct per PGD run (repeats allowed)
    lo, hi = rows.lower, rows.upper
    width = hi - lo
    # (R, S): the real rows of each run's group.
    in_group = (rows.group == g_row.unsqueeze(1)) & rows.real
    for t in range(steps):
        if deadline.passed():
            return None
        x.requires_grad_(True)
        with torch.enable_grad():
            y = net(x.reshape(x.shape[0], *net.input_shape)).reshape(x.shape[0], -1)
            vals = torch.einsum("rm,rsm->rs", y, rows.C) - rows.d
            v = torch.where(in_group, vals, torch.full_like(vals, -torch.inf)).amax(1)
            (grad,) = torch.autograd.grad(v.sum(), x)
        with torch.no_grad():
            size = 0.1 * (0.5 * (1 + math.cos(math.pi * t / steps)) + 0.02)
            x = torch.maximum(torch.minimum(x - size * width * grad.sign(), hi), lo)
        found = find_counterexample_batch(net, rows, x.unsqueeze(1))
        if found is not None:
            return int(k_row[found[0]]), found[1], found[2]
    return None


def attack(
    net: Network,
    spec: StackedSpec,
    *,
    deadline: float,
    samples: int = 512,
    restarts: int = 8,
    steps: int = 60,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor] | None:
    """:func:`attack_batch` on one disjunct (``deadline`` a ``time.monotonic()`` value):
    ``(x, y)`` or None."""
    found = attack_batch(
        net,
        SpecBatch.make([spec]),
        deadline=Deadline(deadline),
        samples=samples,
        restarts=restarts,
        steps=steps,
        generator=generator,
    )
    return None if found is None else (found[1], found[2])


__all__ = ["attack", "attack_batch"]
