"""The state of a PyTorch -> chain conversion (:mod:`nnbound.network.from_torch`).

Every importer (a live module traced by ``torch.fx``, a TorchScript graph, a ``torch.export``
graph) walks its operations in order and hands them to one :class:`_Builder`, which appends IR
layers and tracks the shape after each. A value that depends on the network input is a
:class:`_Value` (the running activation); the batch size read from it is :data:`_BATCH`. Both
are kept apart from the importers so that the three walkers and the operation converters
(:mod:`nnbound.network.torch_chain_ops`) share one notion of "the chain so far": reading an
older value raises :class:`_NotAChain`, which sends the module to the graph importer.

The builder also folds element-wise affine maps (``BatchNorm``, ``x * c``, ``x - c`` ...) into
the preceding ``Dense`` / ``Conv2d`` / ``Normalize`` layer, since only there are they exact in
the chain IR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import (
    Activation,
    Conv2d,
    Dense,
    Flatten,
    Layer,
    Normalize,
    Reshape,
    Shape,
)


# ---------------------------------------------------------------------------------------------
# Abstract values flowing through a traced graph
# ---------------------------------------------------------------------------------------------
class _Value:
    """The running activation: the one tensor that depends on the network input.

    ``step`` identifies which IR prefix produced it (so a use of an older value -- a branch or
    a skip connection -- is detected), ``shape`` is its shape without the batch axis.
    """

    __slots__ = ("shape", "step")

    def __init__(self, step: int, shape: Shape) -> None:
        self.step = step
        self.shape = shape

    def __repr__(self) -> str:
        return f"<activation {self.shape} after layer {self.step}>"


class _BatchSize:
    """The batch size read from the activation (``x.size(0)``, ``x.shape[0]``): the only
    integer that may depend on the input, and only to be passed back to ``view``/``reshape``."""

    def __repr__(self) -> str:
        return "<batch size>"


_BATCH = _BatchSize()


class _NotAChain(UnsupportedError):
    """A branch or skip connection: the chain IR cannot hold it, so :func:`from_torch` hands
    the module to the graph importer (:mod:`nnbound.network.from_torch_graph`)."""


def _contains(obj: Any, cls: type) -> bool:
    if isinstance(obj, cls):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_contains(o, cls) for o in obj)
    if isinstance(obj, Mapping):
        return any(_contains(o, cls) for o in obj.values())
    return False


def _where(qualname: str) -> str:
    return f"'{qualname}'" if qualname else "the top-level module"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------------------------------------
# The builder: accumulates IR layers and the current shape
# ---------------------------------------------------------------------------------------------
class _Builder:
    """Appends IR layers for a chain of operations, tracking the shape after each.

    Every tensor handed to a layer is detached, copied and cast to ``dtype`` so the network
    never aliases the module's parameters (later training of the module leaves it intact).
    """

    def __init__(
        self,
        input_shape: Shape,
        dtype: torch.dtype,
        device: torch.device,
        batch_literal: int | None,
    ) -> None:
        self.layers: list[Layer] = []
        self.dtype = dtype
        self.device = device
        self.current = _Value(0, tuple(input_shape))
        # When tracing froze the batch size into the graph (torch.export with static shapes),
        # ``view(x, [B, -1])`` carries B as a plain integer; that integer means "the batch".
        self.batch_literal = batch_literal
        # Only the children-order fallback may insert a Flatten the module did not show.
        self.implicit_flatten = False
        # Guesses made along the way, reported if the final check fails.
        self.notes: list[str] = []

    @property
    def shape(self) -> Shape:
        return self.current.shape

    def tensor(self, value: Any, what: str, where: str) -> Tensor:
        if not isinstance(value, Tensor):
            try:
                value = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise UnsupportedError(
                    f"{where}: {what} must be a constant tensor, got {type(value).__name__}"
                ) from None
        if not torch.is_floating_point(value):
            value = value.to(torch.float64)
        return value.detach().to(device=self.device, dtype=self.dtype).clone()

    def take(self, value: Any, where: str) -> None:
        """Check that ``value`` is the current activation (the graph is a chain)."""
        if not isinstance(value, _Value):
            raise UnsupportedError(f"{where}: expected the running activation as input")
        if value is not self.current:
            raise _NotAChain(
                f"{where}: uses an earlier intermediate value (branches and skip connections "
                "are not supported: the IR is a chain of layers)"
            )

    def push(self, layer: Layer, where: str) -> _Value:
        try:
            shape = layer.out_shape(self.shape)
        except InputError as exc:
            raise InputError(f"{where}: {exc} (is input_shape right?)") from None
        self.layers.append(layer)
        self.current = _Value(len(self.layers), shape)
        return self.current

    def replace_last(self, layer: Layer) -> _Value:
        self.layers[-1] = layer
        self.current = _Value(len(self.layers), self.shape)
        return self.current

    # -- layers -------------------------------------------------------------------------------
    def dense(self, weight: Any, bias: Any, where: str) -> _Value:
        w = self.tensor(weight, "Linear weight", where)
        if w.dim() != 2:
            raise UnsupportedError(f"{where}: Linear weight must be 2-D, got {tuple(w.shape)}")
        b = (
            torch.zeros(w.shape[0], dtype=self.dtype, device=self.device)
            if bias is None
            else self.tensor(bias, "Linear bias", where)
        )
        if len(self.shape) != 1:
            if self.implicit_flatten and math.prod(self.shape) == w.shape[1]:
                self.push(Flatten(), where)
            elif self.shape[-1] == w.shape[1]:
                raise UnsupportedError(
                    f"{where}: Linear applied to the last axis of a {self.shape} input; only "
                    "flat inputs are supported (flatten first)"
                )
            else:
                raise InputError(
                    f"{where}: Linear expects {w.shape[1]} features but receives shape "
                    f"{self.shape} (is input_shape right?)"
                )
        return self.push(Dense(w, b), where)

    def conv2d(
        self,
        weight: Any,
        bias: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
        where: str,
    ) -> _Value:
        w = self.tensor(weight, "Conv2d weight", where)
        if w.dim() != 4:
            raise UnsupportedError(
                f"{where}: only 2-D convolutions are supported (weight shape {tuple(w.shape)})"
            )
        b = (
            torch.zeros(w.shape[0], dtype=self.dtype, device=self.device)
            if bias is None
            else self.tensor(bias, "Conv2d bias", where)
        )
        stride, dilation = _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                total = [dilation[i] * (w.shape[2 + i] - 1) for i in range(2)]
                if any(t % 2 for t in total):
                    # torch pads such kernels asymmetrically; the IR's padding is symmetric.
                    raise UnsupportedError(
                        f"{where}: padding='same' with an even kernel needs asymmetric padding"
                    )
                padding = (total[0] // 2, total[1] // 2)
            else:
                raise UnsupportedError(f"{where}: unknown Conv2d padding {padding!r}")
        return self.push(Conv2d(w, b, stride, _pair(padding), dilation, int(groups)), where)

    def activation(self, name: str, alpha: float, where: str) -> _Value:
        return self.push(Activation(name, float(alpha)), where)

    def reshape(self, target: Sequence[int], where: str, *, verbatim: bool = False) -> _Value:
        """Reshape the non-batch axes to ``target`` (Flatten when ``target`` is 1-D, unless
        ``verbatim`` asks for the exact Reshape record, as nnbound's ReshapeModule does)."""
        target = tuple(int(s) for s in target)
        if math.prod(target) != math.prod(self.shape):
            raise InputError(f"{where}: cannot reshape {self.shape} to {target}")
        if verbatim:
            return self.push(Reshape(target), where)
        if target == self.shape:
            return self.current
        return self.push(Flatten() if len(target) == 1 else Reshape(target), where)

    def view(self, entries: Sequence[Any], where: str) -> _Value:
        """``x.view(*entries)`` / ``x.reshape(*entries)`` where ``entries`` includes the batch."""
        entries = list(entries)
        if not entries:
            raise UnsupportedError(f"{where}: reshape to a scalar is not supported")
        first, rest = entries[0], entries[1:]
        total = math.prod(self.shape)
        if _contains(rest, _BatchSize) or not all(isinstance(e, int) for e in rest):
            raise UnsupportedError(f"{where}: reshape sizes {entries} are not constants")
        is_batch = first is _BATCH or (
            self.batch_literal is not None
            and isinstance(first, int)
            and first == self.batch_literal
        )
        if is_batch:
            target = _resolve_minus_one(rest, total, where)
        elif first == -1 and -1 not in rest and math.prod(rest) == total:
            # x.view(-1, 784): the -1 is the batch exactly when the rest covers one sample.
            target = list(rest)
        else:
            raise UnsupportedError(
                f"{where}: reshape to {entries} does not keep the batch axis (use "
                "x.view(x.size(0), -1) or x.view(-1, <features>))"
            )
        return self.reshape(target, where)

    def flatten(self, start_dim: int, end_dim: int, where: str) -> _Value:
        rank = len(self.shape) + 1  # with the batch axis
        start = start_dim + rank if start_dim < 0 else start_dim
        end = end_dim + rank if end_dim < 0 else end_dim
        if not (0 <= start < rank and 0 <= end < rank) or start > end:
            raise UnsupportedError(f"{where}: flatten({start_dim}, {end_dim}) on rank {rank}")
        if start == 0:
            if end == 0:
                return self.current
            raise UnsupportedError(f"{where}: flatten(start_dim=0) merges the batch axis")
        if start == end:
            return self.current
        s = self.shape
        target = (*s[: start - 1], math.prod(s[start - 1 : end]), *s[end:])
        return self.reshape(target, where)

    def unflatten(self, dim: int, sizes: Sequence[int], where: str) -> _Value:
        rank = len(self.shape) + 1
        d = dim + rank if dim < 0 else dim
        if not 1 <= d < rank:
            raise UnsupportedError(f"{where}: unflatten of dimension {dim} (the batch axis?)")
        s = self.shape
        inner = _resolve_minus_one([int(v) for v in sizes], s[d - 1], where)
        return self.reshape((*s[: d - 1], *inner, *s[d:]), where, verbatim=True)

    def normalize(self, mean: Any, std: Any, where: str) -> _Value:
        """An explicit Normalize record (nnbound's NormalizeModule), kept as is."""
        rank = len(self.shape)
        return self.push(
            Normalize(
                _drop_batch_axes(self.tensor(mean, "mean", where), rank),
                _drop_batch_axes(self.tensor(std, "std", where), rank),
            ),
            where,
        )

    def affine(
        self,
        scale: Tensor,
        shift: Tensor,
        what: str,
        where: str,
        mean_std: tuple[Tensor, Tensor] | None = None,
    ) -> _Value:
        """``y = x * scale + shift`` element-wise (``scale``/``shift`` broadcast to the shape).

        Folded into a preceding Dense (per unit) or Conv2d (per channel), composed with a
        preceding Normalize, or, on the input side, a new Normalize. ``mean_std`` is the same
        map as ``(x - mean) / std`` when the source wrote it that way, so a Normalize keeps
        the user's exact numbers rather than ``1 / (1 / std)``.
        """
        shape = self.shape
        scale = _drop_batch_axes(
            torch.as_tensor(scale, dtype=torch.float64, device=self.device), len(shape)
        )
        shift = _drop_batch_axes(
            torch.as_tensor(shift, dtype=torch.float64, device=self.device), len(shape)
        )
        for t in (scale, shift):
            try:
                ok = torch.broadcast_shapes(tuple(t.shape), shape) == shape
            except RuntimeError:
                ok = False
            if not ok:
                raise UnsupportedError(
                    f"{where}: {what} with a constant of shape {tuple(t.shape)} does not keep "
                    f"the activation shape {shape}"
                )
        last = self.layers[-1] if self.layers else None
        if isinstance(last, Dense):
            s = scale.expand(shape)
            w = last.weight.double() * s[:, None]
            b = last.bias.double() * s + shift.expand(shape)
            return self.replace_last(Dense(w.to(self.dtype), b.to(self.dtype)))
        if isinstance(last, Conv2d) and _per_channel(scale, shape) and _per_channel(shift, shape):
            c = shape[0]
            s = scale.expand(c, 1, 1).reshape(c)
            sh = shift.expand(c, 1, 1).reshape(c)
            w = last.weight.double() * s.view(-1, 1, 1, 1)
            b = last.bias.double() * s + sh
            return self.replace_last(
                Conv2d(
                    w.to(self.dtype),
                    b.to(self.dtype),
                    last.stride,
                    last.padding,
                    last.dilation,
                    last.groups,
                )
            )
        input_side = all(isinstance(layer, (Flatten, Reshape, Normalize)) for layer in self.layers)
        if not (isinstance(last, Normalize) or input_side):
            raise UnsupportedError(
                f"{where}: {what} after {type(last).__name__} cannot be folded; an element-wise "
                "affine map must follow a Linear/Conv2d or act on the input"
            )
        if mean_std is not None:
            mean, std = (
                _drop_batch_axes(
                    torch.as_tensor(t, dtype=torch.float64, device=self.device), len(shape)
                )
                for t in mean_std
            )
        else:
            if bool((scale == 0).any()):
                raise UnsupportedError(f"{where}: {what} multiplies some inputs by zero")
            mean, std = -shift / scale, 1.0 / scale
        if isinstance(last, Normalize):
            # ((x - m1) / s1 - m2) / s2 == (x - (m1 + m2 * s1)) / (s1 * s2)
            m1, s1 = last.mean.double(), last.std.double()
            mean, std = m1 + mean * s1, s1 * std
            return self.replace_last(Normalize(mean.to(self.dtype), std.to(self.dtype)))
        return self.push(Normalize(mean.to(self.dtype), std.to(self.dtype)), where)

    def batch_norm(
        self,
        weight: Any,
        bias: Any,
        running_mean: Any,
        running_var: Any,
        eps: float,
        where: str,
    ) -> _Value:
        if running_mean is None or running_var is None:
            raise UnsupportedError(
                f"{where}: BatchNorm without running statistics (track_running_stats=False) "
                "depends on the batch"
            )
        shape = self.shape
        c = shape[0] if shape else 0
        rm = torch.as_tensor(running_mean).detach().double().to(self.device)
        rv = torch.as_tensor(running_var).detach().double().to(self.device)
        if rm.shape != (c,):
            raise InputError(
                f"{where}: BatchNorm over {rm.numel()} features applied to shape {shape}"
            )
        gamma = (
            torch.ones(c, dtype=torch.float64, device=self.device)
            if weight is None
            else torch.as_tensor(weight).detach().double().to(self.device)
        )
        beta = (
            torch.zeros(c, dtype=torch.float64, device=self.device)
            if bias is None
            else torch.as_tensor(bias).detach().double().to(self.device)
        )
        view = (c,) + (1,) * (len(shape) - 1)
        sd = torch.sqrt(rv + float(eps))
        scale = (gamma / sd).view(view)
        shift = (beta - rm * gamma / sd).view(view)
        mean_std = None
        if bool((gamma != 0).all()):
            mean_std = ((rm - beta * sd / gamma).view(view), (sd / gamma).view(view))
        return self.affine(scale, shift, "BatchNorm", where, mean_std)


def _drop_batch_axes(t: Tensor, rank: int) -> Tensor:
    """Drop leading size-1 axes beyond ``rank``: a constant written for a batch, e.g. a
    ``(1, C, 1, 1)`` mean, acts per sample as ``(C, 1, 1)``."""
    while t.dim() > rank and t.shape[0] == 1:
        t = t[0]
    return t


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    if len(v) != 2:
        raise UnsupportedError(f"expected one or two integers, got {v}")
    return (int(v[0]), int(v[1]))


def _per_channel(t: Tensor, shape: Shape) -> bool:
    """Whether ``t`` broadcasts to ``shape`` with one value per channel (axis 0)."""
    c = (shape[0],) + (1,) * (len(shape) - 1)
    try:
        return torch.broadcast_shapes(tuple(t.shape), c) == c
    except RuntimeError:
        return False


def _resolve_minus_one(sizes: Sequence[int], total: int, where: str) -> list[int]:
    sizes = [int(v) for v in sizes]
    if sizes.count(-1) > 1:
        raise InputError(f"{where}: more than one -1 in reshape sizes {sizes}")
    if -1 in sizes:
        known = math.prod(v for v in sizes if v != -1)
        if known == 0 or total % known:
            raise InputError(f"{where}: cannot reshape {total} values to {sizes}")
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise InputError(f"{where}: cannot reshape {total} values to {sizes}")
    return sizes
