"""Linear relaxations of every activation: soundness on dense grids, hand-derived lines, the
reference's formulas (spec §5) and the reference's unsound S-shaped tangent search (spec §12.1).

The activations are re-implemented here in numpy, so the checks do not depend on
``nnbound.relax.functions``; softplus follows torch's ``F.softplus`` (``x`` itself above 20),
which is what ``Activation("softplus").forward`` -- the function the bounds certify -- computes.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (sets torch threads)
from nnbound.network.layers import Activation
from nnbound.relax import (
    BoundedReluRelaxation,
    ConvexRelaxation,
    LeakyReluRelaxation,
    LowerSlope,
    SShapedRelaxation,
    TangentRule,
    relaxation_for,
)
from nnbound.relax.functions import ARCTAN, SIGMOID, SOFTPLUS, TANH, elu_function

F64 = torch.float64
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


# -- independent numpy activations and derivatives --------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _dsigmoid(z: np.ndarray) -> np.ndarray:
    s = _sigmoid(z)
    return s * (1.0 - s)


def _np_funcs(name: str, alpha: float = 0.0):
    """(f, f') in numpy for activation ``name`` (f' at 0 of relu/leaky: either side)."""
    with np.errstate(over="ignore"):
        if name == "relu":
            return (lambda z: np.maximum(z, 0.0)), (lambda z: (z > 0).astype(float))
        if name == "leaky_relu":
            return (lambda z: np.where(z > 0, z, alpha * z), lambda z: np.where(z > 0, 1.0, alpha))
        if name == "brelu":  # alpha is the cap
            return (
                lambda z: np.clip(z, 0.0, alpha),
                lambda z: ((z > 0) & (z < alpha)).astype(float),
            )
        if name == "tanh":
            return np.tanh, (lambda z: 1.0 / np.cosh(np.clip(z, -350, 350)) ** 2)
        if name == "sigmoid":
            return _sigmoid, _dsigmoid
        if name == "arctan":
            return np.arctan, (lambda z: 1.0 / (1.0 + z * z))
        if name == "softplus":
            # torch's F.softplus (what the network computes) returns x itself for x > 20.
            return (lambda z: np.where(z > 20.0, z, np.logaddexp(0.0, z))), _sigmoid
        if name == "elu":
            return (
                lambda z: np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0))),
                lambda z: np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0.0))),
            )
    raise ValueError(name)


# (id, relaxation, activation name, alpha)
RELAXATIONS = (
    [(f"relu-{ls.value}", LeakyReluRelaxation(0.0, ls), "relu", 0.0) for ls in LowerSlope]
    + [
        (f"leaky{a}-{ls.value}", LeakyReluRelaxation(a, ls), "leaky_relu", a)
        for a in (0.01, 0.3)
        for ls in LowerSlope
    ]
    + [
        (f"{fn.name}-{rule.value}", SShapedRelaxation(fn, rule), fn.name, 0.0)
        for fn in (TANH, SIGMOID, ARCTAN)
        for rule in TangentRule
    ]
    + [
        (f"brelu{c}-{ls.value}", BoundedReluRelaxation(c, ls), "brelu", c)
        for c in (1.0, 0.25, 6.0)
        for ls in LowerSlope
    ]
    + [("softplus", ConvexRelaxation(SOFTPLUS), "softplus", 0.0)]
    + [(f"elu{a}", ConvexRelaxation(elu_function(a)), "elu", a) for a in (1.0, 0.5)]
)
IDS = [r[0] for r in RELAXATIONS]


def random_intervals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` intervals at scales 1e-3..1e3 with the corner cases: points (l == u), l = 0,
    u = 0, very wide mixed ones, and tiny ones around 0."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-3, 3, n)
    a, b = rng.normal(size=n) * scale, rng.normal(size=n) * scale
    l, u = np.minimum(a, b), np.maximum(a, b)
    k = n // 10
    l[:k] = u[:k]  # points
    l[k : 2 * k], u[k : 2 * k] = 0.0, np.abs(u[k : 2 * k])  # l = 0
    l[2 * k : 3 * k], u[2 * k : 3 * k] = -np.abs(l[2 * k : 3 * k]), 0.0  # u = 0
    wide = 10.0 ** rng.uniform(1, 3, k)  # very wide mixed
    l[3 * k : 4 * k], u[3 * k : 4 * k] = (
        -wide * rng.uniform(0.01, 1, k),
        wide * rng.uniform(0.01, 1, k),
    )
    l[4 * k : 5 * k], u[4 * k : 5 * k] = -rng.uniform(0, 1e-6, k), rng.uniform(0, 1e-6, k)  # tiny
    l[5 * k], u[5 * k] = 0.0, 0.0
    l[5 * k + 1], u[5 * k + 1] = -1e3, 1e3
    l[5 * k + 2], u[5 * k + 2] = -1.0, 1.0  # |l| == |u| tie
    return l, u


def grid(l: np.ndarray, u: np.ndarray, m: int = 257) -> np.ndarray:
    t = np.linspace(0.0, 1.0, m)
    z = l[:, None] + (u - l)[:, None] * t
    return np.clip(z, l[:, None], u[:, None])


def line_violations(lin, l, u, f):
    """Per interval, the largest ``lower line - f`` and ``f - upper line`` on a dense grid,
    each divided by the rounding scale of evaluating the line (so ~1 means "a few ulps")."""
    ls, lb, us, ub = (
        t.double().numpy()
        for t in (lin.lower_slope, lin.lower_bias, lin.upper_slope, lin.upper_bias)
    )
    z = grid(l, u)
    fz = f(z)
    lo = ls[:, None] * z + lb[:, None]
    up = us[:, None] * z + ub[:, None]
    scale_lo = 1.0 + np.abs(ls[:, None] * z) + np.abs(lb[:, None]) + np.abs(fz)
    scale_up = 1.0 + np.abs(us[:, None] * z) + np.abs(ub[:, None]) + np.abs(fz)
    return ((lo - fz) / scale_lo).max(1), ((fz - up) / scale_up).max(1)


# -- soundness on dense grids ------------------------------------------------------------------
@pytest.mark.parametrize(("name", "relax", "act", "alpha"), RELAXATIONS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_lines_sandwich_activation_on_dense_grid(name, relax, act, alpha, dtype) -> None:
    l, u = random_intervals(3000, seed=zlib.crc32(name.encode()))
    lt, ut = torch.tensor(l, dtype=dtype), torch.tensor(u, dtype=dtype)
    lin = relax.linear(lt, ut)
    for t in (lin.lower_slope, lin.lower_bias, lin.upper_slope, lin.upper_bias):
        assert t.dtype == dtype and t.shape == lt.shape
        assert bool(torch.isfinite(t).all())
    # The grid lies in the interval the relaxation was actually given (after rounding).
    l_used, u_used = lt.double().numpy(), ut.double().numpy()
    f, _ = _np_funcs(act, alpha)
    v_lo, v_up = line_violations(lin, l_used, u_used, f)
    # float64: a few ulps of the line's evaluation. float32: piecewise-linear lines are not
    # padded, so rounding the coefficients to float32 is allowed; the smooth relaxations pad
    # their intercepts outward and must hold to float64 precision.
    smooth = act not in ("relu", "leaky_relu", "brelu")
    tol = 4 * (EPS64 if dtype == torch.float64 or smooth else EPS32)
    worst_lo, worst_up = int(v_lo.argmax()), int(v_up.argmax())
    assert v_lo.max() <= tol, (
        f"{name}: lower line above f by {v_lo.max():.3g} (relative) on "
        f"[{l_used[worst_lo]!r}, {u_used[worst_lo]!r}]"
    )
    assert v_up.max() <= tol, (
        f"{name}: upper line below f by {v_up.max():.3g} (relative) on "
        f"[{l_used[worst_up]!r}, {u_used[worst_up]!r}]"
    )


@pytest.mark.parametrize(
    "act", ["relu", "leaky_relu", "tanh", "sigmoid", "arctan", "softplus", "elu", "brelu"]
)
def test_lines_sound_against_network_forward(act: str) -> None:
    """The bounds certify what ``Activation.forward`` computes, so the lines must also sandwich
    the torch function the network evaluates (not only the exact one)."""
    alpha = {"leaky_relu": 0.3, "elu": 1.0}.get(act, 0.0)
    layer = Activation(act, alpha)
    relax = relaxation_for(layer)
    l, u = random_intervals(2000, seed=7)
    # also the window around torch's softplus threshold (20)
    rng = np.random.default_rng(3)
    c = rng.uniform(15, 45, 400)
    l = np.concatenate([l, c - rng.uniform(0, 3, 400)])
    u = np.concatenate([u, c + rng.uniform(0, 3, 400)])
    lin = relax.linear(torch.tensor(l), torch.tensor(u))

    def f(z: np.ndarray) -> np.ndarray:
        return layer.forward(torch.from_numpy(z)).numpy()

    v_lo, v_up = line_violations(lin, l, u, f)
    i, j = int(v_lo.argmax()), int(v_up.argmax())
    assert v_lo.max() <= 4 * EPS64, (
        f"{act}: lower line above forward() on [{l[i]!r}, {u[i]!r}]: {v_lo[i]:.3g}"
    )
    assert v_up.max() <= 4 * EPS64, (
        f"{act}: upper line below forward() on [{l[j]!r}, {u[j]!r}]: {v_up[j]:.3g}"
    )


def test_softplus_relaxation_near_torch_threshold() -> None:
    """Regression (found by these tests): torch's ``F.softplus`` returns ``x`` exactly for
    x > 20. Built from that thresholded value and the derivative ``sigmoid``, the midpoint
    tangent on [20, 22] (d = 21) was ``z + e^-21 (21 - z)``, ~7.6e-10 above ``F.softplus(z) = z``
    at z just above 20, while the chord on [21, 21] was ``z``, e^-21 below the exact softplus.
    The lines must sandwich both the exact function and what the network computes."""
    relax = ConvexRelaxation(SOFTPLUS)
    for lo, hi in ((20.0, 22.0), (21.0, 21.0), (19.0, 23.0), (20.5, 21.0), (25.0, 40.0)):
        lin = relax.linear(torch.tensor([lo], dtype=F64), torch.tensor([hi], dtype=F64))
        z = torch.linspace(lo, hi, 2001, dtype=F64)
        lower_line = lin.lower_slope * z + lin.lower_bias
        upper_line = lin.upper_slope * z + lin.upper_bias
        net_value = Activation("softplus").forward(z)  # z itself above 20
        exact = torch.from_numpy(np.logaddexp(0.0, z.numpy()))
        for name, f in (("F.softplus", net_value), ("exact softplus", exact)):
            assert float((lower_line - f).max()) <= 0.0, (lo, hi, name, "lower")
            assert float((f - upper_line).max()) <= 0.0, (lo, hi, name, "upper")
        i_lo, i_hi = relax.interval(torch.tensor([lo], dtype=F64), torch.tensor([hi], dtype=F64))
        for f in (net_value, exact):
            assert bool((f >= i_lo).all() and (f <= i_hi).all())


# -- interval and derivative interval -----------------------------------------------------------
@pytest.mark.parametrize(("name", "relax", "act", "alpha"), RELAXATIONS, ids=IDS)
def test_interval_and_derivative_interval_contain_samples(name, relax, act, alpha) -> None:
    l, u = random_intervals(2000, seed=11)
    lt, ut = torch.tensor(l), torch.tensor(u)
    lo, hi = (t.numpy() for t in relax.interval(lt, ut))
    dlo, dhi = (t.numpy() for t in relax.derivative_interval(lt, ut))
    assert (lo <= hi).all() and (dlo <= dhi).all()
    f, df = _np_funcs(act, alpha)
    rng = np.random.default_rng(5)
    z = l[:, None] + (u - l)[:, None] * rng.uniform(size=(len(l), 64))
    z = np.concatenate([z, l[:, None], u[:, None]], axis=1)
    fz = f(z)
    tol = 8 * EPS64 * (1 + np.abs(fz))
    assert (fz >= lo[:, None] - tol).all(), name
    assert (fz <= hi[:, None] + tol).all(), name
    if act in ("relu", "leaky_relu", "elu", "brelu"):
        z = np.where(z == 0.0, np.nan, z)  # kink: f'(0) is either side's value
    if act == "brelu":
        z = np.where(z == alpha, np.nan, z)  # the second kink
    dz = df(z)
    ok = np.isnan(z) | ((dz >= dlo[:, None] - 8 * EPS64) & (dz <= dhi[:, None] + 8 * EPS64))
    assert ok.all(), name


# -- hand-derived ReLU / leaky ReLU lines ----------------------------------------------------------
L_U = torch.tensor(
    [[-3.0, 1.0], [-1.0, 3.0], [-2.0, 2.0], [-0.5, 4.0], [-4.0, 0.5], [-1e-3, 1e3]], dtype=F64
)


def test_relu_upper_chord_hand_derived() -> None:
    l, u = L_U[:, 0], L_U[:, 1]
    for ls in LowerSlope:
        lin = LeakyReluRelaxation(0.0, ls).linear(l, u)
        torch.testing.assert_close(lin.upper_slope, u / (u - l), rtol=1e-15, atol=0)
        torch.testing.assert_close(lin.upper_bias, -l * u / (u - l), rtol=1e-15, atol=0)
        assert bool((lin.lower_bias == 0).all())
    # l = -3, u = 1: slope 1/4, intercept 3/4 (exact in binary)
    lin = LeakyReluRelaxation(0.0).linear(torch.tensor([-3.0]), torch.tensor([1.0]))
    assert lin.upper_slope.item() == 0.25 and lin.upper_bias.item() == 0.75


def test_relu_lower_slopes_hand_derived() -> None:
    l, u = L_U[:, 0], L_U[:, 1]
    expect_adaptive = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 1.0], dtype=F64)  # tie (-2, 2) -> 1
    expect_strict = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=F64)  # tie -> 0
    lin = LeakyReluRelaxation(0.0, LowerSlope.ADAPTIVE).linear(l, u)
    assert torch.equal(lin.lower_slope, expect_adaptive)
    lin = LeakyReluRelaxation(0.0, LowerSlope.ADAPTIVE_STRICT).linear(l, u)
    assert torch.equal(lin.lower_slope, expect_strict)
    lin = LeakyReluRelaxation(0.0, LowerSlope.ZERO).linear(l, u)
    assert torch.equal(lin.lower_slope, torch.zeros_like(l))
    lin = LeakyReluRelaxation(0.0, LowerSlope.PARALLEL).linear(l, u)  # Fast-Lin
    torch.testing.assert_close(lin.lower_slope, u / (u - l), rtol=1e-15, atol=0)
    assert torch.equal(lin.lower_slope, lin.upper_slope)
    assert bool((lin.lower_bias == 0).all())


@pytest.mark.parametrize("ls", list(LowerSlope), ids=lambda s: s.value)
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3])
def test_stable_neurons_are_exact(ls: LowerSlope, alpha: float) -> None:
    l = torch.tensor([0.0, 0.5, -2.0, -1.0, 0.0, 3.0], dtype=F64)
    u = torch.tensor([1.0, 2.0, 0.0, -0.5, 0.0, 3.0], dtype=F64)
    lin = LeakyReluRelaxation(alpha, ls).linear(l, u)
    slope = torch.tensor([1, 1, alpha, alpha, 1, 1], dtype=F64)
    keep = [0, 1, 2, 3, 5]  # [0, 0] may be called active or inactive: both are exact there
    for t in (lin.lower_slope, lin.upper_slope):
        torch.testing.assert_close(t[keep], slope[keep], rtol=0, atol=0)
    assert torch.equal(lin.lower_slope, lin.upper_slope)
    assert bool((lin.lower_bias == 0).all()) and bool((lin.upper_bias == 0).all())


@pytest.mark.parametrize("k", [0.01, 0.3])
def test_leaky_relu_formulas_spec_section_5(k: float) -> None:
    l, u = L_U[:, 0], L_U[:, 1]
    # upper: slope (u - k l)/(u - l), intercept l u (k - 1)/(u - l)
    for ls in LowerSlope:
        lin = LeakyReluRelaxation(k, ls).linear(l, u)
        torch.testing.assert_close(lin.upper_slope, (u - k * l) / (u - l), rtol=1e-14, atol=0)
        torch.testing.assert_close(lin.upper_bias, l * u * (k - 1) / (u - l), rtol=1e-14, atol=0)
    # lower (reference leaky_relu_lb_pn, used by crown-general): 1 if |u| > |l| else k
    lin = LeakyReluRelaxation(k, LowerSlope.ADAPTIVE_STRICT).linear(l, u)
    expect = torch.where(u.abs() > l.abs(), torch.ones_like(u), torch.full_like(u, k))
    assert torch.equal(lin.lower_slope, expect)
    assert lin.lower_slope[2].item() == k  # tie (-2, 2) -> k
    lin = LeakyReluRelaxation(k, LowerSlope.ADAPTIVE).linear(l, u)
    assert lin.lower_slope[2].item() == 1.0  # tie -> 1
    lin = LeakyReluRelaxation(k, LowerSlope.PARALLEL).linear(l, u)
    torch.testing.assert_close(lin.lower_slope, (u - k * l) / (u - l), rtol=1e-14, atol=0)
    assert bool((lin.lower_bias == 0).all())


def test_relaxation_for_dispatch() -> None:
    assert relaxation_for(Activation("relu")) == LeakyReluRelaxation(0.0, LowerSlope.ADAPTIVE)
    leaky = relaxation_for(Activation("leaky_relu", 0.3), LowerSlope.PARALLEL)
    assert leaky == LeakyReluRelaxation(0.3, LowerSlope.PARALLEL)
    r = relaxation_for(Activation("tanh"), tangent=TangentRule.REFERENCE)
    assert isinstance(r, SShapedRelaxation) and r.tangent is TangentRule.REFERENCE
    assert isinstance(relaxation_for(Activation("softplus")), ConvexRelaxation)
    assert isinstance(relaxation_for(Activation("elu", 0.5)), ConvexRelaxation)
    from nnbound.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        relaxation_for(Activation("elu", 2.0))
    with pytest.raises(UnsupportedError):
        LeakyReluRelaxation(1.5)


# -- S-shaped: convex / concave regions are the reference's chord and midpoint tangent ------------
S_FUNCS = {"tanh": TANH, "sigmoid": SIGMOID, "arctan": ARCTAN}


@pytest.mark.parametrize("fname", list(S_FUNCS))
@pytest.mark.parametrize("rule", list(TangentRule), ids=lambda r: r.value)
def test_s_shaped_convex_concave_cases_match_reference(fname: str, rule: TangentRule) -> None:
    f, df = _np_funcs(fname)
    rng = np.random.default_rng(1)
    n = 500
    a = rng.uniform(0, 1, n) * 10.0 ** rng.uniform(-2, 1.5, n)
    w = 10.0 ** rng.uniform(-4, 1, n)  # widths > 1e-5: the reference's degenerate case excluded
    relax = SShapedRelaxation(S_FUNCS[fname], rule)
    for sign in (-1.0, 1.0):  # u <= 0 (convex, state -1) and l >= 0 (concave, state +1)
        l, u = (-(a + w), -a) if sign < 0 else (a, a + w)
        lin = relax.linear(torch.tensor(l), torch.tensor(u))
        ls, lb, us, ub = (
            t.numpy() for t in (lin.lower_slope, lin.lower_bias, lin.upper_slope, lin.upper_bias)
        )
        chord_s, chord_b, tan_s, tan_b = (us, ub, ls, lb) if sign < 0 else (ls, lb, us, ub)
        # Chord: through (l, f(l)) and (u, f(u)) up to a few ulps (its slope carries the
        # cancellation error of f(u) - f(l), so compare it with that tolerance).
        fl, fu = f(l), f(u)
        ulp = 8 * EPS64 * (1 + np.abs(fl) + np.abs(fu) + np.abs(chord_s * l) + np.abs(chord_s * u))
        assert (np.abs(chord_s * l + chord_b - fl) <= ulp).all()
        assert (np.abs(chord_s * u + chord_b - fu) <= ulp).all()
        cancel = float((8 * EPS64 * (np.abs(fl) + np.abs(fu)) / (u - l)).max())
        np.testing.assert_allclose(chord_s, (fu - fl) / (u - l), rtol=1e-9, atol=cancel)
        # Tangent at the midpoint d: slope f'(d), intercept f(d) - d f'(d), moved outward by
        # a few ulps only.
        d = (l + u) / 2
        np.testing.assert_allclose(tan_s, df(d), rtol=1e-13, atol=1e-300)
        scale = 8 * EPS64 * (1 + np.abs(f(d)) + np.abs(d * df(d)) + np.abs(tan_s * np.abs(u - l)))
        np.testing.assert_array_less(np.abs(tan_b - (f(d) - d * df(d))), scale + 1e-300)


# -- S-shaped mixed case: an independent transcription of find_d_UB / find_d_LB (spec §5) --------
def ref_find_d_ub_line(f, df, l: np.ndarray, u: np.ndarray):
    """Spec §5 ``find_d_UB`` + ``general_ub_pn``: bisection on [0, u] from d = u/2, 10 steps,
    stop when 0 < t < 0.01, t > 0 -> left; line through (l, f(l)) and (d, f(d)) shifted up by
    0.01 * slope. Scalar loop per interval (as the numba reference)."""
    slopes, biases = np.empty_like(l), np.empty_like(l)
    for i, (li, ui) in enumerate(zip(l, u, strict=True)):
        lo, hi, d = 0.0, ui, ui / 2
        for _ in range(10):
            t = (f(d) - f(li)) / (d - li) - df(d)
            if 0 < t < 0.01:
                break
            if t > 0:
                hi = d
            else:
                lo = d
            d = (lo + hi) / 2
        k = (f(d) - f(li)) / (d - li)
        slopes[i], biases[i] = k, f(li) - (li - 0.01) * k
    return slopes, biases


def ref_find_d_lb_line(f, df, l: np.ndarray, u: np.ndarray):
    """Spec §5 ``find_d_LB`` + ``general_lb_pn``: mirror image on [l, 0] from d = l/2, line
    through (u, f(u)) shifted down by 0.01 * slope."""
    slopes, biases = np.empty_like(l), np.empty_like(l)
    for i, (li, ui) in enumerate(zip(l, u, strict=True)):
        lo, hi, d = li, 0.0, li / 2
        for _ in range(10):
            t = (f(ui) - f(d)) / (ui - d) - df(d)
            if 0 < t < 0.01:
                break
            if t > 0:
                lo = d
            else:
                hi = d
            d = (lo + hi) / 2
        k = (f(ui) - f(d)) / (ui - d)
        slopes[i], biases[i] = k, f(ui) - (ui + 0.01) * k
    return slopes, biases


def _coefficients(lin) -> tuple[np.ndarray, ...]:
    """(upper slope, upper bias, lower slope, lower bias) as numpy arrays."""
    return tuple(
        t.numpy() for t in (lin.upper_slope, lin.upper_bias, lin.lower_slope, lin.lower_bias)
    )


def _valid(slope, bias, l, u, f, upper: bool) -> np.ndarray:
    z = grid(l, u, 4001)
    gap = slope[:, None] * z + bias[:, None] - f(z)
    return (gap >= 0).all(1) if upper else (gap <= 0).all(1)


@pytest.mark.parametrize(
    ("fname", "lo", "hi"),
    [("tanh", 0.5, 2.0), ("arctan", 0.5, 2.0), ("tanh", 0.5, 5.0), ("sigmoid", 0.5, 2.0)],
)
def test_reference_rule_equals_transcription_where_valid(fname: str, lo: float, hi: float) -> None:
    f, df = _np_funcs(fname)
    rng = np.random.default_rng(2)
    n = 400
    l, u = -rng.uniform(lo, hi, n), rng.uniform(lo, hi, n)
    rus, rub = ref_find_d_ub_line(f, df, l, u)
    rls, rlb = ref_find_d_lb_line(f, df, l, u)
    ok_up = _valid(rus, rub, l, u, f, upper=True)
    ok_lo = _valid(rls, rlb, l, u, f, upper=False)
    lt, ut = torch.tensor(l), torch.tensor(u)
    lin = SShapedRelaxation(S_FUNCS[fname], TangentRule.REFERENCE).linear(lt, ut)
    ex = SShapedRelaxation(S_FUNCS[fname], TangentRule.EXACT).linear(lt, ut)
    us, ub, ls, lb = _coefficients(lin)
    eq_up = np.isclose(us, rus, rtol=1e-12, atol=0) & np.isclose(ub, rub, rtol=1e-12, atol=1e-13)
    eq_lo = np.isclose(ls, rls, rtol=1e-12, atol=0) & np.isclose(lb, rlb, rtol=1e-12, atol=1e-13)
    # An invalid reference line is never used; each line is the reference's or the EXACT one.
    assert not (eq_up & ~ok_up).any() and not (eq_lo & ~ok_lo).any()
    exs, exb, exls, exlb = _coefficients(ex)
    assert (eq_up | ((us == exs) & (ub == exb))).all()
    assert (eq_lo | ((ls == exls) & (lb == exlb))).all()
    # REFERENCE checks each line exactly (ends and the points where f' equals its slope), so
    # every valid reference line is reproduced.
    assert eq_up[ok_up].all(), np.nonzero(ok_up & ~eq_up)[0][:5]
    assert eq_lo[ok_lo].all(), np.nonzero(ok_lo & ~eq_lo)[0][:5]
    if fname in ("tanh", "arctan"):
        # On moderate intervals every reference line is valid.
        assert ok_up.all() and ok_lo.all()


@pytest.mark.parametrize("fname", list(S_FUNCS))
def test_raw_reference_line_unsound_on_wide_interval(fname: str) -> None:
    """Spec §12.1: on tanh [-10, 383] find_d_UB returns d = u/2 at once and the line cuts tanh
    by ~1.87; our lines (both rules) stay sound."""
    f, df = _np_funcs(fname)
    l, u = np.array([-10.0]), np.array([383.0])
    z = np.linspace(-10.0, 383.0, 400001)
    rus, rub = ref_find_d_ub_line(f, df, l, u)
    raw_violation = (f(z) - (rus[0] * z + rub[0])).max()
    if fname == "tanh":
        assert raw_violation == pytest.approx(1.866, abs=0.01)
    elif fname == "sigmoid":
        assert raw_violation > 0.9
    for rule in TangentRule:
        lin = SShapedRelaxation(S_FUNCS[fname], rule).linear(torch.tensor(l), torch.tensor(u))
        up = lin.upper_slope.item() * z + lin.upper_bias.item()
        lo = lin.lower_slope.item() * z + lin.lower_bias.item()
        assert (f(z) - up).max() <= 0.0
        assert (lo - f(z)).max() <= 0.0


def test_exact_rule_is_tangent_through_endpoint() -> None:
    """EXACT mixed lines on moderate intervals pass through (l, f(l)) (upper) / (u, f(u))
    (lower) and touch f (tightness, not only soundness)."""
    f, _ = _np_funcs("tanh")
    rng = np.random.default_rng(9)
    l, u = -rng.uniform(0.5, 3, 200), rng.uniform(0.5, 3, 200)
    lin = SShapedRelaxation(TANH).linear(torch.tensor(l), torch.tensor(u))
    us, ub, ls, lb = _coefficients(lin)
    np.testing.assert_allclose(us * l + ub, f(l), atol=1e-9)
    np.testing.assert_allclose(ls * u + lb, f(u), atol=1e-9)
    z = grid(l, u, 2001)
    gap_up = (us[:, None] * z + ub[:, None] - f(z)).min(1)
    gap_lo = (f(z) - ls[:, None] * z - lb[:, None]).min(1)
    assert (gap_up >= -1e-12).all() and (gap_lo >= -1e-12).all()
    assert (gap_up < 1e-6).all() and (gap_lo < 1e-6).all()
