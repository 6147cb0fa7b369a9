"""The verifier's time limit is kept in every stage: networks and properties built to be slow
(a wide CNN whose root CROWN pass takes many times the limit, thousands of disjuncts, a branch
and bound that cannot finish) answer ``timeout`` within the limit plus a small slack; bad
limits are InputErrors."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.errors import InputError
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten
from nnbound.network.network import Network
from nnbound.verify.bab import relu_split
from nnbound.verify.deadline import Deadline, DeadlineReached, checked_timeout
from nnbound.verify.input_split import input_split
from nnbound.verify.spec import StackedSpec
from nnbound.verify.verifier import VerifyOptions, verify
from nnbound.verify.vnnlib import Disjunct, OutputGroup, Property

F64 = torch.float64
# What the limit may be overshot by: one engine node's backward step / one PGD step on these
# networks is well under 0.3 s on a busy 2-core machine; the rest is scheduling noise.
SLACK_S = 1.5


def wide_cnn(channels: int = 32, size: int = 16) -> Network:
    gen = torch.Generator().manual_seed(0)

    def conv(i: int, o: int, stride: int = 1) -> Conv2d:
        w = torch.randn(o, i, 3, 3, generator=gen, dtype=F64) / (3 * i**0.5)
        return Conv2d(w, 0.01 * torch.randn(o, generator=gen, dtype=F64), (stride, stride), (1, 1))

    flat = channels * (size // 2) ** 2
    return Network(
        [
            conv(3, channels),
            Activation("relu"),
            conv(channels, channels),
            Activation("relu"),
            conv(channels, channels, 2),
            Activation("relu"),
            Flatten(),
            Dense(
                torch.randn(10, flat, generator=gen, dtype=F64) / flat**0.5,
                torch.zeros(10, dtype=F64),
            ),
        ],
        (3, size, size),
    )


def robustness_property(net: Network, eps: float) -> Property:
    """ "Some other class scores at least the predicted one" around a random image."""
    x = torch.rand(1, *net.input_shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    label = int(net(x).argmax())
    groups = []
    for j in range(10):
        if j != label:
            row = np.zeros((1, 10))
            row[0, label], row[0, j] = 1.0, -1.0
            groups.append(OutputGroup(row, np.zeros(1), np.zeros(1, bool)))
    flat = x.reshape(-1).numpy()
    box = Disjunct(np.clip(flat - eps, 0, 1), np.clip(flat + eps, 0, 1), tuple(groups))
    return Property(net.num_inputs, 10, (box,))


def timed(net, prop, timeout: float, **opts) -> tuple[str, float]:
    start = time.monotonic()
    res = verify(net, prop, timeout=timeout, options=VerifyOptions(**opts))
    return res.status, time.monotonic() - start


def test_root_bounds_of_a_wide_cnn_stop_at_the_limit() -> None:
    """The CNN's first CROWN pass (thousands of unstable neurons per layer) takes far longer
    than a second; without a check inside the pass the answer would come much later."""
    net = wide_cnn()
    prop = robustness_property(net, 0.05)
    status, took = timed(net, prop, 1.0, attack_max_s=0.1)
    assert status == "timeout"
    assert took < 1.0 + SLACK_S, took


def test_thousands_of_disjuncts_stop_at_the_limit() -> None:
    """3,000 disjuncts (boxes of a 5-input network, thresholds near the values inside them):
    every stage stays within the limit, whatever the answer."""
    net = random_network("relu", [5, 64, 64, 64, 2], seed=4)
    rng = np.random.default_rng(0)
    disjuncts = []
    row = np.array([[1.0, -1.0]])
    for _ in range(3000):
        centre = rng.normal(size=5)
        y = net(torch.as_tensor(centre[None]))[0].detach().numpy()
        lo, hi = centre - 0.3, centre + 0.3
        # "Y_0 - Y_1 <= value at the centre - 1": sometimes met, often not refuted by CROWN.
        group = OutputGroup(row, np.array([y[0] - y[1] - 1.0]), np.zeros(1, bool))
        disjuncts.append(Disjunct(lo, hi, (group,)))
    prop = Property(5, 2, tuple(disjuncts))
    for timeout in (0.5, 2.0):
        _, took = timed(net, prop, timeout)
        assert took < timeout + SLACK_S, (timeout, took)


def test_branch_and_bound_stops_at_the_limit() -> None:
    net = random_network("relu", [6, 64, 64, 64, 2], seed=5)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(100_000, 6, generator=gen, dtype=F64) * 2 - 1
    y = net(x)
    # A margin 0.05 below the smallest sampled value over a wide box: neither search
    # settles it in seconds (measured: both still open after 3 s).
    value = float((y[:, 0] - y[:, 1]).min()) - 0.05
    group = OutputGroup(np.array([[1.0, -1.0]]), np.array([value]), np.zeros(1, bool))
    box = Disjunct(-np.ones(6), np.ones(6), (group,))
    spec = StackedSpec.make(box, F64, torch.device("cpu"))
    for search in (input_split, relu_split):
        start = time.monotonic()
        res = search(net, spec, start + 0.5)
        took = time.monotonic() - start
        assert res.status == "timeout", (search.__name__, res)
        assert took < 0.5 + SLACK_S, (search.__name__, took)


def test_deadline_object() -> None:
    d = Deadline.after(100)
    assert 99 < d.left() <= 100 and not d.passed()
    assert d.sooner(1).left() <= 1
    d.check()
    with pytest.raises(DeadlineReached):
        Deadline(time.monotonic() - 1).check()


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "x"])
def test_bad_timeouts_are_input_errors(bad) -> None:
    with pytest.raises(InputError, match="timeout"):
        checked_timeout(bad)
    net = random_network("relu", [2, 4, 2], seed=1)
    group = OutputGroup(np.array([[1.0, 0.0]]), np.array([100.0]), np.zeros(1, bool))
    prop = Property(2, 2, (Disjunct(np.zeros(2), np.ones(2), (group,)),))
    with pytest.raises(InputError, match="timeout"):
        verify(net, prop, timeout=bad)
