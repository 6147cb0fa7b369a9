"""The reference's binary search for the largest certified eps, run for a batch at once.

Per row it reproduces ``utils.binary_search`` of the reference (spec §9.1) exactly: start at
``eps0``; on success raise the lower end and multiply by 10 until a failure is seen, on failure
lower the upper end and divide by 10 until a success is seen, then bisect; stop after
``max_steps`` evaluations, when ``upper - lower <= tol`` or when the candidate exceeds
``upper_limit``; return the last certified eps (0 if none). Every step evaluates the condition
for all unfinished rows in one batched call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def batched_binary_search(
    condition: Callable[[Tensor, Tensor], Tensor],
    n: int,
    eps0: float,
    *,
    max_steps: int = 15,
    tol: float = 1e-5,
    upper_limit: float = 1e5,
    scale: float = 10.0,
) -> Tensor:
    """Largest eps certified per row, as a float64 tensor ``(n,)``.

    ``condition(rows, eps)`` gets the indices of the rows still searching and their candidate
    eps (float64) and returns a bool tensor: True where eps is certified.
    """
    lower = torch.zeros(n, dtype=torch.float64)
    upper = torch.full((n,), math.inf, dtype=torch.float64)
    current = torch.full((n,), float(eps0), dtype=torch.float64)
    steps = torch.zeros(n, dtype=torch.int64)
    done = torch.zeros(n, dtype=torch.bool)
    if max_steps <= 0:
        return lower
    while not bool(done.all()):
        rows = torch.nonzero(~done).squeeze(1)
        ok = condition(rows, current[rows]).to(torch.bool).cpu()
        cur = current[rows]
        lo, up = lower[rows], upper[rows]
        lo = torch.where(ok, cur, lo)
        up = torch.where(ok, up, cur)
        seen_fail = torch.isfinite(up)
        seen_ok = lo > 0
        mid = (lo + up) / 2
        nxt = torch.where(
            ok,
            torch.where(seen_fail, mid, cur * scale),
            torch.where(seen_ok, mid, cur / scale),
        )
        lower[rows], upper[rows], current[rows] = lo, up, nxt
        steps[rows] += 1
        finished = (steps[rows] >= max_steps) | (nxt > upper_limit) | (up - lo <= tol)
        done[rows] = finished
    return lower


def bisect_down(condition: Callable[[Tensor, Tensor], Tensor], high: Tensor, steps: int) -> Tensor:
    """Per row, the largest certified eps in ``[0, high]`` found by ``steps`` bisections
    (used to repair a float32 result that float64 does not confirm)."""
    lo = torch.zeros_like(high)
    hi = high.clone()
    rows = torch.arange(high.shape[0])
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = condition(rows, mid).to(torch.bool).cpu()
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo


def recheck(condition: Callable[[Tensor, Tensor], Tensor], radius: Tensor, steps: int) -> Tensor:
    """Confirm each positive radius with ``condition`` (float64) and bisect below the ones it
    does not confirm."""
    radius = radius.clone()
    check = torch.nonzero(radius > 0).squeeze(1)
    if check.numel():
        ok = condition(check, radius[check])
        bad = check[~ok]
        if bad.numel():
            sub = lambda rows, eps: condition(bad[rows], eps)  # noqa: E731
            radius[bad] = bisect_down(sub, radius[bad], steps)
    return radius
