"""Jacobian bounds of CNNs with the structural chain (each linear block applied as its conv /
conv_transpose layers): equal to the dense-folded chain up to rounding on small CNNs, for every
method / direction / shift; sound against autograd Jacobians at random, vertex and PGD points;
Lipschitz constants above sampled gradient norms; a block with two mixing layers stays sound."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.func import jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import pgd_extremes
from nnbound.jacobian import jacobian_bounds, lipschitz_from_jacobian
from nnbound.jacobian.chain import build_chain
from nnbound.jacobian.linop import BlockOp
from nnbound.network import layers as L
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Normalize
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm

VARIANTS = (("recurjac", -1, 0), ("recurjac", 1, 0), ("recurjac", 1, 1), ("fastlip", -1, 0))
RADIUS = {math.inf: 0.02, 2.0: 0.1, 1.0: 0.2}
DT = torch.float64
HAS_AVGPOOL = hasattr(L, "AvgPool2d")


def random_cnn(activation: str, seed: int, *, pool: bool = False) -> Network:
    """Normalize -> conv(stride 2, pad 1) -> act -> grouped conv(pad 1) -> act
    [-> avg pool] -> conv(stride 2, no pad) -> act -> Flatten -> Dense -> act -> Dense."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DT) * scale

    layers: list = [
        Normalize(
            torch.tensor([0.1, -0.2], dtype=DT).view(2, 1, 1),
            torch.tensor([0.5, 0.8], dtype=DT).view(2, 1, 1),
        ),
        Conv2d(rnd(4, 2, 3, 3, scale=0.4), rnd(4, scale=0.2), stride=2, padding=1),
        Activation(activation),
        Conv2d(rnd(4, 2, 3, 3, scale=0.4), rnd(4, scale=0.2), padding=1, groups=2),
        Activation(activation),
    ]
    size = 4
    if pool:
        layers.append(L.AvgPool2d(kernel_size=2, stride=1))  # type: ignore[attr-defined]
        size = 3
    out = (size - 2) // 2 + 1
    layers += [
        Conv2d(rnd(3, 4, 2, 2, scale=0.5), rnd(3, scale=0.2), stride=2),
        Activation(activation),
        Flatten(),
        Dense(rnd(6, 3 * out * out, scale=0.6), rnd(6, scale=0.2)),
        Activation(activation),
        Dense(rnd(3, 6, scale=0.5), rnd(3, scale=0.2)),
    ]
    return Network(tuple(layers), (2, 7, 7), name=f"cnn-{activation}")


def _ball(p: float, seed: int, scale: float = 1.0) -> tuple[LpBall, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 2, 7, 7, generator=gen, dtype=DT)
    C = torch.randn(2, 3, generator=gen, dtype=DT)
    return LpBall.make(x, RADIUS[p] * scale, p), C


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_structural_equals_dense(activation: str, pool: bool) -> None:
    if pool and not HAS_AVGPOOL:
        pytest.skip("no AvgPool2d in the IR")
    net = random_cnn(activation, seed=3, pool=pool)
    for p in (math.inf, 2.0):
        ball, C = _ball(p, 5)
        for method, direction, shift in VARIANTS:
            if method == "fastlip" and activation != "relu":
                continue
            kw = dict(method=method, direction=direction, shift=shift)
            st = jacobian_bounds(net, ball, C, structural=True, **kw)
            de = jacobian_bounds(net, ball, C, structural=False, **kw)
            assert any(isinstance(m, BlockOp) for m in st._state.chain.mats)
            assert not any(isinstance(m, BlockOp) for m in de._state.chain.mats)
            if pool and method == "fastlip":
                # avg pool then conv in one block: the structural |W| is an upper bound of the
                # dense one (|AB| <= |A||B|), so the structural bounds contain the dense ones.
                assert bool((st.lower <= de.lower + 1e-12).all())
                assert bool((st.upper >= de.upper - 1e-12).all())
                continue
            torch.testing.assert_close(st.lower, de.lower, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(st.upper, de.upper, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(
                lipschitz_from_jacobian(st, p), lipschitz_from_jacobian(de, p), rtol=1e-10, atol=0
            )


def test_auto_choice_is_dense_for_small_blocks() -> None:
    net = random_cnn("relu", seed=1)
    ball, C = _ball(math.inf, 1)
    jb = jacobian_bounds(net, ball, C)
    assert not any(isinstance(m, BlockOp) for m in jb._state.chain.mats)
    spec = C.expand(2, -1, -1)
    pre = jb.layer_bounds.intermediate.pre
    chain = build_chain(net, pre, spec, structural=True)
    assert all(isinstance(m, BlockOp) for m in chain.weights)


def _spec_fn(net: Network, C: torch.Tensor):
    def f(x: torch.Tensor) -> torch.Tensor:
        return C @ net(x.unsqueeze(0)).reshape(-1)

    return f


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
@pytest.mark.parametrize(("activation", "pool"), [("relu", False), ("tanh", False), ("relu", True)])
def test_structural_bounds_sound(activation: str, pool: bool, p: float) -> None:
    if pool and not HAS_AVGPOOL:
        pytest.skip("no AvgPool2d in the IR")
    net = random_cnn(activation, seed=11, pool=pool)
    # tanh's derivative intervals widen faster with the radius: a smaller ball keeps the
    # bounds informative (the non-vacuity check below).
    ball, C = _ball(p, 7, 0.25 if activation == "tanh" else 1.0)
    gen = torch.Generator().manual_seed(2)
    pts = [ball.sample(64, generator=gen), ball.vertices(32, generator=gen)]
    _, _, pmin, pmax = pgd_extremes(net, ball, C, steps=15, restarts=2, pool=32, return_points=True)
    pts = torch.cat([*pts, pmin, pmax], 1)  # (N, M, 2, 7, 7)
    f = _spec_fn(net, C)
    true = vmap(vmap(jacrev(f)))(pts)  # (N, M, S, 2, 7, 7)
    grad_norms = torch.linalg.vector_norm(true.flatten(3), dual_norm(p), dim=-1).amax(1)
    for method, direction, shift in VARIANTS:
        if method == "fastlip" and activation != "relu":
            continue
        jb = jacobian_bounds(
            net, ball, C, method, "crown-general", direction, shift, structural=True
        )
        lo, up = jb.lower.unsqueeze(1), jb.upper.unsqueeze(1)
        tol = 1e-9 * (1 + torch.maximum(lo.abs(), up.abs()))
        assert bool((true >= lo - tol).all()), (method, direction, shift, "lower")
        assert bool((true <= up + tol).all()), (method, direction, shift, "upper")
        # Not vacuous: some entries have a known sign.
        assert bool((jb.unsure < jb.lower[0, 0].numel()).any())
        lip = lipschitz_from_jacobian(jb, p)
        assert bool((lip >= grad_norms * (1 - 1e-9)).all()), (method, direction, shift)


def test_two_convs_without_activation_sound_structural() -> None:
    """Conv then conv in one block (two mixing layers): structural |W| is only an upper bound;
    the bounds stay sound and contain the dense ones."""
    gen = torch.Generator().manual_seed(0)
    net = Network(
        (
            Conv2d(torch.randn(3, 1, 3, 3, generator=gen, dtype=DT), torch.zeros(3, dtype=DT)),
            Conv2d(
                torch.randn(2, 3, 2, 2, generator=gen, dtype=DT) * 0.5, torch.zeros(2, dtype=DT)
            ),
            Activation("relu"),
            Flatten(),
            Dense(torch.randn(2, 32, generator=gen, dtype=DT) * 0.3, torch.zeros(2, dtype=DT)),
        ),
        (1, 7, 7),
    )
    x = torch.rand(2, 1, 7, 7, generator=gen, dtype=DT)
    ball = LpBall.make(x, 0.05, math.inf)
    st = jacobian_bounds(net, ball, method="fastlip", structural=True)
    de = jacobian_bounds(net, ball, method="fastlip", structural=False)
    assert bool((st.lower <= de.lower + 1e-12).all()) and bool((st.upper >= de.upper - 1e-12).all())
    pts = torch.cat([ball.sample(64, generator=gen), ball.vertices(64, generator=gen)], 1)
    true = vmap(vmap(jacrev(_spec_fn(net, torch.eye(2, dtype=DT)))))(pts)
    assert bool((true >= st.lower.unsqueeze(1) - 1e-9).all())
    assert bool((true <= st.upper.unsqueeze(1) + 1e-9).all())


def maxpool_cnn(seed: int, *, overlap: bool, pool_first: bool) -> Network:
    """conv -> [relu -> maxpool | maxpool -> relu] -> conv -> relu -> Flatten -> Dense."""
    gen = torch.Generator().manual_seed(seed)
    pool = (
        L.MaxPool2d(kernel_size=3, stride=2, padding=1)  # type: ignore[attr-defined]
        if overlap
        else L.MaxPool2d(kernel_size=2)  # type: ignore[attr-defined]
    )
    stage = [pool, Activation("relu")] if pool_first else [Activation("relu"), pool]
    layers = (
        Conv2d(torch.randn(3, 1, 3, 3, generator=gen, dtype=DT) * 0.5, torch.zeros(3, dtype=DT)),
        *stage,
        Conv2d(torch.randn(2, 3, 2, 2, generator=gen, dtype=DT) * 0.4, torch.zeros(2, dtype=DT)),
        Activation("relu"),
        Flatten(),
        Dense(torch.randn(2, 8, generator=gen, dtype=DT) * 0.5, torch.zeros(2, dtype=DT)),
    )
    return Network(layers, (1, 8, 8), name="maxpool-cnn")


@pytest.mark.skipif(not hasattr(L, "MaxPool2d"), reason="no MaxPool2d in the IR")
@pytest.mark.parametrize(("overlap", "pool_first"), [(False, False), (True, False), (False, True)])
def test_maxpool_jacobian_sound(overlap: bool, pool_first: bool) -> None:
    net = maxpool_cnn(4, overlap=overlap, pool_first=pool_first)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 8, 8, generator=gen, dtype=DT)
    C = torch.tensor([[1.0, -1.0]], dtype=DT)
    ball = LpBall.make(x, 0.03, math.inf)
    pts = [ball.sample(64, generator=gen), ball.vertices(64, generator=gen)]
    _, _, pmin, pmax = pgd_extremes(net, ball, C, steps=15, restarts=2, pool=32, return_points=True)
    pts = torch.cat([*pts, pmin, pmax], 1)
    true = vmap(vmap(jacrev(_spec_fn(net, C))))(pts)  # (N, M, 1, 1, 8, 8)
    grad_norms = true.flatten(3).abs().sum(-1).amax(1)
    for method, direction, shift in VARIANTS:
        st = jacobian_bounds(
            net, ball, C, method, "crown-adaptive", direction, shift, structural=True
        )
        de = jacobian_bounds(net, ball, C, method, "crown-adaptive", direction, shift)
        torch.testing.assert_close(st.lower, de.lower, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(st.upper, de.upper, rtol=1e-10, atol=1e-12)
        lo, up = st.lower.unsqueeze(1), st.upper.unsqueeze(1)
        assert bool((true >= lo - 1e-9).all()), (method, direction, shift, "lower")
        assert bool((true <= up + 1e-9).all()), (method, direction, shift, "upper")
        assert bool((st.unsure < 64).any())  # not vacuous
        lip = lipschitz_from_jacobian(st, math.inf)
        assert bool((lip >= grad_norms * (1 - 1e-9)).all())


@pytest.mark.skipif(not hasattr(L, "MaxPool2d"), reason="no MaxPool2d in the IR")
def test_maxpool_derivative_interval_cases() -> None:
    """One 2x2 window: the only possible max gets [1, 1], impossible taps [0, 0], contenders
    [0, 1]."""
    from nnbound.jacobian.maxpool import maxpool_derivative_interval

    pool = L.MaxPool2d(kernel_size=2)  # type: ignore[attr-defined]
    lo = torch.tensor([[[[5.0, 0.0], [1.0, 2.0]]], [[[1.0, 0.0], [0.5, 2.0]]]], dtype=DT)
    up = torch.tensor([[[[6.0, 1.0], [3.0, 4.0]]], [[[3.0, 0.4], [2.5, 2.1]]]], dtype=DT)
    dlo, dhi = maxpool_derivative_interval(pool, (1, 2, 2), lo, up)
    # taps in order (0,0), (0,1), (1,0), (1,1)
    assert dlo.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert dhi.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]]
