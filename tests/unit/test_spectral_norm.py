"""``spectral_norm_upper``: an upper bound of the largest singular value that is at most a
hair above it (the spectral bound and the operator-norm baseline use it for p = 2)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnbound.bounds.spectral import induced_norm, spectral_norm_upper


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    rank_one=st.booleans(),
)
def test_bounds_the_largest_singular_value_tightly(
    rows: int, cols: int, seed: int, dtype: torch.dtype, rank_one: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    if rank_one:  # all the mass in one singular value: the margin is largest relative to it
        m = torch.outer(m[:, 0], torch.randn(cols, generator=gen, dtype=torch.float64))
    m = m.to(dtype)
    exact = float(torch.linalg.matrix_norm(m.double(), ord=2))
    got = spectral_norm_upper(m)
    assert got.dtype == dtype and got.shape == ()
    assert float(got) >= exact
    assert float(got) <= exact * (1 + 1e-6) + 1e-300
    # and no direction is stretched by more: the top right singular vector and random ones
    x = torch.cat([torch.linalg.svd(m.double())[2][:1], torch.randn(8, cols, generator=gen,
                   dtype=torch.float64)])  # fmt: skip
    stretch = torch.linalg.vector_norm(x @ m.double().T, dim=1) / torch.linalg.vector_norm(x, dim=1)
    assert bool((stretch <= float(got)).all())


def test_zero_and_large_matrices() -> None:
    assert float(spectral_norm_upper(torch.zeros(3, 5))) == 0.0
    m = torch.full((2, 2), 1e150, dtype=torch.float64)
    assert float(spectral_norm_upper(m)) >= 2e150
    assert 1.0 <= float(induced_norm(torch.eye(4), 2.0)) <= 1.0 + 1e-6
