"""Live ``nn.Module`` trees as IR chains: torch.nn's layers converted directly, any other
module traced with ``torch.fx`` and its graph walked node by node.

:func:`_convert_module` and :func:`_walk_fx` call each other (a traced ``forward`` calls
submodules, a custom submodule is traced in turn), so both live here; the operations a traced
graph calls go to :func:`nnbound.network.torch_chain_ops._apply_op`.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nnbound.errors import NnboundError, UnsupportedError
from nnbound.network.to_torch import (
    Arctan,
    NormalizeModule,
    ReshapeModule,
    activation_of_module,
)
from nnbound.network.torch_chain_builder import (
    _BatchSize,
    _Builder,
    _contains,
    _join,
    _Value,
    _where,
)
from nnbound.network.torch_chain_ops import _apply_op, _bind, _check_softplus, _clamp, _pool
from nnbound.network.torch_checks import _first_line

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
