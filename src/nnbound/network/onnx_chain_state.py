"""What the ONNX chain importer knows about the model before and while it walks: the one graph
input (and the IR input shape it implies), the one output, and the constants (initializers and
``Constant`` nodes).

:class:`_ImporterState` is the base of the operator handler mixins
(:mod:`nnbound.network.onnx_chain_nonlinear`, ``onnx_chain_layout``, ``onnx_chain_math``,
``onnx_chain_spatial``), which read constants through it, and of the walk
(:mod:`nnbound.network.onnx_chain_importer`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.layers import Shape
from nnbound.network.onnx_attrs import _attrs
from nnbound.network.onnx_files import _to_array


class _ImporterState:
    """The graph's one input and output and its constants, read by the walk and by every
    operator handler."""

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

    def _others(self, node: onnx.NodeProto, pos: int) -> list[str]:
        return [n for i, n in enumerate(node.input) if i != pos]
