"""Graph nodes for torch's layer-like operations, shared by the module converters
(:mod:`nnbound.network.torch_modules`) and the function converters
(:mod:`nnbound.network.torch_functions`): ``nn.Linear`` and ``F.linear`` are the same
``dense`` node, ``nn.BatchNorm2d`` and ``F.batch_norm`` the same ``scale`` node, and so on.

Every emitter takes the running :class:`~nnbound.network.torch_graph_builder.Sym` and torch's
own arguments, checks what the graph operator can hold and raises UnsupportedError (prefixed
with the torch call, ``b.where``) for anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.torch_graph_builder import GraphBuilder, Sym, axis
from nnbound.ops.activation import ActivationOp
from nnbound.ops.base import OpKind
from nnbound.ops.registry import by_torch


def pair(v: Any, where: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    try:
        a, c = (int(i) for i in v)
    except (TypeError, ValueError):
        raise UnsupportedError(f"{where}: expected one or two integers, got {v!r}") from None
    return (a, c)


def _need_rank(x: Sym, rank: int, what: str, b: GraphBuilder) -> None:
    if x.rank != rank:
        raise UnsupportedError(
            f"{b.where}: {what} on a per-sample shape {x.shape} (expects rank {rank})"
        )


# -- linear maps ----------------------------------------------------------------------------
def linear(b: GraphBuilder, x: Sym, weight: Any, bias: Any) -> Sym:
    """``x @ weight.T + bias`` over the last axis (``nn.Linear`` / ``F.linear``).

    On a flat sample this is one ``dense`` node. On ``(..., n)`` it is a 1x1 convolution over
    ``(n, P, 1)`` between transposes (``P`` = the other axes' size), which applies the same
    matrix to every row without a block-diagonal matrix of ``P`` copies."""
    w = b.const(weight, "weight")
    if w.dim() != 2:
        raise UnsupportedError(f"{b.where}: linear weight must be 2-D, got {tuple(w.shape)}")
    out_f, in_f = w.shape
    bias_t = (
        torch.zeros(out_f, dtype=b.dtype, device=b.device)
        if bias is None
        else b.const(bias, "bias")
    )
    if x.rank == 0 or x.shape[-1] != in_f:
        raise UnsupportedError(f"{b.where}: linear({in_f} -> {out_f}) on shape {x.shape}")
    if x.rank == 1:
        return b.emit("dense", [x], {"weight": w, "bias": bias_t})
    rows = math.prod(x.shape[:-1])
    t = b.reshape(x, (rows, in_f))
    t = b.emit("transpose", [t], attrs={"perm": (1, 0)})
    t = b.reshape(t, (in_f, rows, 1))
    t = b.emit(
        "conv2d",
        [t],
        {"weight": w.reshape(out_f, in_f, 1, 1), "bias": bias_t},
        {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
    )
    t = b.reshape(t, (out_f, rows))
    t = b.emit("transpose", [t], attrs={"perm": (1, 0)})
    return b.reshape(t, (*x.shape[:-1], out_f))


def _conv_padding(
    b: GraphBuilder, x: Sym, padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Sym, tuple[int, int]]:
    """Torch's ``padding`` (ints, ``'valid'``, ``'same'``) as symmetric conv padding, with an
    explicit ``pad`` node in front for the odd total of ``'same'``."""
    if padding == "valid":
        return x, (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if all(t % 2 == 0 for t in totals):
            return x, (totals[0] // 2, totals[1] // 2)
        # torch puts the extra row / column after (bottom / right)
        pads = ((0, 0), *((t // 2, t - t // 2) for t in totals))
        return b.emit("pad", [x], attrs={"pads": pads, "value": 0.0}), (0, 0)
    if isinstance(padding, str):
        raise UnsupportedError(f"{b.where}: convolution padding {padding!r}")
    return x, pair(padding, b.where)


def conv2d(
    b: GraphBuilder,
    x: Sym,
    weight: Any,
    bias: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Sym:
    """``F.conv2d`` on ``(C, H, W)``; a 1-D convolution's ``(C, L)`` runs as ``(C, L, 1)``."""
    w = b.const(weight, "weight")
    if w.dim() == 3 and x.rank == 2:  # conv1d
        t = b.reshape(x, (*x.shape, 1))
        s, d = (pair(stride, b.where)[0], 1), (pair(dilation, b.where)[0], 1)
        p = padding if isinstance(padding, str) else (pair(padding, b.where)[0], 0)
        out = conv2d(b, t, w.unsqueeze(-1), bias, s, p, d, groups)
        return b.reshape(out, out.shape[:2])
    if w.dim() != 4:
        raise UnsupportedError(f"{b.where}: convolution weight of shape {tuple(w.shape)}")
    _need_rank(x, 3, "conv2d", b)
    d = pair(dilation, b.where)
    x, p = _conv_padding(b, x, padding, (int(w.shape[2]), int(w.shape[3])), d)
    bias_t = (
        torch.zeros(w.shape[0], dtype=b.dtype, device=b.device)
        if bias is None
        else b.const(bias, "bias")
    )
    attrs = {"stride": pair(stride, b.where), "padding": p, "dilation": d, "groups": int(groups)}
    return b.emit("conv2d", [x], {"weight": w, "bias": bias_t}, attrs)


def conv_transpose2d(
    b: GraphBuilder,
    x: Sym,
    weight: Any,
    bias: Any,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> Sym:
    """``F.conv_transpose2d`` on ``(C, H, W)``."""
    w = b.const(weight, "weight")
    if w.dim() != 4:
        raise UnsupportedError(f"{b.where}: transposed convolution weight {tuple(w.shape)}")
    _need_rank(x, 3, "conv_transpose2d", b)
    out_c = int(w.shape[1]) * int(groups)
    bias_t = (
        torch.zeros(out_c, dtype=b.dtype, device=b.device)
        if bias is None
        else b.const(bias, "bias")
    )
    attrs = {
        "stride": pair(stride, b.where),
        "padding": pair(padding, b.where),
        "output_padding": pair(output_padding, b.where),
        "dilation": pair(dilation, b.where),
        "groups": int(groups),
    }
    return b.emit("conv_transpose2d", [x], {"weight": w, "bias": bias_t}, attrs)


def batch_norm(
    b: GraphBuilder,
    x: Sym,
    mean: Any,
    var: Any,
    weight: Any,
    bias: Any,
    eps: float,
    training: bool,
) -> Sym:
    """Batch norm with running statistics (eval mode): a per-channel ``scale`` node."""
    if training or mean is None or var is None:
        raise UnsupportedError(
            f"{b.where}: batch norm with batch statistics (training mode or "
            "track_running_stats=False); call model.eval() on a model with running statistics"
        )
    if x.rank == 0:
        raise UnsupportedError(f"{b.where}: batch norm on a scalar per sample")
    m = b.const(mean, "running_mean").reshape(-1)
    inv = 1.0 / torch.sqrt(b.const(var, "running_var").reshape(-1) + float(eps))
    g = inv if weight is None else b.const(weight, "weight").reshape(-1) * inv
    shift = -m * g if bias is None else b.const(bias, "bias").reshape(-1) - m * g
    if g.shape[0] != x.shape[0]:
        raise UnsupportedError(f"{b.where}: batch norm of {g.shape[0]} channels on {x.shape}")
    view = (-1, *([1] * (x.rank - 1)))
    return b.scale(x, g.reshape(view), shift.reshape(view))


# -- pooling --------------------------------------------------------------------------------
def pool2d(
    b: GraphBuilder,
    x: Sym,
    kind: str,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
    return_indices: bool = False,
) -> Sym:
    """``avgpool2d`` / ``maxpool2d`` nodes (``kind``) with torch's settings."""
    _need_rank(x, 3, f"{kind} pooling", b)
    if return_indices:
        raise UnsupportedError(f"{b.where}: max pooling with return_indices=True")
    if divisor_override is not None:
        raise UnsupportedError(f"{b.where}: avg_pool2d with divisor_override")
    k = pair(kernel_size, b.where)
    s = k if stride is None or stride == [] or stride == () else pair(stride, b.where)
    attrs: dict[str, Any] = {
        "kernel_size": k,
        "stride": s,
        "padding": pair(padding, b.where),
        "ceil_mode": bool(ceil_mode),
    }
    if kind == "avg":
        attrs["count_include_pad"] = bool(count_include_pad)
        return b.emit("avgpool2d", [x], attrs=attrs)
    attrs["dilation"] = pair(dilation, b.where)
    return b.emit("maxpool2d", [x], attrs=attrs)


def _window_means(n_in: int, n_out: int, b: GraphBuilder) -> Tensor:
    """The ``(n_out, n_in)`` matrix of adaptive average pooling along one axis: row ``i``
    averages inputs ``floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1``."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m.to(device=b.device, dtype=b.dtype)


def adaptive_pool2d(b: GraphBuilder, x: Sym, kind: str, output_size: Any) -> Sym:
    """An adaptive pool: a plain pool when the output size divides the input size, a nearest
    upsampling when the input size divides the output size (every window is one pixel), and
    for average pooling otherwise the separable map ``A_h X A_w^T`` (each window is a
    rectangle, so its mean is the mean over its rows of the means over its columns)."""
    _need_rank(x, 3, f"adaptive {kind} pooling", b)
    h, w = x.shape[1:]
    out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(out) != 2:
        raise UnsupportedError(f"{b.where}: adaptive pooling to {output_size!r}")
    oh, ow = (h if out[0] is None else int(out[0]), w if out[1] is None else int(out[1]))
    if oh <= 0 or ow <= 0:
        raise UnsupportedError(f"{b.where}: adaptive pooling to {oh}x{ow}")
    if h % oh == 0 and w % ow == 0:
        k = (h // oh, w // ow)
        return pool2d(b, x, kind, k, k, 0)
    if oh % h == 0 and ow % w == 0:
        return b.emit("resize_nearest", [x], attrs={"scales": (oh // h, ow // w)})
    if kind != "avg":
        raise UnsupportedError(
            f"{b.where}: adaptive max pooling of {h}x{w} to {oh}x{ow} (windows of different "
            "sizes; only sizes that divide one another)"
        )
    t = linear(b, x, _window_means(w, ow, b), None)  # (C, H, OW)
    t = b.emit("transpose", [t], attrs={"perm": (0, 2, 1)})
    t = linear(b, t, _window_means(h, oh, b), None)  # (C, OW, OH)
    return b.emit("transpose", [t], attrs={"perm": (0, 2, 1)})


# -- activations ----------------------------------------------------------------------------
def is_elementwise(name: str) -> bool:
    """Whether an element-wise operator (an activation, exp, log, ...) has torch name
    ``name``."""
    return any(op.kind is OpKind.ELEMENTWISE for op in by_torch(name))


_NO_SETTINGS = frozenset({"inplace", "out"})


def activation(b: GraphBuilder, x: Sym, name: str, settings: Mapping[str, Any]) -> Sym:
    """The registered element-wise operator torch calls ``name`` with ``settings`` (module
    attributes or call keywords); UnsupportedError when none is registered under that name or
    the settings make it another function. An activation reads its parameter from the
    settings; other element-wise operators (exp, log, ...) take none."""
    ops = [op for op in by_torch(name) if op.kind is OpKind.ELEMENTWISE]
    if not ops:
        raise UnsupportedError(f"{b.where}: unsupported activation {name!r}")
    error: UnsupportedError | None = None
    for op in ops:
        if not isinstance(op, ActivationOp):
            extra = {k: v for k, v in settings.items() if k not in _NO_SETTINGS and v is not None}
            if extra:
                error = UnsupportedError(f"{b.where}: {name} with settings {extra}")
                continue
            return b.emit(op.name, [x])
        try:
            alpha = op.read_settings(op.torch_settings, settings, b.where)
            if op.check_alpha is not None:
                op.check_alpha(op.normalize_alpha(alpha))
        except (UnsupportedError, InputError) as exc:
            error = exc if isinstance(exc, UnsupportedError) else UnsupportedError(str(exc))
            continue
        return b.emit(op.name, [x], attrs={"alpha": float(alpha)} if op.has_alpha else {})
    assert error is not None
    raise error


def _bound(b: GraphBuilder, v: Any, x: Sym, what: str) -> Tensor | float | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    t = b.per_sample(b.const(v, what), x.rank, what)
    return float(t) if t.dim() == 0 else t


def clamp(b: GraphBuilder, x: Sym, low: Any, high: Any) -> Sym:
    """``clamp(x, low, high)`` from ReLU-family nodes: ``relu`` for ``[0, inf)``, ``brelu``
    for ``[0, c]``, shifted copies for other scalar bounds, and
    ``high - relu(high - (low + relu(x - low)))`` for bound tensors."""
    lo, hi = _bound(b, low, x, "min"), _bound(b, high, x, "max")
    if lo is None and hi is None:
        raise UnsupportedError(f"{b.where}: clamp without bounds")
    if isinstance(lo, float) and isinstance(hi, float):
        if not hi > lo:
            raise UnsupportedError(f"{b.where}: clamp to [{lo}, {hi}] (needs min < max)")
        if lo == 0.0:
            return b.emit("brelu", [x], attrs={"alpha": hi})
        t = b.scale(x, shift=b.const(-lo, "min"))
        t = b.emit("brelu", [t], attrs={"alpha": hi - lo})
        return b.scale(t, shift=b.const(lo, "min"))
    out = x
    if lo is not None:
        if isinstance(lo, float) and lo == 0.0:
            out = b.emit("relu", [out])
        else:
            c = b.const(lo, "min")
            out = b.scale(b.emit("relu", [b.scale(out, shift=-c)]), shift=c)
    if hi is not None:
        c = b.const(hi, "max")
        neg = b.emit("relu", [b.scale(out, b.const(-1.0, "max"), c)])
        out = b.scale(neg, b.const(-1.0, "max"), c)
    return out


def silu(b: GraphBuilder, x: Sym) -> Sym:
    """``x * sigmoid(x)`` as a product of two computed tensors (no SiLU operator)."""
    return b.emit("mul", [x, b.emit("sigmoid", [x])])


def hardsigmoid(b: GraphBuilder, x: Sym) -> Sym:
    """``relu6(x + 3) / 6`` exactly as ``brelu(x / 6 + 1/2, 1)`` (no new operator)."""
    t = b.scale(x, b.const(1.0 / 6.0, "scale"), b.const(0.5, "shift"))
    return b.emit("brelu", [t], attrs={"alpha": 1.0})


# -- shapes ---------------------------------------------------------------------------------
def resolve_sizes(b: GraphBuilder, sizes: Sequence[Any], total: int) -> tuple[int, ...]:
    """Per-sample sizes with one ``-1`` resolved against ``total`` entries."""
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int):
            raise UnsupportedError(f"{b.where}: reshape size {s!r} is not a constant integer")
        out.append(int(s))
    if out.count(-1) > 1 or any(s < -1 for s in out):
        raise UnsupportedError(f"{b.where}: reshape sizes {tuple(out)}")
    if -1 in out:
        known = math.prod(s for s in out if s != -1)
        if known == 0 or total % known:
            raise UnsupportedError(f"{b.where}: cannot reshape {total} entries to {tuple(out)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise UnsupportedError(f"{b.where}: cannot reshape {total} entries to {tuple(out)}")
    return tuple(out)


def reduce(b: GraphBuilder, x: Sym, kind: str, dim: Any, keepdim: bool) -> Sym:
    """``sum`` / ``mean`` over per-sample axes ``dim`` (never the batch axis)."""
    if dim is None or dim == [] or dim == ():
        raise UnsupportedError(f"{b.where}: {kind} over every axis, the batch axis included")
    dims = [dim] if isinstance(dim, int) else list(dim)
    axes = tuple(sorted({axis(d, x.rank, b.where) for d in dims}))
    return b.emit(f"reduce_{kind}", [x], attrs={"axes": axes, "keepdims": bool(keepdim)})


__all__ = [
    "activation",
    "adaptive_pool2d",
    "batch_norm",
    "clamp",
    "conv2d",
    "conv_transpose2d",
    "hardsigmoid",
    "is_elementwise",
    "linear",
    "pair",
    "pool2d",
    "reduce",
    "resolve_sizes",
    "silu",
]
