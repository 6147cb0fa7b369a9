"""Graph nodes for the torch modules a traced model calls as leaves (``call_module``).

:func:`convert_module` maps one module (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``,
pools, padding, upsampling, every registered activation, ...) applied to one input tensor to
graph nodes; :data:`LEAF_TYPES` are the module types the tracer keeps as leaves besides
torch.nn's own. A module type that is not handled raises UnsupportedError naming it.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from nnbound.errors import UnsupportedError
from nnbound.network import torch_layers as tl
from nnbound.network import torch_shapes as ts
from nnbound.network.to_torch import Arctan, NormalizeModule, ReshapeModule
from nnbound.network.torch_graph_builder import GraphBuilder, Sym
from nnbound.ops.registry import by_torch

LEAF_TYPES: tuple[type[nn.Module], ...] = (Arctan, NormalizeModule, ReshapeModule)
"""nnbound's own modules (:mod:`nnbound.network.to_torch`), kept whole by the tracer."""

_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_PADS = (
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
_REFLECT = (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d)
_REPLICATE = (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)


def _settings(m: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}


def _linear_layers(b: GraphBuilder, m: nn.Module, x: Sym) -> Sym | None:
    if isinstance(m, nn.Linear):
        return tl.linear(b, x, m.weight, m.bias)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            x = ts.pad_mode(b, x, m._reversed_padding_repeated_twice, m.padding_mode, 0.0)
            padding: Any = 0
        else:
            padding = m.padding
        return tl.conv2d(b, x, m.weight, m.bias, m.stride, padding, m.dilation, m.groups)
    if isinstance(m, nn.ConvTranspose2d):
        if m.padding_mode != "zeros":
            raise UnsupportedError(f"{b.where}: padding_mode={m.padding_mode!r}")
        return tl.conv_transpose2d(
            b, x, m.weight, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation
        )
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return tl.batch_norm(
            b, x, m.running_mean, m.running_var, m.weight, m.bias, m.eps, m.training
        )
    if isinstance(m, NormalizeModule):
        mean = b.per_sample(b.const(m.mean, "mean"), x.rank, "mean")
        std = b.per_sample(b.const(m.std, "std"), x.rank, "std")
        return b.emit("normalize", [x], {"mean": mean, "std": std})
    return None


def _pools(b: GraphBuilder, m: nn.Module, x: Sym) -> Sym | None:
    if isinstance(m, nn.AvgPool2d):
        return tl.pool2d(
            b,
            x,
            "avg",
            m.kernel_size,
            m.stride,
            m.padding,
            ceil_mode=m.ceil_mode,
            count_include_pad=m.count_include_pad,
            divisor_override=m.divisor_override,
        )
    if isinstance(m, nn.MaxPool2d):
        return tl.pool2d(
            b,
            x,
            "max",
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.ceil_mode,
            return_indices=m.return_indices,
        )
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return tl.adaptive_pool2d(b, x, "avg", m.output_size)
    if isinstance(m, nn.AdaptiveMaxPool2d):
        if m.return_indices:
            raise UnsupportedError(f"{b.where}: adaptive max pooling with return_indices=True")
        return tl.adaptive_pool2d(b, x, "max", m.output_size)
    return None


def _shapes(b: GraphBuilder, m: nn.Module, x: Sym, real: Tensor) -> Sym | None:
    if isinstance(m, _IDENTITY):
        return x  # dropout is the identity in eval mode, where the graph is used
    if isinstance(m, nn.Flatten):
        return ts.flatten(b, x, m.start_dim, m.end_dim, real)
    if isinstance(m, nn.Unflatten):
        if isinstance(m.dim, str):
            raise UnsupportedError(f"{b.where}: named-tensor Unflatten")
        return ts.same_batch_reshape(b, x, real, m.dim)
    if isinstance(m, ReshapeModule):
        return b.reshape(x, tl.resolve_sizes(b, m.shape, math.prod(x.shape)))
    if isinstance(m, _PADS):
        return ts.pad_mode(b, x, m.padding, "constant", m.value)
    if isinstance(m, _REFLECT):
        return ts.pad_mode(b, x, m.padding, "reflect", 0.0)
    if isinstance(m, _REPLICATE):
        return ts.pad_mode(b, x, m.padding, "replicate", 0.0)
    if isinstance(m, nn.Upsample):
        if m.mode not in ("nearest", "nearest-exact"):
            raise UnsupportedError(f"{b.where}: Upsample mode {m.mode!r} (only 'nearest')")
        return ts.resize_nearest(b, x, real)
    if isinstance(m, nn.Softmax):
        return ts.softmax(b, x, m.dim)
    return None


def _activations(b: GraphBuilder, m: nn.Module, x: Sym) -> Sym:
    if isinstance(m, Arctan):
        return b.emit("arctan", [x])
    if isinstance(m, nn.Hardtanh):  # also nn.ReLU6
        if m.min_val == 0.0:
            return tl.activation(b, x, "Hardtanh", _settings(m))
        return tl.clamp(b, x, m.min_val, m.max_val)
    name = type(m).__name__
    if isinstance(m, nn.Hardsigmoid) and not by_torch(name):
        return tl.hardsigmoid(b, x)
    if isinstance(m, nn.SiLU) and not by_torch(name):
        return tl.silu(b, x)
    if not by_torch(name):
        raise UnsupportedError(f"{b.where}: unsupported torch module {name}")
    return tl.activation(b, x, name, _settings(m))


def convert_module(
    b: GraphBuilder, m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any
) -> Any:
    """The graph value of module ``m`` called with ``args`` / ``kwargs`` (``real``: what it
    returns on the probe batch)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], Sym):
        raise UnsupportedError(
            f"{b.where}: {type(m).__name__} called with other arguments than one input tensor"
        )
    x = args[0]
    for convert in (_linear_layers, _pools):
        out = convert(b, m, x)
        if out is not None:
            return out
    out = _shapes(b, m, x, real)
    if out is not None:
        return out
    return _activations(b, m, x)


__all__ = ["LEAF_TYPES", "convert_module"]
