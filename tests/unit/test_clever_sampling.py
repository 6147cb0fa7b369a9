"""CLEVER samplers: the distributions are what they claim (K-S tests on radii and directions),
reproducible with a seed, clipped to the box, and scaled to the data range."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (single-threaded torch for small ops)
from nnbound.clever.sampling import (
    Sampler,
    norm_key,
    resolve_radii,
    unit_l1_ball,
    unit_l1_sphere,
    unit_l2_ball,
    unit_linf_ball,
)
from nnbound.errors import InputError

N = 4000
P_MIN = 1e-3  # the seeds are fixed: these p-values are deterministic, far above this


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("normals", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [3, 10, 784])
def test_l2_ball_radius_and_direction_are_uniform(dim: int, normals: torch.dtype) -> None:
    # float32 normals: what the samples of a float32 model are drawn from (faster)
    u = unit_l2_ball(N, dim, generator=gen(dim), dtype=torch.float64, normals=normals).numpy()
    r = np.linalg.norm(u, axis=1)
    assert r.max() <= 1.0
    # Uniform in the ball: P(||u|| <= t) = t^dim, so r^dim ~ U(0, 1).
    assert stats.kstest(r**dim, "uniform").pvalue > P_MIN
    # Uniform direction: a coordinate t of u/||u|| has (t + 1)/2 ~ Beta((d-1)/2, (d-1)/2).
    t = u[:, 0] / r
    a = (dim - 1) / 2
    assert stats.kstest((t + 1) / 2, stats.beta(a, a).cdf).pvalue > P_MIN
    # ... and directions are not concentrated on the axes: two coordinates are uncorrelated.
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.06


@pytest.mark.parametrize("dim", [3, 50])
def test_l1_ball_is_uniform(dim: int) -> None:
    u = unit_l1_ball(N, dim, generator=gen(dim), dtype=torch.float64).numpy()
    r = np.abs(u).sum(1)
    assert r.max() <= 1.0
    assert stats.kstest(r**dim, "uniform").pvalue > P_MIN
    # |u| / ||u||_1 is Dirichlet(1, ..., 1): one coordinate ~ Beta(1, dim - 1).
    assert stats.kstest(np.abs(u[:, 0]) / r, stats.beta(1, dim - 1).cdf).pvalue > P_MIN
    signs = (u > 0).sum()
    assert stats.binomtest(int(signs), u.size, 0.5).pvalue > P_MIN


def test_l1_sphere_is_the_simplex_surface_with_signs() -> None:
    dim = 20
    u = unit_l1_sphere(N, dim, generator=gen(1), dtype=torch.float64).numpy()
    np.testing.assert_allclose(np.abs(u).sum(1), 1.0, rtol=1e-12)
    assert stats.kstest(np.abs(u[:, 3]), stats.beta(1, dim - 1).cdf).pvalue > P_MIN
    assert stats.binomtest(int((u > 0).sum()), u.size, 0.5).pvalue > P_MIN


def test_linf_ball_coordinates_are_uniform() -> None:
    u = unit_linf_ball(N, 7, generator=gen(2), dtype=torch.float64).numpy()
    assert np.abs(u).max() <= 1.0
    assert stats.kstest(u.reshape(-1), stats.uniform(-1, 2).cdf).pvalue > P_MIN


def _radial_mixture_cdf(r: np.ndarray, a: float, n: int) -> np.ndarray:
    """CDF of S * V with S ~ U[0, a] and V ~ Beta(n, 1) (the reference's L2 mode)."""
    v0 = np.clip(r / a, 0.0, 1.0)
    return v0**n + n / (n - 1) * (v0 - v0**n)


def test_reference_l2_mode_is_the_radius_uniform_mixture() -> None:
    dim = 6
    x0 = torch.zeros(dim, dtype=torch.float64)
    s = Sampler("reference", "2", 3.0, box=None)
    d = s.draw(x0, N, generator=gen(3)).numpy()
    r = np.linalg.norm(d, axis=1)
    assert r.max() <= 3.0
    assert stats.kstest(r, lambda v: _radial_mixture_cdf(v, 3.0, dim)).pvalue > P_MIN
    # not uniform in the radius-3 ball (which has r^dim/3^dim): the mixture has far more
    # small radii
    assert stats.kstest((r / 3.0) ** dim, "uniform").pvalue < 1e-6


def test_reference_l1_and_linf_modes() -> None:
    x0 = torch.zeros(30, dtype=torch.float64)
    d1 = Sampler("reference", "1", 30.0).draw(x0, N, generator=gen(4)).numpy()
    assert stats.kstest(np.abs(d1).sum(1), stats.uniform(0, 30).cdf).pvalue > P_MIN
    di = Sampler("reference", "inf", 0.1).draw(x0, N, generator=gen(5)).numpy()
    assert np.abs(di).max() <= 0.1
    assert stats.kstest(di.reshape(-1), stats.uniform(-0.1, 0.2).cdf).pvalue > P_MIN


@pytest.mark.parametrize("key", ["1", "2", "inf"])
def test_ball_mode_is_uniform_in_the_radius_r_ball(key: str) -> None:
    dim, radius = 5, 0.7
    x0 = torch.full((dim,), 0.25, dtype=torch.float64)
    d = Sampler("ball", key, radius).draw(x0, N, generator=gen(6)).numpy() - 0.25
    p = {"1": 1, "2": 2, "inf": np.inf}[key]
    r = np.linalg.norm(d, ord=p, axis=1) / radius
    assert r.max() <= 1.0 + 1e-12
    assert stats.kstest(r**dim, "uniform").pvalue > P_MIN


def test_samples_are_clipped_to_the_box_and_keep_shape_and_dtype() -> None:
    x0 = torch.full((1, 4, 4), 0.45)
    x = Sampler("reference", "2", 3.0, box=(-0.5, 0.5)).draw(x0, 64, generator=gen(7))
    assert x.shape == (64, 1, 4, 4) and x.dtype == torch.float32
    assert float(x.min()) >= -0.5 and float(x.max()) <= 0.5
    # many samples land on the faces (the ball is much larger than the box)
    assert float((x == 0.5).float().mean()) > 0.2


def test_same_seed_same_samples_other_seed_other_samples() -> None:
    x0 = torch.zeros(12)
    s = Sampler("reference", "1", 30.0)
    a = s.draw(x0, 10, generator=gen(11))
    b = s.draw(x0, 10, generator=gen(11))
    c = s.draw(x0, 10, generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_radii_scale_with_the_data_width() -> None:
    assert resolve_radii(None, 1.0) == {"2": 3.0, "1": 30.0, "inf": 0.1}
    r = resolve_radii(None, 255.0)
    assert math.isclose(r["2"], 765.0) and math.isclose(r["inf"], 25.5)
    assert resolve_radii(0.5, 1.0) == {"2": 0.5, "1": 0.5, "inf": 0.5}
    assert resolve_radii({"i": 0.2}, 2.0) == {"2": 6.0, "1": 60.0, "inf": 0.2}


def test_bad_settings_raise_input_error() -> None:
    with pytest.raises(InputError):
        norm_key(3)
    with pytest.raises(InputError):
        Sampler("sphere", "2", 1.0)
    with pytest.raises(InputError):
        Sampler("ball", "2", 0.0)
    with pytest.raises(InputError):
        resolve_radii(-1.0, 1.0)
    with pytest.raises(InputError):
        resolve_radii({"2": "x"}, 1.0)
