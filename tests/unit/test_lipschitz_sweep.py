"""The Lipschitz sweep (layer bounds that skip saturated layers and take the next larger
ball's bounds as prior, one recursion per distinct row, inactive neurons dropped, only the
Jacobian columns the recursion reads) gives the numbers of one plain pass over the whole
``(B, K)`` ball on piecewise-linear nets, never looser ones on smooth nets, and stays sound."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.jacobian import jacobian_bounds
from nnbound.jacobian.lipschitz import lipschitz_bounds
from nnbound.jacobian.recurjac import Chain, _needed_columns
from nnbound.jacobian.saturation import sweep_pre_bounds
from nnbound.jacobian.sweep import PER_ROW_ELEMENTS
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.lipschitz import class_spec, eps_grid, lipschitz_curve


def _plain(net, x, classes, grid, p, method, direction=-1, shift=0):
    eps = grid.unsqueeze(0).expand(x.shape[0], -1).to(x.dtype)
    ball = LpBall.make(x, eps, p)
    spec = class_spec(classes, net.num_outputs, x.dtype)
    with torch.no_grad():
        return lipschitz_bounds(net, ball, spec, method, "crown-general", direction, shift)


CASES = [
    ("relu", "inf", "recurjac", -1, 0),
    ("relu", "inf", "fastlip", -1, 0),
    ("relu", 2.0, "recurjac", -1, 0),
    ("relu", 1.0, "recurjac", 1, 0),
    ("relu", "inf", "recurjac", 1, 1),
    ("leaky_relu", "inf", "recurjac", -1, 0),
    ("tanh", 2.0, "recurjac", -1, 0),
]


@pytest.mark.parametrize(("act", "p", "method", "direction", "shift"), CASES)
@pytest.mark.parametrize("per_row", [False, True])
def test_sweep_equals_one_plain_pass(
    act: str,
    p: object,
    method: str,
    direction: int,
    shift: int,
    per_row: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if per_row:  # force the per-row (compressed) recursion on this small net
        monkeypatch.setattr("nnbound.jacobian.sweep.PER_ROW_ELEMENTS", 0)
    net = random_network(act, [12, 16, 16, 16, 4], seed=3)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    classes = net(x).argmax(1)
    grid = eps_grid(3.0, 12, -3, math.log10(3.0))  # reaches saturation for the ReLU nets
    curve = lipschitz_curve(
        net, x, classes, grid, norm=p, method=method, direction=direction, shift=shift
    )
    plain = _plain(net, x, classes, grid, p, method, direction, shift)
    ref = plain.value[..., 0]
    if act == "tanh" and per_row:
        # the bounds of the next larger ball, intersected in (sound: it contains this one),
        # tighten a smooth net's derivative intervals: never looser
        assert bool((curve.values <= ref * (1 + 1e-12) + 1e-12).all())
        return
    # piecewise linear: here the larger ball's bounds only confirm the states -- same numbers
    torch.testing.assert_close(curve.values, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(curve.unsure, plain.jacobian.unsure[..., 0])
    assert torch.equal(curve.global_bound, plain.global_bound)
    assert PER_ROW_ELEMENTS > 0


def test_saturated_layers_are_skipped_and_take_their_whole_range() -> None:
    net = random_network("relu", [10, 20, 20, 20, 3], seed=5)
    x = torch.randn(2, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.tensor([0.0, 0.01, 5.0, 10.0, 50.0], dtype=torch.float64).expand(2, -1)
    pre = sweep_pre_bounds(net, x, eps, math.inf, "crown-general", chunk=1)
    deep = max(pre)
    lo, up = pre[deep]
    # the largest balls are past saturation: the deepest layer was never bounded
    assert bool(torch.isinf(lo.reshape(2, 5, -1)[:, -1]).all())
    # wherever a layer was bounded, the bounds are the plain pass's (eps 0 and 0.01 always),
    # except at a row's deepest bounded layer, which is read only for its ReLU states: there
    # the states are the plain pass's
    ball = LpBall.make(x, eps, math.inf)
    plain = jacobian_bounds(net, ball).layer_bounds.intermediate.pre
    done = {i: torch.isfinite(lo.reshape(10, -1)).all(1) for i, (lo, _) in pre.items()}
    deeper = {i: torch.zeros(10, dtype=torch.bool) for i in pre}
    for i in pre:
        for k in pre:
            if k > i:
                deeper[i] |= done[k]
    for i, (lo, up) in pre.items():
        assert bool(done[i].reshape(2, 5)[:, :2].all())
        inner = done[i] & deeper[i]
        # (equal up to the rounding of differently batched products)
        torch.testing.assert_close(lo[inner], plain[i][0][inner], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(up[inner], plain[i][1][inner], rtol=1e-12, atol=1e-12)
        last = done[i] & ~deeper[i]
        assert bool(last.any()) or i != deep
        for ours, theirs in (
            (lo[last] >= 0, plain[i][0][last] >= 0),
            (up[last] <= 0, plain[i][1][last] <= 0),
        ):
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_sweep_is_sound_against_sampled_gradients(
    act: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nnbound.jacobian.sweep.PER_ROW_ELEMENTS", 0)  # probes and priors
    net = random_network(act, [8, 24, 24, 24, 3], seed=11)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    classes = net(x).argmax(1)
    grid = eps_grid(1.0, 8, -2, 0)
    curve = lipschitz_curve(net, x, classes, grid, norm="inf", method="recurjac")
    gen = torch.Generator().manual_seed(9)
    for k, e in enumerate(grid.tolist()):
        pts = x.unsqueeze(1) + e * (
            2 * torch.rand(2, 256, 8, generator=gen, dtype=torch.float64) - 1
        )
        pts = pts.reshape(-1, 8).requires_grad_(True)
        out = net(pts)
        sel = out.gather(1, classes.repeat_interleave(256).unsqueeze(1)).sum()
        (g,) = torch.autograd.grad(sel, pts)
        gmax = g.abs().sum(1).reshape(2, 256).amax(1)
        assert bool((gmax <= curve.values[:, k] * (1 + 1e-9) + 1e-12).all())


def test_only_columns_below_free_derivatives_are_needed() -> None:
    m = torch.randn(3, 4, dtype=torch.float64)
    end = torch.randn(1, 1, 3, dtype=torch.float64)
    d_lo = torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    d_hi = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    one = torch.ones(1, 3, dtype=torch.float64)
    ch = Chain((torch.randn(4, 2, dtype=torch.float64), m), end, (d_lo, one), (d_hi, one))
    assert _needed_columns(ch, 0) is None
    assert _needed_columns(ch, 1).tolist() == [0]


def test_probes_turn_dense_where_layers_start_to_saturate(monkeypatch) -> None:
    """Sparse probes upwards until one finds many unstable neurons, then every radius upwards,
    then the rest downwards; the derivative states are those of one batched pass."""
    import nnbound.jacobian.saturation as saturation
    from nnbound.jacobian.chain import build_chain

    net = random_network("relu", [10, 24, 24, 24, 3], seed=7)
    x = torch.randn(1, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    eps = eps_grid(3.0, 16, -3, math.log10(3.0)).unsqueeze(0)
    seen: list[float] = []
    real = saturation.layerwise_bounds

    def spy(prefix, ball, *args, **kwargs):
        seen.append(float(ball.eps.reshape(-1)[0]))
        return real(prefix, ball, *args, **kwargs)

    monkeypatch.setattr(saturation, "layerwise_bounds", spy)
    pre = sweep_pre_bounds(net, x, eps, math.inf, "crown-general", chunk=4)
    radii = eps[0].tolist()
    positions = [radii.index(r) for r in seen]
    upward = 1
    while upward < len(positions) and positions[upward] > positions[upward - 1]:
        upward += 1
    steps = [b - a for a, b in itertools.pairwise(positions[:upward])]
    # sparse probes (stride 4) until the switch, then every radius; the rest downwards
    assert 4 in steps and 1 in steps and steps == sorted(steps, reverse=True)
    assert set(steps) == {4, 1}
    # (radii past the last upward call had every layer saturated: nothing left to bound)
    rest = [i for i in range(positions[upward - 1]) if i not in positions[:upward]]
    assert positions[upward:] == rest[::-1]
    monkeypatch.setattr(saturation, "layerwise_bounds", real)
    batched = sweep_pre_bounds(net, x, eps, math.inf, "crown-general", chunk=len(radii))
    spec = torch.zeros(len(radii), 1, 3, dtype=torch.float64)
    ours, theirs = build_chain(net, pre, spec), build_chain(net, batched, spec)
    for a, b in zip(ours.dlo + ours.dhi, theirs.dlo + theirs.dhi, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["recurjac", "fastlip"])
def test_conv_chain_sweep_takes_the_graph_engine_and_equals_one_plain_pass(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain with convolutions: the sweep's layer bounds come from bounds() (the graph
    engine's patches), with the numbers of one plain pass."""
    from nnbound.bounds import api
    from nnbound.jacobian import saturation
    from nnbound.network.layers import Activation, Conv2d, Dense, Flatten
    from nnbound.network.network import Network

    gen = torch.Generator().manual_seed(4)
    f64 = torch.float64
    net = Network(
        (
            Conv2d(
                torch.randn(3, 1, 3, 3, generator=gen, dtype=f64) / 3, torch.zeros(3, dtype=f64)
            ),
            Activation("relu"),
            Conv2d(
                torch.randn(2, 3, 3, 3, generator=gen, dtype=f64) / 5,
                torch.randn(2, generator=gen, dtype=f64) * 0.1,
                stride=(2, 2),
                padding=(1, 1),
            ),
            Activation("relu"),
            Flatten(),
            Dense(torch.randn(3, 8, generator=gen, dtype=f64) / 3, torch.zeros(3, dtype=f64)),
        ),
        (1, 6, 6),
    )
    routed = []
    real = api._chain_on_graph_engine

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        routed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "_chain_on_graph_engine", counted)
    x = torch.rand(2, 1, 6, 6, generator=gen, dtype=f64)
    classes = net(x).argmax(1)
    grid = eps_grid(1.0, 8, -3, 0)
    routed.clear()
    curve = lipschitz_curve(net, x, classes, grid, method=method)
    assert routed and saturation.has_convolution(net)
    plain = _plain(net, x, classes, grid, "inf", method)
    torch.testing.assert_close(curve.values, plain.value[..., 0], rtol=1e-10, atol=1e-12)
