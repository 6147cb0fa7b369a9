"""The operations of a PyTorch chain, by their ATen names (``linear``, ``conv2d``, ``view``,
``batch_norm``, pools, constant arithmetic, activations ...), as IR layers.

torch.fx graphs, TorchScript graphs and torch.export graphs name the same operations
differently but can all bind their arguments to ATen argument names (:func:`_bind`), so one
converter, :func:`_apply_op`, serves all three walkers
(:mod:`nnbound.network.torch_chain_modules`, :mod:`nnbound.network.torch_torchscript`,
:mod:`nnbound.network.torch_export`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import AvgPool2d, Flatten, MaxPool2d, Shape
from nnbound.network.torch_chain_builder import (
    _BATCH,
    _Builder,
    _contains,
    _NotAChain,
    _pair,
    _Value,
)

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


def _bind(
    names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any], where: str
) -> dict[str, Any]:
    if len(args) > len(names):
        raise UnsupportedError(f"{where}: unexpected extra arguments")
    kw = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        kw["input" if k == "self" else k] = v
    return kw
