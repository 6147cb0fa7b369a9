"""Side orders of hidden ReLU layers' backward passes (:class:`SideOrder`).

``SIGNS_FIRST``: each neuron gets the side of its bound that can settle its state first, the
other side only where it stays unstable. ``INACTIVE_FIRST``: neurons negative at the centre
get their upper side first and skip the lower one where that proves them inactive.

The bounds must hold (sampled points, vertices, PGD); every neuron must have exactly the bounds
the same lines give it by a full pass, except on the sides each order skips (which keep their
interval bounds); ``INACTIVE_FIRST``'s final bounds must equal the full ones; fewer passes must
be made; and a radius search that confirms in float64 with ``SIGNS_FIRST`` must never report
less than with full bounds.
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
from helpers import NORMS, check_points_within, pgd_extremes, random_network
from nnbound.bounds.interval import interval_forward
from nnbound.bounds.sides import SideOrder
from nnbound.relax.registry import relaxation_for
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.lp_ball import LpBall

methods = importlib.import_module("nnbound.bounds.methods")
radius = importlib.import_module("nnbound.tasks.radius")
linear = importlib.import_module("nnbound.bounds.linear")

RELU_METHODS = ("fastlin", "crown-adaptive", "crown-general")
ORDERS = (SideOrder.SIGNS_FIRST, SideOrder.INACTIVE_FIRST)
# Every random case: a method, a norm, a radius scale and a seed (with hidden widths).
CASE = {
    "method": st.sampled_from(RELU_METHODS),
    "p": st.sampled_from(NORMS),
    "eps": st.floats(0.01, 0.6),
    "seed": st.integers(0, 10_000),
}


def _hidden(layers: int) -> st.SearchStrategy[list[int]]:
    """``layers`` to 4 hidden widths."""
    return st.lists(st.integers(3, 10), min_size=layers, max_size=4)


@pytest.fixture(autouse=True)
def every_layer_splits(monkeypatch) -> None:
    """Small test networks never reach the work at which a layer is split by side."""
    monkeypatch.setattr(methods, "_SIDE_SPLIT_MIN_MACS", 0)


def _case(activation: str, hidden: list[int], p: float, seed: int, eps: float):
    net = random_network(activation, [6, *hidden, 4], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 6, generator=gen, dtype=torch.float64) - 0.5
    return net, LpBall.make(x, eps * (0.5 + torch.rand(3, generator=gen, dtype=torch.float64)), p)


@settings(max_examples=40, deadline=None)
@given(
    activation=st.sampled_from(("relu", "leaky_relu")),
    order=st.sampled_from(ORDERS),
    hidden=_hidden(2),
    **CASE,
)
def test_bounds_hold_at_sampled_and_attacked_points(
    activation: str,
    order: SideOrder,
    method: str,
    p: float,
    hidden: list[int],
    eps: float,
    seed: int,
) -> None:
    net, ball = _case(activation, hidden, p, seed, eps)
    b = methods.layerwise_bounds(net, ball, method, sides=order)
    gen = torch.Generator().manual_seed(seed)
    points = torch.cat((ball.sample(500, generator=gen), ball.vertices(100, generator=gen)), 1)
    below, above = check_points_within(net, points, None, b.lower, b.upper)
    assert below <= 1e-9 and above <= 1e-9
    mins, maxs = pgd_extremes(net, ball, steps=30, restarts=2)
    assert bool((b.lower <= mins + 1e-9).all()) and bool((maxs <= b.upper + 1e-9).all())


@settings(max_examples=40, deadline=None)
@given(order=st.sampled_from(ORDERS), hidden=_hidden(3), **CASE)
def test_each_neuron_has_the_full_pass_bounds_but_on_the_sides_its_order_skips(
    order: SideOrder, method: str, p: float, hidden: list[int], eps: float, seed: int
) -> None:
    """Layer by layer, from the lines the bounds of the layers below give: a neuron the
    interval bound leaves across 0 has the interval bound intersected with a full pass, except
    on the side its order skips: with ``SIGNS_FIRST`` (and ``INACTIVE_FIRST`` in the last
    relaxed layer) the side that did not settle a stable neuron (its upper side when positive
    at the centre), with ``INACTIVE_FIRST`` the lower side of a neuron negative at the centre
    that its upper side proved inactive. The others keep their interval bounds."""
    net, ball = _case("relu", hidden, p, seed, eps)
    b = methods.layerwise_bounds(net, ball, method, sides=order)
    pre, layers = b.intermediate.pre, net.layers
    m = methods.get_method(method)
    acts = sorted(pre)
    relax = {j: relaxation_for(layers[j], m.relu_lower, TangentRule.EXACT) for j in acts}
    lines = {}
    for pos, j in enumerate(acts):
        lo, up = pre[j]
        if pos > 0:  # the first block's bounds are exact
            ibp_lo, ibp_up = interval_forward(layers, acts[pos - 1], j, *pre[acts[pos - 1]], relax)
            every = torch.ones_like(lo, dtype=torch.bool)
            full_lo, full_up = methods._tighten_by_backward_pass(
                net, j, ball, lines, every, ibp_lo, ibp_up, True
            )
            centre = ball.center
            for layer in layers[:j]:
                centre = layer.forward(centre)
            candidate = (ibp_lo < 0) & (ibp_up > 0)
            if order is SideOrder.SIGNS_FIRST or pos == len(acts) - 1:
                unstable = candidate & (lo < 0) & (up > 0)
                skip_lo = candidate & ~unstable & (centre < 0)
                skip_up = candidate & ~unstable & (centre > 0)
            else:
                skip_lo = candidate & (centre < 0) & (up <= 0)
                skip_up = torch.zeros_like(candidate)
            want_lo = torch.where(candidate & ~skip_lo, full_lo, ibp_lo)
            want_up = torch.where(candidate & ~skip_up, full_up, ibp_up)
            torch.testing.assert_close(lo, want_lo, rtol=0, atol=1e-12)
            torch.testing.assert_close(up, torch.maximum(want_up, want_lo), rtol=0, atol=1e-12)
        lines[j] = relax[j].linear(lo, up)


def _side_rows(monkeypatch) -> list[int]:
    """Rows times sides of every backward pass made from now on."""
    made: list[int] = []
    inner = linear.backward_linear_bounds

    def counted(layers, shapes, end, a, const, lines, ball, *, lower=True, upper=True):
        made.append(a.shape[0] * a.shape[1] * (int(lower) + int(upper)))
        return inner(layers, shapes, end, a, const, lines, ball, lower=lower, upper=upper)

    monkeypatch.setattr(methods, "backward_linear_bounds", counted)
    return made


def _counted_full_bounds(monkeypatch):
    """A 3-hidden-layer case, its side-row counter, its full bounds and their side-rows."""
    net = random_network("relu", [20, 40, 40, 40, 5], seed=3)
    x = torch.rand(4, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    ball = LpBall.make(x, 0.02, math.inf)
    made = _side_rows(monkeypatch)
    full = methods.layerwise_bounds(net, ball, "crown-adaptive")
    return net, ball, made, full, sum(made)


@pytest.mark.parametrize("order", ORDERS)
def test_stable_neurons_skip_a_side(order: SideOrder, monkeypatch) -> None:
    net, ball, made, full, full_rows = _counted_full_bounds(monkeypatch)
    made.clear()
    split = methods.layerwise_bounds(net, ball, "crown-adaptive", sides=order)
    assert (
        sum(made) < {SideOrder.SIGNS_FIRST: 0.75, SideOrder.INACTIVE_FIRST: 0.9}[order] * full_rows
    )
    assert split.sides_skipped == (order is SideOrder.SIGNS_FIRST)
    # Here no interval bound is tighter than a pass, so even SIGNS_FIRST's are the full ones.
    torch.testing.assert_close(split.lower, full.lower, rtol=0, atol=1e-12)
    torch.testing.assert_close(split.upper, full.upper, rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(hidden=_hidden(2), **CASE)
def test_inactive_first_gives_the_full_final_bounds(
    method: str, p: float, hidden: list[int], eps: float, seed: int
) -> None:
    net, ball = _case("relu", hidden, p, seed, eps)
    full = methods.layerwise_bounds(net, ball, method)
    split = methods.layerwise_bounds(net, ball, method, sides=SideOrder.INACTIVE_FIRST)
    torch.testing.assert_close(split.lower, full.lower, rtol=0, atol=1e-12)
    torch.testing.assert_close(split.upper, full.upper, rtol=0, atol=1e-12)
    last = max(full.intermediate.pre)
    for j, (lo, up) in full.intermediate.pre.items():
        s_lo, s_up = split.intermediate.pre[j]
        live = up > 0  # a lower bound is read only where the neuron may be active
        torch.testing.assert_close(s_lo[live], lo[live], rtol=0, atol=1e-12)
        # an upper bound where the neuron may be inactive, or anywhere the next layer reads it
        read = (lo <= 0) | (j != last)
        torch.testing.assert_close(s_up[read], up[read], rtol=0, atol=1e-12)
    assert not split.sides_skipped


def test_below_the_work_threshold_layers_take_the_full_pass(monkeypatch) -> None:
    monkeypatch.setattr(methods, "_SIDE_SPLIT_MIN_MACS", 1 << 40)
    net, ball, made, full, full_rows = _counted_full_bounds(monkeypatch)
    for order in ORDERS:
        made.clear()
        split = methods.layerwise_bounds(net, ball, "crown-adaptive", sides=order)
        assert sum(made) == full_rows and not split.sides_skipped
        assert torch.equal(split.lower, full.lower) and torch.equal(split.upper, full.upper)


@pytest.mark.parametrize("seed", range(4))
def test_radius_search_confirms_no_less_and_redoes_what_it_does_not_certify(
    seed: int, monkeypatch
) -> None:
    """The float64 confirmation takes the signs-first bounds where they certify and the full
    ones elsewhere: the radius is at least the one full bounds give (the float32 search's
    inactive-first bounds are the full ones)."""
    net = random_network("relu", [12, 24, 24, 24, 24, 5], seed=seed, dtype=torch.float32)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(seed)) - 0.5
    with torch.no_grad():
        labels = net(x).argmax(1)
    targets = torch.full_like(labels, -1)
    calls: list[tuple[bool, bool]] = []  # (sides skipped, certified)
    inner = radius._Certifier._margin

    def recorded(self, rows, eps, sides):
        got, skipped = inner(self, rows, eps, sides)
        if self.x.dtype == torch.float64:
            calls.extend((skipped, bool(v > 0)) for v in got)
        return got, skipped

    monkeypatch.setattr(radius._Certifier, "_margin", recorded)
    with_signs = radius.certified_radius(net, x, labels, targets, norm=2)
    refused = sum(1 for skipped, ok in calls if skipped and not ok)
    redone = sum(1 for skipped, _ in calls if not skipped)
    assert any(skipped for skipped, _ in calls) and redone == refused
    original_init = radius._Certifier.__init__

    def full_only(self, *args, **kwargs):
        original_init(self, *args, **{**kwargs, "sides": SideOrder.BOTH})

    monkeypatch.setattr(radius._Certifier, "__init__", full_only)
    full = radius.certified_radius(net, x, labels, targets, norm=2)
    assert bool((with_signs >= full).all())
