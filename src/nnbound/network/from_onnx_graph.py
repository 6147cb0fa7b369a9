"""Import an ONNX model of any shape (branches, residual connections, slices, several inputs
or outputs) as a :class:`~nnbound.network.graph.Graph`.

:func:`nnbound.network.from_onnx.from_onnx` imports chains into the chain IR and falls back to
this importer for everything else. The walk visits the ONNX nodes in order:

* a node whose inputs are all constants (initializers, ``Constant`` nodes, earlier folded
  nodes, the static shape of a computed tensor) is evaluated at import time with ONNX's
  reference evaluator: shape arithmetic (``Shape``, ``Gather``, ``Concat``, ``Unsqueeze``,
  ``Cast`` ...) never reaches the graph;
* any other node goes to its converter (:mod:`nnbound.network.onnx_convert` for layout,
  ``onnx_convert_spatial``, ``onnx_convert_math``, ``onnx_convert_nonlinear``), which writes
  graph nodes following the op table
  of :mod:`nnbound.ops`; an ONNX op type without a converter is imported when the operator
  registry knows it as a plain element-wise operator (:func:`nnbound.ops.registry.by_onnx`),
  and refused otherwise with ``unsupported ONNX op 'X' (node 'name')``.

Batch axis: ONNX axis 0 of a rank >= 2 input is the batch (size 1 or symbolic); per-sample
shapes drop it (see :mod:`nnbound.network.onnx_graph_builder`). Several inputs are packed into
one flat graph input (their concatenation in order: the VNN-LIB ``X_`` order) followed by one
``slice`` per input; several outputs are flattened and concatenated into one. A single input
that is vector-like (at most one axis larger than 1) is flat ``(n,)``, as in the chain
importer; the output is always flat.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from nnbound.errors import InputError, ModelFormatError, NnboundError, UnsupportedError
from nnbound.network.graph import Graph, Shape
from nnbound.network.onnx_attrs import _attr_float
from nnbound.network.onnx_convert import CONVERTERS as LAYOUT_CONVERTERS
from nnbound.network.onnx_convert_math import CONVERTERS as MATH_CONVERTERS
from nnbound.network.onnx_convert_nonlinear import CONVERTERS as NONLINEAR_CONVERTERS
from nnbound.network.onnx_convert_spatial import CONVERTERS as SPATIAL_CONVERTERS
from nnbound.network.onnx_files import (
    META_INPUT_RANGE,
    META_META,
    META_NAME,
    _first_line,
    _load_model,
    _opset,
    _to_array,
)
from nnbound.network.onnx_graph_builder import GraphBuilder, Value, node_label, onnx_attrs
from nnbound.ops.base import Op

Converter = Callable[[GraphBuilder, onnx.NodeProto, str], None]

CONVERTERS: dict[str, Converter] = {
    **LAYOUT_CONVERTERS,
    **SPATIAL_CONVERTERS,
    **MATH_CONVERTERS,
    **NONLINEAR_CONVERTERS,
}
"""ONNX op type -> converter (element-wise operators come from the registry instead)."""


# -- constants ----------------------------------------------------------------------------------
def _constant_node(node: onnx.NodeProto, label: str) -> np.ndarray:
    attrs = onnx_attrs(node)
    if "value" in attrs:
        return _to_array(attrs["value"], f"Constant {label}")
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise UnsupportedError(f"unsupported ONNX op 'Constant' ({label}): attributes {sorted(attrs)}")


def _fold(b: GraphBuilder, node: onnx.NodeProto, label: str) -> list[np.ndarray]:
    """Evaluate ``node`` on its constant inputs with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    feeds = {n: b.consts[n] for n in node.input if n}
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in feeds.items()
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    model = helper.make_model(
        helper.make_graph([node], "fold", inputs, outputs), opset_imports=b.opsets
    )
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as exc:
        raise UnsupportedError(
            f"unsupported ONNX op {node.op_type!r} ({label}) on constants: cannot evaluate it "
            f"at import time ({_first_line(exc)})"
        ) from None


# -- converters from the registry ---------------------------------------------------------------
def _elementwise(op: Op) -> Converter:
    """A converter for a one-input element-wise operator: an activation reads its parameter
    and settings from the node's attributes (:meth:`ActivationOp.read_settings`)."""
    from nnbound.ops.activation import ActivationOp

    def convert(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
        attrs = onnx_attrs(node)
        if len([i for i in node.input if i]) != 1:
            raise b.unsupported(node, label, f"several inputs (as {op.name!r})")
        x = b.computed(node, 0, label)
        extra: dict[str, Any] = {}
        if isinstance(op, ActivationOp):
            where = f"unsupported ONNX op {node.op_type!r} ({label})"
            alpha = op.read_settings(op.onnx_settings, attrs, where)
            key = op.onnx_settings.alpha
            if op.has_alpha:
                extra["alpha"] = _attr_float(attrs, key, alpha) if key is not None else alpha
                if op.zero_alpha_is_default and extra["alpha"] == 0.0:
                    # the chain IR (graph_to_network) would read 0 as the default
                    raise b.unsupported(node, label, f"{key}=0")
        elif attrs:
            raise b.unsupported(node, label, f"attributes {sorted(attrs)} (as {op.name!r})")
        t, shape = b.emit(op.name, [x.tensor], node, label, attrs=extra)
        b.set(node, Value(t, shape, x.onnx, x.batched))

    return convert


def converter(op_type: str) -> Converter | None:
    """The converter of ONNX op type ``op_type``, or None when the graph IR has none."""
    from nnbound.ops.base import OpKind
    from nnbound.ops.registry import by_onnx

    if op_type in CONVERTERS:
        return CONVERTERS[op_type]
    ops = by_onnx(op_type)
    if len(ops) == 1 and ops[0].kind is OpKind.ELEMENTWISE:
        return _elementwise(ops[0])
    return None


# -- inputs ---------------------------------------------------------------------------------------
def _input_spec(where: str, inp: onnx.ValueInfoProto) -> tuple[Shape, bool, np.dtype]:
    """(ONNX shape at batch size 1, whether axis 0 is the batch axis, dtype) of an input."""
    if not inp.type.HasField("tensor_type"):
        raise UnsupportedError(f"{where}: graph input {inp.name!r} is not a tensor")
    ttype = inp.type.tensor_type
    dtypes = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
    if ttype.elem_type not in dtypes:
        tname = onnx.TensorProto.DataType.Name(ttype.elem_type)
        raise UnsupportedError(
            f"{where}: graph input {inp.name!r} has element type {tname}; expected FLOAT or DOUBLE"
        )
    if not ttype.HasField("shape"):
        raise UnsupportedError(f"{where}: graph input {inp.name!r} has no known shape")
    dims = [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in ttype.shape.dim
    ]
    dtype = np.dtype(dtypes[ttype.elem_type])
    if len(dims) <= 1:
        # a rank-1 input (the VNN-COMP toy nets) is one sample: there is no batch axis
        if dims and dims[0] is None:
            raise UnsupportedError(f"{where}: graph input {inp.name!r} is of unknown length")
        return tuple(int(d) for d in dims if d is not None), False, dtype
    if dims[0] is not None and dims[0] != 1:
        raise UnsupportedError(
            f"{where}: graph input {inp.name!r} has a fixed batch size of {dims[0]}; "
            "expected 1 or a symbolic batch dimension"
        )
    if any(d is None for d in dims[1:]):
        raise UnsupportedError(
            f"{where}: graph input {inp.name!r} has symbolic non-batch dimensions "
            f"{[d.dim_param or d.dim_value for d in ttype.shape.dim]}"
        )
    return (1, *(int(d) for d in dims[1:] if d is not None)), True, dtype


def _add_inputs(b: GraphBuilder, inputs: list[onnx.ValueInfoProto]) -> tuple[str, Shape]:
    """Register the ONNX inputs as Values of one graph input; returns its name and shape."""
    specs = [_input_spec(b.where, i) for i in inputs]
    for _, _, dtype in specs:
        b.float_dtypes.add(dtype)
    if len(inputs) == 1:
        full, batched, _ = specs[0]
        sample = full[1:] if batched else full
        flat = sum(1 for d in sample if d != 1) <= 1
        shape = (math.prod(sample),) if flat else sample
        name = inputs[0].name
        b.shapes[name] = shape
        b.hold(name, Value(name, shape, full, batched))
        return name, shape
    total = sum(math.prod(full) for full, _, _ in specs)
    name = b.fresh("input")
    b.shapes[name] = (total,)
    start = 0
    for inp, (full, batched, _) in zip(inputs, specs, strict=True):
        n = math.prod(full)
        attrs = {"starts": (start,), "ends": (start + n,), "steps": (1,), "axes": (0,)}
        t, shape = b.emit(
            "slice",
            [name],
            None,
            f"packing {len(inputs)} inputs",
            attrs=attrs,
            hint=inp.name,
        )
        b.hold(inp.name, Value(t, shape, full, batched))
        start += n
    return name, (total,)


# -- the walk -------------------------------------------------------------------------------------
def _walk(b: GraphBuilder, graph: onnx.GraphProto) -> None:
    for index, node in enumerate(graph.node):
        label = node_label(node, index)
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"unsupported ONNX op '{node.domain}.{op}' ({label})")
        if not node.output:
            raise ModelFormatError(f"{b.where}: ONNX {op} {label} has no output")
        for name in node.input:
            if name and name not in b.consts and name not in b.values:
                raise ModelFormatError(
                    f"{b.where}: ONNX {op} {label} reads undefined tensor {name!r} "
                    "(truncated, unsorted or invalid graph)"
                )
        if op == "Constant":
            b.add_const(node.output[0], _constant_node(node, label))
            continue
        if all(b.is_const(n) for n in node.input if n) and any(node.input):
            outs = [o for o in node.output if o]
            for name, arr in zip(outs, _fold(b, node, label), strict=False):
                b.add_const(name, arr)
            continue
        convert = converter(op)
        if convert is None:
            raise UnsupportedError(f"unsupported ONNX op {op!r} ({label})")
        b.begin()
        convert(b, node, label)
        for name in node.output:
            if name and b.uses.get(name) and name not in b.values and name not in b.consts:
                raise b.unsupported(node, label, f"its output {name!r} is not supported")


def _add_outputs(b: GraphBuilder, graph: onnx.GraphProto) -> str:
    """The one flat graph output (several ONNX outputs flattened and concatenated)."""
    if not graph.output:
        raise ModelFormatError(f"{b.where}: ONNX graph has no output")
    flats = []
    for out in graph.output:
        if out.name in b.consts:
            raise UnsupportedError(
                f"{b.where}: ONNX graph output {out.name!r} does not depend on the input"
            )
        if out.name not in b.values:
            raise ModelFormatError(
                f"{b.where}: ONNX graph output {out.name!r} is not produced by any node "
                "(truncated or invalid graph)"
            )
        v = b.values[out.name]
        flats.append(b.view(v, (math.prod(v.onnx),), "graph output"))
    if len(flats) == 1:
        return flats[0]
    t, _ = b.emit(
        "concat",
        flats,
        None,
        f"packing {len(flats)} outputs",
        attrs={"axis": 0},
        hint="output",
    )
    return t


def _import(model: onnx.ModelProto, where: str) -> tuple[GraphBuilder, str, str, Shape]:
    """Walk ``model``; returns the builder, the graph input's and output's names and the
    input shape."""
    graph = model.graph
    b = GraphBuilder(where, model.opset_import)
    for init in graph.initializer:
        b.add_const(init.name, _to_array(init, f"initializer {init.name!r}"))
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {n for node in graph.node for n in (*node.input, *node.output) if n}
    b.reserve(sorted(names | set(b.consts)))
    for node in graph.node:
        for name in node.input:
            if name:
                b.uses[name] = b.uses.get(name, 0) + 1
    for out in graph.output:
        b.uses[out.name] = b.uses.get(out.name, 0) + 1
    inputs = [i for i in graph.input if i.name not in b.consts]
    if not inputs:
        raise ModelFormatError(f"{where}: ONNX graph has no input (truncated or invalid)")
    input_name, input_shape = _add_inputs(b, inputs)
    _walk(b, graph)
    output = _add_outputs(b, graph)
    if output == input_name:
        # an identity network: the graph still needs one node
        output, _ = b.emit(
            "reshape", [output], None, "graph output", attrs={"shape": input_shape}, hint="output"
        )
    return b, input_name, output, input_shape


def _meta_json(props: dict[str, str], key: str, where: str) -> Any:
    try:
        return json.loads(props[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFormatError(f"{where}: metadata {key!r} is not valid JSON ({exc})") from None


def from_onnx_graph(
    source: str | Path | onnx.ModelProto,
    *,
    name: str | None = None,
    input_range: tuple[float, float] | None = None,
) -> Graph:
    """Import an ONNX model as a :class:`Graph` (see the module docstring).

    Args:
        source: path of an ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        name: the graph's name (default: the stored name, else the file stem).
        input_range: the data domain ``(low, high)`` of the inputs (default: the range stored
            in the file's metadata, if any).

    Returns:
        A graph with one input (flat ``(n,)`` for several or vector-like inputs, else the
        input's shape without the batch axis) and one flat output. Tensors are float32, or
        float64 when every floating-point constant and input of the model is float64.

    Raises:
        ModelFormatError: missing, unreadable, corrupt or truncated file; an invalid graph.
        UnsupportedError: an operator or attribute the graph IR cannot represent exactly (the
            message names the ONNX op and the node).
        InputError: NaN or inf weights, a division by a constant zero.
    """
    model, path = _load_model(source)
    where = str(path) if path is not None else "ONNX model"
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError(
            f"{where}: ONNX model has no graph nodes (empty, truncated or not an ONNX file)"
        )
    if not model.opset_import:
        raise ModelFormatError(f"{where}: ONNX model declares no opset (truncated or invalid)")
    props = {p.key: p.value for p in model.metadata_props}
    try:
        b, input_name, output, input_shape = _import(model, where)
    except NnboundError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ModelFormatError(f"{where}: invalid ONNX model ({_first_line(exc)})") from None
    if input_range is None and META_INPUT_RANGE in props:
        stored = _meta_json(props, META_INPUT_RANGE, where)
        if isinstance(stored, list) and len(stored) == 2:
            input_range = (float(stored[0]), float(stored[1]))
    if META_META in props and isinstance(stored_meta := _meta_json(props, META_META, where), dict):
        meta = {str(k): str(v) for k, v in stored_meta.items()}
    else:
        meta = {"source_format": "onnx"}
        if path is not None:
            meta["source"] = str(path)
        producer = f"{model.producer_name} {model.producer_version}".strip()
        if producer:
            meta["onnx_producer"] = producer
        opset = _opset(model)
        if opset is not None:
            meta["onnx_opset"] = str(opset)
    meta["onnx_importer"] = "graph"
    if name is None:
        name = props.get(META_NAME) or (path.stem if path is not None else None)
        name = name or model.graph.name or "graph"
    dtype = torch.float64 if b.float_dtypes == {np.dtype(np.float64)} else torch.float32
    try:
        graph = Graph(
            tuple(b.prune(output)),
            input_shape,
            output,
            input_name=input_name,
            input_range=input_range,
            name=name,
            meta=meta,
        )
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return graph.to(dtype=dtype)


__all__ = ["CONVERTERS", "converter", "from_onnx_graph"]
