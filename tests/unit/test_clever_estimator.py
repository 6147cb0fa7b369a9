"""The CLEVER estimator on models whose answer is known: linear models (exact minimal
adversarial distance), a one-unit tanh net (known maximal gradient norm), quadratic models
(known Hessian, order 2); ReLU vs smooth nets; reproducibility; bad input."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnbound
from helpers import random_network
from nnbound.clever import Clever, CleverResult, clever, second_order_bound
from nnbound.clever.targets import parse_target_kinds, select_jobs
from nnbound.errors import InputError, UnsupportedError

DUAL = {"1": math.inf, "2": 2.0, "inf": 1.0}


def linear_model(seed: int = 0, n: int = 6, k: int = 4) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n, k).double()


def exact_linear_scores(m: nn.Linear, x: torch.Tensor) -> tuple[int, dict[int, dict[str, float]]]:
    """Minimal Lp distance to the decision boundary f_c = f_j of an affine model:
    ``(f_c - f_j) / ||w_c - w_j||_q``."""
    w, b = m.weight.detach(), m.bias.detach()
    out = w @ x + b
    c = int(out.argmax())
    res = {}
    for j in range(w.shape[0]):
        if j != c:
            d = w[c] - w[j]
            res[j] = {
                k: float((out[c] - out[j]) / torch.linalg.vector_norm(d, q))
                for k, q in DUAL.items()
            }
    return c, res


def test_linear_model_gives_the_exact_minimal_adversarial_distance() -> None:
    m = linear_model()
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c, exact = exact_linear_scores(m, x)
    res = clever(m, x, nsamp=16, niters=8, input_range=None)
    assert isinstance(res, CleverResult) and res.label == c
    for j, scores in exact.items():
        t = res.target(j)
        for key, v in scores.items():
            assert math.isclose(t.scores[key], v, rel_tol=1e-9)
            # constant gradient: identical maxima, the fit falls back to the maximum
            assert t.fits[key].fallback
    for key in DUAL:
        best = min(exact, key=lambda j, key=key: exact[j][key])
        assert math.isclose(res.scores[key], exact[best][key], rel_tol=1e-9)
        assert res.argmin[key] == best


def test_linear_network_ir_and_targeted_kinds() -> None:
    net = random_network("relu", [5, 3], seed=2)  # a single Dense layer: affine
    m = nnbound.to_torch(net)
    x = torch.zeros(5, dtype=torch.float64)
    logits = m(x[None])[0]
    order = logits.argsort()
    _, exact = exact_linear_scores(m[0], x)
    res = clever(net, x, targets="least", nsamp=8, niters=4, input_range=None)
    assert res.targets == (int(order[0]),)
    assert math.isclose(res.scores["2"], exact[int(order[0])]["2"], rel_tol=1e-9)
    res = clever(net, x, targets="top2", nsamp=8, niters=4, input_range=None)
    assert res.targets == (int(order[-2]),)


class OneTanhUnit(nn.Module):
    """logits = (v * tanh(w.x + b), 0): ||grad g||_q = |v| sech^2(w.x + b) ||w||_q, whose
    maximum over a ball reaching the hyperplane w.x + b = 0 is |v| ||w||_q."""

    def __init__(self, n: int = 4, b: float = 0.3, v: float = 2.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
        self.b, self.v = b, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.v * torch.tanh(x @ self.w + self.b)
        return torch.stack((h, torch.zeros_like(h)), 1)


def test_smooth_one_unit_net_converges_to_the_known_lipschitz_constant() -> None:
    m = OneTanhUnit()
    x = torch.zeros(4, dtype=torch.float64)
    g0 = 2.0 * math.tanh(0.3)
    errors = []
    for nsamp, niters in ((8, 30), (64, 60)):
        res = clever(
            m, x, nsamp=nsamp, niters=niters, input_range=None, sampling="ball", radius=1.0
        )
        t = res.target(1)
        for key, q in DUAL.items():
            true_lip = 2.0 * float(torch.linalg.vector_norm(m.w.detach(), q))
            fit = t.fits[key]
            assert fit.max_sample <= true_lip * (1 + 1e-12)
            assert math.isclose(t.scores[key], g0 / fit.lip, rel_tol=1e-12)
            errors.append(abs(fit.lip - true_lip) / true_lip)
    # more samples: the estimate closes in on the true constant (within 1%)
    assert max(errors[3:]) < 0.01
    assert max(errors[3:]) <= max(errors[:3])


def test_relu_net_gives_tied_maxima_and_the_fallback() -> None:
    # 2 inputs, 3 ReLU units: at most 8 linear regions, so the gradient takes at most 8
    # values; a batch of 64 samples in the big ball nearly always hits the steepest region.
    net = random_network("relu", [2, 3, 3], seed=0)
    x = torch.zeros(2, dtype=torch.float64)
    res = clever(net, x, nsamp=64, niters=30, input_range=None, targets="top2")
    t = res.per_target[0]
    for key in DUAL:
        assert t.fits[key].fallback and t.fits[key].lip == t.fits[key].max_sample
        maxima = res.samples.maxima[0, list(DUAL).index(key)]
        assert len(np.unique(maxima)) <= 3


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_smooth_nets_exercise_the_extreme_value_fit(activation: str) -> None:
    net = random_network(activation, [8, 16, 4], seed=3)
    x = torch.full((8,), 0.1, dtype=torch.float64)
    res = clever(net, x, nsamp=64, niters=60, input_range=(-1.0, 1.0), targets="top2")
    fits = res.per_target[0].fits
    assert sum(not f.fallback for f in fits.values()) >= 2
    for f in fits.values():
        if not f.fallback:
            assert f.p_value >= 1e-3 and f.shape > 0 and f.scale > 0
            assert f.lip >= f.max_sample * (1 - 1e-6)


def test_seed_makes_runs_reproducible_and_targets_independent() -> None:
    net = random_network("tanh", [6, 10, 4], seed=4)
    x = torch.zeros(6, dtype=torch.float64)
    est = Clever(16, 6, input_range=None, method="maxsamp")
    a = est(net, x)
    b = est(net, x)
    np.testing.assert_array_equal(a.samples.maxima, b.samples.maxima)
    c = est.set_params(seed=7)(net, x)
    assert not np.array_equal(a.samples.maxima, c.samples.maxima)
    # a target's stream depends on (seed, target) only: alone or among all, same maxima
    j = a.targets[1]
    alone = Clever(16, 6, input_range=None, method="maxsamp")(net, x, targets=j)
    np.testing.assert_allclose(alone.samples.maxima[0], a.samples.maxima[1], rtol=1e-12)


def test_order_two_on_quadratic_models_matches_the_closed_form() -> None:
    class Quadratic(nn.Module):
        def __init__(self, diag: list[float]) -> None:
            super().__init__()
            self.a = torch.tensor(diag, dtype=torch.float64)
            self.b = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = 0.5 * (x * x * self.a).sum(1) + x @ self.b + 2.0
            return torch.stack((g, torch.zeros_like(g)), 1)

    x = torch.zeros(3, dtype=torch.float64)
    grad_norm = math.sqrt(0.5**2 + 0.2**2 + 0.1**2)
    # eigenvalues (-3, 1, .5): the largest in magnitude is negative, kept: M = 3.
    # eigenvalues (3, -1, .5): the largest is positive, replaced by the most negative: M = 1.
    for diag, m_expected in (([-3.0, 1.0, 0.5], 3.0), ([3.0, -1.0, 0.5], 1.0)):
        res = clever(
            Quadratic(diag), x, order=2, nsamp=8, niters=4, input_range=None, power_tol=1e-9
        )
        fit = res.per_target[0].fits["2"]
        assert math.isclose(fit.lip, m_expected, rel_tol=1e-4)
        expected = (-grad_norm + math.sqrt(grad_norm**2 + 2 * 2.0 * m_expected)) / m_expected
        assert math.isclose(res.scores["2"], expected, rel_tol=1e-4)
        assert math.isnan(res.scores["1"]) and math.isnan(res.scores["inf"])
    assert math.isclose(second_order_bound(2.0, 3.0, 0.0), 2.0 / 3.0)


def test_order_two_on_a_tanh_net_and_refused_for_relu() -> None:
    net = random_network("tanh", [5, 8, 3], seed=5)
    x = torch.zeros(5, dtype=torch.float64)
    res = clever(
        net, x, order=2, nsamp=8, niters=5, targets="top2", input_range=None, method="maxsamp"
    )
    first = clever(net, x, nsamp=8, niters=5, targets="top2", input_range=None, method="maxsamp")
    s2 = res.scores["2"]
    assert 0 < s2 < math.inf and res.per_target[0].fits["2"].lip > 0
    # the second-order bound is at most the linear bound g / ||grad g(x0)||
    assert s2 <= res.per_target[0].g_x0 / res.per_target[0].grad_norm_x0["2"] + 1e-12
    assert first.scores["2"] > 0
    with pytest.raises(UnsupportedError):
        clever(random_network("relu", [5, 8, 3], seed=5), x, order=2, nsamp=4, niters=2)


def test_transforms_evaluate_the_net_on_transformed_inputs() -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return self.lin(x.flatten(1))

    m = Spy()
    x = torch.zeros(1, 4, 4)
    base = clever(m, x, nsamp=8, niters=3, input_range=(0.0, 1.0), method="maxsamp")
    seen.clear()
    res = clever(
        m, x, nsamp=8, niters=3, input_range=(0.0, 1.0), transform="reduce", method="maxsamp"
    )
    sampled = torch.cat(seen[2:])  # after the clean logits / g(x0) calls
    levels = torch.round(sampled * 255)
    assert torch.all((levels % 32) == 0)
    # BPDA: a linear net's gradient is the same everywhere, so the scores are unchanged
    for key in DUAL:
        assert math.isclose(res.scores[key], base.scores[key], rel_tol=1e-5)


def test_cap_ball_sampling_and_share_samples() -> None:
    net = random_network("tanh", [6, 10, 4], seed=6)
    x = torch.zeros(6, dtype=torch.float64)
    capped = clever(
        net,
        x,
        nsamp=8,
        niters=4,
        radius=0.01,
        cap_at_radius=True,
        input_range=None,
        method="maxsamp",
    )
    assert all(v <= 0.01 + 1e-15 for v in capped.scores.values())
    ball = clever(net, x, nsamp=8, niters=4, sampling="ball", input_range=None, method="maxsamp")
    shared = clever(
        net, x, nsamp=8, niters=4, share_samples=True, input_range=None, method="maxsamp"
    )
    for r in (ball, shared):
        assert np.isfinite(r.samples.maxima).all() and len(r.per_target) == 3


def test_norms_subset_skips_the_other_balls_and_fits() -> None:
    net = random_network("tanh", [6, 10, 4], seed=6)
    x = torch.zeros(6, dtype=torch.float64)
    kw = {"nsamp": 8, "niters": 4, "sampling": "ball", "input_range": None, "targets": "top2"}
    full = clever(net, x, **kw)
    only2 = clever(net, x, norms=[2], **kw)
    assert np.isnan(only2.samples.maxima[:, [0, 2]]).all()
    # the L2 ball's stream does not depend on which other balls are drawn
    np.testing.assert_array_equal(only2.samples.maxima[:, 1], full.samples.maxima[:, 1])
    assert only2.scores["2"] == full.scores["2"]
    assert math.isnan(only2.scores["1"]) and set(only2.per_target[0].fits) == {"2"}
    with pytest.raises(InputError):
        clever(net, x, norms=[], **kw)


def test_sklearn_convention_and_frozen_result() -> None:
    est = Clever(niters=0, sample_norm="bogus")  # stored, not checked
    assert est.get_params()["niters"] == 0 and "niters=0" in repr(est)
    net = random_network("tanh", [3, 4, 2], seed=7)
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(InputError):
        est(net, x)
    est.set_params(niters=2, sample_norm="inf", nsamp=4, method="maxsamp")
    res = est(net, x)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.label = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        res.scores["2"] = 0.0  # type: ignore[index]
    assert not res.samples.maxima.flags.writeable
    with pytest.raises(InputError):
        est.set_params(nsamples=3)
    assert nnbound.clever is clever and nnbound.Clever is Clever


def test_the_callers_model_is_left_alone() -> None:
    m = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 3)).train()
    x = torch.zeros(4)
    r1 = clever(m, x, nsamp=8, niters=2, dtype=torch.float64, method="maxsamp")
    r2 = clever(m, x, nsamp=8, niters=2, dtype=torch.float64, method="maxsamp")
    np.testing.assert_array_equal(r1.samples.maxima, r2.samples.maxima)  # dropout was off
    assert m.training and m[0].weight.dtype == torch.float32
    # with and without a batch axis
    r3 = clever(m, x[None], nsamp=8, niters=2, dtype=torch.float64, method="maxsamp")
    np.testing.assert_array_equal(r1.samples.maxima, r3.samples.maxima)


def test_clever_target_rules() -> None:
    logits = torch.tensor(
        [[0.0, 5.0, 1.0, -2.0, 3.0], [4.0, 0.0, 1.0, 2.0, -1.0], [1.0, 0.0, 6.0, -1.0, 2.0]]
    )
    labels = torch.tensor([1, 3, 2])  # row 1 misclassified
    jobs, skipped = select_jobs(logits, labels, parse_target_kinds("random,least,top2"), seed=0)
    assert skipped == [1]
    assert [(j.row, j.kind) for j in jobs] == [
        (0, "least"),
        (0, "top2"),
        (0, "random"),
        (2, "least"),
        (2, "top2"),
        (2, "random"),
    ]
    assert jobs[0].targets == (3,) and jobs[1].targets == (4,)
    assert jobs[3].targets == (3,) and jobs[4].targets == (4,)
    for j in (jobs[2], jobs[5]):
        assert j.targets[0] not in (jobs[0].targets[0], jobs[1].targets[0], j.label)
    # the skipped row still advanced the random stream: row 2's draw is the reference's
    import random

    rng = random.Random(0)
    draws = []
    for lg in logits:
        o = lg.argsort()
        r = int(lg.argmax())
        while r in (int(o[0]), int(o[-2]), int(lg.argmax())):
            r = rng.randint(0, 4)
        draws.append(r)
    assert jobs[5].targets == (draws[2],)
    unt, _ = select_jobs(logits, labels, parse_target_kinds("untargeted"))
    assert unt[0].targets == (0, 2, 3, 4) and unt[0].target == "untargeted"
    cls, _ = select_jobs(logits, labels, parse_target_kinds("2"))
    assert [j.row for j in cls] == [0]  # row 2's label is 2: no job
    for bad in ("bogus", "untargeted,least", ""):
        with pytest.raises(InputError):
            parse_target_kinds(bad)
    with pytest.raises(InputError):
        select_jobs(logits, labels, (7,))


@pytest.mark.parametrize(
    ("x", "kwargs", "call"),
    [
        (torch.tensor([float("nan"), 0.0, 0.0]), {}, {}),
        (torch.zeros(3), {"sample_norm": 3}, {}),
        (torch.zeros(3), {"niters": 0}, {}),
        (torch.zeros(3), {"nsamp": -1}, {}),
        (torch.zeros(3), {"batch_size": 0}, {}),
        (torch.zeros(3), {"order": 3}, {}),
        (torch.zeros(3), {"transform": "blur"}, {}),
        (torch.zeros(3), {"sampling": "sphere"}, {}),
        (torch.zeros(3), {"radius": -1.0}, {}),
        (torch.zeros(3), {"method": "bayes"}, {}),
        (torch.zeros(3), {}, {"targets": 9}),
        (torch.zeros(3), {}, {"targets": "worst"}),
        (torch.zeros(7), {}, {}),
        (torch.full((3,), 5.0), {"input_range": (-1.0, 1.0)}, {}),
        (torch.zeros(3), {"transform": "jpeg", "input_range": None}, {}),
    ],
)
def test_bad_input_raises_input_error(x: torch.Tensor, kwargs: dict, call: dict) -> None:
    net = random_network("tanh", [3, 4, 3], seed=8)
    with pytest.raises(InputError):
        clever(net.to(dtype=torch.float32), x, **{"nsamp": 4, "niters": 2, **kwargs, **call})


def test_misclassified_label_and_own_class_target_raise() -> None:
    m = linear_model()
    x = torch.zeros(6, dtype=torch.float64)
    c = int(m(x[None]).argmax())
    with pytest.raises(InputError, match="predicts"):
        clever(m, x, label=(c + 1) % 4, nsamp=4, niters=2)
    with pytest.raises(InputError, match="own class"):
        clever(m, x, targets=[c], nsamp=4, niters=2)
    with pytest.raises(InputError):
        clever("not a model", x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown CLEVER setting"):
        clever(m, x, n_samples=3)
