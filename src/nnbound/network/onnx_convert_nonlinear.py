"""ONNX -> graph converters for reductions and non-linear operators: ``ReduceSum`` /
``ReduceMean``, ``Softmax`` (opset < 13 semantics: over the input flattened from ``axis``),
``ArgMax`` / ``OneHot`` / ``Equal``, ``Cast`` and ``Clip``.

A reduction over the batch axis (size 1) changes nothing and is dropped from the node; the
nodes keep reduced axes (``keepdims``) and the ONNX value views the result without them.
``Cast`` to a float type is the identity; to an integer type it is exact only for a tensor
known to hold integers (arg max, one-hot, comparisons): anything else needs a ``trunc``
operator. ``Clip(lo, hi)`` is ReLU for (0, none), the bounded ReLU for (0, c), and otherwise a
bounded ReLU / ReLU of a shifted input (``lo + brelu(x - lo, hi - lo)``, ``lo + relu(x - lo)``,
``hi - relu(hi - x)``): exact, with the activations' own relaxations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from nnbound.network.onnx_convert import axes_input, norm_axis
from nnbound.network.onnx_convert_math import affine, as_float, binary, broadcast, integral
from nnbound.network.onnx_graph_builder import (
    KIND_BOOL,
    KIND_INT,
    KIND_REAL,
    GraphBuilder,
    Value,
    onnx_attrs,
)
from nnbound.ops.registry import OPS

Converter = Callable[[GraphBuilder, onnx.NodeProto, str], None]


# -- reductions, softmax, arg max ---------------------------------------------------------------
def convert_reduce(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    keep = bool(int(attrs.get("keepdims", 1)))
    rank = len(x.onnx)
    axes = axes_input(b, node, label)
    if not axes:
        if int(attrs.get("noop_with_empty_axes", 0)):
            b.set(node, x)
            return
        axes = list(range(rank))
    axes = sorted({norm_axis(b, node, label, a, rank) for a in axes})
    out = (
        tuple(1 if a in axes else d for a, d in enumerate(x.onnx))
        if keep
        else tuple(d for a, d in enumerate(x.onnx) if a not in axes)
    )
    batched_out = x.batched and (keep or 0 not in axes)
    # the batch axis has size 1: reducing over it changes nothing
    live = [a for a in axes if not (x.batched and a == 0) and x.onnx[a] != 1]
    kind = x.kind if node.op_type == "ReduceSum" and x.kind != KIND_REAL else KIND_REAL
    kind = KIND_INT if kind == KIND_BOOL else kind
    if not live:
        b.set(node, replace(x.reshaped(out), batched=batched_out, kind=x.kind))
        return
    tensor, canon = b.axes_view(x, live, label)
    op = "reduce_sum" if node.op_type == "ReduceSum" else "reduce_mean"
    t, shape = b.emit(
        op,
        [tensor],
        node,
        label,
        attrs={"axes": GraphBuilder.sample_axes(live, canon), "keepdims": True},
    )
    b.set(node, Value(t, shape, out, batched_out, kind))


def convert_softmax(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    rank = len(x.onnx)
    axis = norm_axis(
        b, node, label, int(onnx_attrs(node).get("axis", -1 if b.opset >= 13 else 1)), rank
    )
    v = x
    if b.opset < 13 and axis != rank - 1:
        # before opset 13 Softmax acts on the input flattened from `axis` on
        v = x.reshaped((*x.onnx[:axis], math.prod(x.onnx[axis:])))
    tensor, canon = b.axes_view(v, [axis], label)
    (a,) = GraphBuilder.sample_axes([axis], canon)
    t, shape = b.emit("softmax", [tensor], node, label, attrs={"axis": a})
    y = Value(t, shape, v.onnx, canon and v.batched)
    b.set(node, y.reshaped(x.onnx) if v is not x else y)


def convert_argmax(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    if int(attrs.get("select_last_index", 0)):
        raise b.unsupported(node, label, "select_last_index=1")
    rank = len(x.onnx)
    axis = norm_axis(b, node, label, int(attrs.get("axis", 0)), rank)
    keep = bool(int(attrs.get("keepdims", 1)))
    if x.batched and axis == 0:
        raise b.unsupported(node, label, "an arg max over the batch axis")
    out = (
        tuple(1 if a == axis else d for a, d in enumerate(x.onnx))
        if keep
        else tuple(d for a, d in enumerate(x.onnx) if a != axis)
    )
    tensor, canon = b.axes_view(x, [axis], label)
    (a,) = GraphBuilder.sample_axes([axis], canon)
    t, shape = b.emit("argmax", [tensor], node, label, attrs={"axis": a, "keepdims": True})
    b.set(node, Value(t, shape, out, canon, KIND_INT))


def convert_onehot(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    depth_arr, values = b.const(node, 1, label, "depth"), b.const(node, 2, label, "values")
    if depth_arr is None or values is None or np.asarray(values).size != 2:
        raise b.bad(node, label, "expected depth and values [off, on]")
    if x.kind == KIND_REAL:
        # onnxruntime reads float indices as integers (truncated towards zero)
        if "trunc" not in OPS:
            raise b.unsupported(node, label, "indices that are not known to be integers")
        t, shape = b.emit("trunc", [x.tensor], node, label)
        x = Value(t, shape, x.onnx, x.batched, KIND_INT)
    depth = int(np.asarray(depth_arr).reshape(-1)[0])
    off, on = (float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    rank = len(x.onnx) + 1
    axis = norm_axis(b, node, label, int(onnx_attrs(node).get("axis", -1)), rank)
    out = (*x.onnx[:axis], depth, *x.onnx[axis:])
    canon = x.batched and axis != 0
    tensor = b.canonical(x, label) if canon else b.full(x, label)
    t, shape = b.emit(
        "onehot",
        [tensor],
        node,
        label,
        attrs={"depth": depth, "axis": axis - 1 if canon else axis, "values": (off, on)},
    )
    kind = KIND_BOOL if {off, on} <= {0.0, 1.0} else (KIND_INT if integral(values) else KIND_REAL)
    b.set(node, Value(t, shape, out, canon, kind))


def convert_equal(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x, y = b.operand(node, 0, label), b.operand(node, 1, label)
    if x is None or y is None:
        raise b.bad(node, label, "expected two inputs")
    if isinstance(x, Value) and isinstance(y, Value):
        b.set(node, binary(b, node, label, "equal", x, y, KIND_BOOL))
        return
    v, c = (x, y) if isinstance(x, Value) else (y, x)
    assert isinstance(v, Value) and not isinstance(c, Value)
    views, out, batched = broadcast(b, node, label, [v, c])
    if out != v.onnx:
        raise b.unsupported(node, label, f"its constant broadcasts {v.onnx} to {out}")
    t, shape = b.emit(
        "equal", [str(views[0])], node, label, params={"constant": as_float(views[1])}
    )
    b.set(node, Value(t, shape, out, batched, KIND_BOOL))


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


_INT_TYPES = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
"""Integer types a cast to is exact on the values networks hold (narrower or unsigned types
wrap around: refused)."""


def convert_cast(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    to = int(onnx_attrs(node).get("to", onnx.TensorProto.FLOAT))
    name = onnx.TensorProto.DataType.Name(to)
    if to in _FLOAT_TYPES:
        b.set(node, x)
    elif to in _INT_TYPES and x.kind != KIND_REAL:
        b.set(node, x)  # integers stay integers
    elif to == onnx.TensorProto.BOOL and x.kind == KIND_BOOL:
        b.set(node, x)
    elif to in _INT_TYPES and "trunc" in OPS:
        # a float to an integer type rounds towards zero
        t, shape = b.emit("trunc", [x.tensor], node, label)
        b.set(node, Value(t, shape, x.onnx, x.batched, KIND_INT))
    else:
        raise b.unsupported(
            node,
            label,
            f"a cast to {name} of a computed tensor (exact only to FLOAT / DOUBLE, to INT32 / "
            "INT64 of integers or through a trunc operator, to BOOL of 0 / 1 values)",
        )


# -- element-wise non-linear ----------------------------------------------------------------------
def convert_clip(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    """``Clip(lo, hi)``: ReLU for (0, none), the bounded ReLU for (0, c); other bounds shift
    the input: ``lo + brelu(x - lo, hi - lo)``, ``lo + relu(x - lo)``, ``hi - relu(hi - x)``."""
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    lo: float | None = attrs.get("min")
    hi: float | None = attrs.get("max")
    lo_arr, hi_arr = b.const(node, 1, label, "min"), b.const(node, 2, label, "max")
    if lo_arr is not None:
        lo = float(np.asarray(lo_arr).reshape(-1)[0])
    if hi_arr is not None:
        hi = float(np.asarray(hi_arr).reshape(-1)[0])
    lo = None if lo is None or lo <= -3.4e38 else float(lo)
    hi = None if hi is None or hi >= 3.4e38 else float(hi)
    if lo is not None and hi is not None and not lo < hi:
        raise b.unsupported(
            node, label, f"min={lo} is not below max={hi} (not a bounded ReLU of a shift)"
        )

    def act(v: Value, op: str, alpha: float | None = None) -> Value:
        extra = {} if alpha is None else {"alpha": alpha}
        t, shape = b.emit(op, [v.tensor], node, label, attrs=extra)
        return Value(t, shape, v.onnx, v.batched)

    if lo is None and hi is None:
        b.set(node, x)
    elif lo is not None:
        v = x if lo == 0.0 else affine(b, node, label, "", x, None, np.array(-lo))
        v = act(v, "relu") if hi is None else act(v, "brelu", hi - lo)
        b.set(node, v if lo == 0.0 else affine(b, node, label, "", v, None, np.array(lo)))
    else:
        assert hi is not None
        v = act(affine(b, node, label, "", x, np.array(-1.0), np.array(hi)), "relu")
        b.set(node, affine(b, node, label, "", v, np.array(-1.0), np.array(hi)))


CONVERTERS: dict[str, Converter] = {
    "ReduceSum": convert_reduce,
    "ReduceMean": convert_reduce,
    "Softmax": convert_softmax,
    "ArgMax": convert_argmax,
    "OneHot": convert_onehot,
    "Equal": convert_equal,
    "Cast": convert_cast,
    "Clip": convert_clip,
}

__all__ = ["CONVERTERS"]
