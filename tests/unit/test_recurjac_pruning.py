"""RecurJac's recursion skips neurons that pass nothing up (picked 0 in every row) and stops at a
level where none passes: the bounds must be those of the full-width recursion written plainly
(every level, every neuron, the reference's per-term rules)."""

from __future__ import annotations

import contextlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnbound.jacobian import collapsed
from nnbound.jacobian.recurjac import Chain, Recursion, recurjac_levels


def _plain_upper(
    ch: Chain, levels: list[tuple[torch.Tensor, torch.Tensor]], k: int, w: torch.Tensor
):
    """Upper bound of ``Y_k . c`` given ``w = M_k c`` ``(B, R, T, c_{k+1})``, full width."""
    acc = torch.zeros(w.shape[:-1], dtype=w.dtype)
    for j in range(k, len(ch.mats)):
        if j > k:
            w = w @ ch.mats[j].T
        lo, up = (t.unsqueeze(2) for t in levels[j + 1])
        gl, gh = ch.dlo[j][:, None, None, :], ch.dhi[j][:, None, None, :]
        neg, pos = up <= 0, lo >= 0
        sure = neg | pos | (gl == gh)
        corners = torch.stack([lo * gl, lo * gh, up * gl, up * gh])
        term = torch.where(w > 0, w * corners.amax(0), w * corners.amin(0))
        acc = acc + torch.where(sure, torch.zeros_like(term), term).sum(-1)
        pick = torch.where(w > 0, torch.where(neg, gl, gh), torch.where(neg, gh, gl))
        w = torch.where(sure, w * pick, torch.zeros_like(w))
    return acc + (w @ ch.end.unsqueeze(-1)).squeeze(-1)


def _random_chain(
    seed: int, widths: list[int], dead: float, fixed: float, rows: int, batch: int = 1
) -> Chain:
    gen = torch.Generator().manual_seed(seed)
    mats = tuple(
        torch.randn(widths[i + 1], widths[i], generator=gen, dtype=torch.float64)
        for i in range(len(widths) - 1)
    )
    dlo, dhi = [], []
    for c in widths[1:]:
        u = torch.rand(batch, c, generator=gen, dtype=torch.float64)
        stable = torch.rand(batch, c, generator=gen, dtype=torch.float64) < fixed
        active = torch.rand(batch, c, generator=gen, dtype=torch.float64) >= dead
        lo = torch.where(stable, active.to(torch.float64), torch.zeros_like(u))
        hi = torch.where(stable, active.to(torch.float64), torch.ones_like(u))
        dlo.append(lo)
        dhi.append(hi)
    end = torch.randn(batch, rows, widths[-1], generator=gen, dtype=torch.float64)
    return Chain(mats, end, tuple(dlo), tuple(dhi))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    depth=st.integers(1, 4),
    width=st.integers(3, 12),
    dead=st.floats(0.0, 1.0),
    fixed=st.floats(0.0, 1.0),
    rows=st.integers(1, 3),
    batch=st.integers(1, 3),
)
def test_pruned_recursion_equals_full_width(seed, depth, width, dead, fixed, rows, batch):
    ch = _random_chain(seed, [width + 1] + [width] * depth, dead, fixed, rows, batch)
    # both the full-width recursion and the one collapsed onto the free neurons
    for threshold in (-1.0, 1.0):
        with _collapse_below(threshold):
            _check_against_plain(ch, rows)


@contextlib.contextmanager
def _collapse_below(threshold: float):
    saved = collapsed.COLLAPSE_BELOW
    collapsed.COLLAPSE_BELOW = threshold
    try:
        yield
    finally:
        collapsed.COLLAPSE_BELOW = saved


def _check_against_plain(ch: Chain, rows: int) -> None:
    levels, rec = recurjac_levels(ch)
    assert (rec.collapsed is not None) == (collapsed.COLLAPSE_BELOW > 0)
    for k in range(len(ch.mats)):
        cols = ch.mats[k].shape[1]
        w = ch.mats[k].T.reshape(1, 1, cols, -1).expand(1, rows, -1, -1)
        expect_up = _plain_upper(ch, levels, k, w)
        expect_lo = -_plain_upper(ch, levels, k, -w)
        got_lo, got_up = levels[k]
        finite = torch.isfinite(got_lo)  # columns the recursion never reads stay unbounded
        assert torch.allclose(got_up[finite], expect_up[finite], rtol=1e-10, atol=1e-10)
        assert torch.allclose(got_lo[finite], expect_lo[finite], rtol=1e-10, atol=1e-10)
        assert torch.allclose(rec.upper(k, w), expect_up, rtol=1e-10, atol=1e-10)


def test_a_level_without_live_neurons_ends_the_recursion():
    """Every term of level 0 unsure (the bounds of ``Y_1`` straddle 0, every derivative free):
    nothing passes it, the recursion stops there, and the bound is its interval terms alone."""
    ch = _random_chain(3, [5, 6, 6], dead=0.0, fixed=0.0, rows=1)
    rec = Recursion(ch)
    straddle = (-torch.ones(1, 1, 6, dtype=torch.float64), torch.ones(1, 1, 6, dtype=torch.float64))
    rec.set_bounds(1, *straddle)
    assert rec.tables[0] is not None and rec.tables[0].dead
    w = ch.mats[0].T.reshape(1, 1, 5, -1)
    levels = [(ch.end, ch.end), straddle, (ch.end, ch.end)]
    expect = _plain_upper(ch, levels, 0, w)
    assert torch.allclose(rec.upper(0, w), expect, rtol=1e-10, atol=1e-12)
    # |w| times the largest |y d| on each term: 1 * 1 here
    assert torch.allclose(expect, w.abs().sum(-1), rtol=1e-10)
