"""Reverse-Weibull fit of the batch maxima (clever_spec §5), pure CPU numpy/scipy.

The ``N_b`` per-batch maxima ``S`` of a gradient norm are (by the Fisher-Tippett-Gnedenko
theorem, for a bounded distribution) reverse-Weibull distributed; the location of that
distribution, i.e. its right end point, estimates the local Lipschitz constant. Exactly the
reference's ``get_best_weibull_fit``:

1. rescale: ``r = (S - max S) / (max S - min S)`` (so ``-r`` lies in ``[0, 1]``);
2. for each initial shape in :data:`C_INIT` = ``(0.1, 1, 5, 10, 20, 50, 100)`` fit a
   ``weibull_min`` to ``-r`` by maximum likelihood, ``scipy.optimize.fmin`` (Nelder-Mead,
   ``xtol = ftol = 1e-4``) on scipy's penalised negative log-likelihood plus
   ``shape_reg * theta[2]**2`` (method ``"mle_reg"``; plain ``"mle"`` has no penalty). This is
   ``scipy.stats.weibull_min.fit(-r, c_i, loc=, scale=, optimizer=...)`` unrolled: the same
   objective values (:func:`penalized_nll`), start and Nelder-Mead call, hence the same
   parameters (the tests check equality with SciPy's own ``fit``), 5-7x faster;
3. undo the rescale (``loc = -max S + loc * range``, ``scale *= range``);
4. Kolmogorov-Smirnov test of ``-S`` against the fitted ``weibull_min``;
5. keep the fit with the largest p-value (ties: the first in :data:`C_INIT` order); if that
   p-value is NaN or below ``p_min = 0.001`` the samples are "ill-conditioned" and the
   estimate falls back to ``max S`` (ReLU nets, whose gradients are piecewise constant, nearly
   always land here: their maxima are heavily tied);
6. ``Lip = -loc``, the right end point of the reverse Weibull.

Bug-compatible detail: ``theta = (c, loc, scale)`` for ``weibull_min``, so the reference's
"shape regulariser" ``theta[2]**2`` penalises the **scale**, not the shape as its comment says.
``penalise="scale"`` (default) reproduces that; ``penalise="shape"`` does what the comment says.

The start rule (documented and fixed here, independent of the installed SciPy):
only the shape gets an initial value from :data:`C_INIT`; the initial loc/scale are computed
here and passed explicitly to ``weibull_min.fit``:

* ``start="reference"`` (default): what SciPy did when the reference was written (SciPy < 1.10,
  ``rv_continuous._fitstart``): method-of-moments loc/scale of the *shape-1* member
  (an exponential: ``scale = std``, ``loc = mean - std``), and if that support does not hold the
  data, ``loc = min - 0.1 * (max - min)``, ``scale = 1``. The same start for every ``c_init``.
* ``start="moments"``: what ``weibull_min.fit`` does since SciPy 1.10 (scipy/scipy#16804) when
  given a shape guess ``c``: loc/scale matching the sample mean and variance *given* ``c``.

SciPy >= 1.10 also raises ``FitError`` when Nelder-Mead ends outside the parameter domain
(shape or scale <= 0); the 2018 SciPy returned those parameters, whose K-S p-value was NaN and
which ``nanmax`` then ignored. Both are treated the same here: that start gives p = NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nnbound.errors import InputError

# scipy.stats / scipy.optimize are imported inside the functions: ``import nnbound`` loads this
# module, and scipy.stats alone costs about a second of start-up for every CLI command.

C_INIT: tuple[float, ...] = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Initial shapes tried by the reference (one fit each)."""

P_MIN = 0.001
"""Below this best K-S p-value the fit is rejected and ``max S`` is used."""

FIT_METHODS: tuple[str, ...] = ("mle_reg", "mle", "maxsamp")
START_RULES: tuple[str, ...] = ("reference", "moments")
PENALISED: tuple[str, ...] = ("scale", "shape")


@dataclass(frozen=True)
class WeibullFit:
    """The fitted reverse Weibull of one set of maxima.

    Attributes:
        lip: the Lipschitz estimate: ``-loc`` of the best fit, or ``max S`` on fallback
            (and for method ``"maxsamp"``).
        shape: ``c`` of the ``weibull_min`` fitted to ``-S`` (-1 on fallback, as the reference).
        loc: its location, ``-lip``.
        scale: its scale (-1 on fallback).
        ks: the K-S statistic of the chosen fit (-1 on fallback).
        p_value: the best K-S p-value found (NaN when no fit succeeded); on fallback it is the
            rejected one, which says why (the reference prints -1 there).
        c_init: the initial shape of the chosen fit (-1 on fallback).
        fallback: True when the fit was rejected (``p < p_min`` or NaN) and ``max S`` is used.
        max_sample: ``max S``, the largest sampled gradient norm.
        method: ``"mle_reg"``, ``"mle"`` or ``"maxsamp"``.
    """

    lip: float
    shape: float
    loc: float
    scale: float
    ks: float
    p_value: float
    c_init: float
    fallback: bool
    max_sample: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


_LOGXMAX = float(np.log(np.finfo(float).max))


def penalized_nll(theta: np.ndarray, x: np.ndarray) -> float:
    """scipy's ``weibull_min._penalized_nnlf(theta, x)`` for ``theta = (c, loc, scale)``.

    The same operations in the same order as SciPy's generic code (so the same values, and the
    same Nelder-Mead path), without its per-call argument handling, which made up ~85% of the
    fit time: ``-sum(logpdf)`` over the points inside the support plus ``n log(scale)``, and
    ``100 log(DBL_MAX)`` per point outside the support or with a non-finite log-density.
    """
    from scipy import special

    c, loc, scale = theta[0], theta[1], theta[2]
    if not c > 0 or scale <= 0:
        return math.inf
    y = (x - loc) / scale
    n_log_scale = len(y) * np.log(scale)
    with np.errstate(invalid="ignore"):
        inside = (y >= 0) & (y <= np.inf)
    n_bad = int(inside.size - np.count_nonzero(inside))
    if n_bad > 0:
        y = y[inside]
    logpdf = np.log(c) + special.xlogy(c - 1, y) - pow(y, c)
    finite = np.isfinite(logpdf)
    total = np.sum(logpdf[finite])
    n_bad += int(finite.size - np.count_nonzero(finite))
    return -total + n_bad * _LOGXMAX * 100 + n_log_scale


def _objective(penalty: float, index: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """What Nelder-Mead minimises: the penalised NLL plus ``penalty * theta[index]**2`` (the
    reference's ``fmin_with_reg``)."""
    if not penalty:
        return penalized_nll

    def objective(theta: np.ndarray, x: np.ndarray) -> float:
        return penalized_nll(theta, x) + penalty * theta[index] ** 2

    return objective


def start_values(data: np.ndarray, c: float, rule: str = "reference") -> tuple[float, float]:
    """Initial ``(loc, scale)`` of a ``weibull_min`` fit to ``data`` (see the module docstring).

    Args:
        data: the fitted values ``(n,)`` (here the negated, rescaled maxima in ``[0, 1]``).
        c: the initial shape (used by ``"moments"`` only).
        rule: ``"reference"`` or ``"moments"``.
    """
    mean, var = float(np.mean(data)), float(np.var(data))
    if rule == "moments":
        from scipy import special

        g1, g2 = special.gamma(1 + 1 / c), special.gamma(1 + 2 / c)
        scale = math.sqrt(var / (g2 - g1 * g1))
        return mean - scale * g1, scale
    if rule != "reference":
        raise InputError(f"unknown start rule {rule!r}; use {' or '.join(START_RULES)}")
    # rv_continuous.fit_loc_scale for the exponential (mean 1, variance 1 at loc 0, scale 1)
    scale = math.sqrt(var)
    loc = mean - scale
    if not math.isfinite(loc):
        loc = 0.0
    if not (math.isfinite(scale) and scale > 0):
        scale = 1.0
    lo, hi = float(np.min(data)), float(np.max(data))
    # _fit_loc_scale_support: the support [loc, inf) must hold the data strictly.
    if loc < lo:
        return loc, scale
    return lo - 0.1 * (hi - lo), 1.0


def _fit_one(
    neg_r: np.ndarray, c0: float, objective: Callable[[np.ndarray, np.ndarray], float], rule: str
) -> tuple[float, float, float] | None:
    """One start of ``weibull_min.fit(neg_r, c0, loc=loc0, scale=scale0, optimizer=fmin_reg)``,
    done directly: Nelder-Mead from ``(c0, loc0, scale0)``, and None where SciPy's fit raises
    ``FitError`` (shape or scale <= 0) or the optimizer fails."""
    from scipy import optimize

    loc0, scale0 = start_values(neg_r, c0, rule)
    try:
        vals = optimize.fmin(
            objective, [c0, loc0, scale0], args=(neg_r,), xtol=1e-4, ftol=1e-4, disp=0
        )
    except (ValueError, RuntimeError, FloatingPointError, OverflowError):
        return None
    c, loc, scale = (float(v) for v in vals)
    if not (c > 0 and scale > 0):
        return None
    return c, loc, scale


def batch_objective(
    neg_r: np.ndarray, penalty: float, index: int
) -> Callable[[list[tuple[int, list[float]]]], list[float]]:
    """``_objective(penalty, index)`` at many points at once (for
    :func:`~nnbound.clever.nelder_mead.minimize_many`): the same values bit for bit -- the
    per-sample terms row by row of one 2-D pass (numpy's loops run each row as the 1-D call
    would: same operand strides, same pairwise sum; its array ``log`` equals its scalar one),
    the penalty by the same scalar power, and for a point with a sample outside the support
    or a non-finite log-density the masked sums of :func:`penalized_nll` on the same terms
    (``tests/unit/test_clever_fit_batched.py`` checks the equality)."""
    from scipy import special

    n = len(neg_r)

    def values(points: list[tuple[int, list[float]]]) -> list[float]:
        thetas = np.array([p for _, p in points], dtype=np.float64).reshape(-1, 3)
        out: list[float] = [math.inf] * len(points)
        rows = np.nonzero((thetas[:, 0] > 0) & ~(thetas[:, 2] <= 0))[0]
        if rows.size == 0:
            return out
        th = thetas[rows]
        c, loc, scale = th[:, 0:1], th[:, 1:2], th[:, 2:3]
        y = (neg_r[None, :] - loc) / scale
        with np.errstate(invalid="ignore"):
            inside = (y >= 0) & (y <= np.inf)
        # np.log of an array equals np.log of each element (checked); pow per row as 1-D
        logpdf = np.log(c) + special.xlogy(c - 1, y) - pow(y, c)
        n_log_scale = n * np.log(th[:, 2])
        all_in = inside.all(1)
        clean = all_in & np.isfinite(logpdf).all(1)
        totals = np.sum(logpdf, axis=1)
        for j, i in enumerate(rows.tolist()):
            if clean[j]:
                value = -totals[j] + 0 * _LOGXMAX * 100 + n_log_scale[j]
            else:
                # penalized_nll's masked sums: the inside samples' terms (elementwise the
                # same values), then the finite ones, summed as that compacted array
                part = logpdf[j] if all_in[j] else logpdf[j][inside[j]]
                finite = np.isfinite(part)
                n_bad = int(n - part.size) + int(part.size - np.count_nonzero(finite))
                total = np.sum(part[finite])
                value = -total + n_bad * _LOGXMAX * 100 + n_log_scale[j]
            out[i] = value + penalty * thetas[i, index] ** 2 if penalty else value
        return out

    return values


def fit_starts(
    neg_r: np.ndarray, c_inits: Sequence[float], penalty: float, index: int, rule: str
) -> list[tuple[float, float, float] | None]:
    """:func:`_fit_one` for every initial shape, the starts' Nelder-Mead runs in lockstep with
    their objective batched (:func:`batch_objective`): the same results, several times
    faster when the maxima are few."""
    from nnbound.clever.nelder_mead import minimize_many

    starts = [[float(c0), *start_values(neg_r, float(c0), rule)] for c0 in c_inits]
    finals = minimize_many(batch_objective(neg_r, penalty, index), starts, 1e-4, 1e-4)
    return [(c, loc, scale) if c > 0 and scale > 0 else None for c, loc, scale in finals]


def fit_reverse_weibull(
    maxima: Sequence[float] | np.ndarray,
    *,
    method: str = "mle_reg",
    shape_reg: float = 0.01,
    c_init: Sequence[float] = C_INIT,
    p_min: float = P_MIN,
    start: str = "reference",
    penalise: str = "scale",
) -> WeibullFit:
    """Fit a reverse Weibull to ``maxima`` ``(N_b,)`` and return its right end point.

    Args:
        maxima: the per-batch maxima of a gradient norm (finite, at least one).
        method: ``"mle_reg"`` (reference default), ``"mle"`` (no penalty) or ``"maxsamp"``
            (no fit: ``max S``).
        shape_reg: the penalty coefficient (reference 0.01).
        c_init: initial shapes, one fit each.
        p_min: K-S p-value below which the fit is rejected.
        start: ``"reference"`` or ``"moments"`` initial loc/scale (module docstring).
        penalise: ``"scale"`` (bug-compatible) or ``"shape"``: which parameter the penalty hits.

    Returns:
        A :class:`WeibullFit`; ``fit.lip`` is the estimate.

    Raises:
        InputError: empty or non-finite maxima, unknown method / start / penalise.
    """
    s = np.asarray(maxima, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise InputError("no maxima to fit")
    if not np.isfinite(s).all():
        raise InputError("the gradient-norm maxima contain NaN or inf (is the model finite?)")
    if method not in FIT_METHODS:
        raise InputError(f"unknown fit method {method!r}; use {', '.join(FIT_METHODS)}")
    if start not in START_RULES:
        raise InputError(f"unknown start rule {start!r}; use {' or '.join(START_RULES)}")
    if penalise not in PENALISED:
        raise InputError(f"penalise must be 'scale' or 'shape', got {penalise!r}")
    if not (math.isfinite(shape_reg) and shape_reg >= 0):
        raise InputError(f"shape_reg must be finite and >= 0, got {shape_reg}")
    top = float(s.max())
    span = top - float(s.min())

    def fallback(p: float, method_name: str = method, flag: bool = True) -> WeibullFit:
        return WeibullFit(top, -1.0, -top, -1.0, -1.0, p, -1.0, flag, top, method_name)

    if method == "maxsamp":
        return fallback(math.nan, flag=False)
    if not (span > 0 and math.isfinite(span)):
        # All maxima equal (a linear model, or a saturated net): the rescale divides by 0 and
        # every fit is NaN in the reference too, which then falls back to max S.
        return fallback(math.nan)
    from scipy import stats

    neg_r = (top - s) / span
    penalty = shape_reg if method == "mle_reg" else 0.0
    best: tuple[float, float, float, float, float, float] | None = None
    best_p = math.nan
    # scipy warns (overflow, invalid value, divide by zero) while Nelder-Mead probes absurd
    # parameters; those probes are rejected by the penalised likelihood, the warnings are noise.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fits = fit_starts(neg_r, c_init, penalty, 2 if penalise == "scale" else 0, start)
        for c0, fit in zip(c_init, fits, strict=True):
            if fit is None:
                continue
            c, loc, scale = fit
            loc = -top + loc * span
            scale *= span
            ks, p = stats.kstest(-s, "weibull_min", args=(c, loc, scale))
            ks, p = float(ks), float(p)
            # np.nanmax, then the first index holding it: strict > keeps the earliest c_init.
            if not math.isnan(p) and (math.isnan(best_p) or p > best_p):
                best_p = p
                best = (-loc, c, loc, scale, ks, float(c0))
    if best is None or best_p < p_min:
        return fallback(best_p)
    lip, c, loc, scale, ks, c0 = best
    return WeibullFit(lip, c, loc, scale, ks, best_p, c0, False, top, method)
