"""Several Nelder-Mead minimisations run in lockstep, their objective evaluated in one batch.

The Weibull fit (:mod:`nnbound.clever.weibull`) runs SciPy's ``optimize.fmin`` (Nelder-Mead,
``xtol = ftol = 1e-4``, at most 200 evaluations per parameter) from 7 starts. Each evaluation
of the penalised likelihood over a few dozen maxima is a dozen tiny numpy calls, and the
simplex bookkeeping as many more: for few maxima the fit, not the gradients, dominated a
CLEVER run. Here each start is SciPy's algorithm step for step (:func:`_simplex`, a generator
that yields the points it wants evaluated), in plain Python floats -- the same IEEE
operations in the same order as SciPy's numpy code on 3-vectors, hence the same path -- and
the points every start asks for at once are evaluated together by a batched objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence

Point = list[float]
BatchObjective = Callable[[list[tuple[int, Point]]], list[float]]
"""Values at ``(start index, point)`` pairs, in order."""

# SciPy's Nelder-Mead coefficients (adaptive=False) and initial simplex steps.
_RHO, _CHI, _PSI, _SIGMA = 1, 2, 0.5, 0.5
_NONZDELT, _ZDELT = 0.05, 0.00025


def _nan_max(values: Sequence[float]) -> float:
    """``np.max``: NaN when any value is NaN."""
    out = -math.inf
    for v in values:
        if v != v:
            return math.nan
        out = v if v > out else out
    return out


def _order(fsim: list[float]) -> list[int]:
    """``np.argsort`` of 4 values (insertion sort there: stable; NaN last)."""
    return sorted(range(len(fsim)), key=lambda i: (fsim[i] != fsim[i], fsim[i]))


def _simplex(x0: Sequence[float], xatol: float, fatol: float) -> Generator[Point, float, Point]:
    """SciPy's ``_minimize_neldermead`` from ``x0`` (no bounds, not adaptive): yields each
    point to evaluate, receives its value, returns the final ``sim[0]``."""
    n = len(x0)
    maxfun = maxiter = n * 200
    calls = 0
    sim: list[Point] = [list(map(float, x0))]
    for k in range(n):
        y = list(sim[0])
        y[k] = (1 + _NONZDELT) * y[k] if y[k] != 0 else _ZDELT
        sim.append(y)
    fsim = [math.inf] * (n + 1)
    for k in range(n + 1):
        calls += 1
        fsim[k] = yield list(sim[k])

    def resort() -> None:
        ind = _order(fsim)
        sim[:] = [sim[i] for i in ind]
        fsim[:] = [fsim[i] for i in ind]

    resort()
    iterations = 1
    while calls < maxfun and iterations < maxiter:
        spread = _nan_max([abs(a - b) for row in sim[1:] for a, b in zip(row, sim[0], strict=True)])
        if spread <= xatol and _nan_max([abs(fsim[0] - f) for f in fsim[1:]]) <= fatol:
            break
        xbar = list(sim[0])
        for row in sim[1:-1]:
            xbar = [a + b for a, b in zip(xbar, row, strict=True)]
        xbar = [a / n for a in xbar]
        last = sim[-1]
        # a step that would exceed maxfun ends the iteration where SciPy's raise does
        if calls >= maxfun:
            break
        xr = [(1 + _RHO) * a - _RHO * b for a, b in zip(xbar, last, strict=True)]
        calls += 1
        fxr = yield xr
        shrink = False
        if fxr < fsim[0]:
            if calls >= maxfun:
                break
            xe = [(1 + _RHO * _CHI) * a - _RHO * _CHI * b for a, b in zip(xbar, last, strict=True)]
            calls += 1
            fxe = yield xe
            sim[-1], fsim[-1] = (xe, fxe) if fxe < fxr else (xr, fxr)
        elif fxr < fsim[-2]:
            sim[-1], fsim[-1] = xr, fxr
        else:
            if fxr < fsim[-1]:
                xc = [
                    (1 + _PSI * _RHO) * a - _PSI * _RHO * b for a, b in zip(xbar, last, strict=True)
                ]
                if calls >= maxfun:
                    break
                calls += 1
                fxc = yield xc
                if fxc <= fxr:
                    sim[-1], fsim[-1] = xc, fxc
                else:
                    shrink = True
            else:
                xcc = [(1 - _PSI) * a + _PSI * b for a, b in zip(xbar, last, strict=True)]
                if calls >= maxfun:
                    break
                calls += 1
                fxcc = yield xcc
                if fxcc < fsim[-1]:
                    sim[-1], fsim[-1] = xcc, fxcc
                else:
                    shrink = True
            if shrink:
                for j in range(1, n + 1):
                    sim[j] = [a + _SIGMA * (b - a) for a, b in zip(sim[0], sim[j], strict=True)]
                    if calls >= maxfun:  # SciPy: sim[j] moved, fsim[j] kept
                        resort()
                        return sim[0]
                    calls += 1
                    fsim[j] = yield list(sim[j])
        iterations += 1
        resort()
    resort()
    return sim[0]


def minimize_many(
    objective: BatchObjective, starts: Sequence[Sequence[float]], xatol: float, fatol: float
) -> list[Point]:
    """``optimize.fmin(f_i, starts[i], xtol=xatol, ftol=fatol)`` for every start ``i``, the
    points all runs ask for at one step evaluated in one ``objective`` call."""
    runs = [_simplex(s, xatol, fatol) for s in starts]
    pending: dict[int, Point] = {i: next(r) for i, r in enumerate(runs)}
    result: dict[int, Point] = {}
    while pending:
        keys = sorted(pending)
        values = objective([(i, pending[i]) for i in keys])
        pending = {}
        for i, v in zip(keys, values, strict=True):
            try:
                pending[i] = runs[i].send(v)
            except StopIteration as stop:
                result[i] = stop.value
    return [result[i] for i in range(len(starts))]
