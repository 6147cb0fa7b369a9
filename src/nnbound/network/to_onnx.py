"""Export the network IR to ONNX, built node by node with ``onnx.helper``.

The exported graph reads ``input`` of shape ``(batch, *net.input_shape)`` (``batch`` symbolic)
and writes ``logits`` of shape ``(batch, *net.output_shape)``. Each IR layer maps to standard
operators: Dense -> ``Gemm(transB=1)``, Conv2d -> ``Conv``, AvgPool2d -> ``AveragePool``,
MaxPool2d -> ``MaxPool``, Flatten -> ``Flatten(axis=1)``,
Reshape -> ``Reshape`` (target ``[-1, *shape]``), Normalize -> ``Sub`` then ``Div``, activations
-> the node their operator names (:meth:`nnbound.ops.activation.ActivationOp.onnx_node`:
``Relu``/``LeakyRelu``/``Tanh``/``Sigmoid``/``Atan``/``Softplus``/``Elu``, the bounded
ReLU -> ``Clip(min=0, max=cap)``, ...). Tensors are written
as FLOAT, or DOUBLE for a float64 network, so a round trip through
:func:`~nnbound.network.from_onnx.from_onnx` is exact. The network's name, ``input_range``,
``input_shape`` and ``meta`` travel as model ``metadata_props`` (``nnbound.*`` keys, JSON values).
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import (
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    MaxPool2d,
    Normalize,
    Reshape,
)
from nnbound.network.network import Network
from nnbound.network.onnx_files import META_INPUT_RANGE, META_INPUT_SHAPE, META_META, META_NAME
from nnbound.ops.activation import OnnxNode
from nnbound.report.atomic import atomic_path

MIN_OPSET = 7
"""The oldest opset whose operators (Gemm with broadcast bias, Atan, Reshape with a shape
input) mean what the exporter needs."""


def _version() -> str:
    try:
        return importlib_metadata.version("nnbound")
    except importlib_metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _pool_node(
    layer: AvgPool2d | MaxPool2d, cur: str, out: str, p: str, opset: int, i: int
) -> onnx.NodeProto:
    """``AveragePool`` / ``MaxPool`` with the layer's options (``ceil_mode`` and dilations
    exist from opset 10 on)."""
    ph, pw = layer.padding
    attrs: dict[str, object] = {
        "kernel_shape": list(layer.kernel_size),
        "strides": list(layer.stride or layer.kernel_size),
        "pads": [ph, pw, ph, pw],
    }
    dilated = isinstance(layer, MaxPool2d) and layer.dilation != (1, 1)
    if layer.ceil_mode or dilated:
        if opset < 10:
            what = "ceil_mode" if layer.ceil_mode else "dilation"
            raise UnsupportedError(
                f"cannot export layer {i} ({type(layer).__name__}) with {what} to ONNX opset "
                f"{opset}; use opset 10 or later"
            )
        attrs["ceil_mode"] = int(layer.ceil_mode)
    if isinstance(layer, AvgPool2d):
        attrs["count_include_pad"] = int(layer.count_include_pad)
        return helper.make_node("AveragePool", [cur], [out], name=f"{p}_avgpool", **attrs)
    if dilated:
        attrs["dilations"] = list(layer.dilation)
    return helper.make_node("MaxPool", [cur], [out], name=f"{p}_maxpool", **attrs)


def _activation_node(layer: Activation, opset: int, i: int) -> OnnxNode:
    """The ONNX node of an activation (its operator's
    :meth:`~nnbound.ops.activation.ActivationOp.onnx_node`), checked to exist in ``opset``."""
    try:
        emit = layer.op.onnx_node(layer.alpha, opset)
    except UnsupportedError as exc:
        raise UnsupportedError(f"cannot export layer {i} ({layer.name}) to ONNX: {exc}") from None
    try:
        onnx.defs.get_schema(emit.op_type, opset)
    except onnx.defs.SchemaError:
        raise UnsupportedError(
            f"cannot export layer {i} ({layer.name}) to ONNX opset {opset}: ONNX has no "
            f"{emit.op_type} operator there (export with a later opset)"
        ) from None
    return emit


def save_onnx(net: Network, path: str | Path, *, opset: int = 17) -> Path:
    """Write ``net`` as an ONNX model to ``path`` and return the path.

    Args:
        net: the network; its input is exported as ``input`` with shape
            ``(batch, *net.input_shape)`` and its output as ``logits`` with shape
            ``(batch, *net.output_shape)``, ``batch`` being a symbolic dimension.
        path: the ``.onnx`` file to write (parent folders must exist).
        opset: the ONNX opset of the default domain (7 up to what the installed ``onnx``
            knows; 17 by default).

    Raises:
        InputError: an opset out of range.
    """
    path = Path(path)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise InputError(f"ONNX opset must be between {MIN_OPSET} and {newest}, got {opset}")
    if net.dtype == torch.float64:
        np_dtype, elem = np.float64, TensorProto.DOUBLE
    else:
        # float16/bfloat16 networks are widened: every runtime handles FLOAT
        np_dtype, elem = np.float32, TensorProto.FLOAT

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, t: torch.Tensor | np.ndarray) -> str:
        arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
        if arr.dtype.kind == "f":
            arr = arr.astype(np_dtype)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    cur = "input"
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        out = "logits" if i == last else f"layer{i}"
        p = f"layer{i}"
        if isinstance(layer, Dense):
            nodes.append(
                helper.make_node(
                    "Gemm",
                    [cur, const(f"{p}.weight", layer.weight), const(f"{p}.bias", layer.bias)],
                    [out],
                    name=f"{p}_gemm",
                    transB=1,
                )
            )
        elif isinstance(layer, Conv2d):
            kh, kw = (int(k) for k in layer.weight.shape[2:])
            ph, pw = layer.padding
            nodes.append(
                helper.make_node(
                    "Conv",
                    [cur, const(f"{p}.weight", layer.weight), const(f"{p}.bias", layer.bias)],
                    [out],
                    name=f"{p}_conv",
                    kernel_shape=[kh, kw],
                    pads=[ph, pw, ph, pw],
                    strides=list(layer.stride),
                    dilations=list(layer.dilation),
                    group=layer.groups,
                )
            )
        elif isinstance(layer, (AvgPool2d, MaxPool2d)):
            nodes.append(_pool_node(layer, cur, out, p, opset, i))
        elif isinstance(layer, Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], name=f"{p}_flatten", axis=1))
        elif isinstance(layer, Reshape):
            target = np.array([-1, *layer.shape], dtype=np.int64)  # -1: the dynamic batch
            nodes.append(
                helper.make_node(
                    "Reshape", [cur, const(f"{p}.shape", target)], [out], name=f"{p}_reshape"
                )
            )
        elif isinstance(layer, Normalize):
            mid = f"{p}_centered"
            nodes.append(
                helper.make_node(
                    "Sub", [cur, const(f"{p}.mean", layer.mean)], [mid], name=f"{p}_sub"
                )
            )
            nodes.append(
                helper.make_node("Div", [mid, const(f"{p}.std", layer.std)], [out], name=f"{p}_div")
            )
        elif isinstance(layer, Activation):
            emit = _activation_node(layer, opset, i)
            inputs = [cur]
            for k, value in enumerate(emit.constants):
                inputs.append(const(f"{p}.c{k}", np.array(value, dtype=np_dtype)))
            nodes.append(
                helper.make_node(
                    emit.op_type, inputs, [out], name=f"{p}_{layer.name}", **dict(emit.attrs)
                )
            )
        else:
            raise UnsupportedError(f"cannot export layer {i} ({type(layer).__name__}) to ONNX")
        cur = out

    graph = helper.make_graph(
        nodes,
        net.name or "network",
        [helper.make_tensor_value_info("input", elem, ["batch", *net.input_shape])],
        [helper.make_tensor_value_info("logits", elem, ["batch", *net.output_shape])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph, opset_imports=opsets, producer_name="nnbound", producer_version=_version()
    )
    # the oldest IR version that can hold this opset, so older runtimes can read the file
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(
        model,
        {
            META_NAME: net.name,
            META_INPUT_RANGE: json.dumps(list(net.input_range) if net.input_range else None),
            META_INPUT_SHAPE: json.dumps(list(net.input_shape)),
            META_META: json.dumps(dict(net.meta), sort_keys=True),
        },
    )
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:  # never a half-written model under the final name
        onnx.save_model(model, str(tmp))
    return path


__all__ = ["save_onnx"]
