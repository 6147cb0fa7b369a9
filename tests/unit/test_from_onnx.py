"""The ONNX importer against onnxruntime: hand-built graphs of every supported op, the VNN-COMP
networks in tests/data/onnx, and the errors for bad files and unsupported graphs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.from_onnx import SUPPORTED_OPS, from_onnx
from nnbound.network.graph import Graph
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten, Normalize

DATA = Path(__file__).parents[1] / "data" / "onnx"
RTOL = 1e-5

rng = np.random.default_rng(1234)


# -- helpers --------------------------------------------------------------------------------
def f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    in_shape: Sequence[int | str | None],
    *,
    opset: int = 17,
    elem: int = TensorProto.FLOAT,
    check: bool = False,
) -> onnx.ModelProto:
    """A single-input graph reading ``x`` and writing the last node's first output."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("x", elem, list(in_shape))],
        [helper.make_tensor_value_info(nodes[-1].output[0], elem, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by the installed onnxruntime whatever the opset
    if check:
        onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| relative to the largest reference logit."""
    got, ref = got.reshape(-1).astype(np.float64), ref.reshape(-1).astype(np.float64)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))


def check_against_ort(
    model: onnx.ModelProto, in_shape: Sequence[int], n: int = 3, rtol: float = RTOL, **kw
) -> None:
    """from_onnx(model) gives onnxruntime's logits on ``n`` random batch-1 inputs."""
    net = from_onnx(model, **kw)
    for _ in range(n):
        x = rng.uniform(-1, 1, size=tuple(in_shape)).astype(np.float32)
        ref = ort_run(model, x)
        got = net(net.check_input(torch.from_numpy(x))).detach().numpy()
        assert got.shape == (1, net.num_outputs)
        assert got.size == ref.size
        assert rel_err(got, ref) <= rtol


def to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy of a float32 model (initializers and graph input/output types)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float64)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


def layer_types(net) -> list[str]:
    return [type(layer).__name__ for layer in net.layers]


def node(op: str, inputs: list[str], output: str, name: str | None = None, **attrs):
    return helper.make_node(op, inputs, [output], name=name or f"{op.lower()}_{output}", **attrs)


# -- affine ops -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("trans_b", "alpha", "beta", "c_shape"),
    [(1, 1.0, 1.0, (4,)), (0, 1.0, 1.0, (4,)), (1, 0.5, 2.0, (1, 4)), (0, 2.0, 1.0, None)],
)
def test_gemm(trans_b: int, alpha: float, beta: float, c_shape: tuple[int, ...] | None) -> None:
    w = f32(4, 6) if trans_b else f32(6, 4)
    inits = {"W": w}
    inputs = ["x", "W"]
    if c_shape is not None:
        inits["C"] = f32(*c_shape)
        inputs.append("C")
    model = make_model(
        [node("Gemm", inputs, "y", transB=trans_b, alpha=alpha, beta=beta)], inits, [1, 6]
    )
    check_against_ort(model, (1, 6))
    assert layer_types(from_onnx(model)) == ["Dense"]


def test_matmul_weight_first_on_vector_input() -> None:
    # the VNN-COMP toy nets: W @ x on a rank-1 input, bias added after
    inits = {"W": f32(3, 2), "B": f32(3)}
    model = make_model([node("MatMul", ["W", "x"], "m"), node("Add", ["m", "B"], "y")], inits, [2])
    net = from_onnx(model)
    assert net.input_shape == (2,)
    assert layer_types(net) == ["Dense"]
    check_against_ort(model, (2,))


def test_matmul_weight_second_acas_style() -> None:
    # ACAS Xu: x @ W with W stored as [in, out], bias from Add (commuted here)
    inits = {"W": f32(5, 7), "B": f32(7)}
    model = make_model(
        [node("MatMul", ["x", "W"], "m"), node("Add", ["B", "m"], "y")], inits, [1, 5]
    )
    check_against_ort(model, (1, 5))
    assert layer_types(from_onnx(model)) == ["Dense"]


def test_matmul_on_matrix_valued_inputs() -> None:
    # x @ W on (1, 3, 4) and W @ x on (1, 4, 2): per-row/per-column products (Kronecker Dense)
    right = make_model([node("MatMul", ["x", "W"], "y")], {"W": f32(4, 5)}, [1, 3, 4])
    check_against_ort(right, (1, 3, 4))
    left = make_model([node("MatMul", ["W", "x"], "y")], {"W": f32(3, 4)}, [1, 4, 2])
    check_against_ort(left, (1, 4, 2))


@pytest.mark.parametrize(
    ("op", "const_first"),
    # c / x is not affine: tested among the errors
    [
        (op, first)
        for op in ("Add", "Sub", "Mul", "Div")
        for first in (False, True)
        if (op, first) != ("Div", True)
    ],
)
def test_arith_after_dense_folds(op: str, const_first: bool) -> None:
    c = f32(1, 4) + (3.0 if op in ("Mul", "Div") else 0.0)
    inputs = ["c", "h"] if const_first else ["h", "c"]
    model = make_model(
        [node("Gemm", ["x", "W", "B"], "h", transB=1), node(op, inputs, "y")],
        {"W": f32(4, 3), "B": f32(4), "c": c},
        [1, 3],
    )
    check_against_ort(model, (1, 3))
    assert layer_types(from_onnx(model)) == ["Dense"]


def test_arith_after_activation_becomes_normalize() -> None:
    model = make_model(
        [
            node("Gemm", ["x", "W", "B"], "h", transB=1),
            node("Relu", ["h"], "r"),
            node("Mul", ["r", "s"], "m"),
            node("Add", ["m", "c"], "y"),
        ],
        {"W": f32(4, 3), "B": f32(4), "s": f32(4) + 3.0, "c": f32(4)},
        [1, 3],
    )
    check_against_ort(model, (1, 3))
    assert layer_types(from_onnx(model)) == ["Dense", "Activation", "Normalize"]


def test_sub_div_at_input_becomes_normalize() -> None:
    mean = f32(1, 3, 1, 1)
    std = np.abs(f32(1, 3, 1, 1)) + 0.5
    model = make_model(
        [
            node("Sub", ["x", "mean"], "a"),
            node("Div", ["a", "std"], "b"),
            node("Flatten", ["b"], "f"),
            node("Gemm", ["f", "W", "B"], "y", transB=1),
        ],
        {"mean": mean, "std": std, "W": f32(2, 48), "B": f32(2)},
        ["N", 3, 4, 4],
    )
    net = from_onnx(model)
    assert net.input_shape == (3, 4, 4)
    assert layer_types(net) == ["Normalize", "Flatten", "Dense"]
    norm = net.layers[0]
    assert isinstance(norm, Normalize)
    assert tuple(norm.mean.shape) == (3, 1, 1)  # kept per channel, not expanded to (3, 4, 4)
    np.testing.assert_array_equal(norm.mean.numpy(), mean[0])
    np.testing.assert_array_equal(norm.std.numpy(), std[0])
    check_against_ort(model, (1, 3, 4, 4))


def test_sub_of_zero_is_a_no_op() -> None:
    model = make_model(
        [node("Sub", ["x", "z"], "a"), node("Relu", ["a"], "y")],
        {"z": np.zeros((1, 5), np.float32)},
        [1, 5],
    )
    assert layer_types(from_onnx(model)) == ["Activation"]
    check_against_ort(model, (1, 5))


def test_constant_minus_network_value() -> None:
    model = make_model(
        [node("Sub", ["c", "x"], "a"), node("Tanh", ["a"], "y")], {"c": f32(4)}, [1, 4]
    )
    check_against_ort(model, (1, 4))


# -- activations ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "attrs", "ir_name"),
    [
        ("Relu", {}, "relu"),
        ("LeakyRelu", {"alpha": 0.2}, "leaky_relu"),
        ("LeakyRelu", {}, "leaky_relu"),
        ("Sigmoid", {}, "sigmoid"),
        ("Tanh", {}, "tanh"),
        ("Atan", {}, "arctan"),
        ("Softplus", {}, "softplus"),
        ("Elu", {"alpha": 0.7}, "elu"),
        ("Elu", {}, "elu"),
    ],
)
def test_activations(op: str, attrs: dict, ir_name: str) -> None:
    model = make_model(
        [node("Gemm", ["x", "W", "B"], "h", transB=1, alpha=3.0), node(op, ["h"], "y", **attrs)],
        {"W": f32(6, 4), "B": f32(6)},
        [1, 4],
    )
    net = from_onnx(model)
    act = net.layers[-1]
    assert isinstance(act, Activation) and act.name == ir_name
    if op == "LeakyRelu":
        assert act.alpha == pytest.approx(attrs.get("alpha", 0.01))
    check_against_ort(model, (1, 4))


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_min_zero_is_relu(opset: int) -> None:
    if opset >= 11:
        clip = node("Clip", ["x", "lo"], "y")
        inits = {"lo": np.array(0.0, np.float32)}
    else:
        clip = node("Clip", ["x"], "y", min=0.0)
        inits = {}
    model = make_model([clip], inits, [1, 4], opset=opset)
    assert layer_types(from_onnx(model)) == ["Activation"]
    check_against_ort(model, (1, 4))


# -- shape ops ------------------------------------------------------------------------------
def test_flatten_reshape_identity_dropout_constant() -> None:
    shape_node = helper.make_node(
        "Constant",
        [],
        ["shape"],
        name="shape_const",
        value=numpy_helper.from_array(np.array([0, -1], np.int64)),
    )
    model = make_model(
        [
            node("Identity", ["x"], "i"),
            node("Reshape", ["i", "s1"], "r1"),  # (1, 12) -> (1, 3, 4)
            shape_node,
            node("Reshape", ["r1", "shape"], "r2"),  # 0 copies the batch axis, -1 infers
            node("Dropout", ["r2"], "d"),
            node("MatMul", ["d", "W"], "y"),
        ],
        {"s1": np.array([1, 3, 4], np.int64), "W": f32(12, 2)},
        [1, 12],
    )
    check_against_ort(model, (1, 12))


def test_squeeze_unsqueeze_transpose_opset13() -> None:
    model = make_model(
        [
            node("Unsqueeze", ["x", "ax1"], "u"),  # (1, 5) -> (1, 1, 5)
            node("Transpose", ["u"], "t", perm=[0, 2, 1]),  # (1, 5, 1): a no-op on the data
            node("Squeeze", ["t", "ax2"], "s"),  # -> (1, 5)
            node("Gemm", ["s", "W", "B"], "h", transB=1),
            node("Unsqueeze", ["h", "ax1"], "y"),  # output (1, 1, 3): flattened by the importer
        ],
        {
            "ax1": np.array([1], np.int64),
            "ax2": np.array([2], np.int64),
            "W": f32(3, 5),
            "B": f32(3),
        },
        [1, 5],
    )
    net = from_onnx(model)
    assert net.output_shape == (3,)
    check_against_ort(model, (1, 5))


def test_squeeze_unsqueeze_opset11_attributes() -> None:
    model = make_model(
        [
            node("Unsqueeze", ["x"], "u", axes=[2, 3]),  # (1, 4) -> (1, 4, 1, 1)
            node("Squeeze", ["u"], "s", axes=[-1]),
            node("Squeeze", ["s"], "t"),  # no axes: every size-1 axis, batch included
            node("MatMul", ["t", "W"], "y"),
        ],
        {"W": f32(4, 2)},
        [1, 4],
        opset=11,
    )
    check_against_ort(model, (1, 4))


def test_reshape_shape_attribute_opset4() -> None:
    # onnxruntime no longer runs opset 4: check against the numpy result instead
    w = f32(6, 2)
    model = make_model(
        [node("Reshape", ["x"], "r", shape=[1, 6]), node("MatMul", ["r", "W"], "y")],
        {"W": w},
        [1, 2, 3],
        opset=4,
        check=False,
    )
    net = from_onnx(model)
    x = f32(1, 2, 3)
    got = net(net.check_input(torch.from_numpy(x))).detach().numpy()
    np.testing.assert_allclose(got, x.reshape(1, 6) @ w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", range(8, 18))
def test_every_opset_8_to_17(opset: int) -> None:
    # Squeeze/Unsqueeze axes and Clip bounds moved from attributes to inputs (opsets 13 and 11)
    inits: dict[str, np.ndarray] = {"W": f32(3, 4), "B": f32(3), "s": np.array([1, 3], np.int64)}
    if opset >= 13:
        inits["ax"] = np.array([2], np.int64)
        unsq = node("Unsqueeze", ["x", "ax"], "u")
        sq = node("Squeeze", ["u", "ax"], "q")
    else:
        unsq = node("Unsqueeze", ["x"], "u", axes=[2])
        sq = node("Squeeze", ["u"], "q", axes=[2])
    if opset >= 11:
        inits["lo"] = np.array(0.0, np.float32)
        clip = node("Clip", ["g", "lo", ""], "c")
    else:
        clip = node("Clip", ["g"], "c", min=0.0)
    nodes = [
        unsq,
        sq,
        node("Gemm", ["q", "W", "B"], "g", transB=1),
        clip,
        node("Reshape", ["c", "s"], "r"),
        node("Flatten", ["r"], "y"),
    ]
    model = make_model(nodes, inits, ["N", 4], opset=opset)
    assert layer_types(from_onnx(model)) == ["Dense", "Activation"]
    check_against_ort(model, (1, 4))


@pytest.mark.parametrize(
    ("in_shape", "ir_shape"),
    [
        ([3], (3,)),
        ([1, 3], (3,)),
        (["batch", 3], (3,)),
        ([None, 3], (3,)),
        ([1, 3, 1], (3,)),  # mnist_fc style
        ([1, 1, 1, 3], (3,)),  # ACAS Xu style
        ([1, 1, 2, 3], (1, 2, 3)),
    ],
)
def test_input_shapes(in_shape: list, ir_shape: tuple[int, ...]) -> None:
    model = make_model(
        [node("Flatten", ["x"], "f", axis=0), node("MatMul", ["f", "W"], "y")],
        {"W": f32(int(np.prod(ir_shape)), 2)},
        in_shape,
    )
    net = from_onnx(model)
    assert net.input_shape == ir_shape
    assert net.output_shape == (2,)
    batch1 = [1 if not isinstance(d, int) else d for d in in_shape]
    check_against_ort(model, batch1)
    # a flat vector of the right size is accepted too
    flat = torch.zeros(int(np.prod(ir_shape)))
    assert net(net.check_input(flat)).shape == (1, 2)


# -- convolutions and batch norm --------------------------------------------------------------
@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"pads": [1, 2, 1, 2], "strides": [2, 1], "dilations": [1, 2]},
        {"group": 2, "strides": [2, 2]},
        {"auto_pad": "SAME_UPPER"},
        {"auto_pad": "VALID"},
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs: dict, bias: bool) -> None:
    group = attrs.get("group", 1)
    inits = {"W": f32(4, 4 // group, 3, 3)}
    inputs = ["x", "W"]
    if bias:
        inits["B"] = f32(4)
        inputs.append("B")
    nodes = [
        node("Conv", inputs, "c", kernel_shape=[3, 3], **attrs),
        node("Relu", ["c"], "r"),
        node("Flatten", ["r"], "y"),
    ]
    model = make_model(nodes, inits, [1, 4, 7, 7])
    net = from_onnx(model)
    assert isinstance(net.layers[0], Conv2d)
    check_against_ort(model, (1, 4, 7, 7))


def test_conv_on_flat_input_reshapes() -> None:
    # a flat input reshaped to an image before the conv (the IR inserts a Reshape)
    model = make_model(
        [
            node("Reshape", ["x", "s"], "r"),
            node("Conv", ["r", "W", "B"], "c", pads=[1, 1, 1, 1]),
            node("Flatten", ["c"], "y"),
        ],
        {"s": np.array([-1, 1, 4, 4], np.int64), "W": f32(2, 1, 3, 3), "B": f32(2)},
        [1, 16],
    )
    net = from_onnx(model)
    assert net.input_shape == (16,)
    check_against_ort(model, (1, 16))


def bn_inits(c: int) -> dict[str, np.ndarray]:
    return {
        "scale": f32(c) + 2.0,
        "bnb": f32(c),
        "mean": f32(c),
        "var": np.abs(f32(c)) + 0.5,
    }


def test_batchnorm_folds_into_conv() -> None:
    model = make_model(
        [
            node("Conv", ["x", "W", "B"], "c", pads=[1, 1, 1, 1]),
            node("BatchNormalization", ["c", "scale", "bnb", "mean", "var"], "n", epsilon=1e-3),
            node("Relu", ["n"], "r"),
            node("Flatten", ["r"], "y"),
        ],
        {"W": f32(3, 2, 3, 3), "B": f32(3), **bn_inits(3)},
        [1, 2, 5, 5],
    )
    assert layer_types(from_onnx(model)) == ["Conv2d", "Activation", "Flatten"]
    check_against_ort(model, (1, 2, 5, 5))


def test_batchnorm_folds_into_gemm_and_standalone_at_input() -> None:
    model = make_model(
        [
            node("BatchNormalization", ["x", "scale", "bnb", "mean", "var"], "n0"),
            node("Gemm", ["n0", "W", "B"], "h", transB=1),
            node("BatchNormalization", ["h", "s2", "b2", "m2", "v2"], "y"),
        ],
        {
            **bn_inits(4),
            "W": f32(3, 4),
            "B": f32(3),
            **{k2: v for k2, v in zip(["s2", "b2", "m2", "v2"], bn_inits(3).values(), strict=True)},
        },
        [1, 4],
    )
    assert layer_types(from_onnx(model)) == ["Normalize", "Dense"]
    check_against_ort(model, (1, 4))


def test_add_after_conv_not_per_channel_becomes_normalize() -> None:
    model = make_model(
        [node("Conv", ["x", "W"], "c"), node("Add", ["c", "k"], "a"), node("Flatten", ["a"], "y")],
        {"W": f32(2, 1, 2, 2), "k": f32(1, 2, 3, 3)},
        [1, 1, 4, 4],
    )
    assert layer_types(from_onnx(model)) == ["Conv2d", "Normalize", "Flatten"]
    check_against_ort(model, (1, 1, 4, 4))


def test_every_supported_op_is_covered() -> None:
    covered = {
        "Add",
        "Atan",
        "BatchNormalization",
        "Clip",
        "Constant",
        "Conv",
        "Div",
        "Dropout",
        "Elu",
        "Flatten",
        "Gemm",
        "Identity",
        "LeakyRelu",
        "MatMul",
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
    }
    # pooling is covered in test_pool_import.py
    covered |= {"AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxPool"}
    assert set(SUPPORTED_OPS) == covered


# -- dtypes, metadata -----------------------------------------------------------------------
def test_dtype_follows_initializers() -> None:
    w = rng.standard_normal((3, 2))
    double = make_model(
        [node("MatMul", ["x", "W"], "y")], {"W": w}, [1, 3], elem=TensorProto.DOUBLE
    )
    net = from_onnx(double)
    assert net.dtype == torch.float64
    x = rng.standard_normal((1, 3))
    np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), ort_run(double, x), rtol=1e-12)
    mixed = make_model(
        [node("MatMul", ["x", "W"], "h"), node("Add", ["h", "B"], "y")],
        {"W": w, "B": f32(2)},
        [1, 3],
        check=False,
    )
    assert from_onnx(mixed).dtype == torch.float32


def test_name_and_input_range(tmp_path: Path) -> None:
    model = make_model([node("Relu", ["x"], "y")], {}, [1, 3])
    path = tmp_path / "tiny_relu.onnx"
    onnx.save_model(model, path)
    net = from_onnx(path)
    assert net.name == "tiny_relu"
    assert net.input_range is None
    assert net.meta["source_format"] == "onnx"
    net = from_onnx(str(path), input_range=(0.0, 1.0), name="other")
    assert net.name == "other"
    assert net.input_range == (0.0, 1.0)


# -- real networks ----------------------------------------------------------------------------
REAL = {
    "test_nano.onnx": ((1,), (1,)),
    "test_tiny.onnx": ((1,), (1,)),
    "test_small.onnx": ((1,), (1,)),
    "test_sat.onnx": ((5,), (5,)),
    "ACASXU_run2a_1_1_batch_2000.onnx": ((5,), (5,)),
    "mnist-net_256x2.onnx": ((784,), (10,)),
}


@pytest.mark.parametrize("fname", sorted(REAL))
def test_vnncomp_networks(fname: str) -> None:
    path = DATA / fname
    in_shape, out_shape = REAL[fname]
    net = from_onnx(path)
    assert net.input_shape == in_shape
    assert net.output_shape == out_shape
    assert net.dtype == torch.float32
    assert net.name == path.stem
    model = onnx.load(path)
    onnx_shape = [d.dim_value for d in model.graph.input[-1].type.tensor_type.shape.dim]
    model64 = to_double(model)
    net64 = from_onnx(model64)
    assert net64.dtype == torch.float64
    lo = 0.0 if "mnist" in fname else -1.0
    for _ in range(4):
        x = rng.uniform(lo, 1.0, size=onnx_shape)
        # semantics, without float32 rounding: float64 onnxruntime vs the float64 import
        ref64 = ort_run(model64, x)
        got64 = net64(net64.check_input(torch.from_numpy(x))).detach().numpy()
        assert rel_err(got64, ref64) <= 1e-9
        # the float32 network against float32 onnxruntime; both round differently, by up to
        # ~5e-5 of the largest logit on the deeper ACAS Xu nets (see the integration test)
        x32 = x.astype(np.float32)
        got = net(net.check_input(torch.from_numpy(x32))).detach().numpy()
        assert rel_err(got, ort_run(model, x32)) <= 1e-4
        # the flat vector of the VNN-LIB properties is a valid input
        assert net.check_input(torch.from_numpy(x32.reshape(-1))).shape == (1, *in_shape)


def test_vnncomp_layer_structure() -> None:
    acas = from_onnx(DATA / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert layer_types(acas) == ["Dense", "Activation"] * 6 + ["Dense"]
    assert all(isinstance(a, Activation) and a.name == "relu" for a in acas.activations)
    mnist = from_onnx(DATA / "mnist-net_256x2.onnx")
    assert [tuple(layer.weight.shape) for layer in mnist.layers if isinstance(layer, Dense)] == [
        (256, 784),
        (256, 256),
        (10, 256),
    ]
    small = from_onnx(DATA / "test_small.onnx")
    assert layer_types(small) == ["Dense", "Activation", "Dense", "Activation", "Dense"]
    assert not any(isinstance(layer, (Flatten, Normalize)) for layer in small.layers)


# -- errors ---------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="not found"):
        from_onnx(tmp_path / "nope.onnx")


def test_directory_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="not a file"):
        from_onnx(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        from_onnx(tmp_path / "empty.onnx")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    data = (DATA / "mnist-net_256x2.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFormatError) as info:
        from_onnx(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_truncated_small_file_at_every_offset(tmp_path: Path) -> None:
    data = (DATA / "test_small.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    for k in range(1, len(data)):
        path.write_bytes(data[:k])
        with pytest.raises(ModelFormatError):
            from_onnx(path)


def test_random_bytes(tmp_path: Path) -> None:
    gen = np.random.default_rng(7)
    path = tmp_path / "noise.onnx"
    for size in (1, 17, 1000, 100_000):
        path.write_bytes(gen.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(ModelFormatError):
            from_onnx(path)
    path.write_bytes(b"this is plainly not an ONNX model\n" * 10)
    with pytest.raises(ModelFormatError):
        from_onnx(path)


def test_unsupported_op_names_op_and_node() -> None:
    model = make_model(
        [node("Gemm", ["x", "W"], "h", transB=1), node("LRN", ["h"], "y", name="prob", size=3)],
        {"W": f32(3, 4)},
        [1, 4],
    )
    with pytest.raises(UnsupportedError, match=r"unsupported ONNX op 'LRN' \(node 'prob'\)"):
        from_onnx(model)


@pytest.mark.parametrize(
    ("attrs", "kernel"),
    [({"pads": [0, 0, 1, 1]}, 3), ({"pads": [1, 0, 1, 2]}, 3), ({"auto_pad": "SAME_UPPER"}, 2)],
)
def test_asymmetric_padding_imports_as_a_graph(attrs: dict, kernel: int) -> None:
    # the chain's Conv2d pads symmetrically; the graph importer adds a pad node
    model = make_model(
        [node("Conv", ["x", "W"], "y", name="conv1", **attrs)],
        {"W": f32(2, 1, kernel, kernel)},
        [1, 1, 5, 5],
    )
    net = from_onnx(model)
    assert isinstance(net, Graph) and [n.op for n in net.nodes][:2] == ["pad", "conv2d"]
    check_against_ort(model, [1, 1, 5, 5])


def test_nan_in_initializer() -> None:
    w = f32(3, 4)
    w[1, 2] = np.nan
    model = make_model([node("MatMul", ["x", "W"], "y")], {"W": w}, [1, 3], check=False)
    with pytest.raises(InputError, match=r"'W'.*NaN"):
        from_onnx(model)


def test_non_chain_graph_imports_as_a_graph() -> None:
    # a residual connection: y = x + relu(x W)
    model = make_model(
        [
            node("MatMul", ["x", "W"], "h"),
            node("Relu", ["h"], "r"),
            node("Add", ["r", "x"], "y", name="skip"),
        ],
        {"W": f32(4, 4)},
        [1, 4],
    )
    net = from_onnx(model)
    assert isinstance(net, Graph) and "add" in {n.op for n in net.nodes}
    check_against_ort(model, [1, 4])


@pytest.mark.parametrize(
    ("nodes", "inits", "in_shape"),
    [
        ([node("Div", ["c", "x"], "y", name="inv")], {"c": np.full(3, 2.0, np.float32)}, [1, 3]),
        ([node("Mul", ["x", "x"], "y", name="sq")], {}, [1, 3]),
        ([node("Transpose", ["x"], "y", name="tr", perm=[0, 2, 1])], {}, [1, 2, 3]),
        (
            [node("Clip", ["x", "lo", "hi"], "y", name="c6")],
            {"lo": np.array(-1, np.float32), "hi": np.array(6, np.float32)},
            [1, 3],
        ),
        ([node("Gemm", ["x", "W"], "y", name="g", transA=1)], {"W": f32(1, 3)}, [1, 3]),
    ],
    ids=["reciprocal", "square", "transpose", "clip", "gemm_transA"],
)
def test_patterns_beyond_chains_import_as_graphs(nodes, inits, in_shape) -> None:
    model = make_model(nodes, inits, in_shape)
    assert isinstance(from_onnx(model), Graph)
    if nodes[0].op_type == "Div":  # 2 / x: keep x away from 0
        net = from_onnx(model)
        x = rng.uniform(0.5, 2.0, size=(1, 3)).astype(np.float32)
        got = net(torch.from_numpy(x)).detach().numpy()
        assert rel_err(got, ort_run(model, x)) <= RTOL
    else:
        check_against_ort(model, in_shape)


@pytest.mark.parametrize(
    ("nodes", "inits", "in_shape", "match"),
    [
        (
            [node("Squeeze", ["x", "ax"], "y", name="sq")],
            {"ax": np.array([1], np.int64)},
            [1, 2, 3],
            r"'Squeeze' \(node 'sq'\)",
        ),
    ],
)
def test_unsupported_patterns(nodes, inits, in_shape, match: str) -> None:
    model = make_model(nodes, inits, in_shape, check=False)
    with pytest.raises(UnsupportedError, match=match):
        from_onnx(model)


def test_multiple_inputs_import_as_one_packed_graph_input() -> None:
    graph = helper.make_graph(
        [node("Add", ["x", "z"], "y")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    model.ir_version = 8
    net = from_onnx(model)
    assert isinstance(net, Graph) and net.input_shape == (6,)  # x then z (VNN-LIB order)
    xz = torch.randn(2, 6)
    torch.testing.assert_close(net(xz), xz[:, :3] + xz[:, 3:])


def test_undefined_tensor_is_a_format_error() -> None:
    model = make_model([node("MatMul", ["x", "missing"], "y")], {}, [1, 3], check=False)
    with pytest.raises(ModelFormatError, match="undefined tensor 'missing'"):
        from_onnx(model)
