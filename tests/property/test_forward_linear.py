"""Forward-mode linear bounds (:mod:`nnbound.bounds.forward_linear`) on random graphs.

Random graphs of every block and activation (:mod:`graph_factory`), flat and image inputs,
float64, over boxes that fix all but a few input coordinates (as VNN-COMP's low-dimensional
properties do) and over full boxes: every tensor's value at uniform samples, the box's
vertices (on the free coordinates) and a PGD ascent / descent on a random functional of each
tensor must lie inside its forward bounds; the bounds never exceed the interval rule's (they
are intersected with it) and on graphs of linear operators and ReLU-family activations are
strictly tighter somewhere. Then the verifier: a wide network whose boxes let two
coordinates vary takes forward bounds in input splitting and decides as without them.
"""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread)
from graph_factory import RandomChooser, activations, random_graph
from nnbound.bounds.forward_linear import forward_bounds, free_coordinates
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.network.chain_graph import network_to_graph
from nnbound.network.graph import Graph
from nnbound.network.layers import Activation, Dense
from nnbound.network.network import Network
from nnbound.sets.box import Box
from nnbound.verify.verifier import VerifyOptions, verify
from nnbound.verify.vnnlib import Disjunct, OutputGroup, Property

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOL = 1e-9


def _case(seed: int, image: bool, free: int | None) -> tuple[Graph, Box]:
    ch = RandomChooser(random.Random(seed))
    if image:
        shape: tuple[int, ...] = (ch.integer(1, 2), ch.integer(2, 5), ch.integer(2, 5))
    else:
        shape = (ch.integer(2, 8),)
    graph = random_graph(ch, shape, ch.integer(1, 3), seed=seed, blocks=3, acts=activations())
    gen = torch.Generator().manual_seed(seed + 7)
    rows = ch.integer(1, 3)
    center = torch.randn(rows, *shape, generator=gen, dtype=torch.float64)
    half = torch.rand(rows, *shape, generator=gen, dtype=torch.float64) * 0.4
    if free is not None:
        # fix all but `free` coordinates of each row (different ones per row)
        flat = half.reshape(rows, -1)
        keep = torch.rand(flat.shape, generator=gen).argsort(1)[:, :free]
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter(1, keep, True)
        half = (flat * mask).reshape(half.shape)
    return graph, Box(center - half, center + half, (rows,))


def _points(box: Box, gen: torch.Generator) -> Tensor:
    """(rows, P, *shape): uniform samples and the vertices of up to 6 free coordinates."""
    lo, up = box.lower, box.upper
    n = lo.shape[0]
    u = torch.rand(n, 64, *lo.shape[1:], generator=gen, dtype=lo.dtype)
    pts = [lo.unsqueeze(1) + u * (up - lo).unsqueeze(1)]
    flat_lo, flat_up = lo.reshape(n, -1), up.reshape(n, -1)
    per_row = []
    for r in range(n):
        free = torch.nonzero(flat_up[r] > flat_lo[r]).squeeze(1)[:6].tolist()
        corners = []
        for bits in itertools.product((0, 1), repeat=len(free)):
            x = (flat_lo[r] + flat_up[r]) / 2
            for i, b in zip(free, bits, strict=True):
                x[i] = flat_up[r, i] if b else flat_lo[r, i]
            corners.append(x)
        c = torch.stack(corners)
        per_row.append(c[torch.arange(64) % c.shape[0]].reshape(64, *lo.shape[1:]))
    pts.append(torch.stack(per_row))
    return torch.cat(pts, 1)


def _attack(graph: Graph, box: Box, name: str, gen: torch.Generator) -> Tensor:
    """Points of 30 projected sign-gradient steps up and down a random functional of
    tensor ``name``, from random starts: (rows, 2, *shape)."""
    lo, up = box.lower, box.upper
    out = []
    for sign in (1.0, -1.0):
        x = lo + torch.rand(lo.shape, generator=gen, dtype=lo.dtype) * (up - lo)
        w = torch.randn(graph.shapes[name], generator=gen, dtype=lo.dtype)
        for _ in range(30):
            x = x.detach().requires_grad_(True)
            (sign * (graph.evaluate(x)[name] * w).sum()).backward()
            assert x.grad is not None
            x = torch.minimum(torch.maximum(x + 0.05 * (up - lo) * x.grad.sign(), lo), up)
        out.append(x.detach())
    return torch.stack(out, 1)


def _check_inside(graph: Graph, box: Box, pre: dict, points: Tensor) -> None:
    n, p = points.shape[:2]
    values = graph.evaluate(points.reshape(n * p, *points.shape[2:]))
    for name, v in values.items():
        lo, up = pre[name]
        v = v.reshape(n, p, *v.shape[1:])
        scale = 1.0 + torch.maximum(lo.abs(), up.abs()).unsqueeze(1)
        assert bool((v >= lo.unsqueeze(1) - TOL * scale).all()), f"{name} below its lower bound"
        assert bool((v <= up.unsqueeze(1) + TOL * scale).all()), f"{name} above its upper bound"


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    image=st.booleans(),
    free=st.sampled_from((1, 2, 3, None)),
)
def test_forward_bounds_hold_on_random_graphs(seed: int, image: bool, free: int | None) -> None:
    graph, box = _case(seed, image, free)
    got = forward_bounds(graph, box)
    assert set(got.pre) == set(graph.shapes)
    gen = torch.Generator().manual_seed(seed)
    _check_inside(graph, box, got.pre, _points(box, gen))
    for name in list(graph.shapes)[-2:]:
        _check_inside(graph, box, got.pre, _attack(graph, box, name, gen))
    # never looser than the interval rule it is intersected with
    ibp = graph_bounds(graph, box, "ibp").intermediate.pre
    for name, (lo, up) in got.pre.items():
        if name in ibp:
            assert bool((lo >= ibp[name][0] - 1e-12).all() and (up <= ibp[name][1] + 1e-12).all())
    if free is not None:
        assert free_coordinates(box) <= free


def test_forward_bounds_beat_intervals_and_are_exact_through_linear_and_relu() -> None:
    gen = torch.Generator().manual_seed(3)
    layers = []
    width = 2
    for out in (64, 64, 64, 3):
        w = torch.randn(out, width, generator=gen, dtype=torch.float64) / width**0.5
        layers += [Dense(w, torch.randn(out, generator=gen, dtype=torch.float64) * 0.1)]
        if out != 3:
            layers.append(Activation("relu"))
        width = out
    net = Network(tuple(layers), (2,))
    graph = network_to_graph(net)
    box = Box(
        torch.full((1, 2), -0.5, dtype=torch.float64),
        torch.full((1, 2), 0.5, dtype=torch.float64),
        (1,),
    )
    got = forward_bounds(graph, box)
    assert got.exact == frozenset(graph.shapes)
    ibp = graph_bounds(graph, box, "ibp")  # no spec: the output's own entries
    out = graph.output
    fwd_width = (got.pre[out][1] - got.pre[out][0]).sum()
    ibp_width = (ibp.upper - ibp.lower).sum()
    assert float(fwd_width) < 0.8 * float(ibp_width)
    _check_inside(graph, box, got.pre, _points(box, gen))


def test_fallback_operators_end_exactness_downstream() -> None:
    """A matrix product of two computed tensors has no forward rule here: its output and
    every tensor below it are not exact (their bounds come from the interval rule)."""
    for seed in range(200):
        ch = RandomChooser(random.Random(seed))
        graph = random_graph(ch, (4,), 2, seed=seed, blocks=3, acts=("relu",), only=("matmul",))
        if any(n.op == "matmul" for n in graph.nodes):
            break
    else:
        raise AssertionError("no graph with a product drawn")
    box = Box(
        torch.full((1, 4), -1.0, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64), (1,)
    )
    got = forward_bounds(graph, box)
    first = next(n for n in graph.nodes if n.op == "matmul")
    assert first.output not in got.exact
    below = {n.output for n in graph.nodes if first in graph.ancestors(n.output)}
    assert not (below & got.exact)


def _wide_net(seed: int) -> Network:
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(300, 6, generator=gen, dtype=torch.float64) / 6**0.5
    w2 = torch.randn(1, 300, generator=gen, dtype=torch.float64) / 300**0.5
    return Network(
        (
            Dense(w1, torch.randn(300, generator=gen, dtype=torch.float64) * 0.1),
            Activation("relu"),
            Dense(w2, torch.zeros(1, dtype=torch.float64)),
        ),
        (6,),
    )


def test_verifier_takes_forward_bounds_on_wide_low_dimensional_boxes() -> None:
    """Two free coordinates of six, a 300-wide layer: the verifier splits the input with
    forward intermediate bounds, and answers as it does without them (both ``unsat`` on a
    threshold above the sampled maximum, both ``sat`` below it)."""
    net = _wide_net(1)
    lo = torch.tensor([0.0, -0.3, 0.2, 0.1, -0.2, 0.0], dtype=torch.float64)
    up = lo.clone()
    up[1], up[4] = 0.3, 0.2
    xs = lo + torch.rand(20000, 6, dtype=torch.float64) * (up - lo)
    top = float(net(xs).max())
    for threshold, expected in ((top + 0.05, "unsat"), (top - 0.02, "sat")):
        # the property: y >= threshold is reachable
        group = OutputGroup(
            C=np.array([[-1.0]]), d=np.array([-threshold]), strict=np.array([False])
        )
        prop = Property(6, 1, (Disjunct(lo.numpy(), up.numpy(), (group,)),))
        answers = []
        for per_free in (1, 10**9):
            res = verify(
                net, prop, timeout=30, options=VerifyOptions(forward_width_per_free=per_free)
            )
            if res.stage != "attack":  # a counterexample found first decides before bounds
                assert res.stats["forward_intermediate"] == (per_free == 1)
            answers.append(res.status)
        assert answers == [expected, expected]
    assert res.stage == "attack"  # the sat case


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    block=st.sampled_from(("mul", "div")),
    free=st.sampled_from((1, 3, None)),
)
def test_products_and_quotients_have_forward_rules_that_hold(
    seed: int, block: str, free: int | None
) -> None:
    """Products and quotients of computed tensors go through their McCormick planes (exact
    from then on), and every tensor stays inside its bounds."""
    ch = RandomChooser(random.Random(seed))
    graph = random_graph(
        ch, (ch.integer(2, 6),), 2, seed=seed, blocks=2, acts=("relu", "tanh"), only=(block,)
    )
    gen = torch.Generator().manual_seed(seed)
    center = torch.randn(2, *graph.input_shape, generator=gen, dtype=torch.float64)
    half = torch.rand(center.shape, generator=gen, dtype=torch.float64) * 0.3
    if free is not None:
        half[:, free:] = 0.0
    box = Box(center - half, center + half, (2,))
    got = forward_bounds(graph, box)
    assert any(n.op == block for n in graph.nodes)
    assert got.exact == frozenset(graph.shapes)
    _check_inside(graph, box, got.pre, _points(box, gen))
    _check_inside(graph, box, got.pre, _attack(graph, box, graph.output, gen))
