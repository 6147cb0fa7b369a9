"""RecurJac only refines Fast-Lip: on ReLU networks every Jacobian entry's bounds are at least
as tight, element by element (issue: "never looser than Fast-Lip, element-wise")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnbound
from helpers import random_network
from nnbound.sets.lp_ball import LpBall


@pytest.mark.parametrize("p", ["inf", "2", "1"])
@pytest.mark.parametrize("layer_method", ["crown-adaptive", "fastlin"])
def test_recurjac_never_looser_than_fastlip_elementwise(p: str, layer_method: str) -> None:
    for seed in range(12):
        net = random_network("relu", [6, 12, 12, 12, 3], seed=seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 6, generator=gen, dtype=torch.float64)
        eps = 0.05 + 0.4 * torch.rand(2, generator=gen, dtype=torch.float64)
        ball = LpBall.make(x, eps, p)
        rj = nnbound.jacobian_bounds(net, ball, method="recurjac", layer_method=layer_method)
        fl = nnbound.jacobian_bounds(net, ball, method="fastlip", layer_method=layer_method)
        assert torch.all(rj.lower >= fl.lower - 1e-12), seed
        assert torch.all(rj.upper <= fl.upper + 1e-12), seed
