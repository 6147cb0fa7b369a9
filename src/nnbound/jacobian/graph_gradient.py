"""The gradient graph of ``c . f(x)`` for a general :class:`Graph` (residual connections,
branches): reverse-mode differentiation written as graph nodes, for ``crown-jacobian``.

Nodes are visited in reverse topological order; each tensor's gradient is the sum of what its
consumers hand it (an ``add`` node where a residual tensor has several). Per forward node:

* a chain layer (dense, conv2d, flatten / reshape, normalize): its transposed node
  (:func:`nnbound.jacobian.gradient_graph._transposed_node`);
* an element-wise activation: ``derivative`` of its input times the gradient (``grad_mul``,
  or a ``scale`` while the gradient is still a constant);
* ``add`` / ``sub`` of same-shaped tensors (a residual sum): the gradient goes to every input
  (negated for ``sub``'s second), a constant term drops out.

While no activation has been crossed the gradient is a constant (``c`` carried back through
the linear nodes), folded as in the chain version; a sum of a constant and a computed
gradient is an ``add`` with a ``constant``. Anything else is refused clearly. The forward
nodes the derivatives read are kept under their own names; gradient tensors are named
``__grad<k>``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.jacobian.gradient_graph import GradientGraph, _transposed_node
from nnbound.network.chain_graph import node_layer
from nnbound.network.graph import Graph, Node
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Normalize, Reshape
from nnbound.ops.derivative import SMOOTH_DERIVATIVES

_LINEAR = (Dense, Conv2d, Flatten, Reshape, Normalize)


class _Builder:
    """Gradient contributions per tensor: constants summed, computed ones by name."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[Node] = []
        self.const: dict[str, Tensor] = {}
        self.named: dict[str, list[str]] = {}
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        name = f"__grad{self.count}"
        if name in self.graph.shapes:
            raise UnsupportedError(f"crown-jacobian: the graph already has a tensor {name!r}")
        return name

    def give(self, tensor: str, const: Tensor | None, name: str | None) -> None:
        if const is not None:
            old = self.const.get(tensor)
            self.const[tensor] = const if old is None else old + const
        if name is not None:
            self.named.setdefault(tensor, []).append(name)

    def take(self, tensor: str) -> tuple[Tensor | None, str | None]:
        """The gradient of ``tensor``: ``(constant, None)``, ``(None, name)``, or ``(None,
        None)`` when nothing depends on it."""
        const, names = self.const.get(tensor), self.named.get(tensor, [])
        if not names:
            return const, None
        if len(names) == 1 and const is None:
            return None, names[0]
        out = self.fresh()
        params = {} if const is None else {"constant": const.contiguous()}
        self.nodes.append(Node("add", tuple(names), out, params, {}, f"sum of {tensor}'s grads"))
        return None, out


def _check(node: Node) -> Activation | Dense | Conv2d | Flatten | Reshape | Normalize | None:
    """The chain layer of ``node``, ``None`` for add / sub; refuses anything else."""
    if node.op in ("add", "sub"):
        return None
    layer = node_layer(node)
    if isinstance(layer, (Activation, *_LINEAR)):
        return layer
    raise UnsupportedError(
        f"crown-jacobian: {node.where} is not supported in a gradient graph (dense, conv2d, "
        "flatten, reshape, normalize, add / sub of same-shaped tensors and element-wise "
        "activations are)"
    )


def graph_gradient_graph(graph: Graph, c: Tensor) -> GradientGraph:
    """The gradient graph of ``c . graph(x)`` (``c`` shaped like the output, or flat)."""
    shapes = graph.shapes
    forward = graph.ancestors(graph.output)
    layers = {node.output: _check(node) for node in forward}
    b = _Builder(graph)
    dtype, device = graph.dtype, graph.device
    b.give(graph.output, c.to(dtype=dtype, device=device).reshape(shapes[graph.output]), None)
    pre: set[str] = set()
    for node in reversed(forward):
        const, grad = b.take(node.output)
        if const is None and grad is None:
            continue
        layer = layers[node.output]
        if node.op in ("add", "sub"):
            if any(shapes[i] != shapes[node.output] for i in node.inputs):
                raise UnsupportedError(f"crown-jacobian: {node.where} broadcasts its inputs")
            for k, inp in enumerate(node.inputs):
                negate = node.op == "sub" and k == 1
                if const is not None:
                    b.give(inp, -const if negate else const, None)
                elif negate:
                    out = b.fresh()
                    minus = torch.full(shapes[inp], -1.0, dtype=dtype, device=device)
                    b.nodes.append(Node("scale", (grad,), out, {"scale": minus}, {}, node.where))
                    b.give(inp, None, out)
                else:
                    b.give(inp, None, grad)
            continue
        inp = node.inputs[0]
        if isinstance(layer, Activation):
            pre.add(inp)
            d = b.fresh()
            attrs = {"of": layer.name, "alpha": float(layer.alpha)}
            b.nodes.append(Node("derivative", (inp,), d, {}, attrs, f"{node.where}'"))
            out = b.fresh()
            if const is not None:
                scale = const.contiguous()
                b.nodes.append(Node("scale", (d,), out, {"scale": scale}, {}, node.where))
            else:
                assert grad is not None
                attrs = {"d_interval": layer.name not in SMOOTH_DERIVATIVES}
                b.nodes.append(Node("grad_mul", (d, grad), out, {}, attrs, node.where))
            b.give(inp, None, out)
        elif const is not None:
            assert layer is not None
            v = layer.transpose(const.reshape(1, 1, *shapes[node.output]), shapes[inp])
            b.give(inp, v.reshape(shapes[inp]), None)
        else:
            assert layer is not None and grad is not None
            out = b.fresh()
            b.nodes.append(_transposed_node(layer, grad, out, shapes[inp], node.where))
            b.give(inp, None, out)
    const, grad = b.take(graph.input_name)
    if grad is None:
        zero = torch.zeros(graph.input_shape, dtype=dtype, device=device)
        return GradientGraph(None, {}, zero if const is None else const)
    # forward nodes the derivatives read, before the gradient nodes
    keep: dict[str, Node] = {}
    for name in pre:
        for node in graph.ancestors(name):
            keep[node.output] = node
    order = [node for node in forward if node.output in keep]
    out_graph = Graph(
        (*order, *b.nodes),
        graph.input_shape,
        grad,
        input_range=graph.input_range,
        name=f"gradient of {graph.name}",
    )
    return GradientGraph(out_graph, {}, None)


__all__ = ["graph_gradient_graph"]
