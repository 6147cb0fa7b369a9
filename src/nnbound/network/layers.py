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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError

if TYPE_CHECKING:
    from nnbound.ops.activation import ActivationOp

Shape = tuple[int, ...]


def activation_names() -> tuple[str, ...]:
    """The element-wise activations the IR can hold: every activation operator registered in
    :mod:`nnbound.ops.registry` (``alpha`` is the leaky slope, the ELU scale, the bounded
    ReLU's cap, ...)."""
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import OPS

    return tuple(name for name, op in OPS.items() if isinstance(op, ActivationOp))


def activation_operator(name: str) -> ActivationOp:
    """The registered activation operator ``name``; UnsupportedError naming the known ones."""
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import OPS

    op = OPS.get(name)
    if not isinstance(op, ActivationOp):
        raise UnsupportedError(
            f"unsupported activation {name!r}; supported: {', '.join(activation_names())}"
        )
    return op


def __getattr__(name: str) -> object:
    # ACTIVATIONS is read from the registry when asked for (importing the registry here would
    # be circular: its operators import this module).
    if name == "ACTIVATIONS":
        return activation_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            # Every row block in one product: a backward pass often carries a few rows per
            # image (a spec's 9 margins), and one product per image of so few rows ran at a
            # fraction of the matrix rate. A row's result can then differ, by rounding only,
            # with the rows bounded beside it (the kernel is picked by the total row count).
            return (a.reshape(-1, a.shape[-1]) @ self.weight).reshape(*a.shape[:2], -1)
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


def _pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Output length of a pooling window sweep, exactly as torch computes it
    (``pooling_output_shape``): with ``ceil_mode`` a last, partial window is kept only if it
    starts inside the input or its left padding."""
    span = d * (k - 1) + 1
    out = (size + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_settings(
    name: str,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] | None,
    padding: int | tuple[int, ...],
    dilation: int | tuple[int, ...],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Validated ``(kernel, stride, padding, dilation)`` pairs; ``stride=None`` means the
    kernel size (torch's default). Raises InputError naming the bad option."""
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    p, d = _pair(padding), _pair(dilation)
    if min(k) < 1:
        raise InputError(f"{name} kernel_size must be positive, got {k}")
    if min(s) < 1:
        raise InputError(f"{name} stride must be positive, got {s}")
    if min(d) < 1:
        raise InputError(f"{name} dilation must be positive, got {d}")
    if min(p) < 0 or p[0] > k[0] // 2 or p[1] > k[1] // 2:
        # torch's own limit; larger pads would make windows of padding only.
        raise InputError(f"{name} padding {p} must be between 0 and half the kernel size {k}")
    return k, s, p, d


def _check_pool_input(name: str, in_shape: Shape) -> None:
    if len(in_shape) != 3:
        raise InputError(f"{name} expects an input (C, H, W), got {in_shape}")


@dataclass(frozen=True, eq=False)
class AvgPool2d:
    """Average pooling on ``(C, H, W)`` inputs, exactly as ``torch.nn.AvgPool2d``.

    ``stride=None`` means the kernel size. A linear layer without bias: each output is the sum
    of its window's entries inside the input divided by a per-window divisor -- the window size
    (padding counted, ``count_include_pad=True``) or the number of entries inside the input
    (``count_include_pad=False``); a ``ceil_mode`` window that runs past the padded input counts
    only the part inside it, as torch does. :meth:`transpose` uses the same divisors, so it is
    the exact adjoint for every option. A global average pool is a kernel of the input's size.
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self) -> None:
        k, s, p, _ = _pool_settings(
            "AvgPool2d", self.kernel_size, self.stride, self.padding, (1, 1)
        )
        object.__setattr__(self, "kernel_size", k)
        object.__setattr__(self, "stride", s)
        object.__setattr__(self, "padding", p)
        object.__setattr__(self, "ceil_mode", bool(self.ceil_mode))
        object.__setattr__(self, "count_include_pad", bool(self.count_include_pad))

    @property
    def _stride(self) -> tuple[int, int]:
        assert self.stride is not None  # resolved in __post_init__
        return self.stride

    def out_shape(self, in_shape: Shape) -> Shape:
        _check_pool_input("AvgPool2d", in_shape)
        h, w = (
            _pool_out_size(
                in_shape[1 + i],
                self.kernel_size[i],
                self._stride[i],
                self.padding[i],
                1,
                self.ceil_mode,
            )
            for i in range(2)
        )
        if h <= 0 or w <= 0:
            raise InputError(f"AvgPool2d kernel {self.kernel_size} does not fit input {in_shape}")
        return (int(in_shape[0]), h, w)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(
            x, self.kernel_size, self._stride, self.padding, self.ceil_mode, self.count_include_pad
        )

    forward_linear = forward
    # Every weight (1 / divisor) is positive, so |W| r = W r.
    forward_abs = forward

    def divisors(self, in_shape: Shape) -> Tensor:
        """``(H_out, W_out)`` float64 divisor of each window (torch's AvgPool2d rule)."""
        _, h_out, w_out = self.out_shape(in_shape)
        axes = []
        for i, n_out in enumerate((h_out, w_out)):
            size, k, s, p = in_shape[1 + i], self.kernel_size[i], self._stride[i], self.padding[i]
            start = torch.arange(n_out, dtype=torch.float64) * s - p
            # A window ends at the kernel's end or at the end of the padded input (ceil_mode
            # windows may run past it); the divisor counts padding up to there, or only the
            # entries inside the input.
            end = torch.clamp(start + k, max=size + p)
            if self.count_include_pad:
                axes.append(end - start)
            else:
                axes.append(end.clamp(max=size) - start.clamp(min=0))
        return axes[0].unsqueeze(1) * axes[1].unsqueeze(0)

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        c, h, w = in_shape
        _, h_out, w_out = self.out_shape(in_shape)
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw) = self._stride, self.padding
        lead = a.shape[:-3]
        scaled = a.reshape(-1, 1, h_out, w_out) / self.divisors(in_shape).to(a.dtype).to(a.device)
        ones = torch.ones(1, 1, kh, kw, dtype=a.dtype, device=a.device)
        # Spread each window's coefficient over the whole (unpadded-coordinates) grid the
        # windows cover: grid row g is input row g - ph. Rows outside [0, H) are padding or a
        # ceil_mode overhang and are dropped; input rows no window reaches get zeros.
        full = F.conv_transpose2d(scaled, ones, stride=(sh, sw))
        gh, gw = full.shape[-2:]
        full = F.pad(full, (0, max(0, pw + w - gw), 0, max(0, ph + h - gh)))
        res = full[..., ph : ph + h, pw : pw + w]
        return res.reshape(*lead, c, h, w)

    def bias_map(self, out_shape: Shape) -> None:
        return None

    def tensors(self) -> dict[str, Tensor]:
        return {}


@functools.lru_cache(maxsize=64)
def _window_indices(
    h: int,
    w: int,
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
    d: tuple[int, int],
    h_out: int,
    w_out: int,
) -> tuple[Tensor, Tensor]:
    rows = torch.arange(h_out).unsqueeze(1) * s[0] - p[0] + torch.arange(k[0]).unsqueeze(0) * d[0]
    cols = torch.arange(w_out).unsqueeze(1) * s[1] - p[1] + torch.arange(k[1]).unsqueeze(0) * d[1]
    row_ok = (rows >= 0) & (rows < h)
    col_ok = (cols >= 0) & (cols < w)
    idx = rows[:, None, :, None] * w + cols[None, :, None, :]  # (H_out, W_out, kh, kw)
    valid = row_ok[:, None, :, None] & col_ok[None, :, None, :]
    idx = idx.reshape(h_out * w_out, k[0] * k[1]).T.contiguous()
    valid = valid.reshape(h_out * w_out, k[0] * k[1]).T.contiguous()
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


@dataclass(frozen=True, eq=False)
class MaxPool2d:
    """Max pooling on ``(C, H, W)`` inputs, exactly as ``torch.nn.MaxPool2d`` (padding is
    ``-inf``: it never wins). ``stride=None`` means the kernel size.

    Not a linear layer: bound methods relax it per window (:mod:`nnbound.relax.maxpool`).
    The linear-layer methods (``transpose``, ``bias_map``, ``forward_abs``) raise
    UnsupportedError so that code folding linear blocks refuses it clearly.
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        k, s, p, d = _pool_settings(
            "MaxPool2d", self.kernel_size, self.stride, self.padding, self.dilation
        )
        object.__setattr__(self, "kernel_size", k)
        object.__setattr__(self, "stride", s)
        object.__setattr__(self, "padding", p)
        object.__setattr__(self, "dilation", d)
        object.__setattr__(self, "ceil_mode", bool(self.ceil_mode))

    @property
    def _stride(self) -> tuple[int, int]:
        assert self.stride is not None  # resolved in __post_init__
        return self.stride

    def out_shape(self, in_shape: Shape) -> Shape:
        _check_pool_input("MaxPool2d", in_shape)
        out = []
        for i in range(2):
            size, k, s = in_shape[1 + i], self.kernel_size[i], self._stride[i]
            p, d = self.padding[i], self.dilation[i]
            n = _pool_out_size(size, k, s, p, d, self.ceil_mode)
            if n <= 0:
                raise InputError(
                    f"MaxPool2d kernel {self.kernel_size} does not fit input {in_shape}"
                )
            for o in range(n):
                # first kernel tap inside the input: a window of padding only has no maximum
                start = o * s - p
                first = max(0, -(start // d)) if start < 0 else 0
                if first >= k or start + first * d >= size:
                    raise InputError(
                        f"MaxPool2d on input {in_shape}: window {o} along axis {i + 1} lies "
                        f"entirely in the padding (kernel {self.kernel_size}, dilation "
                        f"{self.dilation}, padding {self.padding})"
                    )
            out.append(n)
        return (int(in_shape[0]), out[0], out[1])

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(
            x, self.kernel_size, self._stride, self.padding, self.dilation, self.ceil_mode
        )

    def windows(self, in_shape: Shape) -> tuple[Tensor, Tensor]:
        """``(index, valid)``, each ``(kh * kw, H_out * W_out)`` on the CPU: the flat position
        (in one ``H * W`` channel plane) of every kernel tap of every window, and whether that
        tap is inside the input (a padding tap has index 0 and ``valid`` False)."""
        _, h_out, w_out = self.out_shape(in_shape)
        return _window_indices(
            int(in_shape[1]),
            int(in_shape[2]),
            self.kernel_size,
            self._stride,
            self.padding,
            self.dilation,
            h_out,
            w_out,
        )

    def coverage(self, in_shape: Shape) -> int:
        """The largest number of windows any input entry belongs to (1 without overlap)."""
        idx, valid = self.windows(in_shape)
        counts = torch.bincount(idx[valid], minlength=in_shape[1] * in_shape[2])
        return int(counts.max())

    def _not_linear(self, *args: object) -> Tensor:
        raise UnsupportedError(
            "max pooling is not a linear layer; this computation folds linear layers and does "
            "not support MaxPool2d"
        )

    transpose = forward_linear = forward_abs = bias_map = _not_linear

    def tensors(self) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True, eq=False)
class Activation:
    """An element-wise activation ``name`` (one of :data:`ACTIVATIONS`: the registered
    activation operators, :mod:`nnbound.ops`, which hold everything about each).

    ``alpha`` is the activation's parameter where it has one: the negative-side slope of
    ``leaky_relu``, the scale of ``elu`` and the cap ``c`` of ``brelu`` (the bounded ReLU
    ``min(max(z, 0), c)``; ``c > 0``, default 1 as the CLEVER reference's
    ``K.relu(x, max_value=1)``); other activations ignore it. For ``elu`` and ``brelu`` an
    ``alpha`` of 0 means the default 1.
    """

    name: str
    alpha: float = field(default=0.0)

    def __post_init__(self) -> None:
        op = activation_operator(self.name)
        object.__setattr__(self, "alpha", op.normalize_alpha(self.alpha))
        if not math.isfinite(self.alpha):
            raise InputError(f"activation {self.name} parameter alpha={self.alpha} is not finite")
        if op.check_alpha is not None:
            op.check_alpha(self.alpha)

    @property
    def op(self) -> ActivationOp:
        """The registered operator (function, relaxation, traits, names)."""
        return activation_operator(self.name)

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def forward(self, x: Tensor) -> Tensor:
        return activation_function(self.name, self.alpha)(x)

    def tensors(self) -> dict[str, Tensor]:
        return {}


def activation_function(name: str, alpha: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The torch function computing activation ``name`` (used by forward passes and relaxations)."""
    op = activation_operator(name)
    assert op.function is not None
    return op.function(op.normalize_alpha(alpha))


LinearLayer = Dense | Conv2d | AvgPool2d | Flatten | Reshape | Normalize
Layer = Dense | Conv2d | AvgPool2d | Flatten | Reshape | Normalize | Activation | MaxPool2d
LINEAR_TYPES = (Dense, Conv2d, AvgPool2d, Flatten, Reshape, Normalize)
NONLINEAR_TYPES = (Activation, MaxPool2d)
"""Layers bound methods relax (element-wise activations and max pooling); every other layer is
linear."""
