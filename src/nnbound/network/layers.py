"""The layer records of the network IR.

Every layer is a frozen record holding tensors and a few integers; it knows how to map an input
of a given shape forward (``forward``) and its output shape (``out_shape``). Linear layers also
expose what bound propagation needs (``transpose`` -- the adjoint of the linear part -- and
``bias``), so a backward pass never needs a dense matrix for a conv or a reshape
(convex_adversarial's ``forward`` / ``T`` contract). Nothing computed during bounding is stored
on a layer.

Shapes never include the batch axis; tensors passed to ``forward`` have a leading batch axis and
tensors passed to ``transpose`` have any number of leading axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError

Shape = tuple[int, ...]

ACTIVATIONS: tuple[str, ...] = (
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "arctan",
    "softplus",
    "elu",
)
"""Element-wise activations the IR can hold (``alpha`` is the leaky slope or the ELU scale)."""


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    return (int(v[0]), int(v[1]))


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = W x + b`` on a flat input. ``weight`` is ``(out, in)``, ``bias`` is ``(out,)``."""

    weight: Tensor
    bias: Tensor

    def __post_init__(self) -> None:
        if self.weight.dim() != 2:
            raise InputError(
                f"Dense weight must be 2-D (out, in), got shape {tuple(self.weight.shape)}"
            )
        if self.bias.shape != (self.weight.shape[0],):
            raise InputError(
                f"Dense bias shape {tuple(self.bias.shape)} does not match weight "
                f"{tuple(self.weight.shape)}"
            )

    def out_shape(self, in_shape: Shape) -> Shape:
        if math.prod(in_shape) != self.weight.shape[1] or len(in_shape) != 1:
            raise InputError(
                f"Dense layer expects a flat input of {self.weight.shape[1]} features, "
                f"got shape {in_shape}"
            )
        return (int(self.weight.shape[0]),)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_linear(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.linear(r, self.weight.abs())

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        if a.dim() == 3:
            # One product per leading row, each of the same shape whatever the batch size, so
            # a row's result does not depend on which rows are bounded with it (a single
            # folded product picks kernels, hence rounding, by the total row count).
            return torch.bmm(a, self.weight.expand(a.shape[0], *self.weight.shape))
        return a @ self.weight

    def bias_map(self, out_shape: Shape) -> Tensor:
        return self.bias

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(frozen=True, eq=False)
class Conv2d:
    """A 2-D convolution on ``(C, H, W)`` inputs; ``weight`` is ``(out_c, in_c/groups, kh, kw)``."""

    weight: Tensor
    bias: Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        if self.weight.dim() != 4:
            raise InputError(f"Conv2d weight must be 4-D, got shape {tuple(self.weight.shape)}")
        if self.bias.shape != (self.weight.shape[0],):
            raise InputError(
                f"Conv2d bias shape {tuple(self.bias.shape)} does not match weight "
                f"{tuple(self.weight.shape)}"
            )
        object.__setattr__(self, "stride", _pair(self.stride))
        object.__setattr__(self, "padding", _pair(self.padding))
        object.__setattr__(self, "dilation", _pair(self.dilation))

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3 or in_shape[0] != self.weight.shape[1] * self.groups:
            raise InputError(
                f"Conv2d expects input (C={self.weight.shape[1] * self.groups}, H, W), "
                f"got {in_shape}"
            )
        kh, kw = self.weight.shape[2:]
        h = (in_shape[1] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[
            0
        ] + 1
        w = (in_shape[2] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[
            1
        ] + 1
        if h <= 0 or w <= 0:
            raise InputError(f"Conv2d kernel {kh}x{kw} does not fit input {in_shape}")
        return (int(self.weight.shape[0]), int(h), int(w))

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def forward_linear(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, None)

    def forward_abs(self, r: Tensor) -> Tensor:
        return self._conv(r, self.weight.abs(), None)

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        lead = a.shape[:-3]
        flat = a.reshape(-1, *a.shape[-3:])
        out_shape = self.out_shape(in_shape)
        kh, kw = self.weight.shape[2:]
        # output_padding recovers the rows/columns the strided forward conv dropped.
        op = tuple(
            in_shape[1 + i]
            - (
                (out_shape[1 + i] - 1) * self.stride[i]
                - 2 * self.padding[i]
                + self.dilation[i] * ((kh, kw)[i] - 1)
                + 1
            )
            for i in range(2)
        )
        res = F.conv_transpose2d(
            flat, self.weight, None, self.stride, self.padding, op, self.groups, self.dilation
        )
        return res.reshape(*lead, *in_shape)

    def bias_map(self, out_shape: Shape) -> Tensor:
        return self.bias.view(-1, 1, 1).expand(out_shape)

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(frozen=True, eq=False)
class Flatten:
    """Flattens every non-batch axis (C-order, as ``torch.flatten(x, 1)``)."""

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    forward_linear = forward
    forward_abs = forward

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        return a.reshape(*a.shape[:-1], *in_shape)

    def bias_map(self, out_shape: Shape) -> None:
        return None

    def tensors(self) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True, eq=False)
class Reshape:
    """Reshapes the non-batch axes to ``shape`` (C-order)."""

    shape: Shape

    def out_shape(self, in_shape: Shape) -> Shape:
        if math.prod(in_shape) != math.prod(self.shape):
            raise InputError(f"cannot reshape {in_shape} to {self.shape}")
        return tuple(int(s) for s in self.shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    forward_linear = forward
    forward_abs = forward

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        return a.reshape(*a.shape[: a.dim() - len(self.shape)], *in_shape)

    def bias_map(self, out_shape: Shape) -> None:
        return None

    def tensors(self) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True, eq=False)
class Normalize:
    """``y = (x - mean) / std``, with ``mean``/``std`` broadcastable to the input shape.

    Kept explicit (rather than folded into the next affine layer) so that eps and the data
    range stay in the user's input space while the network still sees normalized inputs.
    """

    mean: Tensor
    std: Tensor

    def __post_init__(self) -> None:
        if bool((self.std == 0).any()):
            raise InputError("Normalize std contains zeros")

    def out_shape(self, in_shape: Shape) -> Shape:
        try:
            torch.broadcast_shapes(tuple(self.mean.shape), in_shape)
            torch.broadcast_shapes(tuple(self.std.shape), in_shape)
        except RuntimeError as exc:
            raise InputError(
                f"Normalize mean {tuple(self.mean.shape)} / std {tuple(self.std.shape)} "
                f"do not broadcast to input {in_shape}"
            ) from exc
        return in_shape

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def forward_linear(self, x: Tensor) -> Tensor:
        return x / self.std

    def forward_abs(self, r: Tensor) -> Tensor:
        return r / self.std.abs()

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        return a / self.std.expand(in_shape)

    def bias_map(self, out_shape: Shape) -> Tensor:
        return (-self.mean / self.std).expand(out_shape)

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std}


@dataclass(frozen=True, eq=False)
class Activation:
    """An element-wise activation ``name`` (one of :data:`ACTIVATIONS`).

    ``alpha`` is the negative-side slope of ``leaky_relu`` and the scale of ``elu``; other
    activations ignore it.
    """

    name: str
    alpha: float = field(default=0.0)

    def __post_init__(self) -> None:
        if self.name not in ACTIVATIONS:
            raise UnsupportedError(
                f"unsupported activation {self.name!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        if self.name == "elu" and self.alpha == 0.0:
            object.__setattr__(self, "alpha", 1.0)
        if not math.isfinite(self.alpha):
            raise InputError(f"activation {self.name} parameter alpha={self.alpha} is not finite")

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def forward(self, x: Tensor) -> Tensor:
        return activation_function(self.name, self.alpha)(x)

    def tensors(self) -> dict[str, Tensor]:
        return {}


def activation_function(name: str, alpha: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The torch function computing activation ``name`` (used by forward passes and relaxations)."""
    if name == "relu":
        return torch.relu
    if name == "leaky_relu":
        return lambda x: F.leaky_relu(x, alpha)
    if name == "tanh":
        return torch.tanh
    if name == "sigmoid":
        return torch.sigmoid
    if name == "arctan":
        return torch.atan
    if name == "softplus":
        return F.softplus
    if name == "elu":
        return lambda x: F.elu(x, alpha)
    raise UnsupportedError(f"unsupported activation {name!r}")


LinearLayer = Dense | Conv2d | Flatten | Reshape | Normalize
Layer = Dense | Conv2d | Flatten | Reshape | Normalize | Activation
LINEAR_TYPES = (Dense, Conv2d, Flatten, Reshape, Normalize)
