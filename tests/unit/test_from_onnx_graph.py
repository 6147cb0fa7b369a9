"""The ONNX -> graph importer computes what onnxruntime computes.

Small graphs built here with ``onnx.helper`` (and a few ``torch.onnx`` exports) cover every
converter: branches, residual connections, slices, splits, gathers, pads, transposes,
transposed convolutions, resizing, reductions, products of computed tensors, softmax, sign,
arg max / one-hot / equal, several inputs and outputs, constant folding. Each is imported,
evaluated on random inputs and compared with onnxruntime (float32, relative 1e-4).

Cases that need a graph operator not registered yet (other operator families are written
alongside) are skipped, naming the operator. The VNN-COMP networks of the shared benchmark
folder are compared too where that folder exists.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.from_onnx import from_onnx
from nnbound.network.from_onnx_graph import from_onnx_graph
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.ops.registry import OPS

F = TensorProto.FLOAT
RNG = np.random.default_rng(7)


# -- helpers --------------------------------------------------------------------------------------
def need(*ops: str) -> None:
    """Skip when a graph operator the case needs is not registered yet."""
    missing = [op for op in ops if op not in OPS]
    if missing:
        pytest.skip(f"graph operator(s) {missing} not registered yet")


def w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def n(op: str, ins: list[str], outs: str | list[str], name: str | None = None, **attrs):
    outs = [outs] if isinstance(outs, str) else outs
    return helper.make_node(op, ins, outs, name=name or f"{op}_{outs[0]}", **attrs)


def make(
    nodes: list,
    inputs: dict[str, list],
    outputs: list[str] | dict[str, int],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    outs = outputs if isinstance(outputs, dict) else dict.fromkeys(outputs, F)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, F, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(k, t, None) for k, t in outs.items()],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # onnxruntime validates the model when it loads it
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _import(model: onnx.ModelProto | Path) -> Graph:
    """from_onnx_graph, skipping when a graph operator it needs is not registered yet."""
    try:
        return from_onnx_graph(model)
    except UnsupportedError as exc:
        text = str(exc)
        if "which is not registered" in text:
            op = text.split("graph operator ")[1].split(",")[0].strip("'")
            if op not in OPS:
                pytest.skip(f"graph operator {op!r} not registered yet")
        raise


def compare(
    model: onnx.ModelProto,
    *,
    low: float = -1.0,
    high: float = 1.0,
    trials: int = 3,
    rtol: float = 1e-4,
    feeds: Callable[[np.random.Generator, dict[str, list[int]]], dict[str, np.ndarray]]
    | None = None,
) -> Graph:
    """Import ``model`` and check it against onnxruntime on random inputs."""
    graph = _import(model)
    sess = _session(model)
    shapes = {
        i.name: [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        for i in sess.get_inputs()
    }
    rng = np.random.default_rng(0)
    for _ in range(trials):
        if feeds is None:
            xs = {k: rng.uniform(low, high, size=s).astype(np.float32) for k, s in shapes.items()}
        else:
            xs = feeds(rng, shapes)
        ref = np.concatenate(
            [np.asarray(r, dtype=np.float64).reshape(-1) for r in sess.run(None, xs)]
        )
        flat = np.concatenate([xs[k].reshape(-1) for k in shapes])
        x = torch.from_numpy(flat).reshape(1, *graph.input_shape).to(graph.dtype)
        got = graph(x)
        assert got.shape == (1, graph.num_outputs)
        got_np = got.detach().double().numpy().reshape(-1)
        assert got_np.shape == ref.shape
        err = np.abs(got_np - ref).max()
        assert err <= rtol * max(1.0, float(np.abs(ref).max())), (err, got_np, ref)
    return graph


def ops_of(graph: Graph) -> set[str]:
    return {node.op for node in graph.nodes}


# -- cases built with onnx.helper -----------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], onnx.ModelProto]
    ops: tuple[str, ...]
    expect: tuple[str, ...] = ()  # graph ops the import must use
    avoid: tuple[str, ...] = ()  # graph ops it must not use (folded / aliased away)


def _residual() -> onnx.ModelProto:
    nodes = [
        n("Gemm", ["x", "W1", "b1"], "h", transB=1),
        n("Relu", ["h"], "r"),
        n("Gemm", ["r", "W2"], "s", transB=1),
        n("Add", ["s", "x"], "y", name="skip"),
    ]
    return make(nodes, {"x": [1, 4]}, ["y"], {"W1": w(6, 4), "b1": w(6), "W2": w(4, 6)})


def _residual_conv() -> onnx.ModelProto:
    nodes = [
        n("Conv", ["x", "W", "B"], "c", pads=[1, 1, 1, 1]),
        n("Relu", ["c"], "r"),
        n("Add", ["x", "r"], "y"),
    ]
    return make(nodes, {"x": [1, 2, 5, 5]}, ["y"], {"W": w(2, 2, 3, 3), "B": w(2)})


def _concat_branches() -> onnx.ModelProto:
    nodes = [
        n("Gemm", ["x", "W1"], "a"),
        n("Gemm", ["x", "W2", "b2"], "b"),
        n("Relu", ["b"], "rb"),
        n("Concat", ["a", "rb"], "y", axis=1),
    ]
    return make(nodes, {"x": ["N", 4]}, ["y"], {"W1": w(4, 3), "W2": w(4, 2), "b2": w(2)})


def _concat_constants() -> onnx.ModelProto:
    nodes = [
        n("Relu", ["x"], "r"),
        n("Tanh", ["x"], "t"),
        n("Concat", ["C1", "r", "C2", "t"], "y", axis=1),
    ]
    inits = {"C1": w(1, 1, 3), "C2": w(1, 2, 3)}
    return make(nodes, {"x": [1, 2, 3]}, ["y"], inits)


def _concat_batch_axis() -> onnx.ModelProto:
    nodes = [n("Relu", ["x"], "r"), n("Concat", ["r", "x"], "y", axis=0)]
    return make(nodes, {"x": [1, 3]}, ["y"])


def _slice_inputs() -> onnx.ModelProto:
    nodes = [n("Slice", ["x", "s", "e", "a", "st"], "y")]
    inits = {"s": i64(1, -5), "e": i64(3, 2**62), "a": i64(1, 2), "st": i64(1, 2)}
    return make(nodes, {"x": [1, 3, 6]}, ["y"], inits)


def _slice_attrs() -> onnx.ModelProto:
    nodes = [n("Slice", ["x"], "y", starts=[0, 1], ends=[2, 9], axes=[1, 2])]
    return make(nodes, {"x": [1, 4, 3]}, ["y"], opset=9)


def _slice_backwards() -> onnx.ModelProto:
    nodes = [n("Slice", ["x", "s", "e", "a", "st"], "y")]
    inits = {"s": i64(-1), "e": i64(-100), "a": i64(1), "st": i64(-2)}
    return make(nodes, {"x": [1, 5]}, ["y"], inits)


def _split_sizes() -> onnx.ModelProto:
    nodes = [
        n("Split", ["x", "sp"], ["a", "b", "c"], axis=1),
        n("Concat", ["c", "a"], "ca", axis=1),
        n("Relu", ["b"], "rb"),
    ]
    return make(nodes, {"x": [1, 6, 2]}, ["ca", "rb"], {"sp": i64(1, 2, 3)}, opset=13)


def _split_attr() -> onnx.ModelProto:
    nodes = [n("Split", ["x"], ["a", "b"], axis=-1, split=[3, 1]), n("Relu", ["b"], "rb")]
    return make(nodes, {"x": [1, 4]}, ["a", "rb"], opset=11)


def _split_equal() -> onnx.ModelProto:
    nodes = [n("Split", ["x"], ["a", "b"], axis=1, num_outputs=2), n("Sub", ["a", "b"], "y")]
    return make(nodes, {"x": [1, 4, 2]}, ["y"], opset=18)


def _gather_scalar() -> onnx.ModelProto:
    nodes = [n("Gather", ["x", "i"], "y", axis=1)]
    return make(nodes, {"x": [1, 4, 3]}, ["y"], {"i": np.array(-1, np.int64)})


def _gather_list() -> onnx.ModelProto:
    nodes = [n("Gather", ["x", "i"], "y", axis=1)]
    return make(nodes, {"x": [1, 5, 2]}, ["y"], {"i": i64(4, 0, 0, -3)})


def _gather_matrix() -> onnx.ModelProto:
    nodes = [n("Gather", ["x", "i"], "y", axis=1)]
    return make(nodes, {"x": [1, 5]}, ["y"], {"i": np.array([[0, 1], [3, 2]], np.int64)})


def _gather_batch() -> onnx.ModelProto:
    # Gather(axis 0, index 0) drops the batch axis: no node, and the axes that follow shift
    nodes = [
        n("Gather", ["x", "z"], "g", axis=0),
        n("Transpose", ["g"], "t", perm=[1, 0]),
        n("Relu", ["t"], "y"),
    ]
    return make(nodes, {"x": [1, 2, 3]}, ["y"], {"z": np.array(0, np.int64)})


def _pad_constant() -> onnx.ModelProto:
    nodes = [n("Pad", ["x", "p", "v"], "y")]
    inits = {"p": i64(0, 0, 1, 2, 0, 0, 0, 1), "v": np.array(0.5, np.float32)}
    return make(nodes, {"x": [1, 2, 3, 3]}, ["y"], inits, opset=13)


def _pad_crop() -> onnx.ModelProto:
    nodes = [n("Pad", ["x", "p"], "y")]
    return make(nodes, {"x": [1, 2, 3, 3]}, ["y"], {"p": i64(0, 0, -1, 1, 0, 0, 1, -1)})


def _pad_attrs() -> onnx.ModelProto:
    nodes = [n("Pad", ["x"], "y", pads=[0, 1, 0, 2], value=-1.0)]
    return make(nodes, {"x": [1, 3]}, ["y"], opset=10)


def _pad_mode(mode: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = [n("Pad", ["x", "p"], "y", mode=mode)]
        return make(nodes, {"x": [1, 1, 3, 4]}, ["y"], {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)})

    return build


def _nhwc() -> onnx.ModelProto:
    nodes = [
        n("Transpose", ["x"], "t", perm=[0, 3, 1, 2]),
        n("Conv", ["t", "W"], "c"),
        n("Transpose", ["c"], "u", perm=[0, 2, 3, 1]),
        n("Flatten", ["u"], "f"),
        n("Gemm", ["f", "V"], "y"),
    ]
    return make(nodes, {"x": [1, 4, 4, 3]}, ["y"], {"W": w(2, 3, 2, 2), "V": w(18, 3)})


def _transpose_batch() -> onnx.ModelProto:
    nodes = [n("Transpose", ["x"], "t", perm=[2, 1, 0]), n("Relu", ["t"], "y")]
    return make(nodes, {"x": [1, 2, 3]}, ["y"])


def _conv_transpose(**attrs) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        group = attrs.get("group", 1)
        one_d = attrs.pop("one_d", False) if "one_d" in attrs else False
        shape = [1, 4, 3] if one_d else [1, 4, 3, 3]
        weight = w(4, 3, 3) if one_d else w(4, 6 // group, 3, 3)
        nodes = [n("ConvTranspose", ["x", "W", "B"], "y", **attrs)]
        bias = w(3 if one_d else 6)
        return make(nodes, {"x": shape}, ["y"], {"W": weight, "B": bias})

    return build


def _conv(**attrs) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        kernel = attrs.pop("k", 3) if "k" in attrs else 3
        one_d = attrs.pop("one_d", False) if "one_d" in attrs else False
        shape = [1, 2, 6] if one_d else [1, 2, 5, 6]
        weight = w(3, 2, kernel) if one_d else w(3, 2, kernel, kernel)
        nodes = [n("Conv", ["x", "W", "B"], "y", **attrs)]
        return make(nodes, {"x": shape}, ["y"], {"W": weight, "B": w(3)})

    return build


def _resize(opset: int, kind: str, values: list[float], **attrs) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        if kind == "upsample":
            nodes = [n("Upsample", ["x", "s"], "y", mode="nearest")]
            inits = {"s": np.array(values, np.float32)}
        elif opset == 10:
            nodes = [n("Resize", ["x", "s"], "y", mode="nearest")]
            inits = {"s": np.array(values, np.float32)}
        elif kind == "scales":
            nodes = [n("Resize", ["x", "roi", "s"], "y", mode="nearest", **attrs)]
            inits = {"roi": np.zeros(0, np.float32), "s": np.array(values, np.float32)}
        else:
            nodes = [n("Resize", ["x", "roi", "", "z"], "y", mode="nearest", **attrs)]
            inits = {"roi": np.zeros(0, np.float32), "z": np.array(values, np.int64)}
        return make(nodes, {"x": [1, 2, 3, 4]}, ["y"], inits, opset=opset)

    return build


def _reduce(op: str, opset: int, axes: list[int] | None, keep: int) -> Callable:
    def build() -> onnx.ModelProto:
        as_input = (op == "ReduceSum" and opset >= 13) or opset >= 18
        inits = {}
        kwargs = {"keepdims": keep}
        ins = ["x"]
        if axes is not None and as_input:
            inits["a"] = np.array(axes, np.int64)
            ins.append("a")
        elif axes is not None:
            kwargs["axes"] = axes
        return make([n(op, ins, "y", **kwargs)], {"x": [1, 2, 3, 4]}, ["y"], inits, opset)

    return build


def _mul_div() -> onnx.ModelProto:
    nodes = [
        n("Gemm", ["x", "W1"], "a"),
        n("Gemm", ["x", "W2"], "g"),
        n("Sigmoid", ["g"], "s"),
        n("Add", ["s", "one"], "b"),
        n("Mul", ["a", "b"], "m"),
        n("Div", ["a", "b"], "d"),
    ]
    inits = {"W1": w(4, 3), "W2": w(4, 3), "one": np.array(1.0, np.float32)}
    return make(nodes, {"x": [1, 4]}, ["m", "d"], inits)


def _mul_broadcast() -> onnx.ModelProto:
    nodes = [
        n("Gemm", ["x", "W"], "g"),
        n("ReduceSum", ["x", "ax"], "r", keepdims=1),
        n("Mul", ["g", "r"], "y"),
    ]
    return make(nodes, {"x": [1, 4]}, ["y"], {"W": w(4, 3), "ax": i64(1)})


def _div_by_computed() -> onnx.ModelProto:
    nodes = [
        n("Sigmoid", ["x"], "s"),
        n("Add", ["s", "half"], "p"),
        n("Div", ["c", "p"], "y", name="inv"),
    ]
    inits = {"half": np.array(0.5, np.float32), "c": np.array([2.0, -1.0, 3.0], np.float32)}
    return make(nodes, {"x": [1, 3]}, ["y"], inits)


def _matmul_computed() -> onnx.ModelProto:
    nodes = [
        n("Gemm", ["x", "W1"], "a"),
        n("Reshape", ["a", "s1"], "A"),
        n("Gemm", ["x", "W2"], "b"),
        n("Reshape", ["b", "s2"], "B"),
        n("MatMul", ["A", "B"], "y"),
    ]
    inits = {"W1": w(4, 6), "W2": w(4, 6), "s1": i64(1, 2, 3), "s2": i64(1, 3, 2)}
    return make(nodes, {"x": [1, 4]}, ["y"], inits)


def _matmul_rows() -> onnx.ModelProto:
    nodes = [n("MatMul", ["x", "W"], "m"), n("Add", ["B", "m"], "y")]
    return make(nodes, {"x": [1, 3, 6]}, ["y"], {"W": w(6, 5), "B": w(5)})


def _matmul_left() -> onnx.ModelProto:
    nodes = [n("MatMul", ["W", "x"], "y")]
    return make(nodes, {"x": [1, 3, 2]}, ["y"], {"W": w(4, 3)})


def _softmax(opset: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = [n("Softmax", ["x"], "y", axis=1)]
        return make(nodes, {"x": [1, 3, 4]}, ["y"], opset=opset)

    return build


def _sign() -> onnx.ModelProto:
    nodes = [
        n("Gemm", ["x", "W"], "g"),
        n("Sign", ["g"], "s"),
        n("Add", ["s", "h"], "y"),
    ]
    return make(nodes, {"x": [1, 4]}, ["y"], {"W": w(4, 5), "h": np.array(0.5, np.float32)})


def _argmax_onehot() -> onnx.ModelProto:
    nodes = [
        n("ArgMax", ["x"], "am", axis=1, keepdims=0),
        n("OneHot", ["am", "depth", "vals"], "oh", axis=1),
        n("Equal", ["am", "two"], "eq"),
        n("Cast", ["eq"], "eqf", to=F),
        n("Gather", ["oh", "one"], "g", axis=1),
        n("Cast", ["g"], "gf", to=F),
    ]
    inits = {
        "depth": np.array([3], np.int64),
        "vals": np.array([0, 1], np.int64),
        "two": np.array(2, np.int64),
        "one": np.array(1, np.int64),
    }
    return make(nodes, {"x": [1, 3, 4, 5]}, ["eqf", "gf"], inits, opset=13)


def _cast_truncates() -> onnx.ModelProto:
    nodes = [
        n("Mul", ["x", "three"], "m"),
        n("Cast", ["m"], "i", to=TensorProto.INT32),
        n("Cast", ["i"], "y", to=F),
    ]
    return make(nodes, {"x": [1, 6]}, ["y"], {"three": np.array(3.0, np.float32)})


def _multi_input() -> onnx.ModelProto:
    nodes = [
        n("Flatten", ["a"], "fa"),
        n("Gemm", ["fa", "W"], "g"),
        n("Add", ["g", "b"], "y"),
    ]
    return make(nodes, {"a": [1, 2, 3], "b": [1, 4]}, ["y"], {"W": w(6, 4)})


def _multi_output() -> onnx.ModelProto:
    nodes = [n("Relu", ["x"], "r"), n("Gemm", ["x", "W"], "g")]
    return make(nodes, {"x": [1, 3]}, ["r", "g"], {"W": w(3, 2)})


def _batchnorm() -> onnx.ModelProto:
    bn = {f"{k}{i}": v for i in (1, 2) for k, v in _bn_params(3).items()}
    nodes = [
        n("Conv", ["x", "W"], "c"),
        n("BatchNormalization", ["c", "s1", "b1", "m1", "v1"], "bn1", epsilon=1e-3),
        n("Relu", ["bn1"], "r"),
        n("BatchNormalization", ["r", "s2", "b2", "m2", "v2"], "y"),
    ]
    return make(nodes, {"x": [1, 2, 4, 4]}, ["y"], {"W": w(3, 2, 3, 3), **bn})


def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {
        "s": w(c),
        "b": w(c),
        "m": w(c),
        "v": (np.abs(w(c)) + 0.5).astype(np.float32),
    }


def _shared_conv_output() -> onnx.ModelProto:
    # the conv output has two readers: nothing may be folded into the conv
    nodes = [
        n("Conv", ["x", "W"], "c"),
        n("Add", ["c", "zero"], "a"),
        n("Mul", ["a", "two"], "m"),
        n("BatchNormalization", ["c", "s", "b", "m0", "v"], "bn"),
        n("Relu", ["c"], "r"),
    ]
    inits = {
        "W": w(3, 2, 3, 3),
        "zero": np.zeros(1, np.float32),
        "two": np.array(2.0, np.float32),
        **{k if k != "m" else "m0": v for k, v in _bn_params(3).items()},
    }
    return make(nodes, {"x": [1, 2, 4, 4]}, ["m", "bn", "r"], inits)


def _arith_constants() -> onnx.ModelProto:
    nodes = [
        n("Relu", ["x"], "r"),
        n("Add", ["c", "r"], "a"),
        n("Sub", ["c", "a"], "b"),
        n("Sub", ["b", "c"], "d"),
        n("Mul", ["d", "z"], "e"),
        n("Div", ["e", "c"], "f"),
        n("Neg", ["f"], "g"),
        n("Sum", ["g", "c", "r"], "y"),
    ]
    inits = {
        "c": np.array([0.5, -2.0, 3.0], np.float32),
        "z": np.array([1.0, 0.0, -2.0], np.float32),
    }
    return make(nodes, {"x": [1, 3]}, ["y"], inits)


def _clip(opset: int, lo: float | None, hi: float | None) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        if opset < 11:
            attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
            return make([n("Clip", ["x"], "y", **attrs)], {"x": [1, 6]}, ["y"], opset=opset)
        ins = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
        inits = {k: np.array(v, np.float32) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
        return make([n("Clip", ins, "y")], {"x": [1, 6]}, ["y"], inits, opset=opset)

    return build


def _shape_arithmetic() -> onnx.ModelProto:
    # torch's dynamic flatten: x.reshape(x.shape[0], -1)
    nodes = [
        n("Shape", ["x"], "s"),
        n("Gather", ["s", "zero"], "b", axis=0),
        n("Unsqueeze", ["b", "ax"], "u"),
        n("Concat", ["u", "minus1"], "shape", axis=0),
        n("Reshape", ["x", "shape"], "f"),
        n("Gemm", ["f", "W"], "y"),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "ax": i64(0),
        "minus1": i64(-1),
        "W": w(24, 3),
    }
    return make(nodes, {"x": ["N", 2, 3, 4]}, ["y"], inits)


def _aliases() -> onnx.ModelProto:
    nodes = [
        n("Identity", ["x"], "i"),
        n("Dropout", ["i", "ratio"], "d"),
        n("Cast", ["d"], "c", to=F),
        n("Unsqueeze", ["c", "ax"], "u"),
        n("Squeeze", ["u", "ax"], "s"),
        n("Expand", ["s", "shape"], "e"),
        n("Relu", ["e"], "y"),
    ]
    inits = {"ratio": np.array(0.3, np.float32), "ax": i64(1), "shape": i64(1, 3)}
    return make(nodes, {"x": [1, 3]}, ["y"], inits)


def _pools() -> onnx.ModelProto:
    nodes = [
        n("MaxPool", ["x"], "m", kernel_shape=[2, 2], strides=[2, 2]),
        n("AveragePool", ["x"], "a", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        n("GlobalAveragePool", ["a"], "g"),
        n("GlobalMaxPool", ["m"], "h"),
    ]
    return make(nodes, {"x": [1, 2, 6, 6]}, ["g", "h"])


def _vector_input() -> onnx.ModelProto:
    nodes = [n("MatMul", ["x", "W"], "m"), n("Relu", ["m"], "y")]
    return make(nodes, {"x": [3]}, ["y"], {"W": w(3, 2)})


CASES = [
    Case("residual_add", _residual, ("dense", "relu", "add"), expect=("add",)),
    Case("residual_conv", _residual_conv, ("conv2d", "relu", "add")),
    Case("concat_branches", _concat_branches, ("dense", "relu", "concat")),
    Case("concat_constants", _concat_constants, ("relu", "tanh", "pad", "add", "concat")),
    Case("concat_batch_axis", _concat_batch_axis, ("relu", "concat")),
    Case("slice_inputs", _slice_inputs, ("slice",)),
    Case("slice_attrs_opset9", _slice_attrs, ("slice",)),
    Case("slice_backwards", _slice_backwards, ("gather",)),
    Case("split_sizes", _split_sizes, ("slice", "concat", "relu")),
    Case("split_attr_opset11", _split_attr, ("slice", "concat", "relu")),
    Case("split_equal_opset18", _split_equal, ("slice", "sub")),
    Case("gather_scalar", _gather_scalar, ("slice",), avoid=("gather",)),
    Case("gather_list", _gather_list, ("gather",)),
    Case("gather_matrix", _gather_matrix, ("gather",)),
    Case("gather_batch_axis", _gather_batch, ("transpose", "relu"), avoid=("gather", "slice")),
    Case("pad_constant", _pad_constant, ("pad",)),
    Case("pad_crop", _pad_crop, ("slice", "pad")),
    Case("pad_attrs_opset10", _pad_attrs, ("pad",)),
    Case("pad_reflect", _pad_mode("reflect"), ("gather",)),
    Case("pad_edge", _pad_mode("edge"), ("gather",)),
    Case("nhwc_transposes", _nhwc, ("transpose", "conv2d", "dense"), expect=("transpose",)),
    Case("transpose_batch_axis", _transpose_batch, ("transpose", "relu")),
    Case(
        "conv_transpose_stride_pads",
        _conv_transpose(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        ("conv_transpose2d",),
    ),
    Case(
        "conv_transpose_asymmetric",
        _conv_transpose(strides=[2, 1], pads=[0, 1, 1, 0]),
        ("conv_transpose2d", "slice"),
    ),
    Case(
        "conv_transpose_groups", _conv_transpose(group=2, dilations=[2, 1]), ("conv_transpose2d",)
    ),
    Case(
        "conv_transpose_output_shape",
        _conv_transpose(strides=[2, 2], output_shape=[6, 5]),
        ("conv_transpose2d", "slice"),
    ),
    Case(
        "conv_transpose_same_upper",
        _conv_transpose(strides=[2, 2], auto_pad="SAME_UPPER"),
        ("conv_transpose2d", "slice"),
    ),
    Case("conv_transpose_1d", _conv_transpose(one_d=True, strides=[2]), ("conv_transpose2d",)),
    Case("conv_asymmetric", _conv(pads=[0, 1, 2, 1]), ("conv2d", "pad")),
    Case("conv_same_upper", _conv(k=2, auto_pad="SAME_UPPER"), ("conv2d", "pad")),
    Case("conv_1d", _conv(one_d=True, pads=[1, 1], strides=[2]), ("conv2d",)),
    Case("resize_scales", _resize(13, "scales", [1, 1, 2, 3]), ("resize_nearest",)),
    Case(
        "resize_sizes_asymmetric",
        _resize(13, "sizes", [1, 2, 6, 8], coordinate_transformation_mode="asymmetric"),
        ("resize_nearest",),
    ),
    Case("resize_opset10", _resize(10, "scales", [1, 1, 2, 2]), ("resize_nearest",)),
    Case("upsample_opset9", _resize(9, "upsample", [1, 1, 3, 2]), ("resize_nearest",)),
    Case("resize_fractional", _resize(13, "scales", [1, 1, 1.5, 0.5]), ("gather",)),
    Case("reduce_sum_opset13", _reduce("ReduceSum", 13, [1], 0), ("reduce_sum",)),
    Case("reduce_mean_attrs", _reduce("ReduceMean", 11, [2, -1], 1), ("reduce_mean",)),
    Case("reduce_sum_all", _reduce("ReduceSum", 13, None, 0), ("reduce_sum",)),
    Case("reduce_mean_batch_axis", _reduce("ReduceMean", 18, [0, 1], 0), ("reduce_mean",)),
    Case("mul_div_computed", _mul_div, ("dense", "sigmoid", "add", "mul", "div", "concat")),
    Case("mul_broadcast", _mul_broadcast, ("dense", "reduce_sum", "mul")),
    Case("div_by_computed", _div_by_computed, ("sigmoid", "add", "reciprocal", "scale")),
    Case("matmul_computed", _matmul_computed, ("dense", "matmul")),
    Case("matmul_rows_bias_folded", _matmul_rows, ("dense",), expect=("dense",), avoid=("add",)),
    Case("matmul_constant_left", _matmul_left, ("dense",)),
    Case("softmax_opset13", _softmax(13), ("softmax",)),
    Case("softmax_opset11_coerced", _softmax(11), ("softmax",)),
    Case("sign", _sign, ("dense", "sign", "add")),
    Case("argmax_onehot_equal", _argmax_onehot, ("argmax", "onehot", "equal", "slice", "concat")),
    Case("cast_truncates", _cast_truncates, ("scale", "trunc"), expect=("trunc",)),
    Case("multi_input", _multi_input, ("slice", "dense", "add")),
    Case("multi_output", _multi_output, ("relu", "dense", "concat")),
    Case("batchnorm", _batchnorm, ("conv2d", "relu", "scale"), expect=("scale",)),
    Case("arith_constants", _arith_constants, ("relu", "add", "scale")),
    Case("shared_conv_output", _shared_conv_output, ("conv2d", "scale", "relu", "concat")),
    Case("clip_both", _clip(13, -1.0, 2.0), ("add", "brelu")),
    Case("clip_max_only", _clip(13, None, 0.5), ("relu", "scale")),
    Case("clip_min_only", _clip(12, 0.25, None), ("relu", "add")),
    Case("clip_attrs_opset6", _clip(6, -0.5, 0.5), ("add", "brelu")),
    Case("clip_relu6", _clip(13, 0.0, 6.0), ("brelu",), avoid=("add", "scale")),
    Case("shape_arithmetic_folded", _shape_arithmetic, ("dense",), avoid=("concat", "gather")),
    Case("aliases", _aliases, ("relu",)),
    Case("pools", _pools, ("maxpool2d", "avgpool2d", "concat")),
    Case("vector_input", _vector_input, ("dense", "relu")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_onnxruntime(case: Case) -> None:
    need(*case.ops)
    graph = compare(case.build(), low=-2.0, high=2.0)
    used = ops_of(graph)
    assert set(case.expect) <= used, used
    assert not set(case.avoid) & used, used
    assert graph.meta["onnx_importer"] == "graph"


def test_batchnorm_after_conv_is_folded() -> None:
    need("conv2d", "relu", "scale")
    graph = from_onnx_graph(_batchnorm())
    ops = [node.op for node in graph.nodes]
    # the first BatchNormalization lives in the conv; the output is flattened
    assert ops == ["conv2d", "relu", "scale", "reshape"]


def test_large_row_products_use_a_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    need("dense", "conv2d", "transpose")
    import nnbound.network.onnx_convert_math as math_convert

    monkeypatch.setattr(math_convert, "KRON_LIMIT", 10)
    graph = compare(_matmul_rows())
    assert "conv2d" in ops_of(graph) and "dense" not in ops_of(graph)
    graph = compare(_matmul_left())
    assert "conv2d" in ops_of(graph)


def test_multi_input_packs_inputs_in_order() -> None:
    need("slice", "dense", "add")
    graph = from_onnx_graph(_multi_input())
    assert graph.input_shape == (10,)  # a: 6 entries, then b: 4 (the VNN-LIB X_ order)
    slices = [node for node in graph.nodes if node.op == "slice"]
    assert [(s.attrs["starts"], s.attrs["ends"]) for s in slices] == [((0,), (6,)), ((6,), (10,))]


def test_shapes_and_names() -> None:
    need("dense", "relu", "add")
    graph = from_onnx_graph(_residual(), name="res")
    assert graph.name == "res"
    assert graph.input_shape == (4,) and graph.output_shape == (4,)
    assert graph.input_name == "x" and graph.output == "y"  # ONNX names kept
    assert graph.dtype == torch.float32
    # a double model stays double
    model = _residual()
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init).astype(np.float64)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    assert from_onnx_graph(model).dtype == torch.float64


def test_image_input_keeps_its_shape() -> None:
    need("conv2d", "relu", "add")
    graph = from_onnx_graph(_residual_conv())
    assert graph.input_shape == (2, 5, 5)
    assert graph.output_shape == (50,)


# -- torch.onnx exports ---------------------------------------------------------------------------
class _ResidualBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.conv2(h) + x)
        return self.fc(h.flatten(1))


class _Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.tanh(self.a(x))
        right = torch.relu(self.b(x[:, 1:4]))
        return torch.cat([left, right, x[:, :1]], dim=1)


class _Layout(nn.Module):
    """chunk, cat, a transposed convolution, nearest upsampling, permute, a dynamic view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.conv(x)).chunk(2, dim=1)
        h = self.up(torch.cat([b, a], 1))
        u = nn.functional.interpolate(x[:, :2, :4, :4], scale_factor=2.0, mode="nearest")
        h = torch.cat([h, u], 1).permute(0, 2, 3, 1)
        return self.fc(h.reshape(h.size(0), -1))


class _Attention(nn.Module):
    """Products of computed tensors: ``softmax``-free attention ``(q k^T / 2) x``."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.q(x) @ self.k(x).transpose(1, 2) / 2.0) @ x


def _export(module: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated, and the only one that works offline
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize(
    ("module", "shape", "ops"),
    [
        (_ResidualBlock, (1, 2, 6, 6), ("conv2d", "relu", "add", "dense")),
        (_Branches, (1, 5), ("dense", "tanh", "relu", "slice", "concat")),
        (_Layout, (1, 3, 4, 4), ("conv2d", "conv_transpose2d", "resize_nearest", "transpose")),
        (_Attention, (1, 3, 4), ("dense", "matmul", "transpose", "scale")),
    ],
    ids=["residual_block", "concat_branches", "layout", "attention"],
)
def test_torch_exports(module: type[nn.Module], shape: tuple[int, ...], ops: tuple) -> None:
    need(*ops)
    torch.manual_seed(0)
    m = module()
    if isinstance(m, _ResidualBlock):
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    model = _export(m, torch.zeros(shape))
    graph = compare(model)
    x = torch.rand(4, *shape[1:])
    with torch.no_grad():
        want = m(x).reshape(4, -1).numpy()  # the graph's output is flat
        np.testing.assert_allclose(graph(x).numpy(), want, rtol=1e-4, atol=1e-5)


# -- from_onnx falls back to the graph importer ---------------------------------------------------
def test_from_onnx_returns_a_graph_for_non_chains() -> None:
    need("dense", "relu", "add")
    graph = from_onnx(_residual(), input_range=(-1.0, 1.0))
    assert isinstance(graph, Graph)
    assert graph.input_range == (-1.0, 1.0)
    assert isinstance(from_onnx(_vector_input()), Network)  # chains stay chains


def test_load_model_returns_the_graph(tmp_path: Path) -> None:
    need("dense", "relu", "add")
    from nnbound.network.load import load_model

    path = tmp_path / "res.onnx"
    onnx.save(_residual(), path)
    graph = load_model(path, input_range=(0.0, 1.0))
    assert isinstance(graph, Graph)
    assert graph.name == "res" and graph.input_range == (0.0, 1.0)
    assert graph.meta["source"] == str(path)
    x = torch.rand(2, 4)
    assert graph.check_input(x).shape == (2, 4)
    assert graph.forward(x).shape == (2, graph.num_outputs)


# -- errors ---------------------------------------------------------------------------------------
def test_unsupported_op_names_op_and_node(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    need("relu", "add")
    nodes = [
        n("Relu", ["x"], "r"),
        n("Add", ["r", "x"], "a"),
        n("LRN", ["a"], "y", name="weird", size=3),
    ]
    model = make(nodes, {"x": [1, 2, 3, 3]}, ["y"])
    match = r"unsupported ONNX op 'LRN' \(node 'weird'\)"
    with pytest.raises(UnsupportedError, match=match):
        from_onnx_graph(model)
    with pytest.raises(UnsupportedError, match=match):
        from_onnx(model)  # not a chain: the graph importer's refusal names the op
    from nnbound.cli.main import main

    path = tmp_path / "lrn.onnx"
    onnx.save(model, path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unsupported ONNX op 'LRN' (node 'weird')" in err
    assert len(err.strip().splitlines()) == 1


def test_unsupported_op_without_name_is_labelled_by_output() -> None:
    model = make(
        [helper.make_node("Tile", ["x", "r"], ["y"])], {"x": [1, 3]}, ["y"], {"r": i64(1, 2)}
    )
    with pytest.raises(UnsupportedError, match=r"unsupported ONNX op 'Tile' \(node #0 -> 'y'\)"):
        from_onnx_graph(model)


def test_missing_graph_operator_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    need("relu", "dense", "concat")
    monkeypatch.delitem(OPS, "concat")
    with pytest.raises(UnsupportedError, match="graph operator 'concat', which is not registered"):
        from_onnx_graph(_multi_output())
    with pytest.raises(
        UnsupportedError, match=r"'Concat' \(node 'Concat_y'\).*'concat', which is not"
    ):
        from_onnx_graph(_concat_branches())


@pytest.mark.parametrize(
    ("nodes", "inits", "match"),
    [
        (
            [n("Cast", ["x"], "y", name="nz", to=TensorProto.BOOL)],
            {},
            r"'Cast' \(node 'nz'\).*BOOL",
        ),
        (
            [n("Squeeze", ["x", "ax"], "y", name="sq")],
            {"ax": i64(1)},
            r"'Squeeze' \(node 'sq'\).*not of size 1",
        ),
        (
            [n("Resize", ["x", "roi", "s"], "y", name="lin", mode="linear")],
            {"roi": np.zeros(0, np.float32), "s": np.array([1, 2], np.float32)},
            r"'Resize' \(node 'lin'\).*linear",
        ),
        (
            [n("Clip", ["x", "lo", "hi"], "y", name="c")],
            {"lo": np.array(1, np.float32), "hi": np.array(-1, np.float32)},
            r"'Clip' \(node 'c'\)",
        ),
    ],
    ids=["cast_to_bool", "squeeze_non_unit", "resize_linear", "clip_empty"],
)
def test_unsupported_patterns(nodes: list, inits: dict, match: str) -> None:
    outputs = {"y": TensorProto.BOOL} if "BOOL" in match else ["y"]
    model = make(nodes, {"x": [1, 3]}, outputs, inits)
    with pytest.raises(UnsupportedError, match=match):
        from_onnx_graph(model)


def test_custom_domain_is_named() -> None:
    node = helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", F, [1, 3])],
        [helper.make_tensor_value_info("y", F, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    with pytest.raises(UnsupportedError, match=r"'com\.microsoft\.Gelu' \(node 'g'\)"):
        from_onnx_graph(model)


def test_format_errors() -> None:
    model = make([n("Relu", ["x"], "y")], {"x": [1, 3]}, ["y"])
    model.graph.node[0].input[0] = "missing"
    with pytest.raises(ModelFormatError, match="undefined tensor 'missing'"):
        from_onnx_graph(model)
    bad = make([n("Gemm", ["x", "W"], "y")], {"x": [1, 3]}, ["y"], {"W": w(3, 2)})
    bad.graph.output[0].name = "nowhere"
    with pytest.raises(ModelFormatError, match="'nowhere' is not produced"):
        from_onnx_graph(bad)
    with pytest.raises(ModelFormatError, match="not found"):
        from_onnx_graph("/no/such/model.onnx")


def test_non_finite_weights_and_division_by_zero() -> None:
    need("dense")
    weight = w(3, 2)
    weight[0, 1] = np.nan
    model = make([n("Gemm", ["x", "W"], "y")], {"x": [1, 3]}, ["y"], {"W": weight})
    with pytest.raises(InputError, match="NaN"):
        from_onnx_graph(model)
    model = make([n("Div", ["x", "c"], "y")], {"x": [1, 2]}, ["y"], {"c": np.zeros(2, np.float32)})
    with pytest.raises(InputError, match="division by a constant that contains zeros"):
        from_onnx_graph(model)


def test_batch_sizes_other_than_one_are_refused() -> None:
    model = make([n("Relu", ["x"], "y")], {"x": [2, 3]}, ["y"])
    with pytest.raises(UnsupportedError, match="fixed batch size of 2"):
        from_onnx_graph(model)


# -- the shared VNN-COMP networks -----------------------------------------------------------------
SHARED = Path(__file__).parents[2].parent / "shared" / "benchmarks"
BENCHMARKS = [
    p
    for folder in ("vnncomp_graphs", "vnncomp")
    if (SHARED / folder).is_dir()
    for p in sorted((SHARED / folder).rglob("*.onnx"))
]


_BENCHMARK_NEEDS = {
    # Cast(float -> int32) of the mask channel truncates: exact only with a trunc operator
    "carvana_unet_2022": ("softmax", "argmax", "onehot", "equal", "trunc"),
    "nn4sys": ("mul", "div"),
    "traffic_signs_recognition": ("sign", "softmax"),
}
"""Graph operators beyond the common ones (dense, conv2d, relu, add, slice, ...) each
benchmark family needs."""


def _benchmark_feeds(path: Path) -> Callable:
    def feeds(rng: np.random.Generator, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
        out = {}
        for name, shape in shapes.items():
            x = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
            if "carvana" in str(path):
                x[:, 3] = rng.integers(0, 2, size=x[:, 3].shape)  # the mask channel is 0 / 1
            out[name] = x
        return out

    return feeds


@pytest.mark.skipif(not BENCHMARKS, reason=f"shared benchmarks not found under {SHARED}")
@pytest.mark.parametrize(
    "path", BENCHMARKS, ids=[str(p.relative_to(SHARED)) for p in BENCHMARKS] or None
)
def test_benchmark_network_matches_onnxruntime(path: Path) -> None:
    model = onnx.load(path)
    for folder, ops in _BENCHMARK_NEEDS.items():
        if folder in path.parts:
            need(*ops)
    graph = compare(model, trials=2, feeds=_benchmark_feeds(path))
    assert len(graph.output_shape) == 1
    assert graph.num_inputs == sum(
        math.prod(d.dim_value or 1 for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
        if i.name not in {init.name for init in model.graph.initializer}
    )
