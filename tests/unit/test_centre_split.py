"""The centre-split backward pass to an MLP's second activation equals the plain one.

``layerwise_bounds(..., centre_cache=CentreProducts())`` takes the split path
(:mod:`nnbound.bounds.centre_split`); without it, the plain backward pass. Both must give the
same final bounds and the same bounds of every neuron left unstable (to rounding) for every
piecewise-linear activation, method, norm, with and without a data box, on first calls and on
calls that reuse the cache; where the second activation is the last, the split may settle a
stable neuron with a cheaper, looser bound, on the same side of every kink.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import NORMS, PIECEWISE_LINEAR, check_points_within, pgd_extremes, random_network
from nnbound.network.layers import Activation, Dense, Flatten
from nnbound.network.network import Network
from nnbound.relax.registry import relaxation_for
from nnbound.relax.relu import LowerSlope
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.lp_ball import LpBall

centre_split = importlib.import_module("nnbound.bounds.centre_split")
methods = importlib.import_module("nnbound.bounds.methods")
CentreProducts = centre_split.CentreProducts

SPLIT_METHODS = ("fastlin", "crown-adaptive", "crown-general")


def _both(net, ball, method, cache, C=None):
    plain = methods.layerwise_bounds(net, ball, method, C)
    split = methods.layerwise_bounds(net, ball, method, C, centre_cache=cache)
    return plain, split


def _assert_same(plain, split, net, tol: float = 1e-9) -> None:
    """Equal final bounds; equal intermediate bounds for every neuron the plain pass leaves
    across a kink of its activation, and for the others the same side, no tighter (the split
    may settle those with its cheaper bound)."""
    for j, (lo, up) in plain.intermediate.pre.items():
        s_lo, s_up = split.intermediate.pre[j]
        kinks = relaxation_for(net.layers[j], LowerSlope.ADAPTIVE, TangentRule.EXACT).kinks
        across = torch.zeros_like(lo, dtype=torch.bool)
        for kink in kinks:
            across |= (lo < kink) & (up > kink)
            assert bool(((s_lo >= kink) == (lo >= kink))[~across].all())
            assert bool(((s_up <= kink) == (up <= kink))[~across].all())
        torch.testing.assert_close(s_lo[across], lo[across], rtol=tol, atol=tol)
        torch.testing.assert_close(s_up[across], up[across], rtol=tol, atol=tol)
        assert bool((s_lo <= lo + tol).all()) and bool((s_up >= up - tol).all())
    torch.testing.assert_close(split.lower, plain.lower, rtol=tol, atol=tol)
    torch.testing.assert_close(split.upper, plain.upper, rtol=tol, atol=tol)


@settings(max_examples=60, deadline=None)
@given(
    activation=st.sampled_from(PIECEWISE_LINEAR),
    method=st.sampled_from(SPLIT_METHODS),
    p=st.sampled_from(NORMS),
    hidden=st.lists(st.integers(2, 12), min_size=2, max_size=3),
    eps=st.floats(0.0, 1.0),
    domain=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_split_equals_plain_backward_pass(
    activation: str,
    method: str,
    p: float,
    hidden: list[int],
    eps: float,
    domain: bool,
    seed: int,
) -> None:
    net = random_network(activation, [5, *hidden, 3], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 5, generator=gen, dtype=torch.float64) - 0.5
    eps_rows = eps * torch.rand(3, generator=gen, dtype=torch.float64)
    ball = LpBall.make(x, eps_rows, p, (-0.5, 0.5) if domain else None)
    cache = CentreProducts()
    _assert_same(*_both(net, ball, method, cache), net)
    # A second call at other radii reuses the stored products.
    ball2 = LpBall.make(x, eps_rows * 0.5 + 0.01, p, (-0.5, 0.5) if domain else None)
    _assert_same(*_both(net, ball2, method, cache), net)


def test_cache_is_reused_bounded_and_reset_per_network() -> None:
    net = random_network("relu", [6, 10, 8, 4], seed=3)
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5
    x[3] = x[0]  # the same centre twice: one stored product
    first = net.layers[0]
    patterns = {tuple((first.weight @ row + first.bias > 0).tolist()) for row in x}
    cache = CentreProducts()
    ball = LpBall.make(x, 0.2, math.inf)
    _assert_same(*_both(net, ball, "crown-adaptive", cache), net)
    assert cache.stored_patterns == len(patterns) == 3
    stored = cache._g
    _assert_same(*_both(net, LpBall.make(x, 0.1, math.inf), "crown-adaptive", cache), net)
    assert cache._g is stored  # nothing new computed
    # Nothing stored beyond max_bytes, same bounds.
    tiny = CentreProducts(max_bytes=0)
    _assert_same(*_both(net, ball, "crown-adaptive", tiny), net)
    assert tiny.stored_patterns == 0
    # Another network empties the cache instead of using the first one's products.
    other = random_network("relu", [6, 10, 8, 4], seed=4)
    _assert_same(*_both(other, ball, "crown-adaptive", cache), other)
    assert cache.stored_patterns == 3
    assert cache._g is not stored and not torch.equal(cache._g, stored)


def test_float32_split_agrees_to_rounding() -> None:
    net = random_network("relu", [20, 64, 64, 10], seed=1, dtype=torch.float32)
    x = torch.rand(5, 20, generator=torch.Generator().manual_seed(0)) - 0.5
    ball = LpBall.make(x, 0.05, 2.0)
    _assert_same(*_both(net, ball, "crown-adaptive", CentreProducts()), net, tol=2e-4)


def test_flatten_input_and_spec_rows() -> None:
    """An image-shaped input flattened before the first Dense, and a margin spec."""
    gen = torch.Generator().manual_seed(0)
    f64 = torch.float64

    def dense(out: int, inp: int) -> Dense:
        w = torch.randn(out, inp, generator=gen, dtype=f64) / math.sqrt(inp)
        return Dense(w, torch.randn(out, generator=gen, dtype=f64) * 0.3)

    layers = (
        Flatten(),
        dense(16, 12),
        Activation("relu"),
        dense(9, 16),
        Activation("relu"),
        dense(3, 9),
    )
    net = Network(layers=layers, input_shape=(1, 3, 4))
    x = torch.rand(2, 1, 3, 4, generator=gen, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    ball = LpBall.make(x, torch.tensor([[0.05, 0.2], [0.1, 0.3]], dtype=torch.float64), math.inf)
    _assert_same(*_both(net, ball, "crown-adaptive", CentreProducts(), C), net)


@pytest.mark.parametrize("p", NORMS)
def test_split_bounds_hold_at_attacked_points(p: float) -> None:
    net = random_network("relu", [8, 24, 24, 5], seed=7)
    x = torch.rand(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5
    ball = LpBall.make(x, {1.0: 0.6, 2.0: 0.3, math.inf: 0.1}[p], p)
    b = methods.layerwise_bounds(net, ball, "crown-adaptive", centre_cache=CentreProducts())
    mins, maxs = pgd_extremes(net, ball)
    assert bool((b.lower <= mins + 1e-9).all()) and bool((maxs <= b.upper + 1e-9).all())
    points = ball.sample(2000, generator=torch.Generator().manual_seed(1))
    below, above = check_points_within(net, points, None, b.lower, b.upper)
    assert below <= 1e-9 and above <= 1e-9


def test_structure_other_than_two_dense_blocks_takes_the_plain_pass() -> None:
    net = random_network("relu", [5, 6, 4], seed=0)  # one hidden layer: no second activation
    assert centre_split.two_dense_blocks(net, 1, 1) is None
    deep = random_network("relu", [5, 6, 6, 6, 3], seed=0)
    assert centre_split.two_dense_blocks(deep, 1, 3) is not None
    assert centre_split.two_dense_blocks(deep, 3, 5) is None  # an activation inside block one


def _two_layer_a(net, slope_up, slope_lo, up: bool):
    """``A_up`` (or ``A_lo``) of every second-block neuron for the given first-layer slopes,
    exactly in float64."""
    w1 = net.layers[0].weight.double()
    w2 = net.layers[2].weight.double()
    pos, neg = w2.clamp(min=0), w2.clamp(max=0)
    su, sl = slope_up.double(), slope_lo.double()
    left = pos * su + neg * sl if up else pos * sl + neg * su
    return left @ w1


@pytest.mark.parametrize("p", NORMS)
def test_stored_references_bound_the_exact_norms_of_float32_products(p: float) -> None:
    """A float32 reference's norms, with its rounding slack, bound the exact (float64) norms
    of the coefficients for its slopes: what lets float64 evaluations use them."""
    net = random_network("relu", [300, 256, 128, 10], seed=5, dtype=torch.float32)
    x = torch.rand(4, 300, generator=torch.Generator().manual_seed(0)) - 0.5
    cache = CentreProducts()
    for eps in (0.02, 0.05, 0.049):  # the last two: mostly exact rows from a near reference
        methods.layerwise_bounds(net, LpBall.make(x, eps, p), "crown-adaptive", centre_cache=cache)
    q = LpBall.make(x, 0.1, p).q
    table = cache._tables[q]
    assert len(cache._slots) == 4 and bool(table.has[:4].all())
    tightest = math.inf
    for slot in range(4):
        us, ls = table.us[slot], table.ls[slot]
        for up, norms in ((True, table.norm_up[slot]), (False, table.norm_lo[slot])):
            a = _two_layer_a(net, us, ls, up)
            exact = a.abs().amax(1) if q == math.inf else torch.linalg.vector_norm(a, q, dim=1)
            assert bool((norms.double() >= exact).all())
            tightest = min(tightest, float((norms.double() / exact).min()))
    # ... and they are not loose: the exact rows within the slack of their norm (a centre
    # whose neurons the prefilter decided has no exact row).
    assert tightest < 1.01


@pytest.mark.parametrize("p", NORMS)
def test_float64_evaluation_with_float32_references_equals_plain(p: float) -> None:
    net32 = random_network("relu", [40, 64, 48, 6], seed=2, dtype=torch.float32)
    net64 = net32.to(dtype=torch.float64)
    x32 = torch.rand(5, 40, generator=torch.Generator().manual_seed(3)) - 0.5
    x64 = x32.double()
    eps = {1.0: 0.4, 2.0: 0.15, math.inf: 0.03}[p]
    low = CentreProducts()
    methods.layerwise_bounds(
        net32, LpBall.make(x32, eps * 1.01, p), "crown-adaptive", centre_cache=low
    )
    high = CentreProducts()
    high.lower_precision = low
    ball = LpBall.make(x64, eps, p)
    # The linked references are found for every centre (their weights and centres agree).
    blocks = centre_split.two_dense_blocks(net64, 1, 3)
    linked = high.linked_references(blocks, x64, ball.q)
    assert linked is not None and bool(linked[0].all())
    _assert_same(*_both(net64, ball, "crown-adaptive", high), net64)
    # Another network's float32 cache, or a centre float32 cannot hold, is not used.
    other = random_network("relu", [40, 64, 48, 6], seed=9, dtype=torch.float32)
    stranger = CentreProducts()
    methods.layerwise_bounds(
        other, LpBall.make(x32, eps, p), "crown-adaptive", centre_cache=stranger
    )
    high2 = CentreProducts()
    high2.lower_precision = stranger
    assert high2.linked_references(blocks, x64, ball.q) is None
    shifted = x64 + 1e-12
    assert high.linked_references(blocks, shifted, ball.q) is None
    _assert_same(*_both(net64, LpBall.make(shifted, eps, p), "crown-adaptive", high), net64)


def test_references_are_bounded_and_start_over_past_their_budget() -> None:
    net = random_network("relu", [6, 10, 8, 4], seed=3)
    x = torch.rand(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5
    probe = CentreProducts()
    methods.layerwise_bounds(net, LpBall.make(x[:1], 0.2, 2.0), "fastlin", centre_cache=probe)
    one = probe._tables[2.0].row_bytes()
    cache = CentreProducts(max_reference_bytes=3 * one)
    methods.layerwise_bounds(net, LpBall.make(x[:2], 0.2, 2.0), "fastlin", centre_cache=cache)
    assert list(cache._slots.values()) == [0, 1]
    # Five more centres do not fit beside them: the references start over, the first three
    # of the call are kept, the others not at all.
    methods.layerwise_bounds(net, LpBall.make(x, 0.2, 2.0), "fastlin", centre_cache=cache)
    assert set(cache._slots) == {row.numpy().tobytes() for row in x[:3]}
    assert cache._tables[2.0].has.sum() == 3
    # Bounds stay the plain pass's whatever is stored.
    _assert_same(*_both(net, LpBall.make(x, 0.25, 2.0), "fastlin", cache), net)


@settings(max_examples=40, deadline=None)
@given(
    activation=st.sampled_from(PIECEWISE_LINEAR),
    method=st.sampled_from(SPLIT_METHODS),
    p=st.sampled_from(NORMS),
    hidden=st.lists(st.integers(2, 24), min_size=2, max_size=2),
    eps=st.floats(0.001, 0.5),
    scale=st.floats(0.5, 2.0),
    seed=st.integers(0, 10_000),
)
def test_float64_from_float32_references_equals_plain(
    activation: str, method: str, p: float, hidden: list[int], eps: float, scale: float, seed: int
) -> None:
    """Whatever eps the float32 references come from, a float64 evaluation that starts from
    them gives the plain float64 pass's bounds (a neuron they show stable is stable)."""
    net32 = random_network(activation, [6, *hidden, 3], seed=seed, dtype=torch.float32)
    net64 = net32.to(dtype=torch.float64)
    x32 = torch.rand(3, 6, generator=torch.Generator().manual_seed(seed)) - 0.5
    low = CentreProducts()
    ball32 = LpBall.make(x32, eps * scale, p)
    methods.layerwise_bounds(net32, ball32, method, centre_cache=low)
    high = CentreProducts()
    high.lower_precision = low
    _assert_same(*_both(net64, LpBall.make(x32.double(), eps, p), method, high), net64)


@pytest.mark.parametrize("activation", PIECEWISE_LINEAR)
@pytest.mark.parametrize("p", NORMS)
def test_bounds_from_references_hold_at_attacked_points(activation: str, p: float) -> None:
    """Bounds that start from stored references (float32 ones for a float64 evaluation, then
    the evaluation's own) hold at PGD's extremes and at sampled points and vertices."""
    net32 = random_network(activation, [8, 24, 24, 5], seed=11, dtype=torch.float32)
    net64 = net32.to(dtype=torch.float64)
    x32 = torch.rand(3, 8, generator=torch.Generator().manual_seed(2)) - 0.5
    eps = {1.0: 0.6, 2.0: 0.3, math.inf: 0.1}[p]
    low = CentreProducts()
    methods.layerwise_bounds(
        net32, LpBall.make(x32, eps * 1.3, p), "crown-adaptive", centre_cache=low
    )
    high = CentreProducts()
    high.lower_precision = low
    for scale in (1.0, 0.9):  # the second call starts from the first one's references
        ball = LpBall.make(x32.double(), eps * scale, p)
        b = methods.layerwise_bounds(net64, ball, "crown-adaptive", centre_cache=high)
        mins, maxs = pgd_extremes(net64, ball)
        assert bool((b.lower <= mins + 1e-9).all()) and bool((maxs <= b.upper + 1e-9).all())
        gen = torch.Generator().manual_seed(1)
        points = torch.cat((ball.sample(2000, generator=gen), ball.vertices(200, generator=gen)), 1)
        below, above = check_points_within(net64, points, None, b.lower, b.upper)
        assert below <= 1e-9 and above <= 1e-9


@pytest.mark.parametrize("lower_at_base", [True, False])
@pytest.mark.parametrize("parallel", [True, False])
def test_side_products_equal_each_sides_own_sum(lower_at_base: bool, parallel: bool) -> None:
    """Both ways of computing the sides (one stacked product, or the sum and spread products)
    equal ``sum_k W2[j, k] (s_jk - base_k) W1[k]`` with each side's slope picked by the sign of
    ``W2[j, k]``."""
    gen = torch.Generator().manual_seed(7)
    n, r, k1, n_in = 3, 4, 9, 5
    w2_rows = torch.randn(n, r, k1, generator=gen, dtype=torch.float64)
    w1 = torch.randn(k1, n_in, generator=gen, dtype=torch.float64)
    base = (torch.rand(n, k1, generator=gen) > 0.5).double()
    unstable = torch.rand(n, k1, generator=gen) > 0.6
    us = torch.where(unstable, torch.rand(n, k1, generator=gen, dtype=torch.float64), base)
    ls = us if parallel else base if lower_at_base else torch.where(unstable, 1 - base, base)
    got = centre_split._side_products(w2_rows, us - base, ls - base, w1)
    pos = w2_rows > 0
    s_up = torch.where(pos, us.unsqueeze(1), ls.unsqueeze(1)) - base.unsqueeze(1)
    s_lo = torch.where(pos, ls.unsqueeze(1), us.unsqueeze(1)) - base.unsqueeze(1)
    want = torch.cat(((w2_rows * s_up) @ w1, (w2_rows * s_lo) @ w1), 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
