"""Import PyTorch models into the network IR.

Four ways in:

* :func:`from_torch` -- a live ``nn.Module`` (``nn.Sequential`` trees, or a module whose
  ``forward`` is a straight chain that ``torch.fx`` can trace).
* :func:`load_torchscript` -- a TorchScript archive written by ``torch.jit.save`` (the archive
  holds TorchScript code and tensors, no Python pickle code).
* :func:`load_exported` -- a ``torch.export`` program written by ``torch.export.save`` (``.pt2``).
* :func:`load_state_dict` -- just the tensors of a state dict; a state dict has no architecture,
  so it must be paired with an ``nn.Module`` and :func:`from_torch`.

All importers end the same way: the IR network and the original model run on the same random
input and must agree. A conversion that silently dropped part of a ``forward`` (an extra
``x * 2``, a skip connection the children order cannot show, ...) therefore becomes an
:class:`~nnbound.errors.UnsupportedError`, never a wrong network.

The IR is a chain, so every importer accepts only chains: one input, one output, and every
operation consumes the result of the operation before it. Element-wise affine maps
(``BatchNorm`` in eval mode, ``x - c``, ``x / c``, ``x * c``, ``x + c``) are folded into the
preceding ``Linear``/``Conv2d``, or become a :class:`~nnbound.network.layers.Normalize` layer when
they act on the input (nothing but reshapes and ``Normalize`` before them); anywhere else (e.g.
right after an activation) they are rejected.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from nnbound.errors import InputError, ModelFormatError, NnboundError, UnsupportedError
from nnbound.network.graph import Graph
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
    Shape,
)
from nnbound.network.network import Network
from nnbound.network.to_torch import (
    Arctan,
    NormalizeModule,
    ReshapeModule,
    activation_of_module,
)

__all__ = [
    "from_torch",
    "load_exported",
    "load_state_dict",
    "load_torchscript",
    "torch_archive_kind",
]


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


# ---------------------------------------------------------------------------------------------
# Operations (shared by torch.fx graphs, TorchScript graphs and torch.export graphs)
# ---------------------------------------------------------------------------------------------
_IDENTITY_OPS = frozenset({"contiguous", "clone", "detach", "alias", "lift_fresh_copy", "identity"})
_DROPOUT_OPS = frozenset({"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"})


def _registry_activation(
    b: _Builder, name: str, kw: Mapping[str, Any], where: str
) -> _Value | None:
    """Apply the registered activation torch calls ``name`` (:mod:`nnbound.ops`: ``relu``,
    ``tanh``, ``sigmoid``, ``atan`` and any other without a handler here), its parameter
    and settings read from ``kw``; ``None`` when no activation has that name."""
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import by_torch

    ops = [op for op in by_torch(name) if isinstance(op, ActivationOp)]
    if not ops:
        return None
    op = ops[0]
    alpha = op.read_settings(op.torch_settings, kw, f"{where}: {name}")
    if op.has_alpha and op.zero_alpha_is_default and alpha == 0.0:
        raise UnsupportedError(f"{where}: {name} with {op.torch_settings.alpha}=0")
    return b.activation(op.name, alpha, where)


def _get(kw: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in kw:
            return kw[n]
    return default


def _apply_op(b: _Builder, op: str, kw: dict[str, Any], where: str) -> Any:
    """Apply operation ``op`` (a base ATen name such as ``linear`` or ``view``) whose arguments
    ``kw`` are bound to ATen argument names (``self`` renamed ``input``)."""
    if op.endswith("_") and not op.startswith("_"):
        op = op[:-1]  # in-place variants (relu_) compute the same values
    x = kw.get("input")
    # The running activation may appear only where this operation expects it.
    expect = "mat1" if op == "addmm" else "input"
    if op in ("add", "mul", "rsub", "sub") and not isinstance(x, _Value):
        expect = "other"
    for name, value in kw.items():
        if name != expect and _contains(value, _Value):
            raise _NotAChain(
                f"{where}: {op} combines two intermediate values (only chains are supported)"
            )
    if op in ("size", "sym_size"):
        return _size_of(x, kw.get("dim"))
    if op == "getattr":
        attr = kw["name"]
        if attr == "shape":
            return _size_of(x, None)
        if attr == "dtype":
            return b.dtype
        if attr == "device":
            return b.device
        raise UnsupportedError(f"{where}: attribute {attr!r} of an intermediate tensor")
    if op == "dim":
        return len(x.shape) + 1
    if op == "addmm":
        a = kw.get("mat1")
        b.take(a, where)
        beta, alpha = float(_get(kw, "beta", default=1)), float(_get(kw, "alpha", default=1))
        wt = b.tensor(kw["mat2"], "weight", where)
        return b.dense(wt.t() * alpha, b.tensor(kw["input"], "bias", where) * beta, where)
    if op in ("add", "sub", "rsub", "mul") and expect == "other":
        # constant (op) x: commute where the operation allows it
        c, x = x, kw["other"]
        kw = {**kw, "input": x, "other": c}
        op = {"add": "add", "mul": "mul", "sub": "rsub", "rsub": "sub"}[op]
    b.take(x, where)
    if op == "linear":
        return b.dense(kw["weight"], kw.get("bias"), where)
    if op in ("mm", "matmul"):
        w = b.tensor(_get(kw, "mat2", "other"), "weight", where)
        if w.dim() != 2:
            raise UnsupportedError(f"{where}: {op} with a {w.dim()}-D constant")
        return b.dense(w.t(), None, where)
    if op in ("conv2d", "convolution", "_convolution"):
        if kw.get("transposed", False):
            raise UnsupportedError(f"{where}: transposed convolutions are not supported")
        if any(int(v) for v in _get(kw, "output_padding", default=[0])):
            raise UnsupportedError(f"{where}: convolution with output_padding")
        return b.conv2d(
            kw["weight"],
            kw.get("bias"),
            _get(kw, "stride", default=1),
            _get(kw, "padding", default=0),
            _get(kw, "dilation", default=1),
            int(_get(kw, "groups", default=1)),
            where,
        )
    if op == "leaky_relu":
        return b.activation("leaky_relu", float(_get(kw, "negative_slope", default=0.01)), where)
    if op in ("clamp", "clip", "hardtanh", "relu6", "clamp_min"):
        return _clamp(b, op, kw, where)
    if op == "elu":
        if (
            float(_get(kw, "scale", default=1)) != 1
            or float(_get(kw, "input_scale", default=1)) != 1
        ):
            raise UnsupportedError(f"{where}: ELU with scale/input_scale != 1 (SELU?)")
        alpha = float(_get(kw, "alpha", default=1.0))
        # ELU with alpha 0 is exactly ReLU (and the IR reads alpha 0 as the default 1)
        return b.activation("relu" if alpha == 0.0 else "elu", alpha, where)
    if op == "softplus":
        _check_softplus(
            float(_get(kw, "beta", default=1)), float(_get(kw, "threshold", default=20)), where
        )
        return b.activation("softplus", 0.0, where)
    if op in ("view", "reshape", "_unsafe_view", "_reshape_alias", "view_copy"):
        return b.view(list(_get(kw, "size", "shape")), where)
    if op == "flatten":
        return b.flatten(
            int(_get(kw, "start_dim", default=0)), int(_get(kw, "end_dim", default=-1)), where
        )
    if op == "unflatten":
        return b.unflatten(int(kw["dim"]), list(_get(kw, "sizes", "unflattened_size")), where)
    if op in _DROPOUT_OPS:
        if bool(_get(kw, "train", "training", default=True)):
            raise UnsupportedError(f"{where}: dropout in training mode (call model.eval())")
        return x
    if op in _IDENTITY_OPS:
        return x
    if op in ("batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training"):
        if bool(kw.get("training", False)):
            raise UnsupportedError(f"{where}: batch_norm in training mode (call model.eval())")
        out = b.batch_norm(
            kw.get("weight"),
            kw.get("bias"),
            kw.get("running_mean"),
            kw.get("running_var"),
            float(_get(kw, "eps", default=1e-5)),
            where,
        )
        return out if op == "batch_norm" else (out, None, None)
    if op in _POOL_OPS:
        return _pool(b, op, kw, where)
    if op in ("add", "sub", "rsub", "mul", "div", "true_divide", "neg"):
        return _elementwise(b, op, kw, where)
    out = _registry_activation(b, op, kw, where)
    if out is not None:
        return out
    raise UnsupportedError(f"{where}: unsupported operation {op!r}")


def _clamp(b: _Builder, op: str, kw: Mapping[str, Any], where: str) -> _Value:
    """``clamp``/``clip``/``hardtanh``/``relu6``/``clamp_min`` with constant bounds: ReLU when
    the bounds are ``[0, inf)``, the bounded ReLU when they are ``[0, c]`` with ``c > 0``."""
    if op == "relu6":
        lo, hi = 0.0, 6.0
    elif op == "hardtanh":
        lo = _get(kw, "min_val", default=-1.0)
        hi = _get(kw, "max_val", default=1.0)
    else:
        lo, hi = _get(kw, "min", default=None), _get(kw, "max", default=None)
    for v in (lo, hi):
        if _contains(v, _Value) or (isinstance(v, Tensor) and v.numel() != 1):
            raise UnsupportedError(f"{where}: {op} with tensor bounds")
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo == 0.0 and (hi is None or math.isinf(hi)):
        return b.activation("relu", 0.0, where)
    if lo == 0.0 and hi is not None and 0.0 < hi < math.inf:
        return b.activation("brelu", hi, where)
    raise UnsupportedError(
        f"{where}: {op}(min={lo}, max={hi}); only min=0 (ReLU) or min=0, max=c > 0 (the "
        "bounded ReLU) is supported"
    )


def _check_softplus(beta: float, threshold: float, where: str) -> None:
    if beta != 1 or threshold != 20:
        raise UnsupportedError(
            f"{where}: Softplus with beta={beta:g}, threshold={threshold:g}; only the default "
            "beta=1, threshold=20 is supported"
        )


_POOL_OPS = frozenset(
    {
        "avg_pool2d",
        "max_pool2d",
        "max_pool2d_with_indices",
        "adaptive_avg_pool2d",
        "_adaptive_avg_pool2d",
        "adaptive_max_pool2d",
        "fx_adaptive_max_pool2d",
        "mean",
    }
)


def _stride_or_kernel(v: Any) -> tuple[int, int] | None:
    """A pooling stride; None or ``[]`` (ATen's spelling) means the kernel size."""
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return None
    return _pair(v)


def _adaptive_kernel(shape: Shape, output_size: Any, where: str) -> tuple[int, int]:
    """The fixed kernel (= stride) of an adaptive pool from ``shape`` (C, H, W) to
    ``output_size``; torch's windows ``[floor(i H / o), ceil((i + 1) H / o))`` all have that
    size exactly when ``o`` divides ``H``."""
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    sizes = list(output_size)
    if len(sizes) == 1:
        sizes = sizes * 2
    kernel = []
    for i, o in enumerate(sizes[:2]):
        n = shape[1 + i]
        o = n if o is None else int(o)
        if o < 1 or n % o:
            raise UnsupportedError(
                f"{where}: adaptive pooling of {shape[1]}x{shape[2]} to output size "
                f"{tuple(sizes)} has windows of different sizes; only output sizes that "
                "divide the input size (a fixed pooling) are supported"
            )
        kernel.append(n // o)
    return (kernel[0], kernel[1])


def _pool(b: _Builder, op: str, kw: Mapping[str, Any], where: str) -> Any:
    """Average / max / adaptive pooling and ``mean`` over the two spatial axes."""
    shape = b.shape
    if len(shape) != 3:
        raise UnsupportedError(
            f"{where}: {op} of a value of shape {shape}; only 2-D pooling of (C, H, W) "
            "images is supported"
        )
    if op == "mean":
        dims = kw.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if sorted(int(d) % 4 for d in dims) != [2, 3] or kw.get("dtype") is not None:
            raise UnsupportedError(
                f"{where}: mean over dims {dims}; only the mean over the two spatial axes "
                "(global average pooling) is supported"
            )
        out = b.push(AvgPool2d((shape[1], shape[2])), where)
        if not bool(kw.get("keepdim", False)):
            out = b.push(Flatten(), where)  # (C, 1, 1) -> (C,): the same data order
        return out
    if op in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
        return b.push(AvgPool2d(_adaptive_kernel(shape, kw.get("output_size"), where)), where)
    if op in ("adaptive_max_pool2d", "fx_adaptive_max_pool2d"):
        if bool(kw.get("return_indices", False)):
            raise UnsupportedError(f"{where}: adaptive max pooling with return_indices=True")
        out = b.push(MaxPool2d(_adaptive_kernel(shape, kw.get("output_size"), where)), where)
        # ATen's adaptive_max_pool2d returns (values, indices); only the values can be used.
        return out if op == "fx_adaptive_max_pool2d" else (out, None)
    kernel = _pair(kw["kernel_size"])
    stride = _stride_or_kernel(kw.get("stride"))
    padding = _pair(_get(kw, "padding", default=0))
    ceil_mode = bool(_get(kw, "ceil_mode", default=False))
    try:
        if op == "avg_pool2d":
            if kw.get("divisor_override") is not None:
                raise UnsupportedError(f"{where}: avg_pool2d with divisor_override")
            cip = bool(_get(kw, "count_include_pad", default=True))
            return b.push(AvgPool2d(kernel, stride, padding, ceil_mode, cip), where)
        if bool(kw.get("return_indices", False)):
            raise UnsupportedError(f"{where}: max pooling with return_indices=True")
        dilation = _pair(_get(kw, "dilation", default=1))
        out = b.push(MaxPool2d(kernel, stride, padding, dilation, ceil_mode), where)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return (out, None) if op == "max_pool2d_with_indices" else out


def _size_of(x: Any, dim: Any) -> Any:
    if not isinstance(x, _Value):
        raise UnsupportedError("size() of something that is not the activation")
    full = (_BATCH, *x.shape)
    if dim is None:
        return full
    return full[int(dim)]


def _elementwise(b: _Builder, op: str, kw: Mapping[str, Any], where: str) -> _Value:
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c``, ``-x`` with constant ``c``."""
    one = torch.ones((), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    if op == "neg":
        return b.affine(-one, zero, "negation", where)
    c = kw.get("other")
    if isinstance(c, bool) or c is None:
        raise UnsupportedError(f"{where}: {op} with a non-numeric operand")
    c = torch.as_tensor(c).detach().double().to(b.device)
    alpha = float(kw["alpha"]) if kw.get("alpha") is not None else 1.0
    if op == "add":
        return b.affine(one, c * alpha, "addition of a constant", where, (-c * alpha, one))
    if op == "sub":
        return b.affine(one, -c * alpha, "subtraction of a constant", where, (c * alpha, one))
    if op == "rsub":  # c - alpha * x
        return b.affine(
            -alpha * one, c, "subtraction from a constant", where, (c / alpha, -one / alpha)
        )
    if op == "mul":
        return b.affine(c, zero, "multiplication by a constant", where)
    if kw.get("rounding_mode") is not None:
        raise UnsupportedError(f"{where}: division with rounding_mode={kw['rounding_mode']!r}")
    if bool((c == 0).any()):
        raise UnsupportedError(f"{where}: division by zero")
    return b.affine(1.0 / c, zero, "division by a constant", where, (zero, c))


# ---------------------------------------------------------------------------------------------
# Eager modules
# ---------------------------------------------------------------------------------------------
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


def _convert_module(b: _Builder, m: nn.Module, qualname: str) -> None:
    """Append the IR layers of module ``m`` (named ``qualname`` in the root) to ``b``."""
    where = f"{type(m).__name__} at {_where(qualname)}"
    if isinstance(m, nn.Sequential):
        for name, child in m.named_children():
            _convert_module(b, child, _join(qualname, name))
    elif isinstance(m, nn.Linear):
        b.dense(m.weight, m.bias, where)
    elif isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise UnsupportedError(f"{where}: padding_mode={m.padding_mode!r} (only 'zeros')")
        b.conv2d(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, where)
    elif isinstance(m, nn.Flatten):
        b.flatten(m.start_dim, m.end_dim, where)
    elif isinstance(m, nn.Unflatten):
        if isinstance(m.dim, str):
            raise UnsupportedError(f"{where}: named-tensor Unflatten")
        b.unflatten(m.dim, m.unflattened_size, where)
    elif isinstance(m, NormalizeModule):
        b.normalize(m.mean, m.std, where)
    elif isinstance(m, ReshapeModule):
        b.reshape(m.shape, where, verbatim=True)
    elif isinstance(m, Arctan):
        b.activation("arctan", 0.0, where)
    elif isinstance(m, nn.ReLU):
        b.activation("relu", 0.0, where)
    elif isinstance(m, nn.LeakyReLU):
        b.activation("leaky_relu", m.negative_slope, where)
    elif isinstance(m, nn.Tanh):
        b.activation("tanh", 0.0, where)
    elif isinstance(m, nn.Sigmoid):
        b.activation("sigmoid", 0.0, where)
    elif isinstance(m, nn.Softplus):
        _check_softplus(float(m.beta), float(m.threshold), where)
        b.activation("softplus", 0.0, where)
    elif isinstance(m, nn.ELU):
        b.activation("relu" if m.alpha == 0.0 else "elu", m.alpha, where)  # ELU(0) is ReLU
    elif isinstance(m, nn.Hardtanh):  # also nn.ReLU6 = Hardtanh(0, 6)
        _clamp(b, "hardtanh", {"min_val": m.min_val, "max_val": m.max_val}, where)
    elif isinstance(m, (nn.Identity, *_DROPOUT_MODULES)):
        pass  # dropout is the identity in eval mode, which is how the IR is used
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        b.batch_norm(m.weight, m.bias, m.running_mean, m.running_var, m.eps, where)
    elif isinstance(m, nn.AvgPool2d):
        _pool(
            b,
            "avg_pool2d",
            {
                "kernel_size": m.kernel_size,
                "stride": m.stride,
                "padding": m.padding,
                "ceil_mode": m.ceil_mode,
                "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override,
            },
            where,
        )
    elif isinstance(m, nn.MaxPool2d):
        kw = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}
        kw |= {"dilation": m.dilation, "ceil_mode": m.ceil_mode}
        _pool(b, "max_pool2d", {**kw, "return_indices": m.return_indices}, where)
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        _pool(b, "adaptive_avg_pool2d", {"output_size": m.output_size}, where)
    elif isinstance(m, nn.AdaptiveMaxPool2d):
        kw = {"output_size": m.output_size, "return_indices": m.return_indices}
        _pool(b, "fx_adaptive_max_pool2d", kw, where)
    elif (act := activation_of_module(m, where)) is not None:
        b.push(act, where)  # any other registered activation's module (nn.GELU, ...)
    elif any(True for _ in m.children()) or _has_own_forward_ops(m):
        _convert_custom(b, m, qualname)
    else:
        raise UnsupportedError(f"unsupported module {type(m).__name__} at {_where(qualname)}")


_KNOWN_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.Flatten,
    nn.Unflatten,
    NormalizeModule,
    ReshapeModule,
    Arctan,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.ELU,
    nn.Hardtanh,
    nn.Identity,
    *_DROPOUT_MODULES,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def _has_own_forward_ops(m: nn.Module) -> bool:
    """A childless module defined outside torch.nn may still be a traceable chain of ops
    (``forward`` calling ``torch.relu`` ...); torch.nn's own leaves are never traced."""
    return not type(m).__module__.startswith("torch.") and type(m).forward is not nn.Module.forward


class _ChainTracer(fx.Tracer):
    """Keeps the modules nnbound converts directly (and unknown torch.nn modules, so that the
    error can name them) as leaves; traces through custom containers."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.Sequential):
            return False
        if isinstance(m, _KNOWN_LEAVES):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _convert_custom(b: _Builder, m: nn.Module, qualname: str) -> None:
    """A module with its own ``forward``: trace it with torch.fx; where tracing fails
    (data-dependent control flow), fall back to running its children in registration order."""
    try:
        graph = _ChainTracer().trace(m)
    except NnboundError:
        raise
    except Exception as exc:  # tracing fails in many ways (TraceError, TypeError, ...)
        children = list(m.named_children())
        if not children:
            raise UnsupportedError(
                f"unsupported module {type(m).__name__} at {_where(qualname)} (torch.fx "
                f"cannot trace it: {_first_line(exc)})"
            ) from None
        b.notes.append(
            f"torch.fx could not trace {type(m).__name__} at {_where(qualname)} "
            f"({_first_line(exc)}), so its children were used in registration order"
        )
        previous, b.implicit_flatten = b.implicit_flatten, True
        try:
            for name, child in children:
                _convert_module(b, child, _join(qualname, name))
        finally:
            b.implicit_flatten = previous
        return
    _walk_fx(b, m, graph, qualname)


_FX_FUNCTIONS: dict[Any, tuple[str, tuple[str, ...]]] = {
    torch.relu: ("relu", ("input",)),
    F.relu: ("relu", ("input", "inplace")),
    torch.relu_: ("relu", ("input",)),
    F.relu_: ("relu", ("input",)),
    torch.tanh: ("tanh", ("input",)),
    F.tanh: ("tanh", ("input",)),
    torch.sigmoid: ("sigmoid", ("input",)),
    F.sigmoid: ("sigmoid", ("input",)),
    torch.atan: ("atan", ("input",)),
    torch.arctan: ("atan", ("input",)),
    F.leaky_relu: ("leaky_relu", ("input", "negative_slope", "inplace")),
    F.elu: ("elu", ("input", "alpha", "inplace")),
    torch.clamp: ("clamp", ("input", "min", "max")),
    torch.clip: ("clamp", ("input", "min", "max")),
    torch.clamp_min: ("clamp", ("input", "min")),
    F.hardtanh: ("hardtanh", ("input", "min_val", "max_val", "inplace")),
    F.relu6: ("relu6", ("input", "inplace")),
    F.softplus: ("softplus", ("input", "beta", "threshold")),
    torch.flatten: ("flatten", ("input", "start_dim", "end_dim")),
    torch.reshape: ("reshape", ("input", "shape")),
    torch.unflatten: ("unflatten", ("input", "dim", "sizes")),
    F.linear: ("linear", ("input", "weight", "bias")),
    F.conv2d: ("conv2d", ("input", "weight", "bias", "stride", "padding", "dilation", "groups")),
    F.avg_pool2d: (
        "avg_pool2d",
        (
            "input",
            "kernel_size",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
            "divisor_override",
        ),
    ),
    F.max_pool2d: (
        "max_pool2d",
        ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    ),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", ("input", "output_size")),
    F.adaptive_max_pool2d: (
        "fx_adaptive_max_pool2d",
        ("input", "output_size", "return_indices"),
    ),
    torch.mean: ("mean", ("input", "dim", "keepdim", "dtype")),
    F.dropout: ("dropout", ("input", "p", "training", "inplace")),
    F.batch_norm: (
        "batch_norm",
        ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    ),
    torch.add: ("add", ("input", "other")),
    torch.sub: ("sub", ("input", "other")),
    torch.mul: ("mul", ("input", "other")),
    torch.div: ("div", ("input", "other")),
    torch.neg: ("neg", ("input",)),
    operator.add: ("add", ("input", "other")),
    operator.sub: ("sub", ("input", "other")),
    operator.mul: ("mul", ("input", "other")),
    operator.truediv: ("div", ("input", "other")),
    operator.neg: ("neg", ("input",)),
    getattr: ("getattr", ("input", "name")),
}

_FX_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "relu": ("relu", ("input",)),
    "relu_": ("relu", ("input",)),
    "tanh": ("tanh", ("input",)),
    "sigmoid": ("sigmoid", ("input",)),
    "atan": ("atan", ("input",)),
    "arctan": ("atan", ("input",)),
    "clamp": ("clamp", ("input", "min", "max")),
    "clamp_": ("clamp", ("input", "min", "max")),
    "clip": ("clamp", ("input", "min", "max")),
    "clamp_min": ("clamp", ("input", "min")),
    "flatten": ("flatten", ("input", "start_dim", "end_dim")),
    "unflatten": ("unflatten", ("input", "dim", "sizes")),
    "size": ("size", ("input", "dim")),
    "dim": ("dim", ("input",)),
    "contiguous": ("contiguous", ("input",)),
    "clone": ("clone", ("input",)),
    "detach": ("detach", ("input",)),
    "add": ("add", ("input", "other")),
    "sub": ("sub", ("input", "other")),
    "mul": ("mul", ("input", "other")),
    "div": ("div", ("input", "other")),
    "neg": ("neg", ("input",)),
    "mean": ("mean", ("input", "dim", "keepdim", "dtype")),
}


def _bind(
    names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any], where: str
) -> dict[str, Any]:
    if len(args) > len(names):
        raise UnsupportedError(f"{where}: unexpected extra arguments")
    kw = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        kw["input" if k == "self" else k] = v
    return kw


def _fx_call_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", repr(t))


def _fx_activation(node: fx.Node, where: str) -> str:
    """The name of a torch function or tensor method outside the tables above that is a
    registered activation (``F.gelu``, ...: applied by :func:`_registry_activation`, its
    settings passed as keywords); UnsupportedError otherwise."""
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import by_torch

    name = _fx_call_name(node)
    from_torch = node.op == "call_method" or str(
        getattr(node.target, "__module__", None) or ""
    ).startswith("torch")
    if from_torch and any(isinstance(op, ActivationOp) for op in by_torch(name)):
        return name
    raise UnsupportedError(f"{where}: unsupported {node.op.replace('_', ' ')} {name!r}")


def _walk_fx(b: _Builder, root: nn.Module, graph: fx.Graph, qualname: str) -> None:
    env: dict[fx.Node, Any] = {}
    first = True

    def load(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n])

    for node in graph.nodes:
        where = (
            f"'{node.name}' ({_fx_call_name(node)}) in {type(root).__name__} at {_where(qualname)}"
        )
        if node.op == "placeholder":
            if first:
                env[node] = b.current
                first = False
            elif node.args:
                env[node] = node.args[0]  # an extra forward argument with a default value
            else:
                raise UnsupportedError(f"{where}: forward takes more than one input")
        elif node.op == "get_attr":
            obj: Any = root
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            env[node] = obj
        elif node.op == "call_module":
            args, kwargs = load(node.args), load(node.kwargs)
            if len(args) != 1 or kwargs:
                raise UnsupportedError(f"{where}: module called with several arguments")
            b.take(args[0], where)
            sub = root.get_submodule(str(node.target))
            _convert_module(b, sub, _join(qualname, str(node.target)))
            env[node] = b.current
        elif node.op in ("call_function", "call_method"):
            args, kwargs = load(node.args), load(node.kwargs)
            if not _contains((args, kwargs), _Value):
                if _contains((args, kwargs), _BatchSize) and node.target is not operator.getitem:
                    raise UnsupportedError(f"{where}: arithmetic on the batch size")
                # constant work (on parameters, shapes): just run it
                if node.op == "call_function":
                    env[node] = node.target(*args, **kwargs)
                else:
                    env[node] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
                continue
            if node.op == "call_method" and node.target in ("view", "reshape"):
                sizes = args[1:]
                if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
                    sizes = sizes[0]
                op, kw = "view", {"input": args[0], "size": list(sizes)}
            else:
                table = _FX_METHODS if node.op == "call_method" else _FX_FUNCTIONS
                try:
                    op, names = table[node.target]
                except (KeyError, TypeError):
                    op, names = _fx_activation(node, where), ("input",)
                kw = _bind(names, args, kwargs, where)
            env[node] = _apply_op(b, op, kw, where)
        elif node.op == "output":
            out = load(node.args[0])
            if not isinstance(out, _Value):
                raise UnsupportedError(
                    f"{type(root).__name__} at {_where(qualname)}: forward must return one tensor"
                )
            b.take(out, f"output of {type(root).__name__} at {_where(qualname)}")


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (the IR is the inference-time network), then restore the
    caller's per-module training flags."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in (*module.parameters(), *module.buffers()):
        if torch.is_floating_point(t):
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _check_input_shape(input_shape: Any) -> Shape:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a tuple of integers, got {input_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"input_shape must be non-empty with positive sizes, got {shape}")
    return shape


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------
def _verify(
    run: Callable[[Tensor], Any],
    net: Network,
    what: str,
    batch: int = 2,
    notes: Sequence[str] = (),
) -> None:
    """Run the original model and ``net`` on the same random batch; raise UnsupportedError
    if they disagree (the converted chain is not what the model computes)."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, *net.input_shape)
    if net.input_range is not None:
        lo, hi = net.input_range
        x = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x.to(device=net.device, dtype=net.dtype)
    with torch.no_grad():
        try:
            expected = run(x)
        except NnboundError:
            raise
        except Exception as exc:
            raise InputError(
                f"{what} fails on an input of shape {shape}: {_first_line(exc)} (is input_shape "
                "right?)"
            ) from None
        got = net.forward(x)
    if isinstance(expected, (tuple, list)) and len(expected) == 1:
        expected = expected[0]
    if not isinstance(expected, Tensor):
        raise UnsupportedError(f"{what} returns {type(expected).__name__}, not one tensor")
    if tuple(expected.shape) != tuple(got.shape):
        raise UnsupportedError(
            f"the converted network's output shape {tuple(got.shape)} differs from {what}'s "
            f"{tuple(expected.shape)}"
        )
    err = float((expected.double() - got.double()).abs().max())
    scale = max(1.0, float(expected.double().abs().max()))
    tol = 1e-9 if net.dtype == torch.float64 else 1e-4
    if not err <= tol * scale:  # also catches NaN
        raise UnsupportedError(
            f"the converted network does not reproduce {what} (max abs difference {err:.3g}); "
            "only chains of supported layers whose forward runs them in order are supported"
            + "".join(f"; {n}" for n in notes)
        )


# ---------------------------------------------------------------------------------------------
# Public: from_torch
# ---------------------------------------------------------------------------------------------
def from_torch(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network | Graph:
    """Convert an eval-mode ``nn.Module`` into a :class:`Network` (a :class:`Graph` when its
    ``forward`` is not a chain: see :func:`~nnbound.network.from_torch_graph.from_torch_graph`).

    Args:
        module: an ``nn.Sequential`` (nested Sequentials are flattened) or a module whose
            ``forward`` is a chain: ``torch.fx`` traces it, and ``call_module`` nodes plus
            ``torch.flatten``, ``x.view(x.size(0), -1)``, ``x.view(-1, N)``, ``reshape``,
            ``F.relu``/``torch.relu``/``torch.tanh``/``torch.sigmoid``/``F.leaky_relu``/``F.elu``
            and element-wise constant arithmetic are understood. A module that ``torch.fx``
            cannot trace is read as its children in registration order (inserting a Flatten
            before a Linear that receives an image); that guess is then checked.
            ``torch.clamp``/``clip``/``F.hardtanh``/``F.relu6`` with bounds ``[0, c]`` (the
            bounded ReLU) are understood.
            Supported modules: Linear, Conv2d (zero padding), Flatten, Unflatten, ReLU,
            LeakyReLU, Tanh, Sigmoid, Softplus (beta=1, threshold=20), ELU, ReLU6 /
            Hardtanh(0, c) (the bounded ReLU), Identity, Dropout
            (skipped), BatchNorm1d/2d (running statistics; folded into the preceding
            Linear/Conv2d, or a Normalize layer when acting on the input) and nnbound's own
            NormalizeModule/ReshapeModule/Arctan; AvgPool2d (no divisor_override), MaxPool2d
            (no return_indices), AdaptiveAvgPool2d / AdaptiveMaxPool2d whose output size
            divides the input size (a fixed pooling), and in traced code ``F.avg_pool2d``,
            ``F.max_pool2d``, the adaptive pools and ``mean`` over the two spatial axes.
        input_shape: shape of one input without the batch axis, e.g. ``(1, 28, 28)``.
        input_range: the data domain ``(low, high)`` of every input feature, or ``None``.
        name: network name (default: the module's class name).

    Returns:
        The network; its tensors are copies in the module's dtype (the first floating
        parameter's), on the module's device. A module with branches or skip connections
        (a tensor read twice, two computed tensors combined) comes back as a :class:`Graph`.

    Raises:
        UnsupportedError: a module or operation nnbound cannot represent (the message names
            it), or the converted network does not reproduce ``module`` on a random input.
        InputError: ``input_shape`` does not fit the module, or weights contain NaN/inf.

    The module is converted (and checked) in eval mode; its training flags are restored.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    shape = _check_input_shape(input_shape)
    dtype, device = _module_dtype_device(module)
    b = _Builder(shape, dtype, device, batch_literal=None)
    with _eval_mode(module), torch.no_grad():
        try:
            _convert_module(b, module, "")
        except _NotAChain:
            # residual / branching forward: the graph IR holds it (the graph importer runs
            # its own checks and names what it cannot convert)
            from nnbound.network.from_torch_graph import from_torch_graph

            return from_torch_graph(module, shape, name=name, input_range=input_range)
        net = Network(
            layers=tuple(b.layers),
            input_shape=shape,
            input_range=input_range,
            name=name or type(module).__name__,
            meta={"source": f"torch module {type(module).__name__}"},
        )
        _verify(module, net, f"{type(module).__name__}.forward", notes=b.notes)
    return net


# ---------------------------------------------------------------------------------------------
# Files: archive sniffing, state dicts
# ---------------------------------------------------------------------------------------------
def torch_archive_kind(path: str | Path) -> str | None:
    """What a PyTorch zip archive holds: ``"torchscript"``, ``"export"`` (torch.export ``.pt2``),
    ``"pickle"`` (``torch.save`` zip format), or ``None`` when ``path`` is no zip (e.g. the
    legacy ``torch.save`` format)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(
        n.endswith(("/archive_format", "serialized_exported_program.json"))
        or ("/models/" in n and n.endswith(".json"))
        for n in names
    ):
        return "export"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return None


def _require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"model file not found: {p}")
    return p


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            sd = dict(obj)
            # nn.DataParallel checkpoints prefix every key with "module."
            if all(k.startswith("module.") for k in sd):
                sd = {k[len("module.") :]: v for k, v in sd.items()}
            return sd
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap_state_dict(obj[key], path)
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise ModelFormatError(
            f"{path}: no state dict (a mapping of names to tensors) found; top-level keys: {keys}"
        )
    raise ModelFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a PyTorch state dict file (``torch.save(model.state_dict(), path)``).

    Reads both the zip and the legacy format with ``weights_only=True`` (no arbitrary pickle
    code runs), unwraps checkpoints that hold the state dict under a key such as
    ``"state_dict"`` or ``"model"``, and strips ``nn.DataParallel``'s ``"module."`` prefix.
    Tensors are on the CPU.

    Raises:
        ModelFormatError: missing, corrupt or truncated file, a TorchScript/export archive, a
            pickled whole model, or no state dict inside.
    """
    p = _require_file(path)
    kind = torch_archive_kind(p)
    if kind == "torchscript":
        raise ModelFormatError(
            f"{p}: is a TorchScript archive, not a state dict (use load_torchscript)"
        )
    if kind == "export":
        raise ModelFormatError(
            f"{p}: is a torch.export program, not a state dict (use load_exported)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails on bad bytes with many exception types
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise ModelFormatError(
                f"{p}: contains pickled Python objects ({found.group(1)}; a whole pickled "
                "model?) that cannot be loaded safely; save model.state_dict() or a "
                "TorchScript/torch.export archive"
            ) from None
        msg = "weights-only unpickling failed" if "Weights only" in str(exc) else _first_line(exc)
        raise ModelFormatError(f"{p}: not a readable PyTorch file ({msg})") from None
    return _unwrap_state_dict(obj, p)


# ---------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------
_TS_KNOWN = frozenset(
    {
        "Sequential",
        "Linear",
        "Conv2d",
        "Flatten",
        "Unflatten",
        "ReLU",
        "LeakyReLU",
        "Tanh",
        "Sigmoid",
        "Softplus",
        "ELU",
        "Hardtanh",
        "ReLU6",
        "Identity",
        "AvgPool2d",
        "MaxPool2d",
        "AdaptiveAvgPool2d",
        "AdaptiveMaxPool2d",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "AlphaDropout",
        "BatchNorm1d",
        "BatchNorm2d",
        "NormalizeModule",
        "ReshapeModule",
        "Arctan",
    }
)


def _aten_call(kind: str, schema: str | None, args: list[Any]) -> Any:
    """Run an ATen operation of a TorchScript graph on constant arguments."""
    base = kind.split("::", 1)[1]
    packet = getattr(torch.ops.aten, base)
    if schema:
        overload = torch._C.parse_schema(schema).overload_name or "default"
        with contextlib.suppress(AttributeError):
            return getattr(packet, overload)(*args)
    return packet(*args)


_TS_CASTS = frozenset(
    {
        "prim::NumToTensor",
        "aten::Int",
        "aten::IntImplicit",
        "aten::ScalarImplicit",
        "aten::Float",
        "aten::FloatImplicit",
        "aten::Bool",
    }
)


def _ts_cast(kind: str, value: Any) -> Any:
    if isinstance(value, (_BatchSize, _Value)) or kind == "prim::NumToTensor":
        return value  # the batch size stays symbolic whatever its Python type
    if kind == "aten::ScalarImplicit":
        return value.item()
    if "Float" in kind:
        return float(value)
    if kind == "aten::Bool":
        return bool(value)
    return int(value)


def _walk_ts_nodes(b: _Builder, nodes: Any, env: dict[str, Any]) -> None:
    """Convert TorchScript graph nodes in order; ``env`` maps value names to what they hold:
    constants, the module (``self``), the running activation or the batch size."""
    for node in nodes:
        kind = node.kind()
        where = f"TorchScript node {kind}"
        args = [env[v.debugName()] for v in node.inputs()]
        outs = list(node.outputs())
        if kind == "prim::Constant":
            value: Any = outs[0].toIValue() if node.hasAttributes() else None
        elif kind == "prim::GetAttr":
            value = getattr(args[0], node.s("name"))
        elif kind == "prim::ListConstruct":
            value = list(args)
        elif kind == "prim::TupleConstruct":
            value = tuple(args)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            value = tuple(args[0])
        elif kind in ("prim::TupleIndex", "aten::__getitem__"):
            value = args[0][int(args[1])]
        elif kind in _TS_CASTS:
            value = _ts_cast(kind, args[0])
        elif kind == "prim::If":
            # Frozen modules keep shape checks (`if x.dim() != 2: raise ...`); with the shapes
            # known, the condition is a constant and the taken branch is walked inline.
            cond = args[0]
            if not isinstance(cond, bool):
                raise UnsupportedError(f"{where}: control flow that depends on the input")
            block = list(node.blocks())[0 if cond else 1]
            _walk_ts_nodes(b, block.nodes(), env)
            value = tuple(env[v.debugName()] for v in block.outputs())
        elif kind == "prim::RaiseException":
            raise InputError(f"the TorchScript module raises on this input: {args[0]}")
        elif kind.startswith("aten::"):
            schema = node.schema()
            schema = None if schema == "(no schema)" else schema
            if not _contains(args, _Value):
                if _contains(args, _BatchSize):
                    raise UnsupportedError(f"{where}: arithmetic on the batch size")
                value = _aten_call(kind, schema, args)
            else:
                if schema is None:
                    raise UnsupportedError(f"{where}: unsupported operation")
                names = [a.name for a in torch._C.parse_schema(schema).arguments]
                kw = _bind(names, args, {}, where)
                if "self" in kw:
                    kw["input"] = kw.pop("self")
                value = _apply_op(b, kind.split("::", 1)[1], kw, where)
        else:
            raise UnsupportedError(f"{where}: unsupported operation")
        if len(outs) == 1 and not (kind == "prim::If" or kind.endswith("Unpack")):
            env[outs[0].debugName()] = value
        elif outs:
            if not isinstance(value, (tuple, list)) or len(value) != len(outs):
                raise UnsupportedError(f"{where}: unsupported multi-output operation")
            for out, v in zip(outs, value, strict=True):
                env[out.debugName()] = v


def _walk_torchscript(b: _Builder, graph: Any, module: Any) -> None:
    inputs = list(graph.inputs())
    if len(inputs) != 2:
        raise UnsupportedError(f"TorchScript forward takes {len(inputs) - 1} inputs, expected one")
    env: dict[str, Any] = {inputs[0].debugName(): module, inputs[1].debugName(): b.current}
    _walk_ts_nodes(b, graph.nodes(), env)
    results = [env[v.debugName()] for v in graph.outputs()]
    if len(results) != 1 or not isinstance(results[0], _Value):
        raise UnsupportedError("TorchScript forward must return one tensor")
    b.take(results[0], "TorchScript output")


def _unknown_ts_modules(m: Any) -> list[str]:
    """Leaf submodules of a TorchScript archive that nnbound does not know (for messages)."""
    found = []
    for qual, sub in m.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        if kind not in _TS_KNOWN and not any(True for _ in sub.children()):
            found.append(f"{kind} at {_where(qual)}")
    return found


def load_torchscript(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network:
    """Convert a TorchScript archive (``torch.jit.save`` of a scripted or traced module).

    The archive is loaded with ``torch.jit.load(path, map_location="cpu")`` (TorchScript code
    and tensors, no Python pickle code), frozen in eval mode, and its graph -- a chain of ATen
    operations (``linear``, ``conv2d``, ``relu``, ``view``, ``flatten``, ``batch_norm`` ...) --
    is converted; the result is checked against the archive's own forward.

    Args:
        path: the archive.
        input_shape: one input's shape without the batch axis. Required unless the archive
            stores it, as a JSON extra file ``nnbound.json`` (``{"input_shape": [...]}``,
            written with ``torch.jit.save(m, path, _extra_files=...)``) or as a tuple
            attribute ``input_shape`` of the scripted module.
        input_range: data domain ``(low, high)``; default the stored one, else ``None``.
        name: network name (default: the file's stem).
    """
    p = _require_file(path)
    extra = {"nnbound.json": ""}
    try:
        with warnings.catch_warnings():
            # torch marks the TorchScript API deprecated; loading a user's archive is still
            # the point here, so that warning is not the user's concern.
            warnings.simplefilter("ignore")
            m = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # RuntimeError for bad archives, others for truncated files
        raise ModelFormatError(
            f"{p}: not a readable TorchScript archive ({_first_line(exc)})"
        ) from None
    stored: dict[str, Any] = {}
    if extra["nnbound.json"]:
        try:
            stored = json.loads(extra["nnbound.json"])
        except (json.JSONDecodeError, TypeError):
            raise ModelFormatError(f"{p}: extra file nnbound.json is not JSON") from None
    if input_shape is None:
        input_shape = stored.get("input_shape")
    if input_shape is None:
        with contextlib.suppress(AttributeError, RuntimeError):
            attr = m.input_shape
            if isinstance(attr, (tuple, list)):
                input_shape = attr
    if input_shape is None:
        raise InputError(
            f"{p}: a TorchScript archive does not record its input shape; pass input_shape"
        )
    if input_range is None and stored.get("input_range") is not None:
        input_range = tuple(stored["input_range"])
    shape = _check_input_shape(input_shape)
    m.eval()
    dtype = torch.get_default_dtype()
    for t in (*m.parameters(), *m.buffers()):
        if torch.is_floating_point(t):
            dtype = t.dtype
            break
    b = _Builder(shape, dtype, torch.device("cpu"), batch_literal=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(m)
        graph = frozen.graph
        owner: Any = frozen
    except Exception:  # freezing can fail on exotic modules; walk the unfrozen graph
        graph, owner = m.inlined_graph, m
    try:
        with torch.no_grad():
            _walk_torchscript(b, graph, owner)
    except UnsupportedError as exc:
        unknown = _unknown_ts_modules(m)
        hint = f" (the archive contains {', '.join(unknown)})" if unknown else ""
        raise UnsupportedError(f"{p}: {exc}{hint}") from None
    net = Network(
        layers=tuple(b.layers),
        input_shape=shape,
        input_range=input_range,
        name=name or p.stem,
        meta={"source": str(p), "format": "torchscript"},
    )
    _verify(m, net, f"the TorchScript module in {p.name}")
    return net


# ---------------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------------
def _walk_exported(b: _Builder, graph: fx.Graph, consts: Mapping[str, Tensor], user: str) -> None:
    """Convert the chain of ATen ``call_function`` nodes of a torch.export graph."""
    env: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node.name] = b.current if node.name == user else consts[node.name]
            continue
        if node.op == "output":
            out = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
            if not isinstance(out, _Value):
                raise UnsupportedError("the exported program must return one tensor")
            b.take(out, "output")
            continue
        if node.op != "call_function":
            raise UnsupportedError(f"node {node.name}: unsupported {node.op}")
        args = fx.node.map_arg(node.args, lambda n: env[n.name])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
        target = node.target
        where = f"node {node.name} ({target})"
        if target is operator.getitem:
            env[node.name] = args[0][args[1]]
            continue
        schema = getattr(target, "_schema", None)
        if schema is None:
            raise UnsupportedError(f"{where}: unsupported operation")
        if not _contains((args, kwargs), (_Value, _BatchSize)):
            env[node.name] = target(*args, **kwargs)
            continue
        names = [a.name for a in schema.arguments]
        kw = _bind(names, args, kwargs, where)
        if "self" in kw:
            kw["input"] = kw.pop("self")
        env[node.name] = _apply_op(b, schema.name.split("::", 1)[1], kw, where)


def load_exported(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network:
    """Convert a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``).

    The graph's ``call_function`` nodes must form a chain of supported ATen operations, either
    as exported (``aten.linear``, ``aten.conv2d``, ``aten.batch_norm``, ``aten.view``,
    ``aten.flatten``, ``aten.relu``, ``aten.tanh`` ...) or after ``run_decompositions``
    (``aten.addmm`` with ``aten.permute``/``aten.t`` of the weight, ``aten.convolution``,
    ``aten._native_batch_norm_legit_no_training``); parameters come from the program's state
    dict and constants. The input shape comes from the example input (``input_shape``, if
    given, must agree). The result is checked against ``ep.module()``.
    """
    p = _require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-internal deprecation noise while loading
            ep = torch.export.load(str(p))
    except Exception as exc:  # corrupt archives fail in many ways inside the deserializer
        raise ModelFormatError(
            f"{p}: not a readable torch.export archive ({_first_line(exc)})"
        ) from None
    sig = ep.graph_signature
    consts: dict[str, Any] = {}
    user: list[str] = []
    for spec in sig.input_specs:
        kind = spec.kind.name
        arg_name = getattr(spec.arg, "name", None)
        if kind == "USER_INPUT":
            user.append(arg_name)
        elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            if spec.target in ep.state_dict:
                consts[arg_name] = ep.state_dict[spec.target]
            elif spec.target in ep.constants:
                consts[arg_name] = ep.constants[spec.target]
            else:
                raise ModelFormatError(f"{p}: tensor {spec.target!r} missing from the archive")
        else:
            raise UnsupportedError(f"{p}: exported program input of kind {kind}")
    if len(user) != 1:
        raise UnsupportedError(f"{p}: exported program takes {len(user)} inputs, expected one")
    outputs = [s for s in sig.output_specs if s.kind.name == "USER_OUTPUT"]
    if len(outputs) != 1 or len(outputs) != len(sig.output_specs):
        raise UnsupportedError(
            f"{p}: exported program must return one tensor and mutate nothing (was it exported "
            "in training mode?)"
        )
    nodes = {n.name: n for n in ep.graph.nodes}
    val = nodes[user[0]].meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise ModelFormatError(f"{p}: the exported program records no example input shape")
    dims = list(val.shape)
    if len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
        raise UnsupportedError(f"{p}: example input shape {dims} must be (batch, fixed sizes...)")
    shape = tuple(int(d) for d in dims[1:])
    if input_shape is not None and _check_input_shape(input_shape) != shape:
        raise InputError(f"{p}: input_shape {tuple(input_shape)} differs from the exported {shape}")
    batch = int(dims[0]) if isinstance(dims[0], int) else None
    dtype = getattr(val, "dtype", torch.get_default_dtype())
    b = _Builder(shape, dtype, torch.device("cpu"), batch_literal=batch)
    try:
        with torch.no_grad():
            _walk_exported(b, ep.graph, consts, user[0])
    except UnsupportedError as exc:
        raise UnsupportedError(f"{p}: {exc}") from None
    net = Network(
        layers=tuple(b.layers),
        input_shape=shape,
        input_range=input_range,
        name=name or p.stem,
        meta={"source": str(p), "format": "torch.export"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = ep.module()
    _verify(module, net, f"the exported program in {p.name}", batch=batch or 2)
    return net
