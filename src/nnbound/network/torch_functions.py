"""Graph nodes for the torch functions and tensor methods a traced model calls
(``call_function`` / ``call_method``).

:func:`convert_call` looks a call up by its name (``add`` for ``operator.add``, ``torch.add``
and ``x.add``; ``cat``; ``view``; ...): arithmetic, matrix products, the functional layers and
activations are converted here, shapes, indexing, joining, padding, resizing and reductions in
:mod:`nnbound.network.torch_shapes`. A converter gets the builder, the call's arguments
(:class:`~nnbound.network.torch_graph_builder.Sym` for input-dependent tensors) and what torch
returns on the probe batch (``real``), which settles output sizes that torch derives itself
(``squeeze``, ``interpolate``, ``chunk``). Every activation registered under the call's name
(:func:`nnbound.ops.registry.by_torch`) is converted without an entry here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.fx.operator_schemas import normalize_function

from nnbound.errors import UnsupportedError
from nnbound.network import torch_layers as tl
from nnbound.network.torch_graph_builder import (
    Converter,
    GraphBuilder,
    Sym,
    bind,
    need_sym,
    registrar,
    to_probe,
)
from nnbound.network.torch_shapes import CONVERTERS as SHAPE_CONVERTERS
from nnbound.ops.activation import ActivationOp
from nnbound.ops.registry import OPS, by_torch

_OWN: dict[str, Converter] = {}
_register = registrar(_OWN)


# -- arithmetic -----------------------------------------------------------------------------
def _constant_operand(b: GraphBuilder, c: Any, x: Sym, what: str) -> Tensor:
    return b.per_sample(b.const(c, what), x.rank, what)


def binary(b: GraphBuilder, op: str, x: Any, y: Any) -> Sym:
    """``x op y`` (``op`` in add, sub, mul, div) with at least one operand a :class:`Sym`."""
    if isinstance(x, Sym) and isinstance(y, Sym):
        return b.emit(op, [x, y])
    if isinstance(x, Sym):
        c = _constant_operand(b, y, x, "constant operand")
        if op == "add":
            return b.scale(x, shift=c)
        if op == "sub":
            return b.scale(x, shift=-c)
        if op == "mul":
            return b.scale(x, scale=c)
        if bool((c == 0).any()):
            raise UnsupportedError(f"{b.where}: division by zero")
        return b.scale(x, scale=1.0 / c)
    y = need_sym(b, y, "an operand")
    c = _constant_operand(b, x, y, "constant operand")
    if op == "add":
        return b.scale(y, shift=c)
    if op == "sub":
        return b.scale(y, scale=-torch.ones_like(c), shift=c)
    if op == "mul":
        return b.scale(y, scale=c)
    if "reciprocal" in OPS:
        return b.scale(b.emit("reciprocal", [y]), scale=c)
    raise UnsupportedError(f"{b.where}: division of a constant by a computed tensor")


def _arith(op: str, swap: bool = False) -> Converter:
    def convert(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
        names = ("input", "other", "alpha") if op in ("add", "sub") else ("input", "other")
        if op == "div":
            names = ("input", "other", "rounding_mode")
        kw = bind(b, names, args, kwargs)
        if kw.get("rounding_mode") is not None:
            raise UnsupportedError(f"{b.where}: division with rounding_mode")
        x, y = kw["input"], kw["other"]
        if swap:
            x, y = y, x
        alpha = kw.get("alpha", 1)
        if alpha != 1:
            y = binary(b, "mul", y, alpha) if isinstance(y, Sym) else y * alpha
        return binary(b, op, x, y)

    return convert


for _names, _op in (
    (("add", "add_", "iadd", "__add__", "__radd__", "__iadd__"), "add"),
    (("sub", "sub_", "isub", "subtract", "__sub__", "__isub__"), "sub"),
    (("mul", "mul_", "imul", "multiply", "__mul__", "__rmul__", "__imul__"), "mul"),
    (("truediv", "itruediv", "div", "div_", "divide", "true_divide", "__truediv__"), "div"),
):
    _register(*_names)(_arith(_op))
_register("rsub", "__rsub__")(_arith("sub", swap=True))
_register("__rtruediv__")(_arith("div", swap=True))


@_register("neg", "negative", "__neg__")
def _neg(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    x = need_sym(b, bind(b, ("input",), args, kwargs)["input"])
    return b.scale(x, scale=b.const(-1.0, "scale"))


@_register("pos", "contiguous", "clone", "detach", "__pos__")
def _identity(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    return need_sym(b, args[0])


@_register("to", "float", "double", "type_as", "type")
def _cast(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    x = need_sym(b, args[0])
    if not isinstance(real, Tensor) or real.dtype != x.value.dtype or real.device != x.value.device:
        raise UnsupportedError(f"{b.where}: a change of dtype or device inside the model")
    return x


@_register("matmul", "mm", "__matmul__")
def _matmul(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "other"), args, kwargs)
    x, y = kw["input"], kw["other"]
    if isinstance(x, Sym) and isinstance(y, Sym):
        return b.emit("matmul", [x, y])
    if isinstance(x, Sym):
        w = b.const(y, "matrix")
        if w.dim() == 1:
            return b.reshape(tl.linear(b, x, w[None], None), x.shape[:-1])
        if w.dim() != 2:
            raise UnsupportedError(f"{b.where}: matmul with a {w.dim()}-D constant")
        return tl.linear(b, x, w.T, None)
    y = need_sym(b, y, "an operand")
    a = b.const(x, "matrix")
    if a.dim() != 2:
        raise UnsupportedError(f"{b.where}: matmul with a {a.dim()}-D constant")
    if y.rank == 1:
        return tl.linear(b, y, a, None)
    perm = (*range(y.rank - 2), y.rank - 1, y.rank - 2)
    t = b.emit("transpose", [y], attrs={"perm": perm})
    t = tl.linear(b, t, a, None)
    return b.emit("transpose", [t], attrs={"perm": perm})


# -- functional layers ----------------------------------------------------------------------
@_register("linear")
def _linear(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "weight", "bias"), args, kwargs, {"bias": None})
    return tl.linear(b, need_sym(b, kw["input"]), kw["weight"], kw["bias"])


@_register("conv1d", "conv2d")
def _conv(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    kw = bind(b, names, args, kwargs, defaults)
    kw["x"] = need_sym(b, kw.pop("input"))
    return tl.conv2d(b, **kw)


@_register("conv_transpose2d")
def _conv_t(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    names = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
    defaults = {
        "bias": None,
        "stride": 1,
        "padding": 0,
        "output_padding": 0,
        "groups": 1,
        "dilation": 1,
    }
    kw = bind(b, names, args, kwargs, defaults)
    kw["x"] = need_sym(b, kw.pop("input"))
    return tl.conv_transpose2d(b, **kw)


@_register("batch_norm")
def _bn(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    names = (
        "input",
        "running_mean",
        "running_var",
        "weight",
        "bias",
        "training",
        "momentum",
        "eps",
    )
    defaults = {"weight": None, "bias": None, "training": False, "eps": 1e-5}
    kw = bind(b, names, args, kwargs, defaults)
    x = need_sym(b, kw["input"])
    return tl.batch_norm(
        b,
        x,
        kw["running_mean"],
        kw["running_var"],
        kw["weight"],
        kw["bias"],
        kw["eps"],
        bool(kw["training"]),
    )


@_register("avg_pool2d")
def _avg_pool(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    names = (
        "input",
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    )
    kw = bind(b, names, args, kwargs, {"stride": None, "padding": 0})
    x = need_sym(b, kw.pop("input"))
    return tl.pool2d(b, x, "avg", **kw)


@_register("max_pool2d", "max_pool2d_with_indices")
def _max_pool(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    kw = bind(b, names, args, kwargs, {"stride": None, "padding": 0})
    x = need_sym(b, kw.pop("input"))
    return tl.pool2d(b, x, "max", **kw)


@_register("adaptive_avg_pool2d", "adaptive_max_pool2d")
def _adaptive(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "output_size", "return_indices"), args, kwargs)
    if kw.get("return_indices"):
        raise UnsupportedError(f"{b.where}: adaptive max pooling with return_indices=True")
    kind = "max" if b.call == "adaptive_max_pool2d" else "avg"
    return tl.adaptive_pool2d(b, need_sym(b, kw["input"]), kind, kw["output_size"])


@_register(
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"
)
def _dropout(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "p", "training", "inplace"), args, kwargs, {"training": True})
    if kw["training"]:
        raise UnsupportedError(f"{b.where}: dropout in training mode (call model.eval())")
    return need_sym(b, kw["input"])


# -- activations ----------------------------------------------------------------------------
def _call_settings(
    target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int
) -> dict[str, Any]:
    """The settings of an activation call (every argument but the input, by name)."""
    function = getattr(torch, target, None) if isinstance(target, str) else target
    pair = None
    if function is not None:
        try:
            pair = normalize_function(
                function,
                to_probe(args, batch),
                to_probe(kwargs, batch),
                normalize_to_only_use_kwargs=True,
            )
        except Exception:  # no schema: fall back to the keywords as given
            pair = None
    if pair is None:
        if len(args) > 1:
            raise UnsupportedError("settings passed by position to a call without a signature")
        settings = dict(kwargs)
    else:
        settings = dict(pair.kwargs)
    return {k: v for k, v in settings.items() if k not in ("input", "self")}


@_register("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_")
def _clamp(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    name = b.call
    names = ("input", "min", "max")
    if name.startswith("clamp_max"):
        names = ("input", "max")
    kw = bind(b, names, args, kwargs)
    return tl.clamp(b, need_sym(b, kw["input"]), kw.get("min"), kw.get("max"))


@_register("hardtanh", "hardtanh_", "relu6")
def _hardtanh(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    if b.call == "relu6":
        kw = bind(b, ("input", "inplace"), args, kwargs)
        low, high = 0.0, 6.0
    else:
        defaults = {"min_val": -1.0, "max_val": 1.0}
        kw = bind(b, ("input", "min_val", "max_val", "inplace"), args, kwargs, defaults)
        low, high = kw["min_val"], kw["max_val"]
    x = need_sym(b, kw["input"])
    if low == 0.0:
        return tl.activation(b, x, "Hardtanh", {"min_val": 0.0, "max_val": float(high)})
    return tl.clamp(b, x, low, high)


@_register("silu", "silu_")
def _silu(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "inplace"), args, kwargs)
    x = need_sym(b, kw["input"])
    if tl.is_elementwise("silu"):
        return tl.activation(b, x, "silu", {})
    return tl.silu(b, x)


@_register("new_tensor", "new_zeros", "new_ones", "new_full", "new_empty")
def _new_constant(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    """``x.new_tensor(data)`` and friends: a constant (only its dtype and device come from
    ``x``); ``new_empty`` holds garbage."""
    if b.call == "new_empty":
        raise UnsupportedError(f"{b.where}: new_empty (uninitialised values)")
    return real


@_register("zeros_like", "ones_like", "full_like")
def _like(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    """A constant shaped like ``x``: one batch row of it (arithmetic drops that axis)."""
    return real[:1]


@_register("hardsigmoid", "hardsigmoid_")
def _hardsigmoid(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "inplace"), args, kwargs)
    x = need_sym(b, kw["input"])
    if any(isinstance(op, ActivationOp) for op in by_torch("hardsigmoid")):
        return tl.activation(b, x, "hardsigmoid", {})
    return tl.hardsigmoid(b, x)


# -- dispatch -------------------------------------------------------------------------------
FUNCTIONS: dict[str, Converter] = {**SHAPE_CONVERTERS, **_OWN}
"""Every call converter by torch name."""


def call_name(target: Any) -> str:
    """The name a call is looked up by (``operator.add`` -> ``add``, ``x.view`` -> ``view``)."""
    if isinstance(target, str):
        return target
    return str(getattr(target, "__name__", repr(target)))


def convert_call(
    b: GraphBuilder, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any
) -> Any:
    """The graph value of torch call ``target(*args, **kwargs)`` (a function or a method
    name) whose arguments include a :class:`Sym`."""
    name = b.call
    convert = FUNCTIONS.get(name)
    if convert is not None:
        return convert(b, args, kwargs, real)
    if tl.is_elementwise(name):
        x = need_sym(b, args[0] if args else kwargs.get("input", kwargs.get("self")))
        try:
            settings = _call_settings(target, args, kwargs, int(x.value.shape[0]))
        except UnsupportedError as exc:
            raise UnsupportedError(f"{b.where}: {exc}") from None
        return tl.activation(b, x, name, settings)
    kind = "method" if isinstance(target, str) else "function"
    raise UnsupportedError(f"{b.where}: unsupported torch {kind} {name!r}")


__all__ = ["FUNCTIONS", "binary", "call_name", "convert_call"]
