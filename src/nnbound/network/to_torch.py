"""Round-trip the IR to a plain ``torch.nn.Module`` (for training, gradients and export)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nnbound.errors import UnsupportedError
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


class NormalizeModule(nn.Module):
    """``(x - mean) / std`` with mean/std as buffers (so ``state_dict`` carries them)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ReshapeModule(nn.Module):
    """Reshape the non-batch axes to ``shape``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Arctan(nn.Module):
    """Element-wise arctan (torch has no module for it; the arctan operator's module)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.atan(x)


def activation_module(act: Activation) -> nn.Module:
    """The standard torch module for an IR activation (its registered operator's
    :meth:`~nnbound.ops.activation.ActivationOp.module`)."""
    return act.op.module(act.alpha)


def activation_of_module(m: nn.Module, where: str = "") -> Activation | None:
    """The IR activation a torch activation module computes, or ``None`` when ``m`` is no
    registered activation's module.

    ``m`` is activation ``op``'s when it is an instance of the class ``op``'s own module has
    (:meth:`~nnbound.ops.activation.ActivationOp.module`; ``nn.ReLU6`` is an ``nn.Hardtanh``)
    and keeps that class's ``forward``; its parameter is read from its attributes.

    Raises:
        UnsupportedError: ``m`` is such a module with settings that make it another function
            (``nn.Softplus(beta=2)``, ``nn.Hardtanh(-1, 1)``, ``nn.GELU("tanh")``).
    """
    from nnbound.network.layers import activation_names, activation_operator

    what = where or type(m).__name__
    settings = {k: v for k, v in vars(m).items() if not k.startswith("_")}
    for name in activation_names():
        op = activation_operator(name)
        try:
            ref = type(op.module(op.default_alpha))
        except UnsupportedError:
            continue
        if not isinstance(m, ref) or type(m).forward is not ref.forward:
            continue
        alpha = op.read_settings(op.torch_settings, settings, what)
        if op.zero_alpha_is_default and alpha == 0.0:
            # the chain IR reads 0 as the default: it cannot hold this one
            raise UnsupportedError(f"{what} with {op.torch_settings.alpha}=0")
        return Activation(name, alpha)
    return None


def layer_module(layer: Layer) -> nn.Module:
    if isinstance(layer, Dense):
        # Built in the weights' dtype: copying float64 weights into a float32 module would
        # round them.
        m = nn.Linear(
            layer.weight.shape[1],
            layer.weight.shape[0],
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        with torch.no_grad():
            m.weight.copy_(layer.weight)
            m.bias.copy_(layer.bias)
        return m
    if isinstance(layer, Conv2d):
        w = layer.weight
        m = nn.Conv2d(
            w.shape[1] * layer.groups,
            w.shape[0],
            tuple(w.shape[2:]),
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(layer.bias)
        return m
    if isinstance(layer, AvgPool2d):
        return nn.AvgPool2d(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.ceil_mode,
            layer.count_include_pad,
        )
    if isinstance(layer, MaxPool2d):
        return nn.MaxPool2d(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            ceil_mode=layer.ceil_mode,
        )
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Reshape):
        return ReshapeModule(layer.shape)
    if isinstance(layer, Normalize):
        return NormalizeModule(layer.mean, layer.std)
    if isinstance(layer, Activation):
        return activation_module(layer)
    raise TypeError(f"not an IR layer: {type(layer).__name__}")


def to_torch(net: Network) -> nn.Sequential:
    """An ``nn.Sequential`` computing exactly ``net.forward`` (parameters are copies)."""
    return nn.Sequential(*(layer_module(layer) for layer in net.layers))
