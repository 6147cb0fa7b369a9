"""ONNX -> graph converters for affine arithmetic and matrix products, and the broadcasting
helpers the other converter modules share.

* A product with a constant matrix (``Gemm``, ``MatMul``) is a ``dense`` node: on the flat
  input when one row is multiplied, a Kronecker-structured ``dense`` for a few rows (as the
  chain importer), a 1x1 ``conv2d`` between transposes for many. Two computed operands make a
  ``matmul`` node.
* ``Add`` / ``Sub`` / ``Mul`` / ``Div`` / ``Neg`` / ``Sum`` / ``BatchNormalization`` with
  constants are an affine map ``x * scale + shift``: folded into the ``dense`` / ``conv`` node
  before it when only this node reads that output, else an ``add`` (constant) or ``scale``
  node. Two computed operands make ``add`` / ``sub`` / ``mul`` / ``div`` nodes (broadcast per
  sample); a constant divided by a computed tensor is a ``reciprocal`` and a ``scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from nnbound.errors import InputError
from nnbound.network.graph import Shape
from nnbound.network.onnx_attrs import _attr_float
from nnbound.network.onnx_convert import transpose_tensor, transpose_value
from nnbound.network.onnx_graph_builder import (
    KIND_BOOL,
    KIND_INT,
    KIND_REAL,
    GraphBuilder,
    Operand,
    Value,
    onnx_attrs,
    pad_rank,
)
from nnbound.ops.registry import OPS

Converter = Callable[[GraphBuilder, onnx.NodeProto, str], None]


KRON_LIMIT = 1 << 22
"""Most entries of a Kronecker-structured dense matrix for a product of several rows by a
constant; larger products become a 1x1 convolution (no dense copy of the weight)."""


def integral(*arrays: np.ndarray) -> bool:
    return all(bool(np.all(np.asarray(a) == np.round(np.asarray(a)))) for a in arrays)


def as_float(c: np.ndarray) -> np.ndarray:
    return np.asarray(c, dtype=np.float64)


# -- broadcasting ---------------------------------------------------------------------------------
def broadcast(
    b: GraphBuilder, node: onnx.NodeProto, label: str, operands: list[Operand]
) -> tuple[list[str | np.ndarray], Shape, bool]:
    """Views of ``operands`` that broadcast per sample as the ONNX operands do, the ONNX
    result shape and whether it is batched. Constants come back as per-sample arrays."""
    shapes = [x.onnx if isinstance(x, Value) else tuple(x.shape) for x in operands]
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise b.bad(node, label, f"operands of shapes {shapes} do not broadcast") from None
    computed = [x for x in operands if isinstance(x, Value)]
    rank = max(len(out), 1)
    batched = (
        len(out) >= 1
        and out[0] == 1
        and all(v.batched and len(v.onnx) == len(out) for v in computed)
    )
    same = {(v.onnx, v.actual) for v in computed}
    if len(same) == 1 and computed[0].onnx == out:
        # every computed operand already has the result's shape: keep their tensors
        actual = computed[0].actual
        if all(isinstance(x, Value) or x.size == 1 for x in operands):
            return (
                [
                    x.tensor if isinstance(x, Value) else as_float(x).reshape((1,) * len(actual))
                    for x in operands
                ],
                out,
                batched,
            )

    def per_sample(shape: Shape) -> Shape:
        padded = pad_rank(shape, rank)
        return padded[1:] if batched else padded

    views: list[str | np.ndarray] = [
        b.view(x, per_sample(x.onnx), label)
        if isinstance(x, Value)
        else as_float(x).reshape(per_sample(tuple(x.shape)))
        for x in operands
    ]
    return views, out, batched


def binary(
    b: GraphBuilder,
    node: onnx.NodeProto,
    label: str,
    op: str,
    x: Value,
    y: Value,
    kind: str = KIND_REAL,
) -> Value:
    """``op`` (add, sub, mul, div, equal, ...) of two computed operands."""
    views, out, batched = broadcast(b, node, label, [x, y])
    t, shape = b.emit(op, [str(v) for v in views], node, label)
    return Value(t, shape, out, batched, kind)


def affine(
    b: GraphBuilder,
    node: onnx.NodeProto,
    label: str,
    source: str,
    x: Value,
    scale: np.ndarray | None,
    shift: np.ndarray | None,
    *,
    private: bool = False,
) -> Value:
    """``x * scale + shift`` with constants (ONNX shapes broadcasting to ``x``'s) for the
    ONNX output of ``node``; ``source`` is the ONNX name ``x`` was read as (for folding)."""
    consts = [as_float(c) for c in (scale, shift) if c is not None]
    out = tuple(int(d) for d in np.broadcast_shapes(x.onnx, *(c.shape for c in consts)))
    if out != x.onnx:
        raise b.unsupported(
            node,
            label,
            f"its constant broadcasts the computed operand of shape {x.onnx} to {out}",
        )
    kind = x.kind if x.kind != KIND_REAL and integral(*consts) else KIND_REAL
    if kind == KIND_BOOL and consts:
        kind = KIND_INT
    s = None if scale is None or np.all(scale == 1) else b.sample_const(scale, x.onnx, x.batched)
    t = None if shift is None or np.all(shift == 0) else b.sample_const(shift, x.onnx, x.batched)
    name = node.output[0]
    if s is None and t is None:
        b.inherit_linear(source, name)
        return replace(x, kind=kind)
    if b.fold_affine(source, x, s, t, private=private):
        b.inherit_linear(source, name)
        return replace(x, kind=kind)
    if all(c.size == 1 for c in (s, t) if c is not None):
        tensor, rank = x.tensor, len(x.actual)
        s = None if s is None else s.reshape((1,) * rank)
        t = None if t is None else t.reshape((1,) * rank)
    else:
        tensor = b.canonical(x, label)
    if s is None:
        assert t is not None
        out_t, shape = b.emit("add", [tensor], node, label, params={"constant": t})
    else:
        params = {"scale": s} if t is None else {"scale": s, "shift": t}
        out_t, shape = b.emit("scale", [tensor], node, label, params=params)
    return Value(out_t, shape, x.onnx, x.batched, kind)


# -- element-wise arithmetic --------------------------------------------------------------------
def convert_arith(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    op = node.op_type
    x, y = b.operand(node, 0, label), b.operand(node, 1, label)
    if x is None or y is None:
        raise b.bad(node, label, "expected two inputs")
    if isinstance(x, Value) and isinstance(y, Value):
        kind = KIND_INT if op != "Div" and {x.kind, y.kind} <= {KIND_INT, KIND_BOOL} else KIND_REAL
        b.set(node, binary(b, node, label, op.lower(), x, y, kind))
        return
    first = isinstance(x, Value)
    v, c = (x, y) if first else (y, x)
    assert isinstance(v, Value) and not isinstance(c, Value)
    src = node.input[0 if first else 1]
    c = as_float(c)
    if op == "Add":
        b.set(node, affine(b, node, label, src, v, None, c))
    elif op == "Sub":
        neg = np.array(-1.0)
        b.set(
            node,
            affine(b, node, label, src, v, None, -c)
            if first
            else affine(b, node, label, src, v, neg, c),
        )
    elif op == "Mul":
        b.set(node, affine(b, node, label, src, v, c, None))
    elif not first:
        # c / x = c * (1 / x): a reciprocal node (bounded where x keeps its sign)
        if "reciprocal" not in OPS:
            raise b.unsupported(node, label, "dividing by a computed tensor (not affine)")
        t, shape = b.emit("reciprocal", [v.tensor], node, label)
        b.set(node, affine(b, node, label, "", Value(t, shape, v.onnx, v.batched), c, None))
    elif bool(np.any(c == 0)):
        raise InputError(f"{b.where}: Div {label}: division by a constant that contains zeros")
    else:
        b.set(node, affine(b, node, label, src, v, 1.0 / c, None))


def convert_neg(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    b.set(node, affine(b, node, label, node.input[0], x, np.array(-1.0), None))


def convert_sum(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    parts = [
        p for p in (b.operand(node, i, label) for i in range(len(node.input))) if p is not None
    ]
    computed = [p for p in parts if isinstance(p, Value)]
    const = sum((as_float(p) for p in parts if not isinstance(p, Value)), np.array(0.0))
    acc = computed[0]
    for v in computed[1:]:
        acc = binary(b, node, label, "add", acc, v)
    src = node.input[0] if len(computed) == 1 else ""
    b.set(node, affine(b, node, label, src, acc, None, np.asarray(const)))


# -- products with matrices ---------------------------------------------------------------------
def _matrix(b: GraphBuilder, node: onnx.NodeProto, label: str, w: np.ndarray) -> np.ndarray:
    """A constant operand of a matrix product as 1-D or 2-D (leading size-1 axes dropped)."""
    w = as_float(w)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim > 2:
        raise b.unsupported(node, label, f"a batch of constant matrices of shape {w.shape}")
    return w


def matmul_right(
    b: GraphBuilder, node: onnx.NodeProto, label: str, x: Value, w: np.ndarray
) -> tuple[Value, bool]:
    """``x @ w`` (ONNX / numpy semantics) for a constant ``w``; also whether the last node
    written is a ``dense`` writing the result (so a following affine map can fold in)."""
    w = _matrix(b, node, label, w)
    xs = x.onnx
    if not xs or xs[-1] != w.shape[0]:
        raise b.bad(node, label, f"cannot multiply shape {xs} by a constant of shape {w.shape}")
    n = xs[-1]
    lead = xs[:-1]
    out = (*lead, w.shape[1]) if w.ndim == 2 else lead
    batched = x.batched and len(lead) >= 1
    rows = math.prod(lead[1:] if batched else lead)
    wt = w.reshape(n, -1).T  # (k, n)
    k = wt.shape[0]
    if rows == 1 or rows * rows * wt.size <= KRON_LIMIT:
        weight = wt if rows == 1 else np.kron(np.eye(rows), wt)
        t, shape = b.emit(
            "dense",
            [b.view(x, (rows * n,), label)],
            node,
            label,
            params={"weight": weight, "bias": np.zeros(rows * k)},
        )
        return Value(t, shape, out, batched), True
    # many rows: a 1x1 convolution with the rows along the height
    t, _ = transpose_tensor(b, node, label, b.view(x, (rows, n), label), (rows, n), (1, 0))
    t, _ = b.emit(
        "conv2d",
        [b.view_tensor(t, (n, rows, 1), label)],
        node,
        label,
        params={"weight": wt[:, :, None, None], "bias": np.zeros(k)},
        attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
    )
    t, shape = transpose_tensor(b, node, label, t, (k, rows), (1, 0))
    return Value(t, shape, out, batched), False


def matmul_left(
    b: GraphBuilder, node: onnx.NodeProto, label: str, w: np.ndarray, x: Value
) -> tuple[Value, bool]:
    """``w @ x`` for a constant ``w`` (see :func:`matmul_right`)."""
    w = _matrix(b, node, label, w)
    xs = x.onnx
    n = xs[0] if len(xs) == 1 else (xs[-2] if xs else -1)
    if w.shape[-1] != n:
        raise b.bad(node, label, f"cannot multiply a constant of shape {w.shape} by shape {xs}")
    w2 = w.reshape(-1, n)
    m = w2.shape[0]
    if len(xs) == 1:
        out: Shape = (m,) if w.ndim == 2 else ()
        t, shape = b.emit(
            "dense",
            [b.view(x, (n,), label)],
            node,
            label,
            params={"weight": w2, "bias": np.zeros(m)},
        )
        return Value(t, shape, out, False), True
    lead, k = xs[:-2], xs[-1]
    out = (*lead, m, k) if w.ndim == 2 else (*lead, k)
    batched = x.batched and len(lead) >= 1
    rows = math.prod(lead[1:] if batched else lead)
    if (rows * m * k) * (rows * n * k) <= KRON_LIMIT:
        weight = np.kron(np.eye(rows), np.kron(w2, np.eye(k)))
        t, shape = b.emit(
            "dense",
            [b.view(x, (rows * n * k,), label)],
            node,
            label,
            params={"weight": weight, "bias": np.zeros(rows * m * k)},
        )
        return Value(t, shape, out, batched), True
    # (w @ x) = (x^T @ w^T)^T over the last two axes
    t, shape = transpose_tensor(
        b, node, label, b.view(x, (rows, n, k), label), (rows, n, k), (0, 2, 1)
    )
    y, _ = matmul_right(b, node, label, Value(t, shape, (rows, k, n), False), w2.T)
    t, shape = transpose_tensor(b, node, label, y.tensor, (rows, k, m), (0, 2, 1))
    return Value(t, shape, out, batched), False


def matmul_computed(b: GraphBuilder, node: onnx.NodeProto, label: str, x: Value, y: Value) -> Value:
    """``x @ y`` of two computed tensors: a ``matmul`` node on views of rank >= 2."""
    xs = x.onnx if len(x.onnx) >= 2 else (1, *x.onnx)
    ys = y.onnx if len(y.onnx) >= 2 else (*y.onnx, 1)
    try:
        lead = tuple(int(d) for d in np.broadcast_shapes(xs[:-2], ys[:-2]))
    except ValueError:
        lead = None
    if lead is None or xs[-1] != ys[-2]:
        raise b.bad(node, label, f"cannot multiply shapes {x.onnx} and {y.onnx}")
    full = (*lead, xs[-2], ys[-1])
    out = full
    if len(y.onnx) == 1:
        out = out[:-1]
    if len(x.onnx) == 1:
        out = (*out[: len(lead)], *out[len(lead) + 1 :])
    rank = len(full)
    batched = (
        len(lead) >= 1
        and lead[0] == 1
        and x.batched
        and y.batched
        and len(x.onnx) == rank
        and len(y.onnx) == rank
    )
    xv, yv = pad_rank(xs, rank), pad_rank(ys, rank)
    if batched:
        xv, yv = xv[1:], yv[1:]
    t, shape = b.emit("matmul", [b.view(x, xv, label), b.view(y, yv, label)], node, label)
    return Value(t, shape, out, batched)


def _gemm_operand(
    b: GraphBuilder, node: onnx.NodeProto, label: str, x: Operand, trans: bool
) -> Operand:
    if not trans:
        return x
    if isinstance(x, Value):
        if len(x.onnx) != 2:
            raise b.bad(node, label, f"operand of shape {x.onnx} is not a matrix")
        return transpose_value(b, node, label, x, (1, 0))
    return np.asarray(x).T


def _product(
    b: GraphBuilder, node: onnx.NodeProto, label: str, x: Operand, y: Operand, alpha: float
) -> Value:
    """``alpha * x @ y``; marks the result foldable when it is a fresh dense node."""
    if isinstance(x, Value) and isinstance(y, Value):
        v = matmul_computed(b, node, label, x, y)
        if alpha != 1.0:
            v = affine(b, node, label, "", v, np.array(alpha), None)
        return v
    if isinstance(x, Value):
        v, linear = matmul_right(b, node, label, x, alpha * as_float(y))
    elif isinstance(y, Value):
        v, linear = matmul_left(b, node, label, alpha * as_float(x), y)
    else:
        raise b.bad(node, label, "no computed operand")
    if linear:
        b.mark_linear(node.output[0])
    return v


def convert_matmul(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x, y = b.operand(node, 0, label), b.operand(node, 1, label)
    if x is None or y is None:
        raise b.bad(node, label, "expected two inputs")
    b.set(node, _product(b, node, label, x, y, 1.0))


def convert_gemm(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    attrs = onnx_attrs(node)
    a, w = b.operand(node, 0, label), b.operand(node, 1, label)
    if a is None or w is None:
        raise b.bad(node, label, "expected inputs A and B")
    a = _gemm_operand(b, node, label, a, bool(int(attrs.get("transA", 0))))
    w = _gemm_operand(b, node, label, w, bool(int(attrs.get("transB", 0))))
    v = _product(b, node, label, a, w, _attr_float(attrs, "alpha", 1.0))
    c = b.operand(node, 2, label)
    beta = _attr_float(attrs, "beta", 1.0)
    if isinstance(c, Value):
        if beta != 1.0:
            c = affine(b, node, label, "", c, np.array(beta), None)
        v = binary(b, node, label, "add", v, c)
    elif c is not None:
        # the bias: into the dense node just written (only this node reads it)
        v = affine(b, node, label, node.output[0], v, None, beta * as_float(c), private=True)
    b.set(node, v)


_BN_INPUTS = ("scale", "bias", "mean", "var")


def convert_batchnorm(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    if int(attrs.get("training_mode", 0)) or int(attrs.get("spatial", 1)) == 0:
        raise b.unsupported(node, label, "in training or non-spatial mode")
    consts = [b.const(node, i, label, what) for i, what in enumerate(_BN_INPUTS, start=1)]
    if len(x.onnx) < 2 or any(c is None for c in consts):
        raise b.bad(node, label, "expected X of rank >= 2, scale, bias, mean and var")
    scale, bias, mean, var = (as_float(c).reshape(-1) for c in consts if c is not None)
    cshape = (1, x.onnx[1]) + (1,) * (len(x.onnx) - 2)
    s = scale / np.sqrt(var + _attr_float(attrs, "epsilon", 1e-5))
    shift = bias - mean * s
    b.set(node, affine(b, node, label, node.input[0], x, s.reshape(cshape), shift.reshape(cshape)))


CONVERTERS: dict[str, Converter] = {
    "Add": convert_arith,
    "Sub": convert_arith,
    "Mul": convert_arith,
    "Div": convert_arith,
    "Neg": convert_neg,
    "Sum": convert_sum,
    "MatMul": convert_matmul,
    "Gemm": convert_gemm,
    "BatchNormalization": convert_batchnorm,
}

__all__ = [
    "CONVERTERS",
    "KRON_LIMIT",
    "affine",
    "as_float",
    "binary",
    "broadcast",
    "integral",
    "matmul_computed",
    "matmul_left",
    "matmul_right",
]
