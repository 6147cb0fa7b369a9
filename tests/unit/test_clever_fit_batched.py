"""The Weibull fit's starts run in lockstep with a batched objective
(:mod:`nnbound.clever.nelder_mead`): the same fits, bit for bit, as SciPy's ``fmin`` from
each start alone (:func:`nnbound.clever.weibull._fit_one`), whatever the sample count, the
penalty, ties and samples outside the support along the way."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import optimize

from nnbound.clever.nelder_mead import minimize_many
from nnbound.clever.weibull import C_INIT, _fit_one, _objective, batch_objective, fit_starts


@pytest.mark.parametrize("n", [3, 10, 37, 150, 500])
@pytest.mark.parametrize(("penalty", "index"), [(0.01, 2), (0.0, 2), (0.01, 0)])
def test_batched_starts_equal_scipys_fmin_per_start(n: int, penalty: float, index: int) -> None:
    rng = np.random.default_rng(n)
    for trial in range(3):
        s = 3.0 - rng.weibull(rng.uniform(1.0, 6.0), n) * rng.uniform(0.1, 2.0)
        if trial == 2:
            s = np.round(s, 1)  # ties
        if np.ptp(s) == 0:
            continue
        r = (s.max() - s) / np.ptp(s)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            one = [_fit_one(r, float(c0), _objective(penalty, index), "reference") for c0 in C_INIT]
            many = fit_starts(r, C_INIT, penalty, index, "reference")
        assert many == one


def test_lockstep_simplex_equals_fmin_on_a_plain_function() -> None:
    def rosen(t: np.ndarray) -> float:
        return float((1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2 + t[2] ** 2)

    starts = [[-1.2, 1.0, 0.5], [0.0, 0.0, 0.0], [3.0, -2.0, 1.0]]
    got = minimize_many(lambda pts: [rosen(np.array(p)) for _, p in pts], starts, 1e-4, 1e-4)
    for s, g in zip(starts, got, strict=True):
        ref = optimize.fmin(rosen, s, xtol=1e-4, ftol=1e-4, disp=0)
        assert g == ref.tolist()


def test_batch_objective_equals_the_single_objective() -> None:
    rng = np.random.default_rng(3)
    r = np.sort(rng.random(40))
    r = (r - r.min()) / np.ptp(r)
    single = _objective(0.01, 2)
    pts = [
        (i, list(p)) for i, p in enumerate(rng.normal([2.0, -0.1, 0.5], [1.5, 0.3, 0.4], (60, 3)))
    ]
    with np.errstate(all="ignore"):
        got = batch_objective(r, 0.01, 2)(pts)
        want = [single(np.array(p), r) for _, p in pts]
    assert got == want
