"""Reverse-Weibull fit: recovers known parameters, falls back on tied maxima, follows the
documented start rule (the one SciPy used when the reference was written)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import optimize, stats

from nnbound.clever.weibull import (
    C_INIT,
    _fit_one,
    _objective,
    fit_reverse_weibull,
    penalized_nll,
    start_values,
)
from nnbound.errors import InputError


def reverse_weibull_maxima(c: float, end: float, scale: float, n: int, seed: int) -> np.ndarray:
    """``n`` draws of ``end - scale * W``, ``W ~ Weibull(c)``: a reverse Weibull with right end
    point ``end`` (what batch maxima of a bounded gradient norm converge to)."""
    rng = np.random.default_rng(seed)
    return end - scale * stats.weibull_min.rvs(c, size=n, random_state=rng)


@pytest.mark.parametrize(
    ("c", "end", "scale"), [(2.0, 10.0, 1.0), (3.5, 0.8, 0.05), (1.5, 42.0, 3.0)]
)
def test_fit_recovers_known_parameters(c: float, end: float, scale: float) -> None:
    s = reverse_weibull_maxima(c, end, scale, 500, seed=int(end * 10))
    fit = fit_reverse_weibull(s)
    assert not fit.fallback and fit.p_value > 0.05
    assert fit.c_init in C_INIT
    # the end point within a fraction of the scale; for c > 2 (density vanishing at the end
    # point, so the largest sample stays well below it) closer than the sample maximum: the
    # point of the extreme-value fit is to extrapolate past the largest sample
    assert abs(fit.lip - end) < 0.15 * scale
    if c > 2:
        assert abs(fit.lip - end) < abs(fit.max_sample - end)
    assert fit.lip >= fit.max_sample - 1e-3 * scale
    assert fit.loc == -fit.lip
    assert abs(fit.shape - c) / c < 0.25
    assert abs(fit.scale - scale) / scale < 0.2


def test_fit_is_scale_and_shift_equivariant() -> None:
    """Because the maxima are rescaled to [-1, 0] first, the fit of a*S + b is a*L + b."""
    s = reverse_weibull_maxima(2.5, 3.0, 0.4, 300, seed=1)
    f1 = fit_reverse_weibull(s)
    f2 = fit_reverse_weibull(7.0 * s + 11.0)
    assert math.isclose(f2.lip, 7.0 * f1.lip + 11.0, rel_tol=1e-7)
    assert math.isclose(f2.p_value, f1.p_value, rel_tol=1e-7)


def test_tied_maxima_fall_back_to_the_sample_maximum() -> None:
    # What a ReLU net gives: piecewise-constant gradients, a handful of distinct maxima.
    rng = np.random.default_rng(0)
    s = rng.choice([4.0, 4.5, 5.25], size=200, p=[0.2, 0.3, 0.5])
    fit = fit_reverse_weibull(s)
    assert fit.fallback
    assert fit.lip == 5.25 == fit.max_sample and fit.loc == -5.25
    assert fit.shape == fit.scale == fit.ks == fit.c_init == -1.0
    assert fit.p_value < 1e-3  # the rejected p-value is kept: it says why


def test_constant_maxima_fall_back_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_reverse_weibull(np.full(50, 2.0))
    assert fit.fallback and fit.lip == 2.0 and math.isnan(fit.p_value)
    assert fit.as_dict()["p_value"] is None


def test_maxsamp_is_the_maximum() -> None:
    s = reverse_weibull_maxima(2.0, 1.0, 0.1, 100, seed=3)
    fit = fit_reverse_weibull(s, method="maxsamp")
    assert fit.lip == s.max() and not fit.fallback and fit.method == "maxsamp"


def test_mle_without_penalty_and_shape_penalty_run() -> None:
    s = reverse_weibull_maxima(3.0, 5.0, 0.5, 200, seed=4)
    for kw in ({"method": "mle"}, {"penalise": "shape"}, {"start": "moments"}):
        fit = fit_reverse_weibull(s, **kw)
        assert not fit.fallback and abs(fit.lip - 5.0) < 0.1


def test_reference_start_rule_is_scipys_generic_start() -> None:
    """start="reference" reproduces what the generic rv_continuous.fit (SciPy < 1.10 for
    weibull_min; still reachable with superfit=True) does: the same fitted parameters."""
    s = reverse_weibull_maxima(2.0, 10.0, 1.0, 200, seed=5)
    r = (s.max() - s) / (s.max() - s.min())

    def opt(func, x0, args=(), disp=0):  # the reference's fmin_with_reg
        return optimize.fmin(
            lambda th, *a: func(th, *a) + 0.01 * th[2] ** 2,
            x0,
            args=args,
            xtol=1e-4,
            ftol=1e-4,
            disp=0,
        )

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for c0 in (1.0, 5.0, 20.0):
            generic = stats.weibull_min.fit(r, c0, optimizer=opt, superfit=True)
            loc0, scale0 = start_values(r, c0, "reference")
            ours = stats.weibull_min.fit(r, c0, loc=loc0, scale=scale0, optimizer=opt)
            np.testing.assert_allclose(ours, generic, rtol=1e-10)


def test_unrolled_fit_equals_scipys_weibull_min_fit() -> None:
    """The fit is ``weibull_min.fit(..., loc=, scale=, optimizer=fmin_reg)`` unrolled: same
    objective values, hence the same Nelder-Mead path and parameters."""
    objective = _objective(0.01, 2)

    def opt(func, x0, args=(), disp=0):
        return optimize.fmin(
            lambda th, *a: func(th, *a) + 0.01 * th[2] ** 2,
            x0,
            args=args,
            xtol=1e-4,
            ftol=1e-4,
            disp=0,
        )

    nnlf = getattr(stats.weibull_min, "_penalized_nnlf", None)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for seed, c in ((6, 2.0), (7, 4.0)):
            s = reverse_weibull_maxima(c, 1.0, 0.2, 150, seed=seed)
            r = (s.max() - s) / (s.max() - s.min())
            if nnlf is not None:  # a private SciPy function: compare values where it exists
                rng = np.random.default_rng(seed)
                for theta in rng.normal([2.0, -0.1, 0.5], [1.5, 0.3, 0.4], size=(40, 3)):
                    ours, theirs = penalized_nll(theta, r), nnlf(theta, r)
                    assert ours == theirs or (math.isinf(ours) and math.isinf(theirs))
            for c0 in (0.1, 1.0, 20.0):
                loc0, scale0 = start_values(r, c0, "reference")
                try:
                    ref = stats.weibull_min.fit(r, c0, loc=loc0, scale=scale0, optimizer=opt)
                except stats.FitError:
                    ref = None
                ours = _fit_one(r, c0, objective, "reference")
                if ref is None:
                    assert ours is None
                else:
                    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)


def test_start_values_rules() -> None:
    d = np.array([0.0, 0.1, 0.2, 1.0])
    loc, scale = start_values(d, 1.0, "reference")
    assert math.isclose(scale, d.std()) and math.isclose(loc, d.mean() - d.std())
    # mean - std >= min: the support would not hold the data -> min - 0.1 * range, scale 1
    d2 = np.array([0.0, 0.9, 0.95, 1.0])
    assert start_values(d2, 5.0, "reference") == (-0.1, 1.0)
    loc_m, scale_m = start_values(d, 2.0, "moments")
    mean = stats.weibull_min(2.0, loc_m, scale_m).mean()
    assert math.isclose(mean, d.mean(), rel_tol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"maxima": []},
        {"maxima": [1.0, float("nan")]},
        {"maxima": [1.0, 2.0], "method": "lsq"},
        {"maxima": [1.0, 2.0], "start": "zero"},
        {"maxima": [1.0, 2.0], "penalise": "loc"},
        {"maxima": [1.0, 2.0], "shape_reg": -1.0},
    ],
)
def test_bad_input_raises(kwargs: dict) -> None:
    with pytest.raises(InputError):
        fit_reverse_weibull(**kwargs)
