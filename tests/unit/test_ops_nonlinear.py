"""The non-linear operators of the graph IR beyond the activations: products (``mul``,
``div``, ``matmul``), ``softmax``, steps (``sign``, ``trunc``, ``floor``, ``ceil``,
``round``), ``exp`` / ``log`` / ``reciprocal`` and the selection operators (``argmax``,
``onehot``, ``equal``).

Per operator: the forward pass against numpy and ONNX's reference evaluator (ONNX semantics:
``Sign(0) = 0``, ``Round`` half to even, ``ArgMax`` the first maximum, negative ``OneHot``
indices), the interval rule sound (and exact where promised) on samples and box corners, and
the linear relaxation sound: for random intervals (narrow, wide, one-sided, straddling, a
point), lower line <= f <= upper line at samples and corners (element-wise operators), and for
the relaxed ones ``A f(x)`` between the linear bounds their backward rule gives, for random
coefficients of both signs, in float32 and float64. Then small graphs mixing them with dense
layers and activations, bounded by IBP and CROWN-general (and CROWN where defined) over Linf /
L2 balls and boxes, against samples, vertices and a 20-step PGD per bound; refusals (a
denominator across 0, ``log`` of non-positives) name the node; ``strip_final_softmax``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import helpers  # noqa: F401  (sets torch threads)
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.errors import UnsupportedError
from nnbound.network.graph import Graph, Node, Shape
from nnbound.ops.base import OpKind
from nnbound.ops.bilinear import mccormick, product_interval
from nnbound.ops.registry import DEFAULT_OPTIONS, by_onnx, by_torch, get_op
from nnbound.ops.softmax import (
    compares_within_groups,
    softmax_groups,
    strip_final_softmax,
)
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall

F64 = torch.float64
DTYPES = [torch.float32, F64]


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-10


# -- random boxes -------------------------------------------------------------------------------
def _boxes(gen: torch.Generator, n: int, shape: Shape, kind: str = "any") -> tuple[Tensor, Tensor]:
    """float64 boxes ``(n, *shape)`` of mixed widths: narrow, medium, wide, points, and
    (``kind``) ``"positive"`` / ``"nonzero"`` (one sign each) or any sign."""
    c = torch.randn(n, *shape, generator=gen, dtype=F64) * 2.0
    scale = torch.tensor([0.0, 1e-3, 0.1, 1.0, 4.0], dtype=F64)
    pick = torch.randint(0, 5, (n, *shape), generator=gen)
    r = torch.rand(n, *shape, generator=gen, dtype=F64) * scale[pick]
    if kind in ("positive", "nonzero"):
        c = c.abs() + r + 0.05
        if kind == "nonzero":
            c = c * torch.where(torch.rand(n, *shape, generator=gen) < 0.4, -1.0, 1.0).to(F64)
    return c - r, c + r


def _points(gen: torch.Generator, lo: Tensor, up: Tensor, m: int) -> Tensor:
    """``(n, m, *shape)`` points of the boxes: corners (a third) and uniform samples, in the
    boxes' dtype (computed in float64 from their float64 ends)."""
    lo64, up64 = lo.to(F64).unsqueeze(1), up.to(F64).unsqueeze(1)
    t = torch.rand(lo.shape[0], m, *lo.shape[1:], generator=gen, dtype=F64)
    corner = torch.rand(t.shape, generator=gen) < 0.35
    t = torch.where(corner, t.round(), t)
    return (lo64 + t * (up64 - lo64)).to(lo.dtype).clamp(min=lo.unsqueeze(1), max=up.unsqueeze(1))


# -- (1) forward against numpy / the ONNX reference evaluator ------------------------------------
def _eval(op: str, xs: list[Tensor], attrs: dict | None = None, params: dict | None = None):
    names = tuple(f"x{i}" for i in range(len(xs)))
    node = Node(op, names, "y", params or {}, attrs or {})
    return get_op(op).forward(node, *xs)


def test_products_forward_match_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    for xs, ys in [((3, 4), (4,)), ((2, 1), (1, 5)), ((4,), (2, 3, 4))]:
        x = torch.randn(2, *xs, generator=gen, dtype=F64)
        y = torch.randn(2, *ys, generator=gen, dtype=F64)
        for b in range(2):
            got = _eval("mul", [x, y])[b].numpy()
            np.testing.assert_allclose(got, x[b].numpy() * y[b].numpy(), rtol=1e-15)
            got = _eval("div", [x, y])[b].numpy()
            np.testing.assert_allclose(got, x[b].numpy() / y[b].numpy(), rtol=1e-15)
    for xs, ys in [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((1, 3, 4), (2, 4, 2))]:
        x = torch.randn(2, *xs, generator=gen, dtype=F64)
        y = torch.randn(2, *ys, generator=gen, dtype=F64)
        node = Node("matmul", ("x", "y"), "z")
        assert (
            get_op("matmul").out_shape(node, [xs, ys])
            == np.matmul(np.zeros(xs), np.zeros(ys)).shape
        )
        for b in range(2):
            got = _eval("matmul", [x, y])[b].numpy()
            np.testing.assert_allclose(got, np.matmul(x[b].numpy(), y[b].numpy()), rtol=1e-13)


def test_elementwise_forward_match_numpy() -> None:
    x = torch.tensor([[-2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 2.7, -3.2]], dtype=F64)
    for op, ref in [
        ("sign", np.sign),
        ("trunc", np.trunc),
        ("floor", np.floor),
        ("ceil", np.ceil),
        ("round", np.round),  # half to even, as ONNX Round
    ]:
        np.testing.assert_array_equal(_eval(op, [x]).numpy(), ref(x.numpy()), err_msg=op)
    # torch's and numpy's exp may differ in the last place (different libm kernels)
    np.testing.assert_allclose(_eval("exp", [x]).numpy(), np.exp(x.numpy()), rtol=4e-16)
    assert _eval("sign", [torch.zeros(1, 3)]).tolist() == [[0.0, 0.0, 0.0]]  # ONNX Sign(0) = 0
    pos = x.abs() + 0.1
    np.testing.assert_allclose(_eval("log", [pos]).numpy(), np.log(pos.numpy()), rtol=1e-15)
    np.testing.assert_allclose(_eval("reciprocal", [x]).numpy()[:, :3], 1 / x.numpy()[:, :3])


def _onnx_run(op_type: str, inputs: list[np.ndarray], consts: list[np.ndarray], **attrs: Any):
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" for k in range(len(inputs))]
    cnames = [f"c{k}" for k in range(len(consts))]
    graph = helper.make_graph(
        [helper.make_node(op_type, names + cnames, ["out"], **attrs)],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, inputs, strict=True)
        ],
        [helper.make_tensor_value_info("out", TensorProto.UNDEFINED, None)],
        [numpy_helper.from_array(c, n) for n, c in zip(cnames, consts, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs, strict=True)))[0]


def test_forward_matches_the_onnx_reference_evaluator() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 4, generator=gen, dtype=F64)
    x[0, 1, 2] = x[0, 1, 0] = x[0, 1].max() + 1  # a tie: the first maximum wins
    xn = x.numpy()
    for axis in (0, 1, -1):
        for keep in (0, 1):
            ref = _onnx_run("ArgMax", [xn], [], axis=axis + 1 if axis >= 0 else axis, keepdims=keep)
            got = _eval("argmax", [x], {"axis": axis, "keepdims": bool(keep)})
            np.testing.assert_array_equal(got.numpy(), ref, err_msg=f"{axis} {keep}")
    for axis in (0, 1):
        ref = _onnx_run("Softmax", [xn], [], axis=axis + 1)
        got = _eval("softmax", [x], {"axis": axis})
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    idx = np.array([[0, 2, -1, -3, 3, -4]], dtype=np.int64)  # 3 and -4 are out of range
    for axis in (0, 1, -1):
        onnx_axis = axis + 1 if axis >= 0 else axis
        ref = _onnx_run(
            "OneHot",
            [idx],
            [np.array(3, dtype=np.int64), np.array([-0.5, 2.0], dtype=np.float64)],
            axis=onnx_axis,
        )
        got = _eval(
            "onehot",
            [torch.tensor(idx, dtype=F64)],
            {"depth": 3, "axis": axis if axis >= 0 else 1, "values": (-0.5, 2.0)},
        )
        np.testing.assert_array_equal(got.numpy(), ref, err_msg=str(axis))
    a = np.array([[1.0, 2.0, 3.0, -1.0]])
    b = np.array([[1.0, 0.0, 3.0, 1.0]])
    ref = _onnx_run("Equal", [a, b], []).astype(np.float64)
    np.testing.assert_array_equal(_eval("equal", [torch.tensor(a), torch.tensor(b)]).numpy(), ref)
    got = _eval("equal", [torch.tensor(a)], params={"constant": torch.tensor(b[0])})
    np.testing.assert_array_equal(got.numpy(), ref)
    ref = _onnx_run("Sign", [np.array([[-2.0, 0.0, 3.0]])], [])
    np.testing.assert_array_equal(_eval("sign", [torch.tensor([[-2.0, 0.0, 3.0]], dtype=F64)]), ref)
    ref = _onnx_run("Round", [np.array([[0.5, 1.5, 2.5, -0.5, -1.5]])], [])
    got = _eval("round", [torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5]], dtype=F64)])
    np.testing.assert_array_equal(got.numpy(), ref)


def test_names_find_the_operators() -> None:
    for onnx_name, name in [
        ("Mul", "mul"),
        ("Div", "div"),
        ("MatMul", "matmul"),
        ("Softmax", "softmax"),
        ("Sign", "sign"),
        ("Floor", "floor"),
        ("Ceil", "ceil"),
        ("Round", "round"),
        ("Exp", "exp"),
        ("Log", "log"),
        ("Reciprocal", "reciprocal"),
        ("ArgMax", "argmax"),
        ("OneHot", "onehot"),
        ("Equal", "equal"),
    ]:
        assert name in [op.name for op in by_onnx(onnx_name)], onnx_name
    assert "trunc" in [op.name for op in by_torch("trunc")]


# -- (2) element-wise relaxations: lines and intervals -------------------------------------------
ELEMENTWISE = {
    "sign": "any",
    "trunc": "any",
    "floor": "any",
    "ceil": "any",
    "round": "any",
    "exp": "any",
    "log": "positive",
    "reciprocal": "nonzero",
}


def _special(op: str, lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes every step function needs: touching and straddling the jump at 0, points on a
    jump, intervals ending on integers."""
    if op in ("log", "reciprocal", "exp"):
        return lo, up
    ends = torch.tensor(
        [[-2.0, 0.0], [0.0, 3.0], [0.0, 0.0], [-1.0, 1.0], [-3.0, 0.5], [-0.5, 3.0], [1.0, 2.0]],
        dtype=F64,
    )
    ends = torch.cat([ends, ends + 0.5, ends - 1.0], 0)
    return torch.cat([lo, ends[:, 0]]), torch.cat([up, ends[:, 1]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_lines_and_interval_are_sound(op: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    lo, up = _boxes(gen, 600, (), ELEMENTWISE[op])
    if op == "exp":
        lo, up = lo.clamp(max=30), up.clamp(max=30)
    lo, up = _special(op, lo, up)
    lo, up = lo.to(dtype), up.to(dtype)
    node = Node(op, ("x",), "y")
    relax = get_op(op).relaxation(node, DEFAULT_OPTIONS)
    lines = relax.linear(lo, up)
    i_lo, i_up = get_op(op).interval(node, [(lo, up)])
    x = torch.cat([_points(gen, lo, up, 300), lo.unsqueeze(1), up.unsqueeze(1)], 1)
    if op not in ("log", "reciprocal"):
        x = torch.cat([x, torch.zeros_like(lo).unsqueeze(1).clamp(lo[:, None], up[:, None])], 1)
    f = get_op(op).forward(node, x).to(F64)  # the operator in the working precision
    f_exact = get_op(op).forward(node, x.to(F64))
    x64 = x.to(F64)
    low = lines.lower_slope.to(F64)[:, None] * x64 + lines.lower_bias.to(F64)[:, None]
    high = lines.upper_slope.to(F64)[:, None] * x64 + lines.upper_bias.to(F64)[:, None]
    for values in (f, f_exact):
        scale = 1 + values.abs()
        assert float(((low - values) / scale).max()) <= 0, op
        assert float(((values - high) / scale).max()) <= 0, op
        assert float(((i_lo.to(F64)[:, None] - values) / scale).max()) <= 0, op
        assert float(((values - i_up.to(F64)[:, None]) / scale).max()) <= 0, op


@pytest.mark.parametrize("op", ["sign", "trunc", "floor", "ceil", "round", "exp", "log"])
def test_monotone_intervals_are_exact(op: str) -> None:
    gen = torch.Generator().manual_seed(3)
    lo, up = _boxes(gen, 200, (), "positive" if op == "log" else "any")
    node = Node(op, ("x",), "y")
    i_lo, i_up = get_op(op).interval(node, [(lo, up)])
    fwd = get_op(op).forward
    pad = 1e-13 * (1 + i_lo.abs() + i_up.abs())  # only the few-ulp outward rounding
    assert bool(((i_lo - fwd(node, lo)).abs() <= pad).all())
    assert bool(((i_up - fwd(node, up)).abs() <= pad).all())


def test_stable_sign_and_steps_are_exact_lines() -> None:
    lo = torch.tensor([0.5, -2.9, 0.0, 1.2, -0.9], dtype=F64)
    up = torch.tensor([0.9, -2.1, 0.0, 1.9, -0.1], dtype=F64)
    for op in ("sign", "trunc", "floor"):
        lines = get_op(op).relaxation(Node(op, ("x",), "y"), DEFAULT_OPTIONS).linear(lo, up)
        assert bool((lines.lower_slope == 0).all() and (lines.upper_slope == 0).all()), op
        exact = get_op(op).forward(Node(op, ("x",), "y"), lo)
        torch.testing.assert_close(lines.lower_bias, exact, atol=1e-13, rtol=0)
        torch.testing.assert_close(lines.upper_bias, exact, atol=1e-13, rtol=0)


def test_sign_uses_the_jump_line_on_the_shorter_side() -> None:
    lines = (
        get_op("sign")
        .relaxation(Node("sign", ("x",), "y"), DEFAULT_OPTIONS)
        .linear(torch.tensor([-4.0, -1.0], dtype=F64), torch.tensor([1.0, 4.0], dtype=F64))
    )
    # [-4, 1]: the upper line through (-4, -1) and (0, 1), the constant -1 below
    torch.testing.assert_close(lines.upper_slope[0], torch.tensor(0.5, dtype=F64))
    assert float(lines.lower_slope[0]) == 0 and float(lines.lower_bias[0]) < -1 + 1e-12
    # [-1, 4]: the lower line through (0, -1) and (4, 1), the constant 1 above
    torch.testing.assert_close(lines.lower_slope[1], torch.tensor(0.5, dtype=F64))
    assert float(lines.upper_slope[1]) == 0


def test_refusals_name_the_node() -> None:
    node = Node("log", ("x",), "y", label="my_log")
    with pytest.raises(UnsupportedError, match=r"my_log.*may be <= 0"):
        get_op("log").interval(node, [(torch.tensor([[-1.0]]), torch.tensor([[2.0]]))])
    node = Node("reciprocal", ("x",), "y", label="inv")
    with pytest.raises(UnsupportedError, match=r"inv.*contains 0"):
        get_op("reciprocal").relaxation(node, DEFAULT_OPTIONS).linear(
            torch.tensor([-1.0]), torch.tensor([2.0])
        )
    node = Node("div", ("x", "y"), "z", label="ratio")
    box = (torch.tensor([[1.0]]), torch.tensor([[2.0]]))
    across = (torch.tensor([[-1.0]]), torch.tensor([[0.0]]))
    with pytest.raises(UnsupportedError, match=r"ratio.*contains 0"):
        get_op("div").interval(node, [box, across])
    a = torch.ones(1, 1, 1)
    with pytest.raises(UnsupportedError, match=r"ratio.*contains 0"):
        get_op("div").backward(node, a, a, [box, across], [(1,), (1,)], (1,), DEFAULT_OPTIONS)
    node = Node("exp", ("x",), "y", label="big")
    with pytest.raises(UnsupportedError, match=r"big.*overflows"):
        get_op("exp").relaxation(node, DEFAULT_OPTIONS).linear(
            torch.tensor([0.0]), torch.tensor([200.0])
        )
    node = Node("sign", ("x",), "y", label="s")
    with pytest.raises(UnsupportedError, match=r"node 's'.*derivative"):
        get_op("sign").relaxation(node, DEFAULT_OPTIONS).derivative_interval(
            torch.tensor([-1.0]), torch.tensor([1.0])
        )


# -- (3) relaxed operators: backward rules and intervals -----------------------------------------
RELAXED = {
    "mul-bcast": ("mul", [(3, 4), (4,)], {}, ("any", "any")),
    "mul-outer": ("mul", [(2, 1), (1, 5)], {}, ("any", "any")),
    "div": ("div", [(3, 4), (3, 4)], {}, ("any", "nonzero")),
    "div-bcast": ("div", [(4,), (2, 1)], {}, ("any", "nonzero")),
    "matmul": ("matmul", [(2, 3, 4), (4, 5)], {}, ("any", "any")),
    "matmul-bcast": ("matmul", [(1, 3, 2), (2, 2, 3)], {}, ("any", "any")),
    "softmax": ("softmax", [(5,)], {"axis": 0}, ("any",)),
    "softmax-axis": ("softmax", [(3, 4)], {"axis": 0}, ("any",)),
    "softmax-last": ("softmax", [(2, 3, 2)], {"axis": -1}, ("any",)),
    "argmax": ("argmax", [(3, 4)], {"axis": 1, "keepdims": True}, ("any",)),
    "argmax-drop": ("argmax", [(4, 2)], {"axis": 0, "keepdims": False}, ("any",)),
    "onehot": ("onehot", [(3,)], {"depth": 3, "axis": 0, "values": (0.0, 1.0)}, ("index",)),
    "onehot-vals": ("onehot", [(2, 2)], {"depth": 4, "axis": 2, "values": (2.0, -1.0)}, ("index",)),
    "equal": ("equal", [(3, 2), (2,)], {}, ("index", "index")),
}


def _relaxed_boxes(gen: torch.Generator, shape: Shape, kind: str) -> tuple[Tensor, Tensor]:
    if kind != "index":
        return _boxes(gen, 2, shape, kind)
    # integer intervals (points half of the time), as indices and labels are
    lo = torch.randint(-3, 4, (2, *shape), generator=gen).to(F64)
    width = torch.randint(0, 3, (2, *shape), generator=gen).to(F64)
    width = torch.where(torch.rand(width.shape, generator=gen) < 0.5, 0.0, width)
    return lo, lo + width


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(RELAXED))
def test_relaxed_backward_and_interval_are_sound(case: str, dtype: torch.dtype) -> None:
    op_name, shapes, attrs, kinds = RELAXED[case]
    op = get_op(op_name)
    node = Node(op_name, tuple(f"x{i}" for i in range(len(shapes))), "z", {}, attrs)
    out_shape = op.out_shape(node, shapes)
    gen = torch.Generator().manual_seed(4)
    tol = _tol(dtype)
    for trial in range(12):
        boxes = [_relaxed_boxes(gen, s, k) for s, k in zip(shapes, kinds, strict=True)]
        boxes = [(lo.to(dtype), up.to(dtype)) for lo, up in boxes]
        s = 3
        a_lo = torch.randn(2, s, *out_shape, generator=gen, dtype=F64).to(dtype)
        a_up = torch.randn(2, s, *out_shape, generator=gen, dtype=F64).to(dtype)
        bw = op.backward(node, a_lo, a_up, boxes, shapes, out_shape, DEFAULT_OPTIONS)
        i_lo, i_up = op.interval(node, boxes)
        assert tuple(i_lo.shape[1:]) == out_shape and i_lo.dtype == dtype
        m = 300
        pts = []
        for (lo, up), k in zip(boxes, kinds, strict=True):
            p = _points(gen, lo, up, m)
            pts.append(p.round() if k == "index" else p)
        flat = [p.reshape(2 * m, *p.shape[2:]) for p in pts]
        z = op.forward(node, *flat).reshape(2, m, *out_shape).to(F64)
        scale = 1 + z.abs()
        assert float(((i_lo.to(F64)[:, None] - z) / scale).max()) <= tol, (case, trial)
        assert float(((z - i_up.to(F64)[:, None]) / scale).max()) <= tol, (case, trial)
        for a, coefs, const, sign in (
            (a_lo, bw.lower, bw.const_lower, 1.0),
            (a_up, bw.upper, bw.const_upper, -1.0),
        ):
            az = (a.to(F64)[:, :, None] * z[:, None]).reshape(2, s, m, -1).sum(-1)
            lin = const.to(F64)[:, :, None].expand(2, s, m).clone()
            for c, p in zip(coefs, pts, strict=True):
                if c is not None:
                    lin += (c.to(F64)[:, :, None] * p.to(F64)[:, None]).reshape(2, s, m, -1).sum(-1)
            gap = sign * (lin - az) / (1 + az.abs() + lin.abs())
            assert float(gap.max()) <= tol, (case, trial, float(gap.max()))


def test_mccormick_planes_give_the_exact_product_interval() -> None:
    """The chosen planes alone, concretized over the box, are the exact interval of x y."""
    gen = torch.Generator().manual_seed(5)
    lx, ux = _boxes(gen, 500, ())
    ly, uy = _boxes(gen, 500, ())
    p = mccormick(lx, ux, ly, uy)
    low = p.c_l + torch.minimum(p.ax_l * lx, p.ax_l * ux) + torch.minimum(p.ay_l * ly, p.ay_l * uy)
    high = p.c_u + torch.maximum(p.ax_u * lx, p.ax_u * ux) + torch.maximum(p.ay_u * ly, p.ay_u * uy)
    i_lo, i_up = product_interval(lx, ux, ly, uy)
    torch.testing.assert_close(low, i_lo, rtol=0, atol=1e-12)
    torch.testing.assert_close(high, i_up, rtol=0, atol=1e-12)


def test_softmax_interval_is_attained_at_corners() -> None:
    node = Node("softmax", ("x",), "y", attrs={"axis": 0})
    lo = torch.tensor([[-1.0, 0.5, 2.0]], dtype=F64)
    up = torch.tensor([[0.0, 1.5, 2.5]], dtype=F64)
    i_lo, i_up = get_op("softmax").interval(node, [(lo, up)])
    for i in range(3):
        worst = up.clone()
        worst[0, i] = lo[0, i]
        best = lo.clone()
        best[0, i] = up[0, i]
        assert math.isclose(float(i_lo[0, i]), float(torch.softmax(worst, 1)[0, i]), rel_tol=1e-12)
        assert math.isclose(float(i_up[0, i]), float(torch.softmax(best, 1)[0, i]), rel_tol=1e-12)


def test_softmax_lines_are_nearly_exact_on_small_boxes() -> None:
    """On a small box the lines bound ``A s(x)`` almost as tightly as the linearisation of
    softmax at the centre does (and far tighter than the interval)."""
    gen = torch.Generator().manual_seed(6)
    node = Node("softmax", ("x",), "y", attrs={"axis": 0})
    c = torch.randn(1, 4, generator=gen, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda x: torch.softmax(x, -1), c[0])
    for r in (1e-3, 1e-2):
        lo, up = c - r, c + r
        a = torch.randn(1, 5, 4, generator=gen, dtype=F64)
        bw = get_op("softmax").backward(node, a, a, [(lo, up)], [(4,)], (4,), DEFAULT_OPTIONS)
        box = Box.make(lo, up)
        width = box.concretize(bw.upper[0], bw.const_upper)[1]
        width = width - box.concretize(bw.lower[0], bw.const_lower)[0]
        first_order = (a[0] @ jac).abs().sum(-1) * 2 * r
        assert bool((width <= first_order * (1 + 5 * r) + 1e-9).all()), r
        i_lo, i_up = get_op("softmax").interval(node, [(lo, up)])
        ibp_lo, ibp_up = Box.make(i_lo, i_up).concretize(a, torch.zeros(1, 5, dtype=F64))
        assert bool((width < ibp_up - ibp_lo).all()), r


def test_argmax_interval_is_exact_when_one_entry_dominates() -> None:
    node = Node("argmax", ("x",), "y", attrs={"axis": 0, "keepdims": True})
    lo = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.5, -1.0]])
    up = torch.tensor([[1.0, 3.0, 1.9], [1.0, 1.5, 0.2]])
    i_lo, i_up = get_op("argmax").interval(node, [(lo, up)])
    assert i_lo.tolist() == [[1.0], [0.0]] and i_up.tolist() == [[1.0], [1.0]]


def test_equal_and_onehot_intervals() -> None:
    eq = Node("equal", ("x",), "y", {"constant": torch.tensor([1.0, 1.0, 1.0])})
    lo, up = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0]])
    i_lo, i_up = get_op("equal").interval(eq, [(lo, up)])
    assert i_lo.tolist() == [[1.0, 0.0, 0.0]] and i_up.tolist() == [[1.0, 1.0, 0.0]]
    oh = Node("onehot", ("x",), "y", attrs={"depth": 3, "axis": 0, "values": (0.0, 1.0)})
    i_lo, i_up = get_op("onehot").interval(oh, [(torch.tensor([[2.0]]), torch.tensor([[2.0]]))])
    assert i_lo.tolist() == [[[0.0], [0.0], [1.0]]] and i_up.tolist() == [[[0.0], [0.0], [1.0]]]
    i_lo, i_up = get_op("onehot").interval(oh, [(torch.tensor([[-1.0]]), torch.tensor([[0.0]]))])
    # -1 is class 2 (from the end), 0 is class 0
    assert i_lo.tolist() == [[[0.0], [0.0], [0.0]]] and i_up.tolist() == [[[1.0], [0.0], [1.0]]]


# -- (4) graphs: bounds hold at samples, vertices and PGD points ----------------------------------
class _Builder:
    """Tiny graph builder: float64 weights from a seeded generator."""

    def __init__(self, input_shape: Shape, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.input_shape = input_shape
        self.nodes: list[Node] = []
        self.shapes: dict[str, Shape] = {"input": input_shape}

    def __call__(
        self, op: str, inputs: tuple[str, ...], params: dict | None = None, **attrs: Any
    ) -> str:
        name = f"t{len(self.nodes)}"
        node = Node(op, inputs, name, params or {}, attrs)
        self.shapes[name] = tuple(get_op(op).out_shape(node, [self.shapes[i] for i in inputs]))
        self.nodes.append(node)
        return name

    def dense(self, x: str, n: int, scale: float = 1.0) -> str:
        if len(self.shapes[x]) != 1:
            x = self("flatten", (x,))
        k = self.shapes[x][0]
        w = torch.randn(n, k, generator=self.gen, dtype=F64) * scale / math.sqrt(k)
        b = torch.randn(n, generator=self.gen, dtype=F64) * 0.3
        return self("dense", (x,), {"weight": w, "bias": b})

    def shift(self, x: str, scale: float, shift: float) -> str:
        s = torch.tensor(scale, dtype=F64)
        return self("scale", (x,), {"scale": s, "shift": torch.tensor(shift, dtype=F64)})

    def graph(self, out: str) -> Graph:
        return Graph(tuple(self.nodes), self.input_shape, out)


def _g_mul_branches() -> Graph:
    b = _Builder((6,), 10)
    h = b("relu", (b.dense("input", 6),))
    left = b("relu", (b.dense(h, 4),))
    right = b.dense(h, 4)
    return b.graph(b.dense(b("mul", (left, right)), 3))


def _g_mul_broadcast_square() -> Graph:
    b = _Builder((5,), 11)
    h = b("reshape", (b.dense("input", 6),), shape=(2, 3))
    g = b("tanh", (b.dense("input", 3),))
    y = b("mul", (h, g))
    sq = b("mul", (y, y))  # the same tensor twice
    return b.graph(b.dense(b("concat", (b("flatten", (y,)), b("flatten", (sq,))), axis=0), 3))


def _g_matmul() -> Graph:
    b = _Builder((8,), 12)
    x = b("reshape", (b.dense("input", 6),), shape=(2, 3))
    y = b("reshape", (b("relu", (b.dense("input", 6),)),), shape=(3, 2))
    return b.graph(b.dense(b("matmul", (x, y)), 3))


def _g_matmul_batched() -> Graph:
    b = _Builder((6,), 13)
    x = b("reshape", (b.dense("input", 12),), shape=(2, 2, 3))
    y = b("reshape", (b.dense("input", 6),), shape=(1, 3, 2))
    return b.graph(b.dense(b("relu", (b("matmul", (x, y)),)), 2))


def _g_div() -> Graph:
    b = _Builder((5,), 14)
    num = b("relu", (b.dense("input", 4),))
    den = b.shift(b("sigmoid", (b.dense("input", 4),)), 1.0, 0.5)  # in (0.5, 1.5)
    neg = b.shift(b("sigmoid", (b.dense("input", 4),)), -2.0, -0.2)  # in (-2.2, -0.2)
    y = b("concat", (b("div", (num, den)), b("div", (b.dense("input", 4), neg))), axis=0)
    return b.graph(b.dense(y, 3))


def _g_softmax() -> Graph:
    b = _Builder((6,), 15)
    s = b("softmax", (b.dense("input", 5, scale=2.0),), axis=0)
    t = b("softmax", (b("reshape", (b.dense("input", 8),), shape=(2, 4)),), axis=1)
    y = b("concat", (s, b("flatten", (t,))), axis=0)
    return b.graph(b.dense(y, 3))


def _g_sign() -> Graph:
    b = _Builder((5,), 16)
    s = b("sign", (b.dense("input", 6),))
    return b.graph(b.dense(b("sign", (b.dense(s, 4),)), 3))


def _g_steps() -> Graph:
    b = _Builder((4,), 17)
    parts = tuple(
        b(op, (b.dense("input", 3, scale=3.0),)) for op in ("trunc", "floor", "ceil", "round")
    )
    return b.graph(b.dense(b("concat", parts, axis=0), 3))


def _g_exp_log_reciprocal() -> Graph:
    b = _Builder((4,), 18)
    e = b("exp", (b.dense("input", 3),))
    pos = b.shift(b("softplus", (b.dense("input", 3),)), 1.0, 0.2)
    lg = b("log", (pos,))
    inv = b("reciprocal", (b.shift(b("sigmoid", (b.dense("input", 3),)), -1.0, -0.3),))
    return b.graph(b.dense(b("concat", (e, lg, inv), axis=0), 2))


def _g_segmentation() -> Graph:
    """The carvana head: logits per pixel -> softmax over classes -> arg max -> one-hot ->
    the class-1 plane -> equal to a label mask -> count of correct pixels (plus a second
    count against a mask taken from the input: trunc of a slice)."""
    b = _Builder((6,), 19)
    logits = b("reshape", (b.dense("input", 8, scale=3.0),), shape=(2, 4))
    probs = b("softmax", (logits,), axis=0)
    cls = b("argmax", (probs,), axis=0, keepdims=False)  # (4,)
    hot = b("onehot", (cls,), depth=2, axis=0, values=(0.0, 1.0))  # (2, 4)
    plane = b("reshape", (b("slice", (hot,), starts=(1,), ends=(2,), axes=(0,)),), shape=(4,))
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
    ok = b("equal", (plane,), {"constant": mask})
    count = b("reduce_sum", (ok,), axes=None, keepdims=True)
    label = b(
        "trunc", (b.shift(b("slice", ("input",), starts=(0,), ends=(4,), axes=(0,)), 1.0, 0.5),)
    )
    ok2 = b("equal", (plane, label))
    count2 = b("reduce_sum", (ok2,), axes=None, keepdims=True)
    return b.graph(b("concat", (count, count2, b("flatten", (probs,))), axis=0))


GRAPHS = {
    "mul-branches": _g_mul_branches,
    "mul-broadcast-square": _g_mul_broadcast_square,
    "matmul": _g_matmul,
    "matmul-batched": _g_matmul_batched,
    "div": _g_div,
    "softmax": _g_softmax,
    "sign": _g_sign,
    "steps": _g_steps,
    "exp-log-reciprocal": _g_exp_log_reciprocal,
    "segmentation": _g_segmentation,
}
SETS = ["inf", "2", "box"]


def _make_set(kind: str, graph: Graph, dtype: torch.dtype, eps_scale: float = 1.0):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, *graph.input_shape, generator=gen, dtype=F64)
    if kind == "box":
        r = torch.rand(x.shape, generator=gen, dtype=F64) * 0.3 * eps_scale
        return Box.make((x - r).to(dtype), (x + r).to(dtype))
    eps = {"inf": 0.15, "2": 0.4}[kind] * eps_scale
    return LpBall.make(x.to(dtype), eps, p=float(kind))


def _methods(graph: Graph) -> tuple[str, ...]:
    plain = all(
        get_op(n.op).kind is not OpKind.ELEMENTWISE or get_op(n.op).traits.piecewise_linear
        for n in graph.nodes
    )
    return ("ibp", "crown-general", "crown") if plain else ("ibp", "crown-general")


def _outputs(graph: Graph, pts: Tensor) -> Tensor:
    n, m = pts.shape[:2]
    with torch.no_grad():
        return graph(pts.reshape(n * m, *pts.shape[2:])).reshape(n, m, -1)


def _pgd(graph: Graph, s, starts: Tensor, steps: int = 20) -> Tensor:
    """Values of every output at the points a ``steps``-step PGD visits while minimising
    (first half of the copies) and maximising (second half) each output from ``starts``."""
    n, m = starts.shape[:2]
    o = m // 2
    sign = torch.cat([-torch.ones(o), torch.ones(o)]).to(starts.dtype)
    which = torch.arange(m) % o
    if isinstance(s, Box):
        radius = s.radius.unsqueeze(1)
    else:
        radius = s.eps.view(-1, 1, *([1] * len(graph.input_shape)))
    x = starts.clone()
    seen = []
    for t in range(steps):
        x.requires_grad_(True)
        out = graph(x.reshape(n * m, *x.shape[2:])).reshape(n, m, -1)
        val = out[:, torch.arange(m), which]
        (grad,) = torch.autograd.grad((val * sign).sum(), x, allow_unused=True)
        seen.append(out.detach())
        if grad is None:  # piecewise constant: nothing to follow
            break
        lr = 2.5 / steps * (0.5 * (1 + math.cos(math.pi * t / steps)) + 0.05)
        with torch.no_grad():
            if isinstance(s, Box) or s.p == math.inf:
                step = radius * grad.sign()
            else:
                flat = grad.reshape(n, m, -1)
                flat = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-30)
                step = radius * flat.reshape(grad.shape)
            x = s.project(x + lr * step).detach()
    seen.append(_outputs(graph, x.detach()))
    return torch.cat(seen, 1)


def _check_graph(graph: Graph, s, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(8)
    pts = torch.cat([s.sample(120, generator=gen), s.vertices(120, generator=gen)], 1)
    vals = _outputs(graph, pts)
    o = vals.shape[-1]
    idx = torch.cat([vals.argmin(1), vals.argmax(1)], 1)  # PGD from the best sample per side
    starts = pts[torch.arange(pts.shape[0])[:, None], idx]
    vals = torch.cat([vals, _pgd(graph, s, starts)], 1).to(F64)
    tol = _tol(dtype)
    for method in _methods(graph):
        b = graph_bounds(graph, s, method)
        assert b.lower.dtype == dtype
        lo = b.lower.reshape(-1, 1, o).to(F64)
        up = b.upper.reshape(-1, 1, o).to(F64)
        assert bool(torch.isfinite(lo).all() and torch.isfinite(up).all()), method
        scale = 1 + vals.abs()
        below = float(((lo - vals) / scale).max())
        above = float(((vals - up) / scale).max())
        assert below <= tol and above <= tol, (method, below, above)


@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_bounds_hold(name: str, kind: str) -> None:
    graph = GRAPHS[name]()
    _check_graph(graph, _make_set(kind, graph, F64), F64)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_bounds_hold_float32(name: str) -> None:
    graph = GRAPHS[name]().to(dtype=torch.float32)
    _check_graph(graph, _make_set("inf", graph, torch.float32), torch.float32)


def test_crown_general_beats_ibp_on_products_and_softmax() -> None:
    for make in (_g_mul_branches, _g_matmul, _g_softmax):
        graph = make()
        s = _make_set("inf", graph, F64, eps_scale=0.1)
        ibp, crown = graph_bounds(graph, s, "ibp"), graph_bounds(graph, s, "crown-general")
        assert float((crown.upper - crown.lower).sum()) < float((ibp.upper - ibp.lower).sum())


def test_segmentation_count_is_exact_when_the_classes_are_stable() -> None:
    graph = _g_segmentation()
    s = _make_set("inf", graph, F64, eps_scale=1e-4)
    b = graph_bounds(graph, s, "crown-general")
    y = graph(s.center)
    torch.testing.assert_close(b.lower[:, :2], y[:, :2])
    torch.testing.assert_close(b.upper[:, :2], y[:, :2])


# -- (5) the final softmax -----------------------------------------------------------------------
def test_strip_final_softmax() -> None:
    b = _Builder((4,), 20)
    logits = b.dense(b("relu", (b.dense("input", 6),)), 6)
    probs = b("softmax", (b("reshape", (logits,), shape=(2, 3)),), axis=1)
    graph = b.graph(b("flatten", (probs,)))
    stripped = strip_final_softmax(graph)
    assert stripped is not None and "softmax" not in [n.op for n in stripped.nodes]
    x = torch.randn(5, 4, dtype=F64)
    torch.testing.assert_close(stripped(x), graph.evaluate(x)[logits])
    # the order within each softmax group is the logits' order
    assert torch.equal(
        graph(x).reshape(5, 2, 3).argsort(-1), stripped(x).reshape(5, 2, 3).argsort(-1)
    )
    groups = softmax_groups(graph)
    assert groups is not None and groups.tolist() == [0, 0, 0, 3, 3, 3]
    c = torch.zeros(2, 6)
    c[0, 0], c[0, 2], c[1, 4], c[1, 5] = 1.0, -1.0, -2.0, 2.0
    assert compares_within_groups(c, groups)
    c[1, 4], c[1, 2] = 0.0, -2.0  # across groups
    assert not compares_within_groups(c, groups)
    assert not compares_within_groups(torch.tensor([[1.0, 0, 0, 0, 0, 0]]), groups)
    # a graph that does not end in a softmax
    assert strip_final_softmax(_g_mul_branches()) is None
    assert softmax_groups(_g_mul_branches()) is None
    plain = Graph((Node("softmax", ("input",), "p", attrs={"axis": 0}),), (3,), "p")
    only = strip_final_softmax(plain)
    assert only is not None and only.output == "p"
    torch.testing.assert_close(only(x[:, :3]), x[:, :3])
