"""Import a sequential ONNX model into the network IR.

The importer walks the graph as a *chain*: every node must read the previous node's output
(the "network value") plus constants (initializers or ``Constant`` nodes). Each node is turned
into IR layers, and element-wise affine nodes with constants (``Add``/``Sub``/``Mul``/``Div``,
``BatchNormalization``) are folded into the preceding ``Dense``/``Conv2d``/``Normalize`` layer
where that is exact, or become a ``Normalize`` layer otherwise (e.g. right at the input).

Shapes: the importer evaluates the graph as ONNX would on a batch of one. It tracks two shapes:
the *ONNX shape* (the full ONNX tensor shape at batch size 1) and the *IR shape* (the per-sample
shape the IR layers produce so far). Reshape-like nodes (``Flatten``, ``Reshape``, ``Squeeze``,
``Unsqueeze``, layout-preserving ``Transpose``) only change the ONNX shape, since the data order
is unchanged; a ``Reshape`` layer is emitted only when a convolution needs its ``(C, H, W)``
input, a ``Flatten`` only before a ``Dense`` layer and at the end (the IR output is always flat,
``(num_outputs,)``).

The IR input shape is the graph input's shape without the batch axis (a rank-1 input has no
batch axis). A vector-like input (at most one axis larger than 1, e.g. ACAS Xu's ``[1, 1, 1, 5]``
or mnist_fc's ``[1, 784, 1]``) becomes flat ``(n,)``, so that networks meant to be fed a flat
vector take one; files written by :func:`nnbound.network.to_onnx.save_onnx` carry their exact
IR input shape in the metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from nnbound.errors import InputError, ModelFormatError, NnboundError, UnsupportedError
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
from nnbound.ops.activation import ActivationOp
from nnbound.ops.registry import by_onnx

if TYPE_CHECKING:
    from nnbound.network.graph import Graph

# Metadata keys written by ``save_onnx`` and read back here.
META_INPUT_RANGE = "nnbound.input_range"
META_INPUT_SHAPE = "nnbound.input_shape"
META_NAME = "nnbound.name"
META_META = "nnbound.meta"

SUPPORTED_OPS: tuple[str, ...] = (
    "Add",
    "Atan",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Elu",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softplus",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
)
"""ONNX operators the importer understands (``Clip`` only as ``Clip(min=0)`` = ReLU or
``Clip(min=0, max=c)`` = bounded ReLU,
``Dropout`` only in inference mode, ``Transpose`` only where it keeps the data order)."""


def _registry_activations(op_type: str) -> list[ActivationOp]:
    """The registered activations ONNX writes as ``op_type`` (:mod:`nnbound.ops`): every
    activation besides those with a handler here (``LeakyRelu``, ``Elu``, ``Clip``) is read
    through its operator."""
    return [op for op in by_onnx(op_type) if isinstance(op, ActivationOp)]


# A folded MatMul on a non-vector tensor becomes a Kronecker-structured Dense; refuse ones that
# would not fit comfortably in memory rather than allocate gigabytes.
_MAX_DENSE_ELEMENTS = 1 << 27


# -- loading ------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_model(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(source, onnx.ModelProto):
        return source, None
    if not isinstance(source, (str, Path)):
        raise InputError(
            f"from_onnx expects a path or an onnx.ModelProto, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise ModelFormatError(f"ONNX model file not found: {path}")
    if not path.is_file():
        raise ModelFormatError(f"ONNX model path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        # protobuf's DecodeError, OSError for missing external data, onnx's own errors...: any
        # failure here means the file is not a readable ONNX model.
        raise ModelFormatError(
            f"{path}: not a valid ONNX model (corrupt or truncated file: {_first_line(exc)})"
        ) from None
    return model, path


def _to_array(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as exc:
        # A truncated file can leave a tensor whose raw data is shorter than its dims say.
        raise ModelFormatError(f"ONNX {what} is unreadable ({_first_line(exc)})") from None


def _opset(model: onnx.ModelProto) -> int | None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return None


# -- small helpers ------------------------------------------------------------------------------
def _node_label(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return f"node {node.name!r}"
    out = node.output[0] if node.output else "?"
    return f"node #{index} -> {out!r}"


def _resolve_pads(
    attrs: dict,
    op: str,
    label: str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[str, list[int]]:
    """``(auto_pad, [top, left, bottom, right])`` of a Conv or pooling node: explicit ``pads``,
    or the padding ``SAME_UPPER`` / ``SAME_LOWER`` imply (the odd extra pixel goes at the end
    for UPPER, at the start for LOWER), or none for ``VALID``."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            span = dilations[i] * (int(kernel[i]) - 1) + 1
            size = int(spatial[i])
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + span - size, 0)
            small, large = total // 2, total - total // 2
            upper = auto_pad == "SAME_UPPER"
            pads[i], pads[i + 2] = (small, large) if upper else (large, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad == "NOTSET":
        pads = [int(v) for v in attrs.get("pads", (0, 0, 0, 0))]
    else:
        raise ModelFormatError(f"{op} {label}: unknown auto_pad {auto_pad!r}")
    return auto_pad, pads


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _attr_float(attrs: dict[str, Any], key: str, default: float) -> float:
    """A float attribute, read back as the shortest decimal that the stored float32 rounds
    from: ONNX keeps float attributes in float32, so ``alpha=0.1`` comes back as 0.1 rather than
    0.10000000149 (exact round trips of float64 networks; onnxruntime uses the float32 value)."""
    if key not in attrs:
        return default
    return float(np.format_float_positional(np.float32(attrs[key]), unique=True, trim="-"))


def _compact(t: np.ndarray) -> np.ndarray:
    """Reduce every axis along which ``t`` is constant to size 1, then drop leading size-1 axes
    (keeping at least one), so per-channel constants stay ``(C, 1, 1)`` instead of ``(C, H, W)``.
    The result still broadcasts to ``t.shape``."""
    for axis in range(t.ndim):
        if t.shape[axis] > 1:
            first = np.take(t, [0], axis=axis)
            if np.array_equal(t, np.broadcast_to(first, t.shape)):
                t = first
    while t.ndim > 1 and t.shape[0] == 1:
        t = t[0]
    return np.ascontiguousarray(t)


def _torch(a: np.ndarray) -> torch.Tensor:
    # a copy: the input may be a read-only broadcast view or share memory with the ONNX model
    return torch.from_numpy(np.array(a, dtype=np.float64, order="C"))


def _normalize_axis(axis: int, rank: int, label: str, op: str) -> int:
    if not -rank <= axis < rank:
        raise ModelFormatError(f"{op} {label}: axis {axis} is out of range for rank {rank}")
    return axis % rank


class _Builder:
    """Accumulates IR layers while tracking the ONNX shape (batch 1) and the IR shape."""

    def __init__(self, onnx_shape: Shape, ir_shape: Shape) -> None:
        self.shape: Shape = onnx_shape  # the ONNX tensor shape at batch size 1
        self.ir_shape: Shape = ir_shape  # the per-sample shape the IR layers produce so far
        self.layers: list[Layer] = []
        self.out_shapes: list[Shape] = []  # IR output shape of each layer

    def append(self, layer: Layer, out_shape: Shape) -> None:
        self.layers.append(layer)
        self.out_shapes.append(tuple(out_shape))
        self.ir_shape = tuple(out_shape)

    def materialize(self, shape: Shape) -> None:
        """Make the IR produce exactly ``shape`` (same number of elements)."""
        if self.ir_shape != tuple(shape):
            self.append(Reshape(tuple(shape)), shape)

    def flatten(self) -> None:
        if len(self.ir_shape) != 1:
            self.append(Flatten(), (math.prod(self.ir_shape),))

    def dense(self, matrix: np.ndarray, out_onnx_shape: Shape) -> None:
        self.flatten()
        w = _torch(matrix)
        self.append(Dense(w, torch.zeros(w.shape[0], dtype=torch.float64)), (int(w.shape[0]),))
        self.shape = tuple(out_onnx_shape)

    # -- element-wise affine with a constant -----------------------------------------------
    def _fold_target(self) -> int | None:
        """Index of the last layer that is not a pure reshape (whose output an element-wise
        operation after trailing Flatten/Reshape layers still acts on), or None."""
        i = len(self.layers) - 1
        while i >= 0 and isinstance(self.layers[i], (Flatten, Reshape)):
            i -= 1
        return i if i >= 0 else None

    def elementwise(self, op: str, c_full: np.ndarray, label: str) -> None:
        """Apply ``x <op> c`` with ``op`` in add/sub/mul/div and ``c`` already broadcast to the
        ONNX shape: folded into the preceding Dense/Conv2d/Normalize where exact, else a new
        Normalize layer."""
        assert c_full.shape == self.shape
        t = self._fold_target()
        layer = self.layers[t] if t is not None else None
        if isinstance(layer, Dense):
            v = _torch(c_full.reshape(-1))
            w, b = layer.weight, layer.bias
            if op == "add":
                b = b + v
            elif op == "sub":
                b = b - v
            elif op == "mul":
                w, b = w * v[:, None], b * v
            else:
                w, b = w / v[:, None], b / v
            self.layers[t] = Dense(w, b)
            return
        if isinstance(layer, Conv2d):
            per = _compact(c_full.reshape(self.out_shapes[t]))
            if per.size == 1 or per.shape == (self.out_shapes[t][0], 1, 1):
                v = _torch(np.broadcast_to(per.reshape(-1), (self.out_shapes[t][0],)))
                w, b = layer.weight, layer.bias
                if op == "add":
                    b = b + v
                elif op == "sub":
                    b = b - v
                elif op == "mul":
                    w, b = w * v[:, None, None, None], b * v
                else:
                    w, b = w / v[:, None, None, None], b / v
                self.layers[t] = replace(layer, weight=w, bias=b)
                return
            # not per-channel: cannot live in the conv bias, keep it as a Normalize layer
        if isinstance(layer, Normalize):
            shape = self.out_shapes[t]
            mean, std = layer.mean, layer.std
        else:
            t = None  # nothing to merge into: append a new Normalize layer
            shape = self.ir_shape
            mean = torch.zeros(1, dtype=torch.float64)
            std = torch.ones(1, dtype=torch.float64)
        c = _torch(_compact(c_full.reshape(shape)))
        # (x - m) / s  <op>  c  ==  (x - m') / s'
        if op == "add":
            mean = mean - c * std
        elif op == "sub":
            mean = mean + c * std
        elif op == "mul":
            if bool((c == 0).any()):
                raise UnsupportedError(
                    f"Mul {label}: multiplying by a constant that contains zeros is only "
                    "supported right after a Dense/Gemm/MatMul or Conv layer"
                )
            std = std / c
        else:
            std = std * c
        new = Normalize(_torch(_compact(mean.numpy())), _torch(_compact(std.numpy())))
        if t is not None:
            self.layers[t] = new
        else:
            self.append(new, self.ir_shape)


# -- the importer -------------------------------------------------------------------------------
class _Importer:
    def __init__(self, model: onnx.ModelProto, where: str) -> None:
        self.model = model
        self.where = where  # a prefix for messages: the file name or "ONNX model"
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {}
        self.float_dtypes: set[np.dtype] = set()
        for init in graph.initializer:
            self._add_const(init.name, _to_array(init, f"initializer {init.name!r}"))
        init_names = set(self.consts)
        inputs = [i for i in graph.input if i.name not in init_names]
        if not inputs:
            raise ModelFormatError(f"{where}: ONNX graph has no input (truncated or invalid)")
        if len(inputs) > 1:
            names = ", ".join(repr(i.name) for i in inputs)
            raise UnsupportedError(
                f"{where}: ONNX graph has {len(inputs)} inputs ({names}); "
                "only single-input networks are supported"
            )
        if len(graph.output) != 1:
            raise (ModelFormatError if not graph.output else UnsupportedError)(
                f"{where}: ONNX graph has {len(graph.output)} outputs; expected exactly one"
            )
        self.input = inputs[0]
        self.output_name = graph.output[0].name

    def _add_const(self, name: str, arr: np.ndarray) -> None:
        self.consts[name] = arr
        if arr.dtype.kind == "f":
            self.float_dtypes.add(arr.dtype)

    # -- input -----------------------------------------------------------------------------
    def input_shapes(self) -> tuple[Shape, Shape]:
        """(ONNX shape at batch 1, IR input shape) of the graph input."""
        inp = self.input
        if not inp.type.HasField("tensor_type"):
            raise UnsupportedError(f"{self.where}: graph input {inp.name!r} is not a tensor")
        ttype = inp.type.tensor_type
        if ttype.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            tname = onnx.TensorProto.DataType.Name(ttype.elem_type)
            raise UnsupportedError(
                f"{self.where}: graph input {inp.name!r} has element type {tname}; "
                "expected FLOAT or DOUBLE"
            )
        if not ttype.HasField("shape") or not ttype.shape.dim:
            raise UnsupportedError(f"{self.where}: graph input {inp.name!r} has no known shape")
        dims: list[int | None] = [
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in ttype.shape.dim
        ]
        if len(dims) == 1:
            # a rank-1 input (the VNN-COMP toy nets) is one sample: there is no batch axis
            if dims[0] is None:
                raise UnsupportedError(
                    f"{self.where}: graph input {inp.name!r} is a vector of unknown length"
                )
            sample: Shape = (dims[0],)
            full: Shape = sample
        else:
            if dims[0] is not None and dims[0] != 1:
                raise UnsupportedError(
                    f"{self.where}: graph input {inp.name!r} has a fixed batch size of "
                    f"{dims[0]}; expected 1 or a symbolic batch dimension"
                )
            if any(d is None for d in dims[1:]):
                raise UnsupportedError(
                    f"{self.where}: graph input {inp.name!r} has symbolic non-batch "
                    f"dimensions {[d.dim_param or d.dim_value for d in ttype.shape.dim]}"
                )
            sample = tuple(d for d in dims[1:] if d is not None)
            full = (1, *sample)
        if sum(1 for d in sample if d != 1) <= 1:
            sample = (math.prod(sample),)
        return full, sample

    # -- constants -------------------------------------------------------------------------
    def _const(self, name: str, label: str, op: str) -> np.ndarray:
        arr = self.consts[name]
        if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
            raise InputError(
                f"{self.where}: ONNX tensor {name!r} used by {op} {label} contains NaN or inf"
            )
        return arr

    def _float_const(self, name: str, label: str, op: str) -> np.ndarray:
        arr = self._const(name, label, op)
        if arr.dtype.kind not in "fiub":
            raise UnsupportedError(f"{op} {label}: constant {name!r} has dtype {arr.dtype}")
        return arr.astype(np.float64)

    def _int_list(self, arr: np.ndarray) -> list[int]:
        return [int(v) for v in np.asarray(arr).reshape(-1)]

    def _constant_node(self, node: onnx.NodeProto, label: str) -> np.ndarray:
        attrs = _attrs(node)
        if "value" in attrs:
            return _to_array(attrs["value"], f"Constant {label}")
        if "value_float" in attrs:
            return np.array(attrs["value_float"], dtype=np.float32)
        if "value_floats" in attrs:
            return np.array(attrs["value_floats"], dtype=np.float32)
        if "value_int" in attrs:
            return np.array(attrs["value_int"], dtype=np.int64)
        if "value_ints" in attrs:
            return np.array(attrs["value_ints"], dtype=np.int64)
        raise UnsupportedError(
            f"unsupported ONNX Constant {label}: attribute {sorted(attrs)} (only tensors, floats "
            "and ints)"
        )

    # -- the walk --------------------------------------------------------------------------
    def run(self, input_shape: Shape) -> _Builder:
        """Walk the chain; the IR starts from ``input_shape`` (same size as the graph input)."""
        full, _ = self.input_shapes()
        b = _Builder(full, input_shape)
        current = self.input.name
        seen: set[str] = {current}  # every network value produced so far
        graph = self.model.graph
        for index, node in enumerate(graph.node):
            label = _node_label(node, index)
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedError(f"unsupported ONNX op '{node.domain}.{op}' ({label})")
            if op not in SUPPORTED_OPS and not _registry_activations(op):
                raise UnsupportedError(f"unsupported ONNX op {op!r} ({label})")
            if not node.output:
                raise ModelFormatError(f"{self.where}: ONNX {op} {label} has no output")
            chain_pos: list[int] = []
            for pos, name in enumerate(node.input):
                if not name:
                    continue  # an omitted optional input
                if name == current:
                    chain_pos.append(pos)
                elif name in self.consts:
                    continue
                elif name in seen:
                    raise UnsupportedError(
                        f"{self.where}: ONNX graph is not a chain: {op} {label} reads {name!r}, "
                        f"which is not the output of the previous network node ({current!r})"
                    )
                else:
                    raise ModelFormatError(
                        f"{self.where}: ONNX {op} {label} reads undefined tensor {name!r} "
                        "(truncated, unsorted or invalid graph)"
                    )
            if not chain_pos:
                if op == "Constant":
                    self._add_const(node.output[0], self._constant_node(node, label))
                elif op == "Identity":
                    self._add_const(node.output[0], self.consts[node.input[0]])
                else:
                    raise UnsupportedError(
                        f"unsupported ONNX op {op!r} ({label}) on constants only: constant "
                        "subgraphs other than Constant/Identity are not supported"
                    )
                continue
            if len(chain_pos) > 1:
                raise UnsupportedError(
                    f"{self.where}: {op} {label} reads the network value {current!r} twice "
                    "(not an affine function of it)"
                )
            handler = getattr(self, f"_op_{op}", self._registry_activation)
            handler(b, node, chain_pos[0], label)
            current = node.output[0]
            seen.add(current)
        if current != self.output_name:
            if self.output_name in seen:
                raise UnsupportedError(
                    f"{self.where}: ONNX graph output {self.output_name!r} is not the end of "
                    f"the node chain (which ends in {current!r}); only sequential graphs are "
                    "supported"
                )
            raise ModelFormatError(
                f"{self.where}: ONNX graph output {self.output_name!r} is not produced by any "
                "node (truncated or invalid graph)"
            )
        # the IR output is flat logits, whatever extra size-1 axes the ONNX output has
        if not b.layers or len(b.ir_shape) != 1:
            b.append(Flatten(), (math.prod(b.ir_shape),))
        return b

    # -- op handlers: (builder, node, position of the network input, label) ------------------
    def _others(self, node: onnx.NodeProto, pos: int) -> list[str]:
        return [n for i, n in enumerate(node.input) if i != pos]

    def _activation(self, b: _Builder, name: str, alpha: float = 0.0) -> None:
        b.append(Activation(name, alpha), b.ir_shape)

    def _registry_activation(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        """``Relu``, ``Sigmoid``, ``Tanh``, ``Atan``, ``Softplus`` and any other registered
        activation: its parameter and settings read from the node's attributes."""
        op = _registry_activations(node.op_type)[0]
        where = f"ONNX {node.op_type} {label}"
        alpha = op.read_settings(op.onnx_settings, _attrs(node), where)
        if op.has_alpha and op.onnx_settings.alpha is not None:
            alpha = _attr_float(_attrs(node), op.onnx_settings.alpha, alpha)
            if op.zero_alpha_is_default and alpha == 0.0:  # the chain IR reads 0 as the default
                raise UnsupportedError(f"{where} with {op.onnx_settings.alpha}=0")
        self._activation(b, op.name, alpha)

    def _op_LeakyRelu(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        alpha = _attr_float(_attrs(node), "alpha", 0.01)
        self._activation(b, "relu" if alpha == 0.0 else "leaky_relu", alpha)

    def _op_Elu(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        alpha = _attr_float(_attrs(node), "alpha", 1.0)
        # ELU with alpha 0 is exactly ReLU (and the IR reads alpha 0 as the default 1)
        self._activation(b, "relu" if alpha == 0.0 else "elu", alpha)

    def _op_Clip(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        lo: float | None = attrs.get("min")
        hi: float | None = attrs.get("max")
        # opset >= 11 passes min/max as optional inputs instead of attributes
        if len(node.input) > 1 and node.input[1]:
            lo = float(self._float_const(node.input[1], label, "Clip").reshape(-1)[0])
        if len(node.input) > 2 and node.input[2]:
            hi = float(self._float_const(node.input[2], label, "Clip").reshape(-1)[0])
        if lo == 0.0 and (hi is None or hi >= 3.4e38):
            self._activation(b, "relu")
            return
        if lo == 0.0 and hi is not None and 0.0 < hi < 3.4e38:
            self._activation(b, "brelu", float(hi))  # the bounded ReLU min(max(x, 0), hi)
            return
        raise UnsupportedError(
            f"unsupported ONNX op 'Clip' ({label}) with min={lo}, max={hi}: only Clip(min=0) "
            "(= ReLU) and Clip(min=0, max=c > 0) (= bounded ReLU) are supported"
        )

    def _op_Identity(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        pass

    def _op_Dropout(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        # inference-mode dropout is the identity; refuse an explicit training_mode=True
        has_mode = len(node.input) > 2 and bool(node.input[2])
        if has_mode and bool(self._const(node.input[2], label, "Dropout").reshape(-1)[0]):
            raise UnsupportedError(f"unsupported ONNX op 'Dropout' ({label}) in training mode")

    # reshape-like ops: only the ONNX shape changes, the data order does not
    def _op_Flatten(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        rank = len(b.shape)
        axis = int(_attrs(node).get("axis", 1))
        if not -rank <= axis <= rank:  # Flatten accepts [-r, r]
            raise ModelFormatError(f"Flatten {label}: axis {axis} is out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        b.shape = (math.prod(b.shape[:axis]), math.prod(b.shape[axis:]))

    def _op_Reshape(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        if len(node.input) > 1 and node.input[1]:
            target = self._int_list(self._const(node.input[1], label, "Reshape"))
        elif "shape" in attrs:  # opset < 5
            target = [int(v) for v in attrs["shape"]]
        else:
            raise ModelFormatError(f"{self.where}: Reshape {label} has no target shape")
        allowzero = int(attrs.get("allowzero", 0))
        out: list[int] = []
        for i, d in enumerate(target):
            if d == 0 and not allowzero:
                if i >= len(b.shape):
                    raise ModelFormatError(
                        f"Reshape {label}: target {target} copies axis {i} of shape {b.shape}"
                    )
                d = b.shape[i]
            out.append(d)
        numel = math.prod(b.shape)
        if out.count(-1) > 1 or any(d < -1 for d in out):
            raise ModelFormatError(f"Reshape {label}: invalid target shape {target}")
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or numel % known:
                raise ModelFormatError(f"Reshape {label}: cannot reshape {b.shape} to {target}")
            out[out.index(-1)] = numel // known
        if math.prod(out) != numel:
            raise ModelFormatError(f"Reshape {label}: cannot reshape {b.shape} to {target}")
        b.shape = tuple(out)

    def _axes(self, node: onnx.NodeProto, label: str) -> list[int] | None:
        attrs = _attrs(node)
        if "axes" in attrs:  # opset < 13
            return [int(a) for a in attrs["axes"]]
        if len(node.input) > 1 and node.input[1]:
            return self._int_list(self._const(node.input[1], label, node.op_type))
        return None

    def _op_Squeeze(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        axes = self._axes(node, label)
        rank = len(b.shape)
        if axes is None:
            drop = {i for i, d in enumerate(b.shape) if d == 1}
        else:
            drop = {_normalize_axis(a, rank, label, "Squeeze") for a in axes}
            bad = [a for a in sorted(drop) if b.shape[a] != 1]
            if bad:
                raise UnsupportedError(
                    f"unsupported ONNX op 'Squeeze' ({label}): axes {bad} of shape {b.shape} "
                    "are not of size 1"
                )
        b.shape = tuple(d for i, d in enumerate(b.shape) if i not in drop)

    def _op_Unsqueeze(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        axes = self._axes(node, label)
        if axes is None:
            raise ModelFormatError(f"Unsqueeze {label} has no axes")
        rank = len(b.shape) + len(axes)
        ins = sorted(_normalize_axis(a, rank, label, "Unsqueeze") for a in axes)
        shape = list(b.shape)
        for a in ins:
            shape.insert(a, 1)
        b.shape = tuple(shape)

    def _op_Transpose(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        rank = len(b.shape)
        perm = [int(p) for p in _attrs(node).get("perm", list(range(rank))[::-1])]
        if sorted(perm) != list(range(rank)):
            raise ModelFormatError(f"Transpose {label}: perm {perm} does not fit rank {rank}")
        moved = [p for p in perm if b.shape[p] != 1]
        # a transpose is a no-op on the data when the axes larger than 1 keep their order
        if moved != sorted(moved):
            raise UnsupportedError(
                f"unsupported ONNX op 'Transpose' ({label}): perm {perm} on shape {b.shape} "
                "reorders the data (only transposes of size-1 axes are supported)"
            )
        b.shape = tuple(b.shape[p] for p in perm)

    # affine ops
    def _matmul_right(self, b: _Builder, w: np.ndarray, label: str, op: str) -> None:
        """``x @ W`` (W is ``(n, m)`` or ``(n,)``) on the network value ``x`` of shape
        ``(*L, n)``: a Dense ``kron(I_L, W^T)`` (just ``W^T`` when L is empty or all ones)."""
        s = b.shape
        if not s or w.ndim not in (1, 2) or s[-1] != w.shape[0]:
            raise (UnsupportedError if w.ndim > 2 else ModelFormatError)(
                f"{op} {label}: cannot multiply a network value of shape {s} by a constant of "
                f"shape {w.shape} on the right"
            )
        lead = s[:-1]
        wt = w.T if w.ndim == 2 else w[None, :]
        out = (*lead, w.shape[1]) if w.ndim == 2 else lead
        b.dense(self._kron(math.prod(lead), wt, 1, label, op), out)

    def _matmul_left(self, b: _Builder, w: np.ndarray, label: str, op: str) -> None:
        """``W @ x`` (W is ``(m, n)`` or ``(n,)``) on the network value ``x`` of shape ``(n,)``
        or ``(*L, n, k)``: a Dense ``kron(I_L, kron(W, I_k))``."""
        s = b.shape
        ok = w.ndim in (1, 2) and len(s) >= 1
        if ok:
            n = s[0] if len(s) == 1 else s[-2]
            ok = n == w.shape[-1]
        if not ok:
            raise (UnsupportedError if w.ndim > 2 else ModelFormatError)(
                f"{op} {label}: cannot multiply a network value of shape {s} by a constant of "
                f"shape {w.shape} on the left"
            )
        w2 = w if w.ndim == 2 else w[None, :]
        if len(s) == 1:
            out: Shape = (w.shape[0],) if w.ndim == 2 else ()
            b.dense(w2, out)
            return
        lead, k = s[:-2], s[-1]
        out = (*lead, w.shape[0], k) if w.ndim == 2 else (*lead, k)
        b.dense(self._kron(math.prod(lead), w2, k, label, op), out)

    def _kron(self, n_lead: int, w: np.ndarray, k: int, label: str, op: str) -> np.ndarray:
        if n_lead == 1 and k == 1:
            return w
        size = (n_lead * k) ** 2 * w.size
        if size > _MAX_DENSE_ELEMENTS:
            raise UnsupportedError(
                f"{op} {label}: a matrix product over {n_lead * k} rows would need a "
                f"{size}-element dense matrix"
            )
        m = np.kron(w, np.eye(k)) if k > 1 else w
        return np.kron(np.eye(n_lead), m) if n_lead > 1 else m

    def _op_MatMul(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        w = self._float_const(self._others(node, pos)[0], label, "MatMul")
        if pos == 0:
            self._matmul_right(b, w, label, "MatMul")  # x @ W (ACAS Xu, W is [in, out])
        else:
            self._matmul_left(b, w, label, "MatMul")  # W @ x (VNN-COMP toy nets)

    def _op_Gemm(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise UnsupportedError(
                f"unsupported ONNX op 'Gemm' ({label}) with the network value as input B"
            )
        if int(attrs.get("transA", 0)):
            raise UnsupportedError(f"unsupported ONNX op 'Gemm' ({label}) with transA=1")
        if len(b.shape) != 2:
            raise ModelFormatError(f"Gemm {label}: input A must be 2-D, got shape {b.shape}")
        if len(node.input) < 2 or not node.input[1]:
            raise ModelFormatError(f"Gemm {label}: missing input B")
        w = self._float_const(node.input[1], label, "Gemm")
        if w.ndim != 2:
            raise ModelFormatError(f"Gemm {label}: B must be 2-D, got shape {w.shape}")
        if int(attrs.get("transB", 0)):
            w = w.T
        self._matmul_right(b, _attr_float(attrs, "alpha", 1.0) * w, label, "Gemm")
        if len(node.input) > 2 and node.input[2]:
            c = _attr_float(attrs, "beta", 1.0) * self._float_const(node.input[2], label, "Gemm")
            self._apply(b, "add", c, label, "Gemm")

    def _apply(self, b: _Builder, op: str, c: np.ndarray, label: str, onnx_op: str) -> None:
        """``x <op> c`` on the network value, with ONNX (numpy) broadcasting of ``c``."""
        try:
            shape = np.broadcast_shapes(c.shape, b.shape)
        except ValueError:
            raise ModelFormatError(
                f"{onnx_op} {label}: constant of shape {c.shape} does not broadcast to the "
                f"network value of shape {b.shape}"
            ) from None
        if math.prod(shape) != math.prod(b.shape):
            raise UnsupportedError(
                f"unsupported ONNX op {onnx_op!r} ({label}): its constant of shape {c.shape} "
                f"broadcasts the network value of shape {b.shape} to {shape}"
            )
        b.shape = tuple(int(d) for d in shape)  # possibly with extra leading size-1 axes
        if op == "div" and bool((c == 0).any()):
            raise InputError(f"{onnx_op} {label}: division by a constant that contains zeros")
        neutral = 0.0 if op in ("add", "sub") else 1.0
        if bool((c == neutral).all()):
            return  # e.g. ACAS Xu's subtraction of an all-zero "AvgImg"
        b.elementwise(op, np.broadcast_to(c, b.shape).astype(np.float64), label)

    def _arith(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        op = node.op_type
        others = self._others(node, pos)
        if len(others) != 1 or not others[0]:
            raise ModelFormatError(f"{op} {label}: expected two inputs")
        c = self._float_const(others[0], label, op)
        if op == "Sub" and pos == 1:
            # c - x  ==  (-1 * x) + c
            self._apply(b, "mul", np.array(-1.0), label, op)
            self._apply(b, "add", c, label, op)
        elif op == "Div" and pos == 1:
            raise UnsupportedError(
                f"unsupported ONNX op 'Div' ({label}) dividing by the network value (not affine)"
            )
        else:
            self._apply(b, op.lower(), c, label, op)

    _op_Add = _op_Sub = _op_Mul = _op_Div = _arith

    def _op_BatchNormalization(
        self, b: _Builder, node: onnx.NodeProto, pos: int, label: str
    ) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise ModelFormatError(f"BatchNormalization {label}: network value is not input X")
        if int(attrs.get("training_mode", 0)) or int(attrs.get("spatial", 1)) == 0:
            raise UnsupportedError(
                f"unsupported ONNX op 'BatchNormalization' ({label}) in training or non-spatial "
                "mode"
            )
        if len(node.input) < 5 or not all(node.input[1:5]):
            raise ModelFormatError(f"BatchNormalization {label}: expected 5 inputs")
        scale, bias, mean, var = (
            self._float_const(n, label, "BatchNormalization") for n in node.input[1:5]
        )
        if len(b.shape) < 2:
            raise ModelFormatError(
                f"BatchNormalization {label}: input of shape {b.shape} has no channel axis"
            )
        # per-channel constants on axis 1 of the (batch-1) ONNX shape
        cshape = (1, b.shape[1]) + (1,) * (len(b.shape) - 2)
        eps = _attr_float(attrs, "epsilon", 1e-5)
        denom = np.sqrt(var.reshape(-1) + eps)
        # applied step by step, exactly as the ONNX definition reads, so each step folds alone
        for op, c in (("sub", mean), ("div", denom), ("mul", scale), ("add", bias)):
            self._apply(b, op, c.reshape(cshape), label, "BatchNormalization")

    # pooling ------------------------------------------------------------------------------
    def _pool_input(self, b: _Builder, node: onnx.NodeProto, label: str) -> Shape:
        """The (1, C, H, W) ONNX shape a 2-D pool reads; refuses anything else."""
        op = node.op_type
        s = b.shape
        if len(s) != 4:
            raise UnsupportedError(
                f"unsupported ONNX op {op!r} ({label}): only 2-D pooling of (N, C, H, W) "
                f"tensors is supported (input shape {s})"
            )
        if s[0] != 1:
            raise UnsupportedError(f"{op} {label}: input of shape {s} has batch size {s[0]}")
        if op == "MaxPool" and len([o for o in node.output if o]) > 1:
            raise UnsupportedError(
                f"unsupported ONNX op 'MaxPool' ({label}) with its Indices output: only the "
                "pooled values are supported"
            )
        return s

    def _pool_layer(self, b: _Builder, node: onnx.NodeProto, label: str) -> AvgPool2d | MaxPool2d:
        """The IR layer of an ``AveragePool`` / ``MaxPool`` node (attributes checked)."""
        op = node.op_type
        attrs = _attrs(node)
        s = self._pool_input(b, node, label)

        def bad(attr: str, why: str) -> UnsupportedError:
            return UnsupportedError(
                f"unsupported ONNX op {op!r} ({label}): attribute {attr}={attrs.get(attr)!r} {why}"
            )

        if "kernel_shape" not in attrs:
            raise ModelFormatError(f"{op} {label}: missing attribute kernel_shape")
        kernel = tuple(int(v) for v in attrs["kernel_shape"])
        if len(kernel) != 2 or min(kernel) < 1:
            raise bad("kernel_shape", "(only 2-D kernels of positive size are supported)")
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        if len(strides) != 2 or min(strides) < 1:
            raise bad("strides", "(expected two positive integers)")
        dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        if len(dilations) != 2 or min(dilations) < 1:
            raise bad("dilations", "(expected two positive integers)")
        if op == "AveragePool" and dilations != (1, 1):
            raise bad("dilations", "(dilated average pooling is not supported)")
        ceil_mode = int(attrs.get("ceil_mode", 0))
        if ceil_mode not in (0, 1):
            raise bad("ceil_mode", "(expected 0 or 1)")
        if op == "MaxPool" and int(attrs.get("storage_order", 0)) != 0:
            raise bad("storage_order", "(only the default row-major order is supported)")
        auto_pad, pads = _resolve_pads(attrs, op, label, s[2:], kernel, strides, dilations)
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
            what = "auto_pad" if auto_pad in ("SAME_UPPER", "SAME_LOWER") else "pads"
            raise bad(
                what,
                f"gives padding {pads} ([top, left, bottom, right]); only symmetric padding is "
                "supported",
            )
        try:
            if op == "AveragePool":
                cip = int(attrs.get("count_include_pad", 0))
                if cip not in (0, 1):
                    raise bad("count_include_pad", "(expected 0 or 1)")
                return AvgPool2d(kernel, strides, (pads[0], pads[1]), bool(ceil_mode), bool(cip))
            return MaxPool2d(kernel, strides, (pads[0], pads[1]), dilations, bool(ceil_mode))
        except InputError as exc:
            raise bad("pads", f"is not supported: {exc}") from None

    def _append_pool(self, b: _Builder, layer: AvgPool2d | MaxPool2d, op: str, label: str) -> None:
        b.materialize(b.shape[1:])
        try:
            out = layer.out_shape(b.ir_shape)
        except InputError as exc:
            raise ModelFormatError(f"{op} {label}: {exc}") from None
        b.append(layer, out)
        b.shape = (1, *out)

    def _op_AveragePool(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        self._append_pool(b, self._pool_layer(b, node, label), node.op_type, label)

    _op_MaxPool = _op_AveragePool

    def _op_GlobalAveragePool(
        self, b: _Builder, node: onnx.NodeProto, pos: int, label: str
    ) -> None:
        s = self._pool_input(b, node, label)
        kernel = (int(s[2]), int(s[3]))
        global_avg = node.op_type == "GlobalAveragePool"
        layer = AvgPool2d(kernel) if global_avg else MaxPool2d(kernel)
        self._append_pool(b, layer, node.op_type, label)

    _op_GlobalMaxPool = _op_GlobalAveragePool

    def _op_Conv(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise UnsupportedError(f"unsupported ONNX op 'Conv' ({label}) with a network weight")
        w = self._float_const(node.input[1], label, "Conv")
        s = b.shape
        if w.ndim != 4 or len(s) != 4:
            raise UnsupportedError(
                f"unsupported ONNX op 'Conv' ({label}): only 2-D convolutions are supported "
                f"(input shape {s}, weight shape {w.shape})"
            )
        if s[0] != 1:
            raise UnsupportedError(f"Conv {label}: input of shape {s} has batch size {s[0]}")
        group = int(attrs.get("group", 1))
        if s[1] != w.shape[1] * group:
            raise ModelFormatError(
                f"Conv {label}: input has {s[1]} channels, weight {w.shape} with group {group}"
            )
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(w.shape[2:]):
            raise ModelFormatError(
                f"Conv {label}: kernel_shape {attrs['kernel_shape']} does not match weight "
                f"{w.shape}"
            )
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        _, pads = _resolve_pads(attrs, "Conv", label, s[2:], w.shape[2:], strides, dilations)
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
            raise UnsupportedError(
                f"unsupported ONNX op 'Conv' ({label}) with asymmetric padding {pads} "
                "([top, left, bottom, right]); only symmetric padding is supported"
            )
        if len(node.input) > 2 and node.input[2]:
            bias = self._float_const(node.input[2], label, "Conv").reshape(-1)
        else:
            bias = np.zeros(w.shape[0])
        b.materialize(s[1:])
        layer = Conv2d(_torch(w), _torch(bias), strides, (pads[0], pads[1]), dilations, group)
        try:
            out = layer.out_shape(b.ir_shape)
        except InputError as exc:
            raise ModelFormatError(f"Conv {label}: {exc}") from None
        b.append(layer, out)
        b.shape = (1, *out)


# -- public API ---------------------------------------------------------------------------------
def _meta_json(props: dict[str, str], key: str, where: str) -> Any:
    try:
        return json.loads(props[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFormatError(f"{where}: metadata {key!r} is not valid JSON ({exc})") from None


def from_onnx(
    source: str | Path | onnx.ModelProto,
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network | Graph:
    """Import a sequential ONNX model as a :class:`Network` (any other model as a
    :class:`~nnbound.network.graph.Graph`: see :mod:`nnbound.network.from_onnx_graph`).

    Args:
        source: path of an ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        input_range: the data domain ``(low, high)`` of the inputs; overrides the range stored
            in the file's metadata by :func:`~nnbound.network.to_onnx.save_onnx` (if any).
        name: the network's name (default: the stored name, else the file stem).

    Returns:
        A network whose ``input_shape`` is the graph input's shape without the batch axis
        (vector-like inputs such as ``[1, 1, 1, 5]`` or ``[1, 784, 1]`` become flat ``(n,)``)
        and whose output is flat ``(num_outputs,)``. Tensors are float32, or float64 when every
        floating-point initializer of the model is float64.

    Raises:
        ModelFormatError: missing, unreadable, corrupt or truncated file; an invalid graph.
        UnsupportedError: an operator outside :data:`SUPPORTED_OPS`, or a graph that is not a
            chain (the message names the op and the node).
        InputError: NaN or inf weights.
    """
    model, path = _load_model(source)
    where = str(path) if path is not None else "ONNX model"
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError(
            f"{where}: ONNX model has no graph nodes (empty, truncated or not an ONNX file)"
        )
    if not model.opset_import:
        # required by the ONNX spec; a file cut right after its graph lacks it
        raise ModelFormatError(f"{where}: ONNX model declares no opset (truncated or invalid)")
    props = {p.key: p.value for p in model.metadata_props}
    if input_range is None and META_INPUT_RANGE in props:
        stored = _meta_json(props, META_INPUT_RANGE, where)
        if stored is not None:
            if not (isinstance(stored, list) and len(stored) == 2):
                raise ModelFormatError(f"{where}: metadata {META_INPUT_RANGE!r} is not [lo, hi]")
            input_range = (float(stored[0]), float(stored[1]))
    try:
        importer = _Importer(model, where)
        input_shape = importer.input_shapes()[1]
        if META_INPUT_SHAPE in props:
            # the exact IR input shape of a network exported by save_onnx
            stored_shape = _meta_json(props, META_INPUT_SHAPE, where)
            if (
                isinstance(stored_shape, list)
                and all(isinstance(d, int) and d > 0 for d in stored_shape)
                and math.prod(stored_shape) == math.prod(input_shape)
            ):
                input_shape = tuple(stored_shape)
        builder = importer.run(input_shape)
    except UnsupportedError:
        # Not a chain (branches, residual connections, several inputs or outputs) or an
        # operator only the graph IR has: the graph importer takes the whole model as a
        # Graph, which duck-types Network (or raises what it cannot take either).
        from nnbound.network.from_onnx_graph import from_onnx_graph

        return from_onnx_graph(path or model, name=name, input_range=input_range)
    except NnboundError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # onnx/protobuf quirks of a damaged model that slipped through the checks above
        raise ModelFormatError(f"{where}: invalid ONNX model ({_first_line(exc)})") from None

    if META_META in props:
        stored_meta = _meta_json(props, META_META, where)
        if not isinstance(stored_meta, dict):
            raise ModelFormatError(f"{where}: metadata {META_META!r} is not a JSON object")
        meta = {str(k): str(v) for k, v in stored_meta.items()}
    else:
        producer = f"{model.producer_name} {model.producer_version}".strip()
        opset = _opset(model)
        meta = {"source_format": "onnx"}
        if path is not None:
            meta["source"] = str(path)
        if producer:
            meta["onnx_producer"] = producer
        if opset is not None:
            meta["onnx_opset"] = str(opset)
    if name is None:
        name = props.get(META_NAME) or (path.stem if path is not None else None)
        name = name or model.graph.name or "network"

    all_double = importer.float_dtypes == {np.dtype(np.float64)}
    dtype = torch.float64 if all_double else torch.float32
    net = Network(
        layers=tuple(builder.layers),
        input_shape=tuple(input_shape),
        input_range=input_range,
        name=name,
        meta=meta,
    )
    return net.to(dtype=dtype)


__all__ = ["SUPPORTED_OPS", "from_onnx"]
