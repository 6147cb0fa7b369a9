"""Branch and bound on activation intervals (sigmoid / tanh) against an exhaustive grid: a
2-input network's margin on a 401 x 401 grid, with a Lipschitz bound of the margin, gives
the exact answer up to ``L h``; ``unsat`` must never be claimed where the grid holds a
counterexample, and clear cases root bounds cannot settle must be decided."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.network.layers import Dense
from nnbound.verify.activation_split import activation_split
from nnbound.verify.spec import StackedSpec
from nnbound.verify.verifier import VerifyOptions, verify
from nnbound.verify.vnnlib import Disjunct, OutputGroup, Property

F64 = torch.float64
CPU = torch.device("cpu")


def grid_truth(net, lo: np.ndarray, hi: np.ndarray, slope: float) -> tuple[float, float]:
    """``(min of y0 - y1 on the grid, L h)``: the true min lies in ``[min - L h, min]``."""
    axes = [np.linspace(lo[i], hi[i], 401) for i in range(2)]
    pts = np.stack(np.meshgrid(*axes), -1).reshape(-1, 2)
    y = net(torch.as_tensor(pts)).detach().numpy()
    weights = [layer.weight.numpy() for layer in net.layers if isinstance(layer, Dense)]
    lip = np.sqrt(2) * np.prod([np.linalg.norm(w, 2) for w in weights])
    lip *= slope ** (len(weights) - 1)
    h = float(np.max(hi - lo)) / 400 * np.sqrt(2) / 2
    return float((y[:, 0] - y[:, 1]).min()), lip * h


def instance(act: str, seed: int, offset: float):
    """Network, disjunct "y0 - y1 <= grid min - offset", and the truth (sat / unsat / ?)."""
    net = random_network(act, [2, 12, 12, 2], seed=seed).to(dtype=F64)
    rng = np.random.default_rng(seed)
    centre, width = rng.normal(size=2), rng.uniform(0.3, 1.0, 2)
    lo, hi = centre - width, centre + width
    low, err = grid_truth(net, lo, hi, 0.25 if act == "sigmoid" else 1.0)
    threshold = low - offset
    truth = "sat" if offset <= 0 else ("unsat" if low - err > threshold else "?")
    group = OutputGroup(np.array([[1.0, -1.0]]), np.array([threshold]), np.zeros(1, bool))
    return net, Disjunct(lo, hi, (group,)), truth


@pytest.mark.parametrize(("seed", "offset"), [(3, 0.05), (5, 0.05), (5, -0.05)])
def test_tanh_search_decides_against_the_grid(seed: int, offset: float) -> None:
    net, disjunct, truth = instance("tanh", seed, offset)
    assert truth in ("sat", "unsat")
    spec = StackedSpec.make(disjunct, F64, CPU)
    res = activation_split(net, spec, time.monotonic() + 30)
    assert res.status == truth, res
    if truth == "unsat":
        # The root bounds alone do not settle it (the search did the work).
        prop = Property(2, 2, (disjunct,))
        no_bab = verify(net, prop, timeout=10, options=VerifyOptions(bab=False))
        assert no_bab.status != "unsat"
    else:
        x, y = res.counterexample
        assert bool(spec.in_box(x[None]).all()) and bool(spec.satisfied(y[None]).any())


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_never_a_wrong_answer(act: str) -> None:
    """The search alone (no attack, no root shortcut) on thresholds on both sides of the
    grid minimum, within a short limit: ``unsat`` only where the grid has no counterexample,
    ``sat`` only where it is sure there is one -- and most are decided."""
    answers = []
    for seed in range(2):
        for offset in (0.05, -0.01):
            net, disjunct, truth = instance(act, 20 + seed, offset)
            spec = StackedSpec.make(disjunct, F64, CPU)
            res = activation_split(net, spec, time.monotonic() + 1.0)
            answers.append(res.status)
            if res.status == "unsat":
                assert truth != "sat", (seed, offset)
            if res.status == "sat":
                assert truth != "unsat", (seed, offset)
    assert answers.count("sat") + answers.count("unsat") >= 2, answers
