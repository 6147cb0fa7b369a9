"""Batching never changes a bound: every row of a batched call equals the same row computed
alone (rows differ in centre and radius, so they have different unstable neurons)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import methods_for, random_network
from nnbound.bounds.api import bounds
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.spec import all_margins_spec


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("p", ["inf", "2"])
def test_rows_are_independent(activation: str, p: str) -> None:
    net = random_network(activation, [6, 16, 16, 16, 4], seed=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 6, generator=gen, dtype=torch.float64)
    eps = torch.rand(11, generator=gen, dtype=torch.float64) * 0.4
    labels = net(x).argmax(1)
    spec = all_margins_spec(labels, 4, torch.float64)
    for method in [*methods_for(activation), "spectral"]:
        together = bounds(net, LpBall.make(x, eps, p), method, spec)
        for i in range(11):
            alone = bounds(
                net, LpBall.make(x[i : i + 1], eps[i : i + 1], p), method, spec[i : i + 1]
            )
            assert torch.allclose(together.lower[i], alone.lower[0], rtol=0, atol=1e-12), method
            assert torch.allclose(together.upper[i], alone.upper[0], rtol=0, atol=1e-12), method


def test_prior_bounds_from_a_larger_ball_stay_sound() -> None:
    net = random_network("relu", [6, 24, 24, 24, 4], seed=5)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    big = bounds(net, LpBall.make(x, 0.3, "inf"), "crown")
    small_ball = LpBall.make(x, 0.2, "inf")
    plain = bounds(net, small_ball, "crown")
    with_prior = bounds(net, small_ball, "crown", prior=big.intermediate.pre)

    def unstable(b) -> int:
        return sum(int(((lo < 0) & (up > 0)).sum()) for lo, up in b.intermediate.pre.values())

    # Stable neurons keep whichever sound bound proved them stable; what matters is that the
    # prior never makes more neurons unstable, and that everything stays sound.
    assert unstable(with_prior) <= unstable(plain)
    s = small_ball.sample(4000)
    y = net(s.reshape(-1, 6)).reshape(5, -1, 4)
    assert torch.all(with_prior.lower.unsqueeze(1) <= y + 1e-9)
    assert torch.all(y <= with_prior.upper.unsqueeze(1) + 1e-9)
    for j, (lo, up) in with_prior.intermediate.pre.items():
        pre = net.prefix(j).forward(s.reshape(-1, 6)).reshape(5, -1, lo.shape[1])
        assert torch.all(lo.unsqueeze(1) <= pre + 1e-9) and torch.all(pre <= up.unsqueeze(1) + 1e-9)
