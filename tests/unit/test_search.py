"""The batched binary search reproduces the reference's scalar ``binary_search`` per row."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnbound.tasks import search as search_module
from nnbound.tasks.radius import first_scale, steep
from nnbound.tasks.search import (
    _fall_ratio_root_in_bracket,
    _ReferenceSearch,
    batched_binary_search,
    bisect_down,
    bracketed_binary_search,
)


def reference_binary_search(condition, current, max_steps, tol=1e-5, upper_limit=1e5):
    """Transcription of the reference's utils.binary_search (spec §9.1)."""
    upper, lower = math.inf, 0.0
    steps = 0
    while upper - lower > tol:
        if condition(current):
            lower = current
            current = current * 10 if upper == math.inf else (upper + lower) / 2
        else:
            upper = current
            current = current / 10 if lower == 0 else (upper + lower) / 2
        steps += 1
        if steps >= max_steps or current > upper_limit:
            break
    return lower


@settings(max_examples=200, deadline=None)
@given(
    thresholds=st.lists(st.floats(1e-7, 1e4), min_size=1, max_size=6),
    start=st.floats(1e-4, 10.0),
    steps=st.integers(1, 30),
)
def test_matches_reference_per_row(thresholds: list[float], start: float, steps: int) -> None:
    t = torch.tensor(thresholds, dtype=torch.float64)
    calls = []

    def cond(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        calls.append(len(rows))
        return eps <= t[rows]

    got = batched_binary_search(cond, len(thresholds), start, max_steps=steps)
    for i, th in enumerate(thresholds):
        want = reference_binary_search(lambda e, th=th: e <= th, start, steps)
        assert got[i].item() == want
    assert max(calls) <= len(thresholds)
    assert len(calls) <= steps


def test_never_certified_returns_zero() -> None:
    got = batched_binary_search(
        lambda r, e: torch.zeros_like(e, dtype=torch.bool), 3, 0.1, max_steps=15
    )
    assert torch.equal(got, torch.zeros(3, dtype=torch.float64))


def test_result_is_certified_and_close() -> None:
    t = torch.tensor([0.0123, 0.5, 3.0], dtype=torch.float64)
    got = batched_binary_search(lambda r, e: e <= t[r], 3, 0.005, max_steps=40)
    assert torch.all(got <= t)
    assert torch.allclose(got, t, rtol=1e-3)


def test_bisect_down_stays_below_threshold() -> None:
    t = torch.tensor([0.1, 0.3], dtype=torch.float64)
    got = bisect_down(lambda r, e: e <= t[r], torch.tensor([0.2, 0.25], dtype=torch.float64), 20)
    assert got[0] <= 0.1 and got[0] > 0.099
    assert got[1] == 0.25 * (1 - 2.0**-20)


def _concave_margin(roots: torch.Tensor, curvature: torch.Tensor):
    """A margin bound falling faster as eps grows (as layer-wise bounds do): zero at ``roots``,
    slope -1 at eps = 0."""

    def margin(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        r, c = roots[rows], curvature[rows]
        return (r - eps) * (1 + c * (r + eps))

    return margin


Margin = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _counting(margin: Margin, n: int) -> tuple[Margin, torch.Tensor]:
    """``margin`` and a tensor counting its evaluations per row (``n`` rows)."""
    evaluations = torch.zeros(n, dtype=torch.int64)

    def counted(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        evaluations[rows] += 1
        return margin(rows, eps)

    return counted, evaluations


@settings(max_examples=200, deadline=None)
@given(
    roots=st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=6),
    curvature=st.floats(0.0, 1e3),
    start=st.floats(1e-4, 10.0),
    steps=st.integers(1, 30),
)
def test_bracketed_search_takes_the_reference_decisions(
    roots: list[float], curvature: float, start: float, steps: int
) -> None:
    """For a margin that is positive exactly below a threshold, the bracketed search returns
    what the reference's search returns, evaluating each row at most 5 times per step."""
    t = torch.tensor(roots, dtype=torch.float64)
    c = torch.full_like(t, curvature) / t
    margin = _concave_margin(t, c)
    counted, evaluations = _counting(margin, len(roots))

    all_rows = torch.arange(len(roots))
    m0 = margin(all_rows, torch.zeros_like(t))
    # The true initial slope (1 for this margin), and no slope at all: the same answer.
    for slope in (torch.ones_like(t), None):
        evaluations.zero_()
        got = bracketed_binary_search(counted, m0, start, slope0=slope, max_steps=steps)
        for i in range(len(roots)):
            want = reference_binary_search(
                lambda e, i=i: bool(
                    margin(torch.tensor([i]), torch.tensor([e], dtype=t.dtype))[0] > 0
                ),
                start,
                steps,
            )
            assert got[i].item() == want
        assert int(evaluations.max()) <= 5 * steps


def test_bracketed_search_saves_evaluations() -> None:
    """The reference's 15 evaluations per row come down to a handful, same result."""
    t = torch.tensor([0.0123, 0.05, 0.3], dtype=torch.float64)
    margin = _concave_margin(t, 3 / t)
    counted, evaluations = _counting(margin, 3)

    m0 = margin(torch.arange(3), torch.zeros(3, dtype=torch.float64))
    slope = torch.ones(3, dtype=torch.float64)
    got = bracketed_binary_search(counted, m0, 0.005, slope0=slope, max_steps=15)
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, 3, 0.005, max_steps=15)
    assert torch.equal(got, want)
    assert int(evaluations.max()) <= 6


def test_bracketed_search_misclassified_centre_needs_no_evaluation() -> None:
    def never(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        raise AssertionError("evaluated")

    got = bracketed_binary_search(never, torch.tensor([0.0, -1.0]), 0.005, max_steps=15)
    assert torch.equal(got, torch.zeros(2, dtype=torch.float64))


def test_bracketed_search_is_sound_when_the_bound_is_not_monotone() -> None:
    """Certified on [0, 0.1] and again on [0.2, 0.3]: whatever it infers, the result lies
    inside a ball that was evaluated as certified."""
    passed: list[float] = []

    def bumpy(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        m = torch.where((eps <= 0.1) | ((eps >= 0.2) & (eps <= 0.3)), 1.0, -1.0).double()
        passed.extend(float(e) for e, v in zip(eps, m, strict=True) if v > 0)
        return m

    got = bracketed_binary_search(bumpy, torch.tensor([1.0]), 0.005, max_steps=30)
    assert float(got[0]) <= max(passed)
    assert float(got[0]) > 0.09


@settings(max_examples=100, deadline=None)
@given(
    roots=st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=5),
    shift=st.floats(0.0, 0.05),
)
def test_bracketed_search_confirms_every_radius(roots: list[float], shift: float) -> None:
    """With a more precise ``confirm`` that is less optimistic than ``margin`` (as float64 can
    be than float32), every returned radius is one ``confirm`` certifies; with ``confirm``
    equal to ``margin``, the result is the reference search's."""
    t = torch.tensor(roots, dtype=torch.float64)
    margin = _concave_margin(t, 1 / t)

    def pessimistic(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return margin(rows, eps) - shift * t[rows]

    all_rows = torch.arange(len(roots))
    m0 = margin(all_rows, torch.zeros_like(t))
    slope = torch.ones_like(t)
    got = bracketed_binary_search(margin, m0, 0.005, slope0=slope, confirm=pessimistic)
    assert bool((pessimistic(all_rows, got)[got > 0] > 0).all())
    assert bool((got <= t).all())
    same = bracketed_binary_search(margin, m0, 0.005, slope0=slope, confirm=margin)
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, len(roots), 0.005)
    assert torch.equal(same, want)


def test_bracketed_search_does_not_creep_below_a_knee() -> None:
    """A bound falling gently to its root and steeply past it (a deep network's layer bounds
    blowing up) drew root estimates just above each certified eps from the far, steep failure:
    the search crept up in tiny steps (23-55 evaluations per row here). The chord through the
    last two certified points reaches the root in a few, with the reference's result."""
    t = torch.tensor([0.00218, 0.0123, 0.31], dtype=torch.float64)

    def margin(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        past = torch.clamp(eps / t[rows] - 1, min=0)
        return 0.005 * (1 - eps / t[rows]) - 5.0 * past**2

    counted, evaluations = _counting(margin, 3)

    m0 = margin(torch.arange(3), torch.zeros(3, dtype=torch.float64))
    # a slope at the centre 27 times the bound's (the first-order root far too small)
    got = bracketed_binary_search(counted, m0, 0.005, slope0=0.135 / t, max_steps=15)
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, 3, 0.005, max_steps=15)
    assert torch.equal(got, want)
    assert int(evaluations.max()) <= 12


def _deep_margin(t: torch.Tensor, beta: float) -> tuple[Margin, torch.Tensor, torch.Tensor]:
    """A deep network's layer-wise margin bound: ``m0 - g0 e rho(e)`` with the fall ratio
    ``rho = 30^((e/t)^beta)`` (30 at the root ``t``, as measured on random 6x1024 MLPs):
    flat far below the root, a cliff past it."""
    m0 = torch.full_like(t, 0.0056)
    g0 = m0 / (30 * t)

    def margin(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        rho = torch.exp(math.log(30) * (eps / t[rows]) ** beta)
        return m0[rows] - g0[rows] * eps * rho

    return margin, m0, g0


def test_bracketed_search_is_quick_on_a_deep_networks_bound() -> None:
    """Started where :func:`~nnbound.tasks.radius.first_scale` starts a 6-relaxed-layer
    network (1/32 of the first-order root, about the radius here), the search reaches the
    reference's result in a handful of evaluations. Before the fall-ratio model, the chord
    through the centre and the first certified eps overshot the root (to 1.8 times it on a
    6x1024 MLP) and the search then crept up: 6.9 evaluations per row on average over these
    curves, up to 10 (now 5.3, up to 8)."""
    t = torch.tensor([0.001, 0.0023, 0.005, 0.013, 0.04, 0.1, 0.3], dtype=torch.float64)
    counts = []
    for beta in (1.0, 1.5, 2.0, 2.5, 3.0):
        margin, m0, g0 = _deep_margin(t, beta)
        counted, evaluations = _counting(margin, t.shape[0])
        got = bracketed_binary_search(counted, m0, 0.005, slope0=g0, first_scale=first_scale(6))
        want = batched_binary_search(lambda r, e, m=margin: m(r, e) > 0, t.shape[0], 0.005)
        assert torch.equal(got, want)
        counts += evaluations.tolist()
    assert max(counts) <= 8
    assert sum(counts) / len(counts) <= 6.0


def test_first_scale_halves_per_relaxed_layer() -> None:
    want = [1.0, 1.0, 0.5, 0.25, 1 / 32, 1 / 32, 1 / 32]
    assert [first_scale(k) for k in (0, 1, 2, 3, 6, 7, 20)] == want


def test_steep_from_three_relaxed_layers() -> None:
    assert [steep(k) for k in (0, 1, 2, 3, 6)] == [False, False, False, True, True]


@pytest.mark.parametrize("layers", [3, 5])
def test_bracketed_search_confirms_once_under_a_steep_failure(layers: int) -> None:
    """A first evaluation far past a cliff, then certified eps on the flat part: the chord
    through two certified points then reaches past F. Kept just under F, it made the next
    evaluation a ``confirm`` expected to certify there, which failed: two or three ``confirm``
    evaluations per row on these curves. Now each row's radius takes one. (No root at a
    candidate of the reference's path, such as its start 0.005, where rounding decides.)"""
    t = torch.tensor([0.001, 0.0023, 0.0034, 0.0051, 0.013, 0.04, 0.1, 0.3], dtype=torch.float64)
    margin, m0, g0 = _deep_margin(t, 1.0)
    confirm, confirmations = _counting(margin, t.shape[0])
    got = bracketed_binary_search(
        margin, m0, 0.005, slope0=g0, first_scale=first_scale(layers), confirm=confirm
    )
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, t.shape[0], 0.005)
    assert torch.equal(got, want)
    assert confirmations.tolist() == [1] * t.shape[0]


@pytest.mark.parametrize(("layers", "beta"), [(3, 1.0), (5, 1.0), (4, 1.5), (5, 2.0)])
def test_steep_search_fits_the_fall_ratio_model_to_the_bracket(layers: int, beta: float) -> None:
    """On a deep network's bound (flat, then a cliff), ``steep`` reaches the reference's
    result with at most 0.7 times the evaluations of the cubic through the centre, P and F
    (which put the second evaluation at a fraction of the root and crept up from there)."""
    t = torch.tensor([0.001, 0.0023, 0.0034, 0.005, 0.013, 0.04, 0.1, 0.3], dtype=torch.float64)
    margin, m0, g0 = _deep_margin(t, beta)
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, t.shape[0], 0.005)
    totals = {}
    for fit_ratio in (False, True):
        counted, evaluations = _counting(margin, t.shape[0])
        got = bracketed_binary_search(
            counted, m0, 0.005, slope0=g0, first_scale=first_scale(layers), steep=fit_ratio
        )
        assert torch.equal(got, want)
        totals[fit_ratio] = int(evaluations.sum())
    assert totals[True] <= 0.7 * totals[False]


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    certified=st.booleans(),
)
def test_fall_ratio_root_in_bracket_is_exact_on_the_model(
    rows: int, seed: int, certified: bool
) -> None:
    """On a bound that is exactly the model (``log rho`` linear in eps: 0 at the centre when
    nothing is certified), the fitted root is the bound's root."""
    gen = np.random.default_rng(seed)
    root = gen.uniform(1e-4, 1.0, rows)
    m0 = gen.uniform(1e-3, 10.0, rows)
    rise = gen.uniform(0.1, 8.0, rows) / root  # log rho grows by 0.1-8 up to the root
    at0 = gen.uniform(0.0, 2.0, rows) if certified else np.zeros(rows)
    # choose g0 so that the model's root is ``root``: m0 = g0 root rho(root)
    g0 = m0 / (root * np.exp(at0 + rise * root))

    def model(e: np.ndarray) -> np.ndarray:
        return m0 - g0 * e * np.exp(at0 + rise * e)

    p = gen.uniform(0.2, 0.95, rows) * root if certified else np.zeros(rows)
    f = gen.uniform(1.05, 3.0, rows) * root
    mp = model(p) if certified else m0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        got = _fall_ratio_root_in_bracket(m0, g0, p, mp, f, model(f))
    np.testing.assert_allclose(got, root, rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 40),
    max_steps=st.integers(1, 20),
    tol=st.sampled_from([1e-5, 1e-3, 0.0]),
)
def test_decisive_candidates_replay_every_row_as_the_scalar_replay(
    seed: int, rows: int, max_steps: int, tol: float
) -> None:
    """The lockstep replay gives each row's scalar replay bit for bit, from search states
    reached by random decisions, with random brackets and roots (inside and outside them)."""
    rng = np.random.default_rng(seed)
    search = _ReferenceSearch.start(rows, float(rng.uniform(1e-4, 1.0)), max_steps, tol, 1e5, 10.0)
    for _ in range(int(rng.integers(0, max_steps))):
        live = np.flatnonzero(~search.done)
        if live.size:
            search.advance(live, rng.random(live.size) < 0.5)
    cur = search.current
    certified = np.where(rng.random(rows) < 0.3, 0.0, cur * rng.uniform(0.1, 1.0, rows))
    failed = np.where(rng.random(rows) < 0.2, math.inf, cur * rng.uniform(1.0, 10.0, rows))
    root = np.where(
        np.isfinite(failed),
        certified + (failed - certified) * rng.uniform(-0.2, 1.2, rows),
        cur * rng.uniform(0.1, 20.0, rows),
    )
    root = np.where(rng.random(rows) < 0.1, cur, root)  # a root on the path itself
    which = np.flatnonzero(rng.random(rows) < 0.8)
    eps, final = search.decisive_candidates(which, certified[which], failed[which], root[which])
    for k, r in enumerate(which.tolist()):
        want = search.decisive_candidate(r, float(certified[r]), float(failed[r]), float(root[r]))
        assert (eps[k], bool(final[k])) == want or (math.isnan(eps[k]) and math.isnan(want[0]))


def test_many_rows_search_like_few(monkeypatch) -> None:
    """A batch over the scalar replay's row limit (as a GPU's thousand images) replays its
    paths in lockstep: the same radii and evaluations as the per-row replay."""
    t = torch.from_numpy(np.random.default_rng(0).uniform(1e-3, 0.3, 200))
    margin, m0, g0 = _deep_margin(t, 2.0)
    runs = []
    for limit in (10**9, 0):
        monkeypatch.setattr(search_module, "_SCALAR_REPLAYS", limit)
        counted, evaluations = _counting(margin, t.shape[0])
        got = bracketed_binary_search(counted, m0, 0.005, slope0=g0, first_scale=first_scale(6))
        runs.append((got, evaluations.clone()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def _knee_margin(knee: torch.Tensor, roots: torch.Tensor) -> tuple[Margin, torch.Tensor]:
    """A bound as an MNIST CNN's over the knee of its first layer (``nnbound.tasks.knees``):
    falling slowly up to ``knee`` (by a sixth of the centre's margin), then linearly to zero
    at ``roots`` (past the knee), or, where ``roots`` lies below the knee, slowly to it."""
    m0 = torch.full_like(knee, 6.0)

    def margin(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        k, r = knee[rows], roots[rows]
        flat = m0[rows] * (1 - eps / (6 * k))
        at_knee = 5.0 * torch.ones_like(k)
        steep = at_knee * (r - eps) / (r - k)
        below = m0[rows] * (1 - eps / r)  # roots below the knee: no knee on the way
        return torch.where(r < k, below, torch.where(eps <= k, flat, steep))

    return margin, m0


def test_knee_saves_the_climb_along_a_flat_bound() -> None:
    """Told the knee, the search evaluates there instead of climbing the flat part of the
    bound: the reference's radii, fewer evaluations (also where the root lies below it)."""
    gen = torch.Generator().manual_seed(0)
    knee = torch.full((40,), 0.3, dtype=torch.float64)
    roots = 0.3 * (1 + 0.04 * torch.rand(40, generator=gen, dtype=torch.float64))
    roots[:5] = torch.tensor([0.05, 0.12, 0.2, 0.25, 0.29], dtype=torch.float64)
    margin, m0 = _knee_margin(knee, roots)
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, 40, 0.005)
    counts = []
    for k in (None, knee.numpy()):
        counted, evaluations = _counting(margin, 40)
        slope = m0 / (6 * knee)  # the flat part's slope: a first-order root 6x too far
        got = bracketed_binary_search(counted, m0, 0.005, slope0=slope, first_scale=0.25, knee=k)
        assert torch.equal(got, want)
        counts.append(evaluations)
    without, with_knee = counts
    assert with_knee[5:].sum() <= 0.7 * without[5:].sum(), (without, with_knee)
    assert with_knee[:5].sum() <= without[:5].sum() + 5


def test_knee_jump_is_evaluated_in_float32() -> None:
    """A jump to a knee is evaluated in float32 even where the replayed path expects that
    candidate to be the radius: it is no root estimate, and here (a root below the knee, a
    path ending at 0.275 between the two) the float64 evaluation would fail."""
    knee = torch.tensor([0.3], dtype=torch.float64)
    margin, m0 = _knee_margin(knee, torch.tensor([0.27], dtype=torch.float64))
    failed_precise: list[float] = []

    def confirm(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        m = margin(rows, eps)
        failed_precise.extend(eps[m <= 0].tolist())
        return m

    got = bracketed_binary_search(
        margin, m0, 0.005, slope0=m0 / 0.3, confirm=confirm, knee=knee.numpy(), max_steps=5
    )
    want = batched_binary_search(lambda r, e: margin(r, e) > 0, 1, 0.005, max_steps=5)
    assert torch.equal(got, want)
    assert failed_precise == []


def test_confirmations_wait_for_one_call() -> None:
    """Rows ready for their float64 evaluation wait while others still evaluate in float32,
    so the search confirms in one call (and one more for the radii its loop left unconfirmed)
    rather than once per round: four calls on these curves before, each a batch's fixed cost."""
    t = 10 ** (
        torch.rand(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 - 3
    )
    margin, m0, g0 = _deep_margin(t, 2.0)
    calls: list[int] = []

    def confirm(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        calls.append(rows.numel())
        return margin(rows, eps)

    got = bracketed_binary_search(margin, m0, 0.005, slope0=g0, confirm=confirm)
    assert torch.equal(got, batched_binary_search(lambda r, e: margin(r, e) > 0, 40, 0.005))
    assert len(calls) <= 2, calls
