"""A certified radius must never exceed the distance of an adversarial example: on small
networks trained on real digits, for every method and norm, a PGD attack with the certified
radius as budget finds no example that flips the label, while the same attack with a much
larger budget does (so the check has teeth)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import methods_for, pgd_extremes
from nnbound.data.registry import load_dataset
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.spec import all_margins_spec
from nnbound.tasks.radius import _Certifier, certified_radius, margin_specs
from nnbound.tasks.search import batched_binary_search
from nnbound.tasks.targets import select_targets
from nnbound.train.train import TrainConfig, train_network

IMAGES = 4


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _trained(digits, activation: str) -> Network:
    cfg = TrainConfig(hidden=(24, 24), activation=activation, epochs=15, lr=0.01, seed=1)
    net, report = train_network(*digits, cfg, progress=False)
    assert report.test_accuracy > 0.8
    return net


def _untargeted(net: Network, test):
    with torch.no_grad():
        logits = net(net.check_input(test.images))
    sel = select_targets(logits, test.labels, "untargeted", num_images=IMAGES)
    return net.check_input(test.images[sel.indices]), sel.labels, sel.targets


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_certified_radius_below_attack(digits, activation: str, norm: float) -> None:
    net = _trained(digits, activation)
    x, labels, targets = _untargeted(net, digits[1])
    spec = all_margins_spec(labels, 10, net.dtype)
    methods = [*methods_for(activation), "spectral"]
    radii = {}
    for method in methods:
        r = certified_radius(net, x, labels, targets, norm=norm, method=method, steps=12)
        radii[method] = r
        assert bool((r >= 0).all())
        ball = LpBall.make(x, r.to(net.dtype), norm)
        worst, _ = pgd_extremes(net, ball, spec, steps=40, restarts=3)
        # No adversarial example inside a certified ball: every margin stays positive.
        assert bool((worst.amin(1) > 0).all()), (method, r, worst.amin(1))
    # The attack is strong enough to matter: 25x the best certified radius flips labels.
    best = torch.stack(list(radii.values())).amax(0)
    ball = LpBall.make(x, (25 * best).to(net.dtype), norm)
    worst, _ = pgd_extremes(net, ball, spec, steps=40, restarts=3)
    assert bool((worst.amin(1) < 0).any())
    if activation in ("relu", "leaky_relu"):
        # The published ordering, on average over the images.
        assert radii["crown-adaptive"].mean() >= radii["fastlin"].mean() * 0.999
        assert radii["fastlin"].mean() > radii["ibp"].mean()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_bracketed_search_gives_the_reference_search_radius(
    digits, activation: str, norm: float
) -> None:
    """The default search (decisions inferred where monotonicity settles them, the MLP's
    second layer through the centre split) returns the radius the reference's plain search
    finds with every decision evaluated."""
    net = _trained(digits, activation).to(dtype=torch.float64)
    x, labels, targets = _untargeted(net, digits[1])
    spec = margin_specs(labels, targets, 10, net.dtype)
    for method in methods_for(activation):
        if method == "ibp":
            continue
        got = certified_radius(net, x, labels, targets, norm=norm, method=method, steps=15)
        plain = _Certifier(net, x, spec, norm, method, None, False, reuse=True)
        plain.centre_cache = None
        want = batched_binary_search(plain, x.shape[0], 0.005, max_steps=15)
        assert torch.equal(got, want), (method, got, want)
