"""The graph IR, the chain <-> graph conversion, and the graph engine against the chain path."""

from __future__ import annotations

import pytest
import torch

import nnbound
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.chain_graph import graph_to_network, network_to_graph
from nnbound.network.graph import Graph, Node
from nnbound.network.graph_module import GraphModule
from nnbound.network.load import load_model
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.radius import certified_radius


def _dense(i: str, o: str, n_in: int, n_out: int, gen: torch.Generator) -> Node:
    w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) / n_in**0.5
    b = torch.randn(n_out, generator=gen, dtype=torch.float64) * 0.1
    return Node("dense", (i,), o, {"weight": w, "bias": b})


def test_construction_checks_names_shapes_and_ops() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(InputError, match="neither the graph input"):
        Graph((_dense("nope", "y", 3, 2, gen),), (3,), "y")
    with pytest.raises(InputError, match="already exists"):
        Graph((_dense("input", "y", 3, 2, gen), _dense("input", "y", 3, 2, gen)), (3,), "y")
    with pytest.raises(InputError, match="dense node"):
        Graph((_dense("input", "y", 4, 2, gen),), (3,), "y")
    with pytest.raises(UnsupportedError, match=r"no operator 'frobnicate'.*node 'n7'"):
        Graph((Node("frobnicate", ("input",), "y", label="n7"),), (3,), "y")
    with pytest.raises(InputError, match="not produced"):
        Graph((_dense("input", "y", 3, 2, gen),), (3,), "z")
    bad = _dense("input", "y", 3, 2, gen)
    bad.params["weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        Graph((bad,), (3,), "y")


@pytest.mark.parametrize("name", ["mnist-fc-3layer", "mnist-cnn-small"])
def test_chain_graph_round_trip(name: str) -> None:
    net = load_model(name)
    graph = network_to_graph(net)
    assert graph.is_chain
    x = torch.rand(3, *net.input_shape) - 0.5
    assert torch.equal(graph(x), net(x))
    back = graph_to_network(graph)
    assert back is not None and torch.equal(back(x), net(x))
    module = GraphModule(graph).to(torch.float64)
    assert torch.allclose(module(x.double()), net.to(dtype=torch.float64)(x.double()))


@pytest.mark.parametrize("name", ["mnist-fc-3layer", "mnist-cnn-small"])
@pytest.mark.parametrize("p", ["inf", 2, 1])
@pytest.mark.parametrize("method", ["ibp", "fastlin", "crown", "crown-general", "crown-interval"])
def test_graph_engine_equals_chain_path(name: str, p: str | int, method: str) -> None:
    net = load_model(name).to(dtype=torch.float64)
    graph = network_to_graph(net)
    x = torch.rand(2, *net.input_shape, dtype=torch.float64) - 0.5
    ball = LpBall.make(x, eps=0.01 if p == "inf" else 0.2, p=p)
    chain = nnbound.bounds(net, ball, method=method)
    general = graph_bounds(graph, ball, method)
    # Exact float64 agreement up to the order of summation.
    assert torch.allclose(chain.lower, general.lower, rtol=1e-9, atol=1e-9)
    assert torch.allclose(chain.upper, general.upper, rtol=1e-9, atol=1e-9)


def test_graph_engine_over_a_box_matches_chain() -> None:
    net = load_model("mnist-fc-3layer").to(dtype=torch.float64)
    graph = network_to_graph(net)
    x = torch.rand(2, *net.input_shape, dtype=torch.float64) - 0.5
    box = Box.make(x - 0.01, x + 0.02)
    a, b = nnbound.bounds(net, box, method="crown"), graph_bounds(graph, box, "crown")
    assert torch.allclose(a.lower, b.lower, atol=1e-9)


def test_bounds_dispatches_chain_graphs_to_the_chain_path() -> None:
    net = load_model("mnist-fc-3layer")
    graph = network_to_graph(net)
    x = torch.rand(3, *net.input_shape) - 0.5
    ball = LpBall.make(x, eps=0.01, p="inf")
    assert torch.equal(
        nnbound.bounds(graph, ball, method="crown").lower,
        nnbound.bounds(net, ball, method="crown").lower,
    )


def test_certified_radius_of_a_graph_equals_the_chain() -> None:
    net = load_model("mnist-fc-3layer")
    graph = network_to_graph(net)
    x = torch.rand(4, *net.input_shape) - 0.5
    labels = net(x).argmax(1)
    targets = torch.full((4,), -1)
    r_net = certified_radius(net, x, labels, targets=targets, norm=2)
    r_graph = certified_radius(graph, x, labels, targets=targets, norm=2)
    assert torch.equal(r_net, r_graph)


def test_fastlin_refuses_smooth_activations_on_graphs() -> None:
    gen = torch.Generator().manual_seed(1)
    nodes = (
        _dense("input", "h", 3, 4, gen),
        Node("tanh", ("h",), "a"),
        _dense("a", "y", 4, 2, gen),
    )
    graph = Graph(nodes, (3,), "y")
    ball = LpBall.make(torch.zeros(1, 3, dtype=torch.float64), eps=0.1, p="inf")
    with pytest.raises(UnsupportedError, match=r"tanh node.*crown-general"):
        graph_bounds(graph, ball, "fastlin")
    b = graph_bounds(graph, ball, "crown-general")
    assert bool((b.lower <= b.upper).all())
