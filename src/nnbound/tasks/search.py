"""The reference's binary search for the largest certified eps, run for a batch at once.

Per row it reproduces ``utils.binary_search`` of the reference (spec §9.1) exactly: start at
``eps0``; on success raise the lower end and multiply by 10 until a failure is seen, on failure
lower the upper end and divide by 10 until a success is seen, then bisect; stop after
``max_steps`` evaluations, when ``upper - lower <= tol`` or when the candidate exceeds
``upper_limit``; return the last certified eps (0 if none). Every step evaluates the condition
for all unfinished rows in one batched call.

:func:`bracketed_binary_search` takes the same decisions with fewer and cheaper evaluations
when certification is monotone in eps (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Evaluations per search step a row may spend on candidates chosen from root estimates; past
# that it evaluates the reference's own next candidate each time (certain progress).
_EVALUATIONS_PER_STEP = 3
# Before any failure is known, the root of the quadratic fit is scaled by this (when that is
# still above the largest certified eps P; otherwise the fit is near P and the row tries as far
# past the root as P is below it, to find a failure): layer-wise bounds fall ever faster with
# eps, so the fit overestimates, and evaluations above the root cost more than below it (more
# unstable neurons).
_EXTRAPOLATION_PULL = 0.85
# Root estimates inside the bracket (P, F) are kept this fraction of its width from either
# end: near the end of a search F is often a hair above the root, where the estimate belongs.
_BRACKET_MARGIN = 1e-4
# ... and this fraction when the row's last estimate put its evaluation on the wrong side of
# the root while F > (1 + _WIDE_BRACKET) P: far from the root of a deep network's fast-falling
# bound the fit is poor, and without this a 7-layer MLP's search crept up in tiny steps
# (twice the evaluations).
_SURPRISE_MARGIN = 0.03
_WIDE_BRACKET = 1.0
# How far past the largest certified eps P the chord estimate may go, in steps of the last
# increase of P.
_CHORD_REACH = 4.0
# Up to this many rows, root bisections run on Python floats (cheaper than array operations).
_SCALAR_ROWS = 8
# A knee this close to F (as a fraction of the bracket) is not worth an evaluation of its own.
_KNEE_CLEARANCE = 0.01
# Up to this many rows, the reference path is replayed per row in Python floats; more replay
# in lockstep as arrays, whose cost hardly depends on the rows (equal at about 128 rows; at
# 1,000, a GPU's batch, 4x faster).
_SCALAR_REPLAYS = 160


@dataclass
class _ReferenceSearch:
    """Per-row state of the reference's search: its bracket, next candidate and step count."""

    lower: np.ndarray
    upper: np.ndarray
    current: np.ndarray
    steps: np.ndarray
    done: np.ndarray
    max_steps: int
    tol: float
    upper_limit: float
    scale: float

    @staticmethod
    def start(
        n: int, eps0: float, max_steps: int, tol: float, upper_limit: float, scale: float
    ) -> _ReferenceSearch:
        return _ReferenceSearch(
            np.zeros(n),
            np.full(n, math.inf),
            np.full(n, float(eps0)),
            np.zeros(n, dtype=np.int64),
            np.full(n, max_steps <= 0, dtype=bool),
            max_steps,
            tol,
            upper_limit,
            scale,
        )

    def decisive_candidate(
        self, row: int, certified: float, failed: float, root: float
    ) -> tuple[float, bool]:
        """The candidate of ``row`` to evaluate next, given that eps up to ``certified`` is
        known certified, eps from ``failed`` on known failed, and ``root`` estimates where the
        bound crosses zero.

        Replays the search from its current state with every unknown decision taken from
        ``root``. Candidates certified along that path only grow and failed ones only shrink,
        so the last certified one and the last failed one, once evaluated, settle every other
        unknown decision of the path. Returns the last failed one while there is one (False),
        then the last certified one (True: it is expected to be the search's result, worth
        evaluating precisely). Failures first: the radius then needs one precise evaluation,
        not a working one followed by a precise one.
        """
        lo, up = float(self.lower[row]), float(self.upper[row])
        cur, steps = float(self.current[row]), int(self.steps[row])
        last_ok, last_fail = math.nan, math.nan
        while True:
            if cur <= certified:
                ok = True
            elif cur >= failed:
                ok = False
            else:
                ok = cur <= root
                if ok:
                    last_ok = cur
                else:
                    last_fail = cur
            lo, up = (cur, up) if ok else (lo, cur)
            if ok:
                nxt = (lo + up) / 2 if math.isfinite(up) else cur * self.scale
            else:
                nxt = (lo + up) / 2 if lo > 0 else cur / self.scale
            steps += 1
            if steps >= self.max_steps or nxt > self.upper_limit or up - lo <= self.tol:
                break
            cur = nxt
        if math.isnan(last_fail):
            return last_ok, True
        return last_fail, False

    def decisive_candidates(
        self, rows: np.ndarray, certified: np.ndarray, failed: np.ndarray, root: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decisive_candidate` for each of ``rows`` at once (arrays aligned with
        ``rows``): the candidates and whether each is the last certified one.

        Every row replays its path in lockstep, stopping where its own would, with the same
        float64 operations in the same order, so each result is the scalar replay's bit for
        bit."""
        lo, up = self.lower[rows].copy(), self.upper[rows].copy()
        cur, steps = self.current[rows].copy(), self.steps[rows].copy()
        last_ok = np.full(rows.shape, math.nan)
        last_fail = np.full(rows.shape, math.nan)
        # A row that stopped keeps stepping with the others; only its record stops changing.
        active = np.ones(rows.shape, dtype=bool)
        while active.any():
            known_ok = cur <= certified
            unknown = active & ~known_ok & (cur < failed)
            ok = known_ok | (unknown & (cur <= root))
            last_ok = np.where(unknown & ok, cur, last_ok)
            last_fail = np.where(unknown & ~ok, cur, last_fail)
            lo, up = np.where(ok, cur, lo), np.where(ok, up, cur)
            mid = (lo + up) / 2
            nxt = np.where(
                ok,
                np.where(np.isfinite(up), mid, cur * self.scale),
                np.where(lo > 0, mid, cur / self.scale),
            )
            steps += 1
            active &= ~(
                (steps >= self.max_steps) | (nxt > self.upper_limit) | (up - lo <= self.tol)
            )
            cur = nxt
        final = np.isnan(last_fail)
        return np.where(final, last_ok, last_fail), final

    def advance(self, rows: np.ndarray, ok: np.ndarray) -> None:
        """Take the decisions ``ok`` for the candidates of ``rows`` (the reference's update)."""
        cur = self.current[rows]
        lo = np.where(ok, cur, self.lower[rows])
        up = np.where(ok, self.upper[rows], cur)
        seen_fail = np.isfinite(up)
        seen_ok = lo > 0
        mid = (lo + up) / 2
        nxt = np.where(
            ok,
            np.where(seen_fail, mid, cur * self.scale),
            np.where(seen_ok, mid, cur / self.scale),
        )
        self.lower[rows], self.upper[rows], self.current[rows] = lo, up, nxt
        self.steps[rows] += 1
        finished = (self.steps[rows] >= self.max_steps) | (nxt > self.upper_limit)
        self.done[rows] = finished | (up - lo <= self.tol)


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
    search = _ReferenceSearch.start(n, eps0, max_steps, tol, upper_limit, scale)
    while not search.done.all():
        rows = np.flatnonzero(~search.done)
        ok = condition(torch.from_numpy(rows), torch.from_numpy(search.current[rows]))
        search.advance(rows, ok.to(torch.bool).cpu().numpy())
    return torch.from_numpy(search.lower)


def bracketed_binary_search(
    margin: Callable[[Tensor, Tensor], Tensor],
    margin0: Tensor,
    eps0: float,
    *,
    slope0: Tensor | None = None,
    confirm: Callable[[Tensor, Tensor], Tensor] | None = None,
    first_scale: float = 1.0,
    steep: bool = False,
    knee: np.ndarray | None = None,
    max_steps: int = 15,
    tol: float = 1e-5,
    upper_limit: float = 1e5,
    scale: float = 10.0,
) -> Tensor:
    """The reference's search (:func:`batched_binary_search`) for the condition
    ``margin(rows, eps) > 0``, with each decision inferred where monotonicity settles it.

    ``margin(rows, eps)`` returns a float tensor: a lower bound of the spec's margin over the
    ball of radius eps (certified where > 0); ``margin0`` ``(n,)`` is the margin at the centre
    (eps = 0) and ``slope0`` (optional) the dual norm of its gradient there, the rate at which
    a tight bound starts to fall.

    Per row it keeps the largest eps evaluated as certified (``P``) and the smallest evaluated
    as failed (``F``). A candidate of the reference's search at or below ``P`` is taken as
    certified (its ball lies inside ``P``'s), one at or above ``F`` as failed, without an
    evaluation. When a candidate lies between them, the row estimates where the margin bound
    crosses zero (``first_scale`` times the first-order root ``margin0 / slope0`` before any
    evaluation; then, with P only, the root of the fall-ratio model through P
    (:func:`_fall_ratio_root`) or where that does not apply of ``margin0 - slope0 e - c e^2``
    through P; once a failure is known, of the cubic through the centre, P and F (with
    ``steep``, of the fall-ratio model instead: through F while nothing is certified, then
    with the ratio's log interpolated between P and F), and once a third evaluation is known,
    of the quadratic through P, F and the nearer of the previous P and F; kept a little inside
    the bracket, more after a surprise in a wide one), replays
    the reference path with that estimate (:meth:`_ReferenceSearch.decisive_candidate`) and
    evaluates the path's last failed candidate, or when it has none its last certified one:
    evaluating both settles the whole path. Without a usable estimate it evaluates the
    reference's own next candidate.

    When the bound's decision is monotone in eps (certified at eps implies certified below it)
    the result is exactly the reference search's. When it is not, the result is still sound:
    every eps taken as certified lies inside a ball that was evaluated as certified.

    A failure close above the root is the most useful evaluation: its bounds serve every
    later, smaller eps as a prior (see :class:`nnbound.tasks.radius._Certifier`), which on a
    6x1024 MLP made later evaluations 4x cheaper, while a failure at twice the root helped
    little. ``first_scale`` places the first evaluation; :func:`nnbound.tasks.radius.first_scale`
    chooses it from the network's depth.

    ``steep``: the bound is flat far below its root and falls off a cliff past it, as a
    network's with three or more relaxed layers does (see :func:`nnbound.tasks.radius.steep`).
    The cubic through the centre and a far, steep failure then put the next evaluation at a
    third to a half of the root on random 5x512 MLPs, and the search crept up from there;
    the fall-ratio model through that failure at 0.84-0.98 of it. On two-layer networks the
    cubic is the closer one (0.96-1.02 of the root on ``mnist-fc-3layer``, the fall-ratio
    model up to 1.11).

    ``knee`` (optional, ``(n,)``, inf for none): per row an eps below which the bound is
    expected nearly flat and past which it falls steeply (:mod:`nnbound.tasks.knees`). While
    P and the estimate lie below it (and F well above), the row evaluates there, in float32.

    ``confirm`` (optional) is a more precise ``margin`` (float64 for a float32 ``margin``):
    every returned radius is then certified by it. The evaluation expected to give the final
    radius (the last certified candidate of a path without unknown failures) is made with
    ``confirm`` instead of ``margin``, for all rows in one call once no row has ``margin``
    work left; a radius not covered that way is
    confirmed afterwards, and bisected below with ``confirm`` where it is not
    (:func:`recheck`).
    """
    n = margin0.shape[0]
    m0 = margin0.detach().to(torch.float64).cpu().numpy()
    g0 = np.zeros(n) if slope0 is None else slope0.detach().to(torch.float64).cpu().numpy()
    search = _ReferenceSearch.start(n, eps0, max_steps, tol, upper_limit, scale)
    # The bookkeeping is numpy: a few rows' float64 scalars, where torch's per-operation cost
    # was a fifth of a one-image search (same IEEE float64 arithmetic, same decisions).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        radius, confirmed = _bracketed(
            search, margin, m0, g0, confirm, first_scale, steep, knee, max_steps
        )
    if confirm is not None:
        open_rows = np.flatnonzero(radius > confirmed)
        if open_rows.size:
            rows_t = torch.from_numpy(open_rows)
            radius[open_rows] = recheck(
                _positive(confirm, rows_t), torch.from_numpy(radius[open_rows]), max_steps
            ).numpy()
    return torch.from_numpy(radius)


def _bracketed(
    search: _ReferenceSearch,
    margin: Callable[[Tensor, Tensor], Tensor],
    m0: np.ndarray,
    g0: np.ndarray,
    confirm: Callable[[Tensor, Tensor], Tensor] | None,
    first_scale: float,
    steep: bool,
    knee: np.ndarray | None,
    max_steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The loop of :func:`bracketed_binary_search`: the reference search's radii and the
    largest eps ``confirm`` certified per row."""
    n = m0.shape[0]
    best_ok = np.zeros(n)  # P: largest eps evaluated as certified (0: the centre)
    m_ok = m0.copy()  # the margin bound at P
    # F: smallest eps evaluated as failed. A centre whose margin is not positive fails every
    # eps (a sound bound is at most the margin at the centre).
    first_fail = np.where(m0 > 0, math.inf, 0.0)
    m_fail = np.where(m0 > 0, math.nan, m0)
    evaluations = np.zeros(n, dtype=np.int64)
    # Whether the row's last estimated evaluation came out on the side its estimate predicted.
    surprised = np.zeros(n, dtype=bool)
    # ... and whether that surprise was a certified evaluation predicted to fail.
    undershot = np.zeros(n, dtype=bool)
    confirmed = np.zeros(n)  # largest eps ``confirm`` certified
    # The previous P and F (the centre and none at first): a third point for the local fit.
    prev_ok, m_prev_ok = best_ok.copy(), m0.copy()
    prev_fail, m_prev_fail = first_fail.copy(), m_fail.copy()
    while True:
        # Take every decision the bracket settles.
        while True:
            cur = search.current
            settled = ~search.done & ((cur <= best_ok) | (cur >= first_fail))
            if not settled.any():
                break
            rows = np.flatnonzero(settled)
            search.advance(rows, cur[rows] <= best_ok[rows])
        if search.done.all():
            return search.lower, confirmed
        rows = np.flatnonzero(~search.done)
        p, mp = best_ok[rows], m_ok[rows]
        f, mf = first_fail[rows], m_fail[rows]
        bounded = np.isfinite(f)
        width = np.where(bounded, f - p, 0.0)
        # Root of the cubic through the centre, P and F (with F unknown: of the quadratic
        # through the centre and P, pulled in since the bound falls ever faster).
        inside = _cubic_root(m0[rows], g0[rows], p, mp, f, mf)
        if steep and bounded.any():
            fit = np.flatnonzero(bounded)
            ratio = _fall_ratio_root_in_bracket(
                m0[rows[fit]], g0[rows[fit]], p[fit], mp[fit], f[fit], mf[fit]
            )
            inside[fit] = np.where(np.isfinite(ratio), ratio, inside[fit])
        # With a third evaluated point (the previous P or F, the nearer one), the quadratic
        # through the three evaluations nearest the root instead.
        p2, f2 = prev_ok[rows], prev_fail[rows]
        use_fail = np.isfinite(f2) & ((f2 - f) < (p - p2))
        z = np.where(use_fail, f2, p2)
        mz = np.where(use_fail, m_prev_fail[rows], m_prev_ok[rows])
        local = _quadratic_root_through(p, mp, f, mf, z, mz)
        inside = np.where(np.isfinite(f2) | (p2 > 0), local, inside)
        # After a surprise in a wide bracket the fit is not to be trusted near its ends.
        wary = surprised[rows] & (width > _WIDE_BRACKET * p)
        keep_in = np.where(wary, _SURPRISE_MARGIN, _BRACKET_MARGIN) * width
        # After an evaluation certified where the fit predicted a failure, the fit (pulled
        # down by a far, steeply failed F) underestimates again and again: a deep network's
        # bound creeps up to its root in tiny steps (13 evaluations on a 7x1024 MLP). The
        # chord through the last two certified points does not: a bound that falls ever faster
        # lies below it, so its root is past the true one, and evaluating there brings F in.
        # Far from the root the chord is flat and its root far too high (evaluations there
        # fail uselessly), so it goes at most _CHORD_REACH times the last step past P.
        p2m = m_prev_ok[rows]
        chord = np.minimum(p + mp * (p - p2) / (p2m - mp), p + _CHORD_REACH * (p - p2))
        # (Not from the centre: its chord through a first P lies far above the root.)
        chord = np.where(undershot[rows] & (p2 > 0) & (p2m > mp) & np.isfinite(chord), chord, p)
        # A chord root at or past F says nothing F did not. Kept under F it made the next
        # evaluation a float64 one expected to certify just under a steep failure, which
        # failed (and again with full sides): two wasted float64 evaluations on 13 of 20 rows
        # of a random 5x512 MLP.
        chord = np.where(chord < f - keep_in, chord, p)
        inside = np.maximum(inside, chord)
        inside = np.minimum(np.maximum(inside, p + keep_in), f - keep_in)
        quadratic = _quadratic_root(m0[rows], g0[rows], p, mp)
        pulled = _EXTRAPOLATION_PULL * quadratic
        extrapolated = np.where(pulled > p, pulled, 2 * quadratic - p)
        # The fall-ratio model through P, where it applies (only rows without F read it).
        ahead = np.flatnonzero(~bounded & (p > 0))
        if ahead.size:
            ratio = _fall_ratio_root(m0[rows[ahead]], g0[rows[ahead]], p[ahead], mp[ahead])
            extrapolated[ahead] = np.where(np.isfinite(ratio), ratio, extrapolated[ahead])
        # Nothing evaluated yet: the first-order root, scaled by first_scale.
        linear = first_scale * m0[rows] / g0[rows]
        extrapolated = np.where(p > 0, np.maximum(extrapolated, chord), linear)
        guess = np.where(bounded, inside, extrapolated)
        # Below a knee the bound is often nearly flat and its root past the knee, where no
        # fit through points on both sides puts it: a row whose P and estimate are below its
        # knee (and F well above) evaluates there, in float32 (a jump, not a root).
        raised = np.zeros(rows.shape[0], dtype=bool)
        if knee is not None:
            at = knee[rows]
            clear = np.where(bounded, f - _KNEE_CLEARANCE * width, math.inf)
            raised = (p < at) & (at < clear) & ~(guess >= at)
            guess = np.where(raised, at, guess)
        usable = np.isfinite(guess) & (guess > p) & (guess < f)
        usable &= evaluations[rows] < _EVALUATIONS_PER_STEP * max_steps
        eps = search.current[rows].copy()
        final = np.zeros(rows.shape[0], dtype=bool)
        picked = np.flatnonzero(usable)
        if picked.size > _SCALAR_REPLAYS:
            eps[picked], final[picked] = search.decisive_candidates(
                rows[picked], p[picked], f[picked], guess[picked]
            )
        else:
            for k in picked.tolist():
                eps[k], final[k] = search.decisive_candidate(
                    int(rows[k]), float(p[k]), float(f[k]), float(guess[k])
                )
        precise = final & ~raised if confirm is not None else np.zeros_like(final)
        if precise.any() and not precise.all():
            # Rows ready for their float64 evaluation wait until no row has float32 work left:
            # one confirming call instead of one per round (a call costs milliseconds whatever
            # its rows; mnist-fc-3layer at 99 images made five). Their state does not change
            # meanwhile, so they pick the same candidate when their turn comes.
            now = ~precise
            rows, usable, final, eps, precise = (
                rows[now],
                usable[now],
                final[now],
                eps[now],
                precise[now],
            )
            p, mp, f, mf = p[now], mp[now], f[now], mf[now]
        evaluations[rows] += 1
        m = np.empty(rows.shape[0])
        for group, fn in ((~precise, margin), (precise, confirm)):
            if group.any():
                assert fn is not None
                got = fn(torch.from_numpy(rows[group]), torch.from_numpy(eps[group]))
                m[group] = got.detach().to(torch.float64).cpu().numpy()
        ok = m > 0
        # An estimated candidate is expected certified exactly when it is ``final``.
        surprised[rows] = usable & (ok != final)
        undershot[rows] = usable & ok & ~final
        prev_ok[rows] = np.where(ok, p, prev_ok[rows])
        m_prev_ok[rows] = np.where(ok, mp, m_prev_ok[rows])
        prev_fail[rows] = np.where(ok, prev_fail[rows], f)
        m_prev_fail[rows] = np.where(ok, m_prev_fail[rows], mf)
        confirmed[rows] = np.where(precise & ok, eps, confirmed[rows])
        best_ok[rows] = np.where(ok, eps, p)
        m_ok[rows] = np.where(ok, m, mp)
        first_fail[rows] = np.where(ok, f, eps)
        m_fail[rows] = np.where(ok, mf, m)


def _positive(
    margin: Callable[[Tensor, Tensor], Tensor], rows: Tensor
) -> Callable[[Tensor, Tensor], Tensor]:
    """The condition ``margin > 0`` on the subset ``rows`` (indices into it)."""
    return lambda r, e: margin(rows[r], e) > 0


Array = np.ndarray


def _cubic_root(m0: Array, g0: Array, p: Array, mp: Array, f: Array, mf: Array) -> Array:
    """Root in ``(p, f)`` of ``m0 - g0 e - c e^2 - d e^3`` fitted through ``(p, mp)`` and
    ``(f, mf)`` (``d = 0`` when ``p = 0``), found by bisection (the fit changes sign there)."""
    yp, yf = m0 - g0 * p - mp, m0 - g0 * f - mf
    det = p * p * f * f * (f - p)
    two = det > 0
    safe = np.where(two, det, 1.0)
    # cubes as two products, as torch's ``x**3`` computed them before (same roots)
    c = np.where(two, (yp * (f * f * f) - yf * (p * p * p)) / safe, yf / (f * f))
    d = np.where(two, (yf * p * p - yp * f * f) / safe, 0.0)
    return _bisect(
        p, f, (m0, g0, c, d), lambda e, m, g, c2, d3: m - e * (g + e * (c2 + e * d3)) > 0
    )


def _quadratic_root_through(p: Array, mp: Array, f: Array, mf: Array, z: Array, mz: Array) -> Array:
    """Root in ``(p, f)`` of the quadratic through ``(p, mp)``, ``(f, mf)`` and ``(z, mz)``
    (``mp > 0 > mf``; ``z`` outside ``[p, f]``), found by bisection."""
    d1 = (mf - mp) / (f - p)
    d2 = ((mz - mf) / (z - f) - d1) / (z - p)
    d2 = np.where(np.isfinite(d2), d2, 0.0)
    return _bisect(
        p,
        f,
        (mp, p, f, d1, d2),
        lambda e, m, p0, f0, s1, s2: m + (e - p0) * (s1 + s2 * (e - f0)) > 0,
    )


def _bisect(
    lo: np.ndarray, hi: np.ndarray, coefs: tuple[np.ndarray, ...], above: Callable[..., object]
) -> np.ndarray:
    """60 bisections of ``[lo, hi]`` keeping ``above(lo, *coefs)`` true: the root of a fit
    that changes sign there.

    In numpy or, for a few rows, Python floats, not torch: these are a few rows' float64
    scalars, where torch's per-operation cost made the root finding a third of a one-image
    search. The arithmetic is the same IEEE float64 operations in the same order, so the
    roots are bit for bit the same in all three."""
    if lo.size <= _SCALAR_ROWS:
        out = np.empty_like(lo)
        for i in range(lo.size):
            a, b = float(lo[i]), float(hi[i])
            k = [float(v[i]) for v in coefs]
            for _ in range(60):
                mid = (a + b) / 2
                if above(mid, *k):
                    a = mid
                else:
                    b = mid
            out[i] = (a + b) / 2
        return out
    lo, hi = lo.copy(), hi.copy()
    for _ in range(60):
        mid = (lo + hi) / 2
        up = above(mid, *coefs)
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    return (lo + hi) / 2


def _fall_ratio_root(m0: Array, g0: Array, p: Array, mp: Array) -> Array:
    """Root of the fall-ratio model of the margin bound through ``(p, mp)``, NaN where the
    model does not apply.

    The model writes the bound as ``m0 - g0 e rho(e)``: the first-order fall ``g0 e`` times
    the ratio ``rho`` by which the layer-wise bound falls faster (1 at the centre), growing as
    ``rho(e) = rho(p)^(e / p)``. Layer-wise bounds of deep networks fall like this or faster:
    on random 6x1024 MLPs ``rho`` was about 2 at a third of the radius, 17 at 0.9 of it and
    30 at the radius; from P at 0.95 of the radius the chord through the centre and P put
    the next evaluation at 1.8 times the radius, this model at 1.1 times. Applies where
    ``rho(p) > 1``; the root then lies in ``(p, m0 / g0)`` and is found by bisection of the
    model's log.
    """
    usable = (g0 > 0) & (p > 0) & (mp > 0)
    g = np.where(usable, g0, 1.0)
    pp = np.where(usable, p, 1.0)
    rho_p = (m0 - mp) / (g * pp)
    usable &= rho_p > 1
    pp = np.where(usable, pp, 1.0)
    log_rho_p = np.log(np.where(usable, rho_p, 2.0))
    first_order = np.where(usable, m0 / g, 2.0)
    zero = np.zeros_like(pp)
    root = _fall_ratio_model_root(np.log(first_order), zero, zero, pp, log_rho_p, pp, first_order)
    return np.where(usable, root, np.nan)


def _fall_ratio_root_in_bracket(
    m0: Array, g0: Array, p: Array, mp: Array, f: Array, mf: Array
) -> Array:
    """Root in ``(p, f)`` of the fall-ratio model ``m0 - g0 e rho(e)`` (see
    :func:`_fall_ratio_root`) with ``log rho`` linear in eps through ``(f, log rho(f))`` and
    ``(p, log rho(p))``, or the centre's ``(0, 0)`` where nothing is certified (``p = 0``);
    NaN where the model does not apply (no slope at the centre, a P bound at or above the
    centre's margin).

    A certified P (``mp > 0``) and a failed F (``mf <= 0``) put the model's log below its
    target at P and at or above it at F, so bisection finds a root between them; from the
    centre, the model's log goes to minus infinity.
    """
    certified = p > 0
    usable = (g0 > 0) & (m0 > 0) & (mf <= 0) & (~certified | ((mp > 0) & (mp < m0)))
    g = np.where(usable, g0, 1.0)
    ff = np.where(usable, f, 2.0)
    at_p = usable & certified
    pp = np.where(at_p, p, 0.0)
    log_rho_f = np.log(np.where(usable, (m0 - mf) / (g * ff), 1.0))
    log_rho_p = np.log(np.where(at_p, (m0 - mp) / (g * np.where(at_p, pp, 1.0)), 1.0))
    target = np.log(np.where(usable, m0 / g, 1.0))
    root = _fall_ratio_model_root(target, pp, log_rho_p, ff, log_rho_f, pp, ff)
    return np.where(usable, root, np.nan)


def _fall_ratio_model_root(
    log_root: Array, a: Array, log_a: Array, b: Array, log_b: Array, lo: Array, hi: Array
) -> Array:
    """Root in ``(lo, hi)`` of ``log e + log rho(e) = log_root`` (the fall-ratio model's
    ``m0 = g0 e rho(e)``, ``log_root = log(m0 / g0)``) with ``log rho`` linear in eps through
    ``(a, log_a)`` and ``(b, log_b)``, by bisection. With ``a = log_a = 0`` the arithmetic is
    ``log e + log_b (e / b)``, operation for operation."""
    return _bisect(
        lo,
        hi,
        (log_root, a, log_a, b - a, log_b - log_a),
        lambda e, t, a0, la, span, rise: np.log(e) + la + rise * ((e - a0) / span) < t,
    )


def _quadratic_root(m0: Array, g0: Array, p: Array, mp: Array) -> Array:
    """Positive root of ``m0 - g0 e - c e^2`` with ``c >= 0`` fitted through ``(p, mp)``."""
    c = np.maximum((m0 - g0 * p - mp) / (p * p), 0.0)
    disc = np.sqrt(np.maximum(g0 * g0 + 4 * c * m0, 0.0))
    # 2 m0 / (g0 + disc) is the root without the cancellation of (disc - g0) / (2c).
    return 2 * m0 / (g0 + disc)


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
