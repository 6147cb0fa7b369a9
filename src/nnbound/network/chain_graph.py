"""Conversions between the chain IR (:class:`Network`) and the graph IR (:class:`Graph`).

A chain is the special case of a graph whose nodes each read the previous node's output. The
conversion is lossless both ways for the layer types the chain holds, so a graph that happens
to be a chain takes the chain's fast paths (centre split, norm references, closed-form
first-block norms) and a chain can run on the general engine (alpha-CROWN, branch and bound).
"""

from __future__ import annotations

from dataclasses import fields

from nnbound.network.graph import Graph, Node
from nnbound.network.layers import (
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    Layer,
    MaxPool2d,
    Normalize,
    Reshape,
)
from nnbound.network.network import Network

_OP_OF_LAYER: dict[type, str] = {
    Dense: "dense",
    Conv2d: "conv2d",
    AvgPool2d: "avgpool2d",
    MaxPool2d: "maxpool2d",
    Flatten: "flatten",
    Reshape: "reshape",
    Normalize: "normalize",
}
_LAYER_OF_OP = {op: cls for cls, op in _OP_OF_LAYER.items()}


def layer_node(layer: Layer, inp: str, out: str, label: str = "") -> Node:
    """The graph node computing ``layer`` from tensor ``inp`` into tensor ``out``."""
    if isinstance(layer, Activation):
        attrs = {"alpha": layer.alpha} if layer.op.has_alpha else {}
        return Node(layer.name, (inp,), out, {}, attrs, label)
    tensors = layer.tensors()
    attrs = {f.name: getattr(layer, f.name) for f in fields(layer) if f.name not in tensors}
    return Node(_OP_OF_LAYER[type(layer)], (inp,), out, tensors, attrs, label)


def network_to_graph(net: Network) -> Graph:
    """The chain ``net`` as a graph (tensors ``input``, ``t1``, ``t2``, ...)."""
    nodes = []
    prev = "input"
    for i, layer in enumerate(net.layers):
        out = f"t{i + 1}"
        nodes.append(layer_node(layer, prev, out, f"layer {i}"))
        prev = out
    return Graph(
        tuple(nodes),
        net.input_shape,
        prev,
        input_range=net.input_range,
        name=net.name,
        meta=net.meta,
        empty_dtype=net.empty_dtype,
    )


def node_layer(node: Node) -> Layer | None:
    """The chain layer a node computes, or ``None`` when the chain IR has no such layer."""
    if node.op in _LAYER_OF_OP:
        return _LAYER_OF_OP[node.op](**node.params, **node.attrs)
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import OPS

    op = OPS.get(node.op)
    if isinstance(op, ActivationOp):
        alpha = op.alpha(node)  # the operator's default where the node has none
        if op.normalize_alpha(alpha) != alpha:
            return None  # a parameter the chain record reads as another (an ELU scale of 0)
        return Activation(node.op, alpha)
    return None


def graph_to_network(graph: Graph) -> Network | None:
    """The graph as a chain :class:`Network` when it is one of chain layers, else ``None``."""
    if not graph.is_chain:
        return None
    layers = []
    for node in graph.nodes:
        layer = node_layer(node)
        if layer is None:
            return None
        layers.append(layer)
    return Network(
        tuple(layers),
        graph.input_shape,
        graph.input_range,
        name=graph.name,
        meta=graph.meta,
        empty_dtype=graph.empty_dtype,
    )


__all__ = ["graph_to_network", "layer_node", "network_to_graph", "node_layer"]
