"""``crown-jacobian`` on general graphs (residual sums, differences, a residual CNN): the
gradient graph computes the gradient, and its bounds (plain and alpha-optimised) hold for the
true Jacobians at sampled, vertex and gradient-ascent points of each ball, L1 / L2 / Linf,
float32 and float64; a graph that is a chain gets the chain's bounds."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.errors import UnsupportedError
from nnbound.jacobian import jacobian_bounds, lipschitz_from_jacobian
from nnbound.jacobian.alpha_jacobian import NO_ALPHA, JacobianAlpha
from nnbound.jacobian.graph_gradient import graph_gradient_graph
from nnbound.network.chain_graph import network_to_graph
from nnbound.network.graph import Graph, Node
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm

F64 = torch.float64


def residual_mlp(act: str, seed: int) -> Graph:
    """``d1 = W x; r = W' act(d1) + d1; s = act(r) - d1; out = W'' act(s)``."""
    gen = torch.Generator().manual_seed(seed)

    def dense(i: str, o: str, a: int, b: int) -> Node:
        w = torch.randn(b, a, generator=gen, dtype=F64) * 1.5 / math.sqrt(a)
        return Node(
            "dense", (i,), o, {"weight": w, "bias": torch.randn(b, generator=gen, dtype=F64) * 0.3}
        )

    nodes = (
        dense("input", "d1", 4, 8),
        Node(act, ("d1",), "a1"),
        dense("a1", "d2", 8, 8),
        Node("add", ("d2", "d1"), "r"),
        Node(act, ("r",), "a2"),
        Node("sub", ("a2", "d1"), "s"),
        Node(act, ("s",), "a3"),
        dense("a3", "out", 8, 3),
    )
    return Graph(nodes, (4,), "out", name=f"residual-{act}")


def residual_cnn(seed: int) -> Graph:
    gen = torch.Generator().manual_seed(seed)

    def conv(i: str, o: str, cin: int, cout: int) -> Node:
        w = torch.randn(cout, cin, 3, 3, generator=gen, dtype=F64) * 0.5
        b = torch.randn(cout, generator=gen, dtype=F64) * 0.1
        attrs = {"stride": (1, 1), "padding": (1, 1)}
        return Node("conv2d", (i,), o, {"weight": w, "bias": b}, attrs)

    w = torch.randn(2, 3 * 5 * 5, generator=gen, dtype=F64) * 0.2
    nodes = (
        conv("input", "c1", 1, 3),
        Node("relu", ("c1",), "a1"),
        conv("a1", "c2", 3, 3),
        Node("add", ("c2", "c1"), "r"),
        Node("tanh", ("r",), "a2"),
        Node("flatten", ("a2",), "f"),
        Node("dense", ("f",), "out", {"weight": w, "bias": torch.zeros(2, dtype=F64)}),
    )
    return Graph(nodes, (1, 5, 5), "out", name="residual-cnn")


def _grads(graph: Graph, pts: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    x = pts.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad((graph.forward(x).reshape(x.shape[0], -1) @ c).sum(), x)
    return g


def _points(graph: Graph, ball: LpBall, c: torch.Tensor, seed: int) -> torch.Tensor:
    """Samples, vertices and points after projected ascent on ``||grad||_q``, ``(N, M, ...)``."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.cat([ball.sample(48, generator=gen), ball.vertices(16, generator=gen)], 1)
    n, m = pts.shape[:2]
    flat = pts.reshape(n * m, *pts.shape[2:])
    q = dual_norm(ball.p)
    big = LpBall(ball.center.repeat_interleave(m, 0), ball.eps.repeat_interleave(m, 0), ball.p)
    eps = big.eps.view(-1, *([1] * (flat.dim() - 1)))
    for t in range(6):
        x = flat.detach().clone().requires_grad_(True)
        out = graph.forward(x).reshape(x.shape[0], -1) @ c
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        norm = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), q, dim=1)
        if not norm.requires_grad:
            break
        (step,) = torch.autograd.grad(norm.sum(), x)
        flat = big.project(flat + eps * step.sign() * (0.5 / (1 + t)))
    return torch.cat([pts, flat.detach().reshape(pts.shape)], 1)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "softplus"])
def test_gradient_graph_is_the_gradient(act: str) -> None:
    graph = residual_mlp(act, 1)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    gg = graph_gradient_graph(graph, c).graph
    assert gg is not None
    assert torch.allclose(gg.forward(x), _grads(graph, x, c), atol=1e-12)


@pytest.mark.parametrize("alpha", [NO_ALPHA, JacobianAlpha(6, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("which", ["relu", "tanh", "leaky_relu", "cnn"])
def test_sound_on_residual_graphs(
    which: str, p: float, dtype: torch.dtype, alpha: JacobianAlpha
) -> None:
    graph64 = residual_cnn(2) if which == "cnn" else residual_mlp(which, 2)
    graph = graph64.to(dtype=dtype)
    graph64 = graph.to(dtype=F64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, *graph.input_shape, generator=gen, dtype=F64)
    c = torch.tensor([1.0, -1.0, 0.0][: graph.num_outputs], dtype=F64)
    radius = {math.inf: 0.15, 2.0: 0.4, 1.0: 0.8}[p]
    ball = LpBall.make(x, radius, p)
    pts = _points(graph64, ball, c, 3)
    true = torch.stack([_grads(graph64, pts[i], c) for i in range(2)])  # (N, M, *in)
    jb = jacobian_bounds(
        graph, LpBall.make(x.to(dtype), radius, p), c.view(1, -1), "crown-jacobian", alpha=alpha
    )
    lo, up = jb.lower[:, 0].double().unsqueeze(1), jb.upper[:, 0].double().unsqueeze(1)
    tol = 1e-9 if dtype == F64 else 2e-5
    scale = 1 + torch.maximum(lo.abs(), up.abs())
    assert bool((true >= lo - tol * scale).all())
    assert bool((true <= up + tol * scale).all())
    norms = torch.linalg.vector_norm(true.reshape(2, true.shape[1], -1), dual_norm(p), dim=-1)
    lip = lipschitz_from_jacobian(jb, p)[:, 0].double()
    assert bool((lip >= norms.amax(1) * (1 - tol)).all())


def test_chain_graph_gets_the_chain_bounds_and_unsupported_ops_refused() -> None:
    net = random_network("tanh", [4, 6, 3], seed=4)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    ball = LpBall.make(x, 0.1, math.inf)
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=F64)
    a = jacobian_bounds(net, ball, C, "crown-jacobian")
    b = jacobian_bounds(network_to_graph(net), ball, C, "crown-jacobian")
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    g = residual_mlp("relu", 0)
    cat = Node("concat", ("a1", "d1"), "cc", attrs={"axis": 0})
    with pytest.raises(UnsupportedError, match="concat"):
        graph_gradient_graph(Graph((*g.nodes[:2], cat), (4,), "cc"), torch.ones(16, dtype=F64))
