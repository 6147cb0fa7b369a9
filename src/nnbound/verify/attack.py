"""A cheap falsifier: random points of the box, then projected gradient descent on the
counterexample objective ``max_s (C_s y - d_s)`` of each output group.

It only ever *finds* counterexamples; every one it returns has been re-checked by running the
network on the (clipped) input (:func:`nnbound.verify.spec.find_counterexample`).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from nnbound.network.network import Network
from nnbound.verify.spec import StackedSpec, evaluate, find_counterexample


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
    """Search the box of ``spec`` for an input whose output satisfies one of its groups.

    Args:
        net: the network (its dtype is used throughout).
        spec: the disjunct.
        deadline: ``time.monotonic()`` value after which the search gives up.
        samples: uniform samples (and as many random corners) tried first.
        restarts: PGD runs per group, started at the best samples for that group.
        steps: PGD steps per run (sign-gradient steps on a cosine schedule, from a tenth of
            the box width down to ~0).
        generator: random source (reproducible runs).

    Returns:
        ``(x, y)`` flat counterexample and its output, or None.
    """
    lo, hi = spec.lower, spec.upper
    n = lo.numel()
    kw = {"dtype": lo.dtype, "device": lo.device}
    width = hi - lo
    # Starting points: the centre, uniform samples and random corners (ReLU networks are
    # piecewise linear, so extremes often sit on the boundary).
    uni = lo + torch.rand(samples, n, generator=generator, **kw) * width
    corners = torch.where(
        torch.rand(samples, n, generator=generator, **kw) < 0.5, lo.expand(samples, n), hi
    )
    pool = torch.cat([((lo + hi) / 2).unsqueeze(0), uni, corners])
    found = find_counterexample(net, spec, pool)
    if found is not None or time.monotonic() > deadline or spec.num_rows == 0:
        return found
    with torch.no_grad():
        viol = spec.violation(evaluate(net, pool))  # (P, G)
    g = spec.num_groups
    r = min(restarts, pool.shape[0])
    start_idx = (-viol).topk(r, dim=0).indices  # (r, G): best starts per group
    x = pool[start_idx.reshape(-1)].clone()  # (r * G, n), ordered (restart, group)
    which = torch.arange(g, device=lo.device).repeat(r)
    for t in range(steps):
        if time.monotonic() > deadline:
            break
        x.requires_grad_(True)
        with torch.enable_grad():
            y = net(x.reshape(x.shape[0], *net.input_shape)).reshape(x.shape[0], -1)
            v = spec.violation(y).gather(1, which.unsqueeze(1)).squeeze(1)
            (grad,) = torch.autograd.grad(v.sum(), x)
        with torch.no_grad():
            size = 0.1 * (0.5 * (1 + math.cos(math.pi * t / steps)) + 0.02)
            x = torch.maximum(torch.minimum(x - size * width * grad.sign(), hi), lo)
        found = find_counterexample(net, spec, x)
        if found is not None:
            return found
    return None


__all__ = ["attack"]
