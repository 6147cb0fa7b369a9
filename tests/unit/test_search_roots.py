"""The search's root bisections (numpy arrays, or Python floats for a few rows) are bit for
bit the torch float64 bisections they replaced, transcribed here (``np.errstate`` as the
search runs them: the fits divide by zero where a point is missing)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnbound.tasks.search import _SCALAR_ROWS, _cubic_root, _quadratic_root_through


def torch_cubic_root(m0, g0, p, mp, f, mf):
    yp, yf = m0 - g0 * p - mp, m0 - g0 * f - mf
    det = p * p * f * f * (f - p)
    two = det > 0
    safe = torch.where(two, det, 1.0)
    c = torch.where(two, (yp * f**3 - yf * p**3) / safe, yf / (f * f))
    d = torch.where(two, (yf * p * p - yp * f * f) / safe, 0.0)
    lo, hi = p.clone(), f.clone()
    for _ in range(60):
        mid = (lo + hi) / 2
        above = m0 - mid * (g0 + mid * (c + mid * d)) > 0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def torch_quadratic_root_through(p, mp, f, mf, z, mz):
    d1 = (mf - mp) / (f - p)
    d2 = ((mz - mf) / (z - f) - d1) / (z - p)
    d2 = torch.where(torch.isfinite(d2), d2, 0.0)
    lo, hi = p.clone(), f.clone()
    for _ in range(60):
        mid = (lo + hi) / 2
        above = mp + (mid - p) * (d1 + d2 * (mid - f)) > 0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


@settings(max_examples=300, deadline=None)
@given(
    rows=st.sampled_from([1, 3, _SCALAR_ROWS, _SCALAR_ROWS + 1, 20]),
    seed=st.integers(0, 2**31 - 1),
    centre=st.booleans(),
    unbounded=st.booleans(),
)
@np.errstate(divide="ignore", invalid="ignore", over="ignore")
def test_roots_are_the_torch_roots(rows: int, seed: int, centre: bool, unbounded: bool) -> None:
    g = torch.Generator().manual_seed(seed)

    def rand(scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        return torch.rand(rows, generator=g, dtype=torch.float64) * scale

    scale = 10 ** (rand(8.0) - 5)
    p = torch.zeros(rows, dtype=torch.float64) if centre else rand(scale)
    f = p + rand(scale)
    if unbounded:
        f[0] = torch.inf
    m0, g0, mp, mf = rand(5.0), rand(100.0), rand(), -rand()
    z, mz = p - rand(scale), torch.randn(rows, generator=g, dtype=torch.float64)
    cubic = _cubic_root(*(t.numpy() for t in (m0, g0, p, mp, f, mf)))
    assert same(torch.from_numpy(cubic), torch_cubic_root(m0, g0, p, mp, f, mf))
    through = _quadratic_root_through(*(t.numpy() for t in (p, mp, f, mf, z, mz)))
    assert same(torch.from_numpy(through), torch_quadratic_root_through(p, mp, f, mf, z, mz))
