"""``batched_matvec`` is ``torch.bmm`` with a vector, up to rounding, on every path it takes,
and the call sites that use it give ``bmm``'s bounds."""

from __future__ import annotations

import math

import pytest
import torch

from nnbound.jacobian.level_table import _times_columns
from nnbound.matvec import PER_ROW_CALL_ELEMENTS, PRODUCT_CHUNK_ELEMENTS, batched_matvec
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall


def _bmm(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a, v.unsqueeze(-1)).squeeze(-1)


# (N, S, k): one row; small rows in one product; small rows in several chunks; rows large
# enough for a BLAS call each; empty batches and forms
SHAPES = [
    (1, 7, 13),
    (5, 9, 31),
    (PRODUCT_CHUNK_ELEMENTS // (4 * 50) + 3, 4, 50),
    (3, 2, PER_ROW_CALL_ELEMENTS // 2),
    (0, 3, 4),
    (4, 0, 6),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_bmm_up_to_rounding(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=gen).to(dtype)
    v = torch.randn(shape[0], shape[2], generator=gen).to(dtype)
    got = batched_matvec(a, v)
    assert got.shape == shape[:2] and got.dtype == dtype
    # a sum of k products in any order is within k ulps of its terms' magnitudes
    tol = shape[2] * torch.finfo(dtype).eps * (a.abs() * v.abs().unsqueeze(1)).sum(-1)
    assert ((got - _bmm(a, v)).abs() <= tol).all()


def test_non_contiguous_inputs() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 40, 30, generator=gen).transpose(1, 2)  # (6, 30, 40), strided
    v = torch.randn(40, 6, generator=gen).T
    assert torch.allclose(batched_matvec(a, v), _bmm(a.contiguous(), v.contiguous()), atol=1e-5)


def test_inf_and_nan_propagate_as_in_bmm() -> None:
    a = torch.ones(3, 2, 4)
    a[0, 0, 1] = math.inf
    a[1, 1, 2] = math.nan
    v = torch.ones(3, 4)
    v[2, 0] = 0.0
    a[2, 0, 0] = math.inf  # inf * 0: NaN
    assert torch.equal(batched_matvec(a, v).isnan(), _bmm(a, v).isnan())
    assert torch.equal(batched_matvec(a, v).isinf(), _bmm(a, v).isinf())


def test_times_columns_broadcasts_like_matmul() -> None:
    """RecurJac's interval terms: coefficients shared across spec rows (a size-1 axis)."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 1, 5, 7, generator=gen)
    col = torch.randn(3, 4, 7, 1, generator=gen)
    want = (w @ col).squeeze(-1)
    assert torch.allclose(_times_columns(w, col), want, atol=1e-5)
    shared = torch.randn(5, 7, generator=gen)
    assert torch.allclose(_times_columns(shared, col), (shared @ col).squeeze(-1), atol=1e-5)


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_concretize_matches_bmm(p: float) -> None:
    gen = torch.Generator().manual_seed(3)
    centre = torch.rand(8, 1, 6, 6, generator=gen)
    a = torch.randn(8, 5, 1, 6, 6, generator=gen)
    ball = LpBall.make(centre, torch.full((8,), 0.1), p, domain=(0.0, 1.0))
    lower, upper = ball.concretize(a)
    flat = a.reshape(8, 5, -1)
    mid = _bmm(flat, centre.reshape(8, -1))
    lo_box, hi_box = ball.box()
    box = Box(lo_box, hi_box)
    blo, bhi = box.concretize(a)
    c, r = ((hi_box + lo_box) / 2).reshape(8, -1), ((hi_box - lo_box) / 2).reshape(8, -1)
    want_blo = _bmm(flat, c) - _bmm(flat.abs(), r)
    assert torch.allclose(blo, want_blo, atol=1e-5)
    assert torch.allclose(bhi, _bmm(flat, c) + _bmm(flat.abs(), r), atol=1e-5)
    # the ball's bound is the tighter of the ball's own and the box's
    q = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]
    dev = torch.linalg.vector_norm(flat, q, dim=-1) * 0.1
    assert torch.allclose(lower, torch.maximum(mid - dev, want_blo), atol=1e-5)
    assert torch.allclose(upper, torch.minimum(mid + dev, bhi), atol=1e-5)
