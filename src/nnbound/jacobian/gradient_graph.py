"""The gradient graph of ``c . f(x)``: a :class:`Graph` over the same input ``x`` whose output
is ``grad_x (c . f)(x)``, for Jacobian bounds by bound propagation (Shi et al., NeurIPS 2022).

For a chain ``f = L_K o act o ... o act o L_1`` (linear layers ``L_i``, pre-activations
``z_i``) the gradient is ``g_0`` of the backward recursion

    g_K = c,   g_{i-1} = L_i^T h_i  (linear layers),   h_i = act'(z_i) * g_i  (activations).

The graph holds the forward nodes up to the last pre-activation (``z_i``, shared with the
network so bound methods see one ``x``), a :mod:`~nnbound.ops.derivative` node per
activation, a transposed linear node per linear layer (dense with ``W^T``, conv_transpose2d
for a convolution, reshape for flatten / reshape, a scale by ``1 / std`` for normalize), and
a ``grad_mul`` (:mod:`nnbound.ops.gradient_product`) of each derivative with the gradient
above it. Everything after the last activation is the constant ``v = L_K^T ... c``, so the
first product is exact: a ``scale`` of the derivative by ``v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.network.chain_graph import layer_node
from nnbound.network.graph import Graph, Node, Shape
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Layer, Normalize, Reshape
from nnbound.network.network import Network
from nnbound.ops.derivative import SMOOTH_DERIVATIVES


@dataclass(frozen=True, eq=False)
class GradientGraph:
    """The gradient graph of one spec row.

    Attributes:
        graph: input ``x`` -> ``grad_x (c . f)(x)`` (shaped like the input); ``None`` when the
            network has no activation (the gradient is then ``constant``).
        preactivations: ``{activation layer index: tensor name of its input z_i}``.
        constant: the gradient of a network without activations, else ``None``.
    """

    graph: Graph | None
    preactivations: dict[int, str]
    constant: Tensor | None


def _tensor_in(i: int) -> str:
    """The tensor layer ``i`` of the chain reads (``network_to_graph``'s names)."""
    return "input" if i == 0 else f"t{i}"


def _transposed_node(layer: Layer, inp: str, out: str, in_shape: Shape, label: str) -> Node:
    """A node computing ``L^T g`` (the adjoint of linear ``layer``'s linear part)."""
    if isinstance(layer, Dense):
        w = layer.weight
        bias = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
        return Node("dense", (inp,), out, {"weight": w.t().contiguous(), "bias": bias}, {}, label)
    if isinstance(layer, (Flatten, Reshape)):
        return Node("reshape", (inp,), out, {}, {"shape": tuple(in_shape)}, label)
    if isinstance(layer, Normalize):
        scale = (1.0 / layer.std).expand(in_shape).contiguous()
        return Node("scale", (inp,), out, {"scale": scale}, {}, label)
    if isinstance(layer, Conv2d):
        out_shape = layer.out_shape(in_shape)
        kh, kw = layer.weight.shape[2:]
        pad = []
        for k, (size, size_out, s, p, d) in enumerate(
            zip(
                in_shape[1:],
                out_shape[1:],
                layer.stride,
                layer.padding,
                layer.dilation,
                strict=True,
            )
        ):
            full = (size_out - 1) * s - 2 * p + d * ((kh, kw)[k] - 1) + 1
            pad.append(size - full)  # rows the convolution's stride skipped at the end
        attrs = {
            "stride": layer.stride,
            "padding": layer.padding,
            "output_padding": tuple(pad),
            "dilation": layer.dilation,
            "groups": layer.groups,
        }
        return Node("conv_transpose2d", (inp,), out, {"weight": layer.weight}, attrs, label)
    raise UnsupportedError(
        f"crown-jacobian: no transposed node for {type(layer).__name__} layers (dense, conv2d, "
        "flatten, reshape and normalize are supported)"
    )


def gradient_graph(net: Network, c: Tensor) -> GradientGraph:
    """The gradient graph of ``c . net(x)`` (``c`` shaped like the output, or flat)."""
    layers, shapes = net.layers, net.shapes
    acts = [i for i, layer in enumerate(layers) if isinstance(layer, Activation)]
    for i, layer in enumerate(layers):
        if not isinstance(layer, (Activation, Dense, Conv2d, Flatten, Reshape, Normalize)):
            raise UnsupportedError(
                f"crown-jacobian: layer {i} is {type(layer).__name__}; supported are dense, "
                "conv2d, flatten, reshape, normalize and element-wise activations"
            )
    v = c.to(dtype=net.dtype, device=net.device).reshape(1, 1, *net.output_shape)
    last = acts[-1] if acts else -1
    # the constant part: everything after the last activation applied to c
    for i in range(len(layers) - 1, last, -1):
        layer = layers[i]
        assert not isinstance(layer, Activation)
        v = layer.transpose(v, shapes[i])
    if not acts:
        return GradientGraph(None, {}, v.reshape(net.input_shape))
    nodes = [layer_node(layers[i], _tensor_in(i), f"t{i + 1}", f"layer {i}") for i in range(last)]
    pre = {i: _tensor_in(i) for i in acts}
    grad: str | None = None  # the tensor holding the gradient; None while it is v
    for i in range(last, -1, -1):
        layer = layers[i]
        out = f"g{i}"
        if isinstance(layer, Activation):
            d = f"d{i}"
            attrs = {"of": layer.name, "alpha": float(layer.alpha)}
            nodes.append(Node("derivative", (_tensor_in(i),), d, {}, attrs, f"layer {i}'"))
            if grad is None:
                scale = v.reshape(shapes[i]).contiguous()
                nodes.append(Node("scale", (d,), out, {"scale": scale}, {}, f"layer {i} grad"))
            else:
                # smooth derivatives keep their lines in z (McCormick); the others enter as
                # intervals (see nnbound.ops.gradient_product)
                attrs = {"d_interval": layer.name not in SMOOTH_DERIVATIVES}
                nodes.append(Node("grad_mul", (d, grad), out, {}, attrs, f"layer {i} grad"))
        else:
            assert grad is not None
            nodes.append(_transposed_node(layer, grad, out, shapes[i], f"layer {i} grad"))
        grad = out
    assert grad is not None
    graph = Graph(
        tuple(nodes),
        net.input_shape,
        grad,
        input_range=net.input_range,
        name=f"gradient of {net.name}",
    )
    return GradientGraph(graph, pre, None)


__all__ = ["GradientGraph", "gradient_graph"]
