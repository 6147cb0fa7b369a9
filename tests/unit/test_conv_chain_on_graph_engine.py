"""A chain with convolutions is bounded by the graph engine (rows as patches): the same bounds,
to rounding, as the chain's own backward passes, with the chain's keys for priors and
intermediate bounds; ``reference=True`` keeps the chain's passes (the reference's numbers)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnbound.bounds.api import bounds
from nnbound.bounds.methods import layerwise_bounds
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, MaxPool2d
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall

F64 = torch.float64


def _conv_chain(seed: int, activation: str, pool: bool) -> Network:
    gen = torch.Generator().manual_seed(seed)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64) / math.sqrt(shape[-1] * 3)

    layers: list = [
        Conv2d(t(3, 2, 3, 3), t(3), stride=(1, 1), padding=(1, 1)),
        Activation(activation),
        Conv2d(t(4, 3, 3, 3), t(4), stride=(2, 2), padding=(1, 1)),
        Activation(activation),
    ]
    if pool:
        layers.append(MaxPool2d((2, 2)))
    width = 4 * (2 if pool else 4) ** 2
    layers += [Flatten(), Dense(t(6, width), t(6)), Activation(activation), Dense(t(3, 6), t(3))]
    return Network(tuple(layers), (2, 8, 8))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["crown-adaptive", "crown-general", "fastlin", "crown-interval", "ibp"]),
    p=st.sampled_from([1.0, 2.0, math.inf]),
    eps=st.floats(0.01, 0.5),
    domain=st.booleans(),
    pool=st.booleans(),
)
def test_same_bounds_as_the_chain_passes(seed, method, p, eps, domain, pool) -> None:
    net = _conv_chain(seed, "relu", pool)
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ball = LpBall.make(x, eps * (0.1 if p == math.inf else 1.0), p, (0.0, 1.0) if domain else None)
    chain = layerwise_bounds(net, ball, method)
    got = bounds(net, ball, method)
    torch.testing.assert_close(got.lower, chain.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.upper, chain.upper, rtol=1e-9, atol=1e-9)
    assert set(got.intermediate.pre) == set(chain.intermediate.pre)
    for j, (lo, up) in got.intermediate.pre.items():
        torch.testing.assert_close(lo, chain.intermediate.pre[j][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(up, chain.intermediate.pre[j][1], rtol=1e-9, atol=1e-9)
    # The bounds of a larger ball are a prior with the chain's keys: the same bounds as the
    # chain's passes given that prior.
    big = LpBall.make(x, 1.5 * ball.eps, p, (0.0, 1.0) if domain else None)
    prior = bounds(net, big, method).intermediate.pre
    with_prior = bounds(net, ball, method, prior=prior)
    chain_prior = layerwise_bounds(net, ball, method, prior=prior)
    torch.testing.assert_close(with_prior.lower, chain_prior.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(with_prior.upper, chain_prior.upper, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bounds_hold_at_sampled_points(activation: str) -> None:
    net = _conv_chain(3, activation, pool=False).to(dtype=torch.float32)
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    ball = LpBall.make(x, 0.03, math.inf)
    method = "crown-adaptive" if activation == "relu" else "crown-general"
    b = bounds(net, ball, method)
    points = ball.sample(3000, generator=torch.Generator().manual_seed(2))  # (N, M, ...)
    with torch.no_grad():
        out = torch.stack([net(points[i]) for i in range(points.shape[0])])
    assert bool((out >= b.lower.unsqueeze(1)).all()) and bool((out <= b.upper.unsqueeze(1)).all())


def test_reference_keeps_the_chain_passes() -> None:
    net = _conv_chain(1, "relu", pool=False)
    x = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    ball = LpBall.make(x, 0.02, math.inf)
    want = layerwise_bounds(net, ball, "crown-adaptive", reference=True)
    got = bounds(net, ball, "crown-adaptive", reference=True)
    assert torch.equal(got.lower, want.lower) and torch.equal(got.upper, want.upper)
