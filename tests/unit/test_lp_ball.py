"""LpBall: validation, sampling (inside, uniform), vertices, projection and concretization."""

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
import helpers  # noqa: F401  (sets torch threads)
from nnbound.errors import InputError
from nnbound.sets import LpBall
from nnbound.sets.norms import lp_norm

F64 = torch.float64
NORMS = (1.0, 2.0, math.inf)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- make(): validation and layout --------------------------------------------------------------
@pytest.mark.parametrize(
    ("center", "eps", "p", "domain"),
    [
        (torch.zeros(2, 3), -0.1, math.inf, None),
        (torch.zeros(2, 3), torch.tensor([0.1, -1e-9]), 2, None),
        (torch.zeros(2, 3), float("nan"), 1, None),
        (torch.zeros(2, 3), float("inf"), 1, None),
        (torch.zeros(2, 3), torch.tensor([[0.1, float("nan")], [0.1, 0.2]]), 1, None),
        (torch.zeros(2, 3), torch.tensor([0.1, 0.2, 0.3]), math.inf, None),  # (B+1,)
        (torch.zeros(2, 3), torch.zeros(3, 2), math.inf, None),  # (B+1, K)
        (torch.zeros(2, 3), torch.zeros(2, 2, 1), math.inf, None),  # 3-D eps
        (torch.zeros(3), 0.1, math.inf, None),  # no batch axis
        (torch.tensor([[0.0, float("nan")]]), 0.1, math.inf, None),
        (torch.tensor([[0.0, float("inf")]]), 0.1, math.inf, None),
        (torch.zeros(2, 3), 0.1, 3, None),  # unknown norms
        (torch.zeros(2, 3), 0.1, 0, None),
        (torch.zeros(2, 3), 0.1, 1.5, None),
        (torch.zeros(2, 3), 0.1, "l3", None),
        (torch.zeros(2, 3), 0.1, "foo", None),
        (torch.zeros(2, 3), 0.1, math.inf, (1.0, 1.0)),  # empty domain
        (torch.zeros(2, 3), 0.1, math.inf, (1.0, -1.0)),
    ],
)
def test_make_rejects_bad_input(center, eps, p, domain) -> None:
    with pytest.raises(InputError):
        LpBall.make(center, eps, p, domain)


def test_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        LpBall.make(torch.zeros(1, 2), -1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("i", math.inf),
        ("inf", math.inf),
        ("Linf", math.inf),
        ("1", 1.0),
        ("l1", 1.0),
        (1, 1.0),
        ("2", 2.0),
        ("L2", 2.0),
        (2.0, 2.0),
        (math.inf, math.inf),
    ],
)
def test_norm_names(name, value) -> None:
    ball = LpBall.make(torch.zeros(1, 2), 0.1, name)
    assert ball.p == value
    assert ball.q == {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[value]


def test_make_layout_scalar_row_and_radius_eps() -> None:
    c = torch.arange(6, dtype=F64).reshape(3, 2)
    ball = LpBall.make(c, 0.25)
    assert ball.batch_shape == (3,) and ball.eps.shape == (3,) and bool((ball.eps == 0.25).all())
    ball = LpBall.make(c, torch.tensor([0.1, 0.2, 0.3], dtype=F64), 2)
    assert ball.batch_shape == (3,) and ball.eps.tolist() == [0.1, 0.2, 0.3]
    eps = torch.tensor([[0.0, 0.1], [0.2, 0.3], [0.4, 0.5]], dtype=F64)
    ball = LpBall.make(c, eps, 1)
    assert ball.batch_shape == (3, 2)
    assert ball.center.shape == (6, 2) and ball.eps.shape == (6,)
    for b, k in itertools.product(range(3), range(2)):  # row b * K + k is (center b, eps[b, k])
        assert torch.equal(ball.center[b * 2 + k], c[b])
        assert ball.eps[b * 2 + k] == eps[b, k]
    # image-shaped inputs keep their shape
    ball = LpBall.make(torch.zeros(2, 1, 3, 3), 0.1)
    assert ball.center.shape == (2, 1, 3, 3) and ball.input_dims == 3


def test_make_integer_center_keeps_eps() -> None:
    """Regression (found by these tests): an integer centre made eps an integer tensor, so
    eps = 0.5 silently became 0 (``torch.as_tensor(eps, dtype=center.dtype)``). Expected: an
    InputError, or a float ball with eps 0.5."""
    try:
        ball = LpBall.make(torch.zeros(1, 2, dtype=torch.long), 0.5)
    except InputError:
        return
    assert float(ball.eps[0]) == 0.5, f"eps became {ball.eps.tolist()}"


# -- sample(): inside and uniform ---------------------------------------------------------------
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("domain", [None, (-1.0, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_samples_are_inside(p: float, domain, dtype) -> None:
    c = (torch.rand(3, 5, generator=gen(1), dtype=F64) - 0.5).to(dtype)
    eps = torch.tensor([[0.0, 0.3], [1.0, 0.05], [2.5, 0.7]], dtype=dtype)
    ball = LpBall.make(c, eps, p, domain)
    x = ball.sample(500, generator=gen(2))
    assert x.shape == (6, 500, 5) and x.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert bool(ball.contains(x, tol=tol).all())
    assert bool(ball.contains(ball.center, tol=0).all())
    # the zero-radius row only contains its centre
    assert torch.equal(x[0], c[0].expand(500, 5))


def test_samples_image_shaped() -> None:
    ball = LpBall.make(torch.zeros(2, 1, 2, 3, dtype=F64), 0.5, 2)
    x = ball.sample(100, generator=gen(0))
    assert x.shape == (2, 100, 1, 2, 3)
    assert bool(ball.contains(x, tol=1e-12).all())


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("d", [2, 3])
def test_sample_radius_distribution_is_uniform(p: float, d: int) -> None:
    """Uniform in a d-dimensional ball of any norm: P(||x - c|| <= r eps) = r^d."""
    n = 20000
    ball = LpBall.make(torch.full((1, d), 0.3, dtype=F64), 2.0, p)
    x = ball.sample(n, generator=gen(3))
    radius = lp_norm(x - ball.center[:, None], p, 1)[0] / 2.0
    for r in (0.3, 0.5, 0.8, 0.95):
        frac = float((radius <= r).double().mean())
        assert frac == pytest.approx(r**d, abs=0.015), (r, frac, r**d)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_sample_moments(d: int) -> None:
    """Known moments of the uniform distribution: Linf coordinates U(-eps, eps) (variance
    eps^2/3); L2 ball E||x||^2 = d/(d+2) eps^2; L1 ball E|x_i| = eps/(d+1). All symmetric."""
    n, eps = 40000, 1.5
    for p in NORMS:
        ball = LpBall.make(torch.zeros(1, d, dtype=F64), eps, p)
        x = ball.sample(n, generator=gen(4))[0]
        assert float(x.mean(0).abs().max()) < 0.05 * eps
        assert float((x > 0).double().mean(0).sub(0.5).abs().max()) < 0.02
        if p == math.inf:
            np.testing.assert_allclose(x.var(0).numpy(), eps**2 / 3, rtol=0.05)
        elif p == 2.0:
            assert float(x.square().sum(1).mean()) == pytest.approx(d / (d + 2) * eps**2, rel=0.03)
        else:
            np.testing.assert_allclose(x.abs().mean(0).numpy(), eps / (d + 1), rtol=0.05)


# -- vertices() ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p", NORMS)
def test_vertices_on_the_sphere(p: float) -> None:
    c = torch.randn(2, 4, generator=gen(5), dtype=F64)
    ball = LpBall.make(c, torch.tensor([0.5, 2.0], dtype=F64), p)
    v = ball.vertices(200, generator=gen(6))
    assert v.shape == (2, 200, 4)
    dist = lp_norm(v - c[:, None], p, 1)
    torch.testing.assert_close(dist, ball.eps[:, None].expand(2, 200), rtol=1e-12, atol=1e-12)
    delta = (v - c[:, None]) / ball.eps.view(2, 1, 1)
    if p == math.inf:
        assert bool((delta.abs() - 1).abs().max() < 1e-12)  # corners: every |delta_i| = eps
    elif p == 1.0:
        nonzero = (delta.abs() > 1e-12).sum(-1)
        assert bool((nonzero == 1).all())  # +/- eps e_i
    # with a domain they are clipped into it and still in the set
    ball = LpBall.make(c.clamp(-0.5, 0.5), 2.0, p, domain=(-1.0, 1.0))
    v = ball.vertices(50, generator=gen(7))
    assert bool(ball.contains(v, tol=1e-12).all())


# -- project() ----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("domain", [None, (-1.0, 1.0)])
def test_project_returns_points_inside(p: float, domain) -> None:
    c = torch.rand(3, 6, generator=gen(8), dtype=F64) - 0.5
    ball = LpBall.make(c, torch.tensor([0.0, 0.2, 1.5], dtype=F64), p, domain)
    far = c[:, None] + 3 * torch.randn(3, 100, 6, generator=gen(9), dtype=F64)
    proj = ball.project(far)
    assert proj.shape == far.shape
    assert bool(ball.contains(proj, tol=1e-12).all())
    # (N, *shape) input too
    one = ball.project(far[:, 0])
    assert one.shape == (3, 6) and bool(ball.contains(one, tol=1e-12).all())
    # points already inside are left alone
    inside = ball.sample(50, generator=gen(10))
    torch.testing.assert_close(ball.project(inside), inside, rtol=0, atol=1e-14)


@pytest.mark.parametrize("p", NORMS)
def test_project_is_the_euclidean_projection(p: float) -> None:
    """No domain: the result is the closest point of the ball (closed forms for Linf / L2; for
    L1 the variational inequality <y - P(y), z - P(y)> <= 0 for every z of the ball)."""
    c = torch.randn(2, 5, generator=gen(11), dtype=F64)
    ball = LpBall.make(c, torch.tensor([0.3, 1.0], dtype=F64), p)
    y = c[:, None] + 2 * torch.randn(2, 60, 5, generator=gen(12), dtype=F64)
    proj = ball.project(y)
    e = ball.eps.view(2, 1, 1)
    delta = y - c[:, None]
    if p == math.inf:
        torch.testing.assert_close(proj, c[:, None] + delta.clamp(-e, e))
    elif p == 2.0:
        n = delta.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(proj, c[:, None] + delta * torch.clamp(e / n, max=1.0))
    else:
        z = torch.cat(
            [ball.sample(300, generator=gen(13)), ball.vertices(40, generator=gen(14))], 1
        )
        vi = torch.einsum("nmd,nkd->nmk", y - proj, z) - ((y - proj) * proj).sum(-1, keepdim=True)
        assert float(vi.max()) <= 1e-10
        # projected points of outside y lie on the sphere
        outside = lp_norm(delta, 1.0, 1) > ball.eps[:, None]
        dist = lp_norm(proj - c[:, None], 1.0, 1)
        torch.testing.assert_close(dist[outside], ball.eps[:, None].expand(2, 60)[outside])


# -- concretize() -------------------------------------------------------------------------------
def brute_force_extremes(a: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vals = np.einsum("nsd,nmd->nsm", a, points)
    return vals.min(-1), vals.max(-1)


@pytest.mark.parametrize("p", NORMS)
def test_concretize_equals_exact_extremes(p: float) -> None:
    d = 5
    c = torch.randn(3, d, generator=gen(15), dtype=F64)
    eps = torch.tensor([0.0, 0.4, 2.0], dtype=F64)
    ball = LpBall.make(c, eps, p)
    a = torch.randn(3, 4, d, generator=gen(16), dtype=F64)
    const = torch.randn(3, 4, generator=gen(17), dtype=F64)
    lo, hi = ball.concretize(a, const)
    assert lo.shape == hi.shape == (3, 4)
    cn, en, an = c.numpy(), eps.numpy(), a.numpy()
    if p == math.inf:  # the max of a linear function over a box is at a corner: all 2^d
        corners = np.array(list(itertools.product((-1.0, 1.0), repeat=d)))
        pts = cn[:, None] + en[:, None, None] * corners[None]
        exp_lo, exp_hi = brute_force_extremes(an, pts)
    elif p == 1.0:  # ... over the L1 ball at one of the 2d vertices +/- eps e_i
        verts = np.concatenate([np.eye(d), -np.eye(d)])
        pts = cn[:, None] + en[:, None, None] * verts[None]
        exp_lo, exp_hi = brute_force_extremes(an, pts)
    else:  # closed form: a.c +/- eps ||a||_2
        mid = np.einsum("nsd,nd->ns", an, cn)
        r = en[:, None] * np.linalg.norm(an, axis=-1)
        exp_lo, exp_hi = mid - r, mid + r
    np.testing.assert_allclose(lo.numpy(), exp_lo + const.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), exp_hi + const.numpy(), rtol=1e-12, atol=1e-12)
    # and no sample of the ball beats them
    x = ball.sample(2000, generator=gen(18))
    vals = torch.einsum("nsd,nmd->nsm", a, x) + const[..., None]
    assert bool((vals >= lo[..., None] - 1e-12).all() and (vals <= hi[..., None] + 1e-12).all())


def test_concretize_image_shaped_and_no_const() -> None:
    c = torch.randn(2, 1, 2, 3, generator=gen(19), dtype=F64)
    ball = LpBall.make(c, 0.5, 2)
    a = torch.randn(2, 3, 1, 2, 3, generator=gen(20), dtype=F64)
    lo, hi = ball.concretize(a)
    flat = a.reshape(2, 3, 6)
    mid = torch.einsum("nsd,nd->ns", flat, c.reshape(2, 6))
    torch.testing.assert_close(lo, mid - 0.5 * flat.norm(dim=-1))
    torch.testing.assert_close(hi, mid + 0.5 * flat.norm(dim=-1))


def _lp_max_l1_box(a: np.ndarray, c: np.ndarray, eps: float, lo: float, hi: float) -> float:
    """max a.x over {||x - c||_1 <= eps} intersected with [lo, hi]^d, by an LP (x, t)."""
    d = len(c)
    a_ub = np.block(
        [[np.eye(d), -np.eye(d)], [-np.eye(d), -np.eye(d)], [np.zeros((1, d)), np.ones((1, d))]]
    )
    b_ub = np.concatenate([c, -c, [eps]])
    res = linprog(
        np.concatenate([-a, np.zeros(d)]),
        A_ub=a_ub,
        b_ub=b_ub,
        bounds=[(lo, hi)] * d + [(0, None)] * d,
        method="highs",
    )
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("p", NORMS)
def test_concretize_with_domain_is_sound_and_exact_for_linf(p: float) -> None:
    d = 4
    c = torch.rand(2, d, generator=gen(21), dtype=F64) * 1.6 - 0.8
    eps = torch.tensor([0.3, 1.2], dtype=F64)
    ball = LpBall.make(c, eps, p, domain=(-1.0, 1.0))
    a = torch.randn(2, 3, d, generator=gen(22), dtype=F64)
    lo, hi = ball.concretize(a)
    x = torch.cat([ball.sample(3000, generator=gen(23)), ball.vertices(500, generator=gen(24))], 1)
    vals = torch.einsum("nsd,nmd->nsm", a, x)
    assert bool((vals >= lo[..., None] - 1e-12).all() and (vals <= hi[..., None] + 1e-12).all())
    # never looser than the plain ball
    plo, phi = LpBall.make(c, eps, p).concretize(a)
    assert bool((lo >= plo - 1e-12).all() and (hi <= phi + 1e-12).all())
    if p == math.inf:  # the clipped box's corners
        box_lo, box_hi = ball.box()
        corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=F64)
        pts = box_lo[:, None] + corners[None] * (box_hi - box_lo)[:, None]
        vals = torch.einsum("nsd,nmd->nsm", a, pts)
        torch.testing.assert_close(hi, vals.max(-1).values, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lo, vals.min(-1).values, rtol=1e-12, atol=1e-12)
    elif p == 1.0:  # sound against the exact LP over the intersection
        for n, s in itertools.product(range(2), range(3)):
            exact = _lp_max_l1_box(a[n, s].numpy(), c[n].numpy(), float(eps[n]), -1.0, 1.0)
            assert float(hi[n, s]) >= exact - 1e-9


def test_box_contains_the_ball() -> None:
    c = torch.randn(2, 3, generator=gen(25), dtype=F64)
    for p in NORMS:
        ball = LpBall.make(c, 0.7, p, domain=(-0.5, 2.0))
        lo, hi = ball.box()
        x = ball.sample(500, generator=gen(26))
        assert bool(((x >= lo[:, None] - 1e-15) & (x <= hi[:, None] + 1e-15)).all())
