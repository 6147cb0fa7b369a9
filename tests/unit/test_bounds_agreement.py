"""Bound methods against exact values, LPs, hand derivations and an independent numpy
transcription of the reference's Fast-Lin / CROWN-adaptive (spec §3-5)."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import (
    ALL_ACTIVATIONS,
    NORMS,
    PIECEWISE_LINEAR,
    methods_for,
    pgd_extremes,
    random_network,
)
from nnbound.bounds.methods import layerwise_bounds
from nnbound.network.layers import Activation, Dense
from nnbound.network.network import Network
from nnbound.sets import LpBall, all_margins_spec, margin_spec

F64 = torch.float64


def dense_params(net: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (layer.weight.double().numpy(), layer.bias.double().numpy())
        for layer in net.layers
        if isinstance(layer, Dense)
    ]


def dual(p: float) -> float:
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


# ------------------------------------------------------------------------------------------
# (a) exact min (activation-pattern enumeration) >= triangle LP >= CROWN / Fast-Lin
# ------------------------------------------------------------------------------------------
def _ball_constraints(x0: np.ndarray, eps: float, p: float, nvar: int):
    """Rows (A_ub, b_ub) and variable bounds for x in the Linf / L1 ball (x = first n0 vars,
    L1 adds n0 auxiliary t >= |x - x0| after the first ``nvar`` variables)."""
    n0 = len(x0)
    if p == math.inf:
        return np.zeros((0, nvar)), np.zeros(0), [(x0[i] - eps, x0[i] + eps) for i in range(n0)], 0
    # L1: t_i >= x_i - x0_i, t_i >= x0_i - x_i, sum t <= eps
    total = nvar + n0
    rows, rhs = [], []
    for i in range(n0):
        r = np.zeros(total)
        r[i], r[nvar + i] = 1.0, -1.0
        rows.append(r)
        rhs.append(x0[i])
        r = np.zeros(total)
        r[i], r[nvar + i] = -1.0, -1.0
        rows.append(r)
        rhs.append(-x0[i])
    r = np.zeros(total)
    r[nvar:] = 1.0
    rows.append(r)
    rhs.append(eps)
    return np.array(rows), np.array(rhs), [(x0[i] - eps, x0[i] + eps) for i in range(n0)], n0


def _lp(c, a_ub, b_ub, a_eq, b_eq, bounds):
    res = linprog(
        c,
        A_ub=a_ub if len(a_ub) else None,
        b_ub=b_ub if len(b_ub) else None,
        A_eq=a_eq if a_eq is not None and len(a_eq) else None,
        b_eq=b_eq if b_eq is not None and len(b_eq) else None,
        bounds=bounds,
        method="highs",
    )
    return res


def numpy_ibp(params, x0, eps, p):
    """Independent interval bounds of every hidden pre-activation (for pruning patterns)."""
    w0, b0 = params[0]
    mid = w0 @ x0 + b0
    rad = eps * np.linalg.norm(w0, ord=dual(p), axis=1)
    out = [(mid - rad, mid + rad)]
    for w, b in params[1:-1]:
        lo, hi = np.maximum(out[-1][0], 0), np.maximum(out[-1][1], 0)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        out.append((w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r))
    return out


def exact_extremes(params, x0, eps, p, spec):
    """Exact min and max of ``spec . f(x)`` over the ball, by enumerating the activation
    patterns of every neuron the (independent) interval bounds leave unstable; each pattern
    makes the network affine, with one LP over the ball and the pattern's sign constraints."""
    n0 = len(x0)
    ibp = numpy_ibp(params, x0, eps, p)
    best_lo, best_hi = math.inf, -math.inf

    def recurse(layer, a_x, c_x, cons_a, cons_b):  # affine map of x at the input of `layer`
        nonlocal best_lo, best_hi
        w, b = params[layer]
        za, zc = w @ a_x, w @ c_x + b  # z = za x + zc
        if layer == len(params) - 1:
            obj_a, obj_c = spec @ za, spec @ zc
            a_ub, b_ub, bnds, extra = _ball_constraints(x0, eps, p, n0)
            ca = np.array(cons_a).reshape(-1, n0) if cons_a else np.zeros((0, n0))
            full = np.hstack([ca, np.zeros((len(ca), extra))])
            a_all = np.vstack([full, a_ub]) if len(a_ub) else full
            b_all = np.concatenate([np.array(cons_b), b_ub]) if len(b_ub) else np.array(cons_b)
            bounds = bnds + [(0, None)] * extra
            for sign in (1.0, -1.0):
                res = _lp(
                    np.concatenate([sign * obj_a, np.zeros(extra)]),
                    a_all,
                    b_all,
                    None,
                    None,
                    bounds,
                )
                if res.status == 2:
                    return  # infeasible pattern
                assert res.status == 0, res.message
                val = sign * res.fun + obj_c
                if sign > 0:
                    best_lo = min(best_lo, val)
                else:
                    best_hi = max(best_hi, val)
            return
        lo, hi = ibp[layer]
        unstable = np.nonzero((lo < 0) & (hi > 0))[0]
        for pattern in itertools.product((0, 1), repeat=len(unstable)):
            on = (lo >= 0).astype(float)
            on[unstable] = pattern
            ca, cb = list(cons_a), list(cons_b)
            for n, s in zip(unstable, pattern, strict=True):
                if s:  # z >= 0  <=>  -za x <= zc
                    ca.append(-za[n])
                    cb.append(zc[n])
                else:  # z <= 0
                    ca.append(za[n])
                    cb.append(-zc[n])
            recurse(layer + 1, on[:, None] * za, on * zc, ca, cb)

    recurse(0, np.eye(n0), np.zeros(n0), [], [])
    return best_lo, best_hi


def triangle_lp(params, x0, eps, p, spec, pre):
    """Min and max of ``spec . f(x)`` over the triangle relaxation with the given hidden
    bounds ``pre`` (list of (l, u)): variables x, then h_1, h_2, ...; z_k = W_k h_{k-1} + b_k
    substituted; z_k in [l, u] for every neuron, h = z (active), h = 0 (inactive), and
    h >= 0, h >= z, h <= u (z - l)/(u - l) (unstable)."""
    n0 = len(x0)
    sizes = [n0] + [len(b) for _, b in params[:-1]]
    offs = np.cumsum([0, *sizes])
    nvar = int(offs[-1])
    a_ub, b_ub, bnds, extra = _ball_constraints(x0, eps, p, nvar)
    total = nvar + extra
    rows, rhs, eq_rows, eq_rhs = [], [], [], []
    for k, (w, b) in enumerate(params[:-1]):
        l, u = pre[k]
        for n in range(len(b)):
            zrow = np.zeros(total)
            zrow[offs[k] : offs[k + 1]] = w[n]  # z = zrow . v + b[n]
            hrow = np.zeros(total)
            hrow[offs[k + 1] + n] = 1.0
            rows += [zrow, -zrow]  # l <= z <= u
            rhs += [u[n] - b[n], -(l[n] - b[n])]
            if l[n] >= 0:
                eq_rows.append(hrow - zrow)
                eq_rhs.append(b[n])
            elif u[n] <= 0:
                eq_rows.append(hrow)
                eq_rhs.append(0.0)
            else:
                s = u[n] / (u[n] - l[n])
                rows.append(zrow - hrow)  # z <= h
                rhs.append(-b[n])
                rows.append(hrow - s * zrow)  # h <= s (z - l)
                rhs.append(s * (b[n] - l[n]))
    a_all = np.vstack([np.array(rows), a_ub]) if len(a_ub) else np.array(rows)
    b_all = np.concatenate([rhs, b_ub]) if len(b_ub) else np.array(rhs)
    bounds = bnds + [(0, None)] * (nvar - n0) + [(0, None)] * extra
    w, b = params[-1]
    obj = np.zeros(total)
    obj[offs[-2] : offs[-1]] = spec @ w
    const = spec @ b
    out = []
    for sign in (1.0, -1.0):
        res = _lp(
            sign * obj,
            a_all,
            b_all,
            np.array(eq_rows) if eq_rows else None,
            np.array(eq_rhs) if eq_rhs else None,
            bounds,
        )
        assert res.status == 0, res.message
        out.append(sign * res.fun + const)
    return out[0], out[1]


@pytest.mark.parametrize(
    ("sizes", "p"),
    [([2, 4, 4, 1], math.inf), ([2, 4, 4, 1], 1.0), ([3, 5, 5, 2], math.inf), ([3, 5, 5, 2], 1.0)],
)
def test_exact_vs_triangle_lp_vs_crown(sizes: list[int], p: float) -> None:
    checked = 0
    for seed in range(4):
        net = random_network("relu", sizes, seed=seed, weight_scale=1.5)
        params = dense_params(net)
        rng = np.random.default_rng(seed)
        x0 = rng.normal(size=sizes[0])
        eps = 0.3 if p == math.inf else 0.6
        ball = LpBall.make(torch.tensor(x0[None]), eps, p)
        for s in range(sizes[-1]):
            spec = np.zeros(sizes[-1])
            spec[s] = 1.0
            if s == 1:
                spec = rng.normal(size=sizes[-1])
            c = torch.tensor(spec[None])
            true_lo, true_hi = exact_extremes(params, x0, eps, p, spec)
            pgd_lo, pgd_hi = pgd_extremes(net, ball, c, steps=60, restarts=4, seed=seed)
            # the enumeration is exact: no attack does better, and the attack gets close
            assert true_lo <= float(pgd_lo) + 1e-9 and true_hi >= float(pgd_hi) - 1e-9
            for method in ("crown-adaptive", "fastlin", "crown-general"):
                b = layerwise_bounds(net, ball, method, C=c, reference=True)
                pre = [(lo[0].numpy(), up[0].numpy()) for lo, up in b.intermediate.pre.values()]
                lp_lo, lp_hi = triangle_lp(params, x0, eps, p, spec, pre)
                assert lp_lo <= true_lo + 1e-7 and lp_hi >= true_hi - 1e-7, (method, seed)
                assert float(b.lower) <= lp_lo + 1e-7, (method, seed, float(b.lower), lp_lo)
                assert float(b.upper) >= lp_hi - 1e-7, (method, seed, float(b.upper), lp_hi)
                checked += 1
    assert checked >= 12


# ------------------------------------------------------------------------------------------
# (b) average tightness ordering CROWN <= Fast-Lin <= IBP over many random networks
# ------------------------------------------------------------------------------------------
def average_widths(n_nets: int = 200) -> dict[str, float]:
    rng = np.random.default_rng(2024)
    sums = {"ibp": 0.0, "fastlin": 0.0, "crown-adaptive": 0.0}
    for seed in range(n_nets):
        depth = int(rng.integers(2, 4))
        sizes = [int(rng.integers(4, 11))] + [int(rng.integers(10, 31)) for _ in range(depth)] + [3]
        net = random_network(
            "relu", sizes, seed=seed, weight_scale=float(rng.uniform(1.0, 2.0)), bias_scale=0.1
        )
        x0 = torch.tensor(rng.normal(size=(2, sizes[0])))
        # ~20% of the hidden neurons end up unstable (0-100% per network)
        eps = float(rng.uniform(0.05, 0.3))
        ball = LpBall.make(x0, eps, NORMS[seed % 3])
        for method in sums:
            b = layerwise_bounds(net, ball, method)
            sums[method] += float((b.upper - b.lower).mean())
    return {k: v / n_nets for k, v in sums.items()}


def test_average_width_ordering() -> None:
    """Fast-Lin <= CROWN is not a per-case theorem (CROWN's adaptive slope can lose), but on
    average over 200 random networks CROWN <= Fast-Lin <= IBP."""
    w = average_widths(200)
    print(
        f"\nmean widths over 200 nets: IBP {w['ibp']:.4f}  Fast-Lin {w['fastlin']:.4f}  "
        f"CROWN {w['crown-adaptive']:.4f}"
    )
    assert w["crown-adaptive"] <= w["fastlin"] <= w["ibp"], w


# ------------------------------------------------------------------------------------------
# (c) first-layer bounds are the exact dual-norm formula
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("method", ["ibp", "fastlin", "crown-adaptive", "crown-general"])
def test_first_layer_bounds_dual_norm(p: float, method: str) -> None:
    net = random_network("relu", [6, 7, 5, 3], seed=3)
    w, b = dense_params(net)[0]
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(3, 6))
    eps = np.array([[0.0, 0.1], [0.5, 1.0], [0.05, 2.0]])
    ball = LpBall.make(torch.tensor(x0), torch.tensor(eps), p)
    bounds = layerwise_bounds(net, ball, method)
    lo, up = bounds.intermediate.pre[1]
    norms = np.linalg.norm(w, ord=dual(p), axis=1)
    mid = x0 @ w.T + b
    exp_lo = (mid[:, None, :] - eps[:, :, None] * norms).reshape(6, 7)
    exp_up = (mid[:, None, :] + eps[:, :, None] * norms).reshape(6, 7)
    np.testing.assert_allclose(lo.numpy(), exp_lo, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(up.numpy(), exp_up, rtol=1e-12, atol=1e-12)


def test_first_layer_bounds_with_domain_linf() -> None:
    """With a data box (p = inf) the first layer is exact interval arithmetic on the clipped
    box; for p = 1, 2 it is the tighter of the ball formula and the box."""
    net = random_network("relu", [5, 6, 2], seed=4)
    w, b = dense_params(net)[0]
    x0 = np.array([[0.9, -0.95, 0.2, 0.0, 0.5]])
    lo_box, hi_box = np.clip(x0 - 0.3, -1, 1), np.clip(x0 + 0.3, -1, 1)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    ball = LpBall.make(torch.tensor(x0), 0.3, math.inf, domain=(-1.0, 1.0))
    lo, up = layerwise_bounds(net, ball, "crown-adaptive").intermediate.pre[1]
    box_lo = lo_box @ wp.T + hi_box @ wn.T + b
    box_hi = hi_box @ wp.T + lo_box @ wn.T + b
    np.testing.assert_allclose(lo.numpy(), box_lo, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(up.numpy(), box_hi, rtol=1e-12, atol=1e-12)
    for p in (1.0, 2.0):
        ball = LpBall.make(torch.tensor(x0), 0.3, p, domain=(-1.0, 1.0))
        lo, up = layerwise_bounds(net, ball, "crown-adaptive").intermediate.pre[1]
        norms = np.linalg.norm(w, ord=dual(p), axis=1)
        mid = x0 @ w.T + b
        np.testing.assert_allclose(lo.numpy(), np.maximum(mid - 0.3 * norms, box_lo), rtol=1e-12)
        np.testing.assert_allclose(up.numpy(), np.minimum(mid + 0.3 * norms, box_hi), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# (d) a one-hidden-neuron network bounded by hand
# ------------------------------------------------------------------------------------------
def one_neuron_net(bias: float) -> Network:
    """x in R^2 -> z = 2 x_1 - x_2 + bias -> h = relu(z) -> (h, -2 h + 1)."""
    return Network(
        layers=(
            Dense(torch.tensor([[2.0, -1.0]], dtype=F64), torch.tensor([bias], dtype=F64)),
            Activation("relu"),
            Dense(torch.tensor([[1.0], [-2.0]], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)),
        ),
        input_shape=(2,),
    )


def test_hand_derived_one_neuron_linf() -> None:
    """Linf, centre 0, eps 1: z in 0.5 +/- 3 = [-2.5, 3.5]; chord slope d = 3.5/6 = 7/12,
    intercept 2.5 * 3.5 / 6 = 35/24; true ranges h in [0, 3.5], -2h + 1 in [-6, 1].

    * IBP: [0, 3.5] and [-6, 1] (exact here).
    * CROWN-adaptive (|u| > |l| -> lower slope 1): h >= z >= -2.5; h <= chord <= 3.5;
      -2h + 1 <= 1 - 2 z <= 1 + 5 = 6; >= 1 - 2 * 3.5 = -6.
    * Fast-Lin (lower line 7/12 z): h >= 7/12 * (-2.5) = -35/24;
      -2h + 1 <= 1 + 2 * 35/24 = 47/12.
    """
    ball = LpBall.make(torch.zeros(1, 2, dtype=F64), 1.0, math.inf)
    net = one_neuron_net(0.5)
    expect = {
        "ibp": ([0.0, -6.0], [3.5, 1.0]),
        "crown-adaptive": ([-2.5, -6.0], [3.5, 6.0]),
        "crown-general": ([-2.5, -6.0], [3.5, 6.0]),
        "crown-interval": ([-2.5, -6.0], [3.5, 6.0]),
        "fastlin": ([-35 / 24, -6.0], [3.5, 47 / 12]),
        "fastlin-interval": ([-35 / 24, -6.0], [3.5, 47 / 12]),
    }
    for method, (lo, up) in expect.items():
        b = layerwise_bounds(net, ball, method)
        np.testing.assert_allclose(b.lower[0].numpy(), lo, rtol=1e-14, atol=1e-14, err_msg=method)
        np.testing.assert_allclose(b.upper[0].numpy(), up, rtol=1e-14, atol=1e-14, err_msg=method)


def test_hand_derived_one_neuron_slope_choices() -> None:
    """bias -0.5: z in [-3.5, 2.5], |l| > |u| -> CROWN lower slope 0: h >= 0 (exact), and
    -2h + 1 <= 1; Fast-Lin: h >= (2.5/6)(-3.5) = -35/24. bias 0: z in [-3, 3], a tie:
    crown-adaptive takes slope 1 (h >= -3), crown-general slope 0 (h >= 0)."""
    ball = LpBall.make(torch.zeros(1, 2, dtype=F64), 1.0, math.inf)
    b = layerwise_bounds(one_neuron_net(-0.5), ball, "crown-adaptive")
    np.testing.assert_allclose(b.lower[0].numpy(), [0.0, -4.0], atol=1e-14)
    np.testing.assert_allclose(b.upper[0].numpy(), [2.5, 1.0], atol=1e-14)
    b = layerwise_bounds(one_neuron_net(-0.5), ball, "fastlin")
    np.testing.assert_allclose(b.lower[0].numpy(), [-35 / 24, -4.0], atol=1e-14)
    np.testing.assert_allclose(b.upper[0].numpy(), [2.5, 1 + 35 / 12], atol=1e-14)
    tie = one_neuron_net(0.0)
    assert float(layerwise_bounds(tie, ball, "crown-adaptive").lower[0, 0]) == pytest.approx(-3.0)
    assert float(layerwise_bounds(tie, ball, "crown-general").lower[0, 0]) == pytest.approx(0.0)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_hand_derived_one_neuron_l1_l2(p: float) -> None:
    """z in 0.5 +/- eps ||(2, -1)||_q: L2 -> 0.5 +/- sqrt(5), L1 -> 0.5 +/- 2."""
    r = math.sqrt(5.0) if p == 2.0 else 2.0
    l, u = 0.5 - r, 0.5 + r
    d = u / (u - l)
    ball = LpBall.make(torch.zeros(1, 2, dtype=F64), 1.0, p)
    net = one_neuron_net(0.5)
    b = layerwise_bounds(net, ball, "crown-adaptive")
    np.testing.assert_allclose(b.lower[0].numpy(), [l, 1 - 2 * u], rtol=1e-13)
    np.testing.assert_allclose(b.upper[0].numpy(), [u, 1 - 2 * l], rtol=1e-13)
    b = layerwise_bounds(net, ball, "fastlin")
    np.testing.assert_allclose(b.lower[0].numpy(), [d * l, 1 - 2 * u], rtol=1e-13)
    np.testing.assert_allclose(b.upper[0].numpy(), [u, 1 - 2 * d * l], rtol=1e-13)


# ------------------------------------------------------------------------------------------
# (e) margins through the backward pass vs subtracting logit bounds
# ------------------------------------------------------------------------------------------
def _separate(lower, upper, labels, others):
    lo = lower.gather(1, labels[:, None]) - upper.gather(1, others)
    up = upper.gather(1, labels[:, None]) - lower.gather(1, others)
    return lo, up


@pytest.mark.parametrize("act", ALL_ACTIVATIONS)
def test_margin_spec_tighter_than_subtracting_logits(act: str) -> None:
    """One hidden layer (any method) and Fast-Lin / IBP at any depth: a theorem (the
    relaxation is fixed and, per neuron, choosing the line for the summed coefficient beats
    the two separate choices; Fast-Lin's parallel lines make the pass an exact minimum over
    the relaxed set, hence superadditive in the spec). CROWN-adaptive/general at depth >= 2 is
    not a per-case theorem (see the report): checked on average and in >= 90% of cases."""
    rng = np.random.default_rng(5)
    crown_gain: dict[str, list[float]] = {}
    for seed in range(24 if act in PIECEWISE_LINEAR else 12):
        depth = 1 if seed % 2 == 0 else 2 + seed % 3 // 2
        classes = 4
        sizes = [3] + [8] * depth + [classes]
        net = random_network(act, sizes, seed=seed, weight_scale=1.5)
        x0 = torch.tensor(rng.normal(size=(3, 3)))
        ball = LpBall.make(x0, float(rng.uniform(0.05, 0.6)), NORMS[seed % 3])
        labels = torch.tensor(rng.integers(0, classes, 3))
        targets = (labels + 1 + torch.tensor(rng.integers(0, classes - 1, 3))) % classes
        others = torch.stack(
            [torch.tensor([k for k in range(classes) if k != int(y)]) for y in labels]
        )
        for method in methods_for(act):
            plain = layerwise_bounds(net, ball, method)
            allm = layerwise_bounds(net, ball, method, C=all_margins_spec(labels, classes, F64))
            one = layerwise_bounds(net, ball, method, C=margin_spec(labels, targets, classes, F64))
            sep_lo, sep_up = _separate(plain.lower, plain.upper, labels, others)
            t_lo, t_up = _separate(plain.lower, plain.upper, labels, targets[:, None])
            gain = min(
                float((allm.lower - sep_lo).min()),
                float((sep_up - allm.upper).min()),
                float((one.lower - t_lo).min()),
                float((t_up - one.upper).min()),
            )
            theorem = depth == 1 or method in ("ibp", "fastlin", "fastlin-interval")
            if theorem:
                assert gain >= -1e-10, (method, seed, gain)
            else:
                crown_gain.setdefault(method, []).append(gain)
            # and the margin rows are what all_margins_spec says: label minus other, in order
            np.testing.assert_allclose(
                layerwise_bounds(
                    net, ball, method, C=margin_spec(labels, others[:, 1], classes, F64)
                )
                .lower[:, 0]
                .numpy(),
                allm.lower[:, 1].numpy(),
                rtol=1e-12,
                atol=1e-12,
            )
    for method, gains in crown_gain.items():
        g = np.array(gains)
        assert (g >= -1e-10).mean() >= 0.9, (method, g)


# ------------------------------------------------------------------------------------------
# (f) an independent numpy transcription of the reference's layer loop (spec §3-5)
# ------------------------------------------------------------------------------------------
def ref_interval_bound(a: np.ndarray, const: np.ndarray, x0, eps, p):
    """Spec §3: box arithmetic for p = inf, ``A x0 + const +/- eps ||A_j||_q`` otherwise.
    Returns (UB, LB)."""
    if p == math.inf:
        ub_in, lb_in = x0 + eps, x0 - eps
        ap, an = np.where(a > 0, a, 0.0), np.where(a > 0, 0.0, a)
        return ap @ ub_in + an @ lb_in + const, ap @ lb_in + an @ ub_in + const
    r = eps * np.linalg.norm(a, ord=dual(p), axis=1)
    return a @ x0 + const + r, a @ x0 + const - r


def ref_backward(ws, bs, ubs, lbs, x0, eps, p, method):
    """Spec §5 (``fastlin_bound`` / ``crown_adaptive_bound``): bound the rows of ``ws[-1]``;
    ``ubs/lbs[i]`` are the bounds of the input of ``ws[i]``'s preceding ReLU (i >= 1), one full
    backward pass to the input, row by row."""
    m = len(ws) - 1
    a_u, a_l = ws[m].copy(), ws[m].copy()
    c_u, c_l = bs[m].copy(), bs[m].copy()
    ub_acc, lb_acc = np.zeros(len(c_u)), np.zeros(len(c_l))
    for i in range(m, 0, -1):
        u, l = ubs[i], lbs[i]
        unsure = (l <= 0) & (u > 0)  # states: u <= 0 -> -1, l > 0 -> +1, else 0
        active = l > 0
        d = np.where(unsure, u / np.where(unsure, u - l, 1.0), active.astype(float))
        for j in range(a_u.shape[0]):
            du, dl = d.copy(), d.copy()
            lu, ll = np.zeros_like(u), np.zeros_like(l)
            pos_u, neg_u = unsure & (a_u[j] > 0), unsure & (a_u[j] < 0)
            pos_l, neg_l = unsure & (a_l[j] > 0), unsure & (a_l[j] < 0)
            lu[pos_u] = l[pos_u]  # upper line for positive entries: intercept -d l
            ll[neg_l] = l[neg_l]
            if method == "crown-adaptive":
                zero_u = np.abs(l) > np.abs(u)
                du[neg_u & zero_u] = 0.0
                du[neg_u & ~zero_u] = 1.0
                dl[pos_l & zero_u] = 0.0
                dl[pos_l & ~zero_u] = 1.0
            a_u[j] = a_u[j] * du
            a_l[j] = a_l[j] * dl
            ub_acc[j] -= a_u[j] @ lu
            lb_acc[j] -= a_l[j] @ ll
        c_u = c_u + a_u @ bs[i - 1]
        c_l = c_l + a_l @ bs[i - 1]
        a_u = a_u @ ws[i - 1]
        a_l = a_l @ ws[i - 1]
    ub_first, _ = ref_interval_bound(a_u, c_u, x0, eps, p)
    _, lb_first = ref_interval_bound(a_l, c_l, x0, eps, p)
    return ub_acc + ub_first, lb_acc + lb_first


def ref_compute_bounds(params, x0, eps, p, method, spec):
    """Spec §4: layer 0 by the dual-norm/box formula, each later layer by a full backward pass
    over ``weights[:num+1]`` (no intersection), the last layer replaced by ``spec @ W``."""
    ws = [w for w, _ in params]
    bs = [b for _, b in params]
    ws[-1], bs[-1] = spec @ ws[-1], spec @ bs[-1]
    ub, lb = ref_interval_bound(ws[0], bs[0], x0, eps, p)
    ubs, lbs = [x0 + eps, ub], [x0 - eps, lb]
    pre = [(lb, ub)]
    for num in range(1, len(ws) - 1):
        ub, lb = ref_backward(ws[: num + 1], bs[: num + 1], ubs, lbs, x0, eps, p, method)
        ubs.append(ub)
        lbs.append(lb)
        pre.append((lb, ub))
    ub, lb = ref_backward(ws, bs, ubs, lbs, x0, eps, p, method)
    return lb, ub, pre


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("method", ["fastlin", "crown-adaptive"])
def test_reference_mode_matches_numpy_transcription(p: float, method: str) -> None:
    rng = np.random.default_rng(11)
    for seed in range(6):
        depth = 2 + seed % 2
        sizes = [int(rng.integers(3, 8))] + [int(rng.integers(4, 12)) for _ in range(depth)] + [4]
        net = random_network("relu", sizes, seed=seed, weight_scale=1.5)
        params = dense_params(net)
        x0 = rng.normal(size=(2, sizes[0]))
        eps = float(rng.uniform(0.05, 0.5))
        spec = rng.normal(size=(3, 4))
        ball = LpBall.make(torch.tensor(x0), eps, p)
        got = layerwise_bounds(net, ball, method, C=torch.tensor(spec), reference=True)
        pres = list(got.intermediate.pre.values())
        for r in range(2):
            lb, ub, pre = ref_compute_bounds(params, x0[r], eps, p, method, spec)
            np.testing.assert_allclose(got.lower[r].numpy(), lb, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(got.upper[r].numpy(), ub, rtol=1e-10, atol=1e-10)
            assert len(pres) == len(pre)
            for (glo, gup), (elo, eup) in zip(pres, pre, strict=True):
                np.testing.assert_allclose(glo[r].numpy(), elo, rtol=1e-10, atol=1e-10)
                np.testing.assert_allclose(gup[r].numpy(), eup, rtol=1e-10, atol=1e-10)
