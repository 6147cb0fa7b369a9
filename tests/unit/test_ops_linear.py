"""The linear structural operators of the graph IR (add, sub, scale, concat, slice, gather,
pad, transpose, conv_transpose2d, resize_nearest, reduce_sum / reduce_mean).

Per operator: the forward pass against an independent numpy reference (per sample), the
transpose as the exact adjoint (``<a, L x> == <L^T a, x>`` in float64, broadcasting included),
the bias as the image of zero, and the interval rule sound on samples and corners in float32
and float64 (exact where the map is monotone). Then small graphs mixing each operator with
ReLU and dense / conv nodes, bounded by IBP, CROWN and CROWN-general over Lp balls and a box,
checked against samples, vertices and a short PGD; and chain graphs whose extra nodes are
trivial give the chain path's CROWN bounds.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import helpers  # noqa: F401  (sets torch threads)
import nnbound
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.chain_graph import network_to_graph
from nnbound.network.graph import Graph, Node, Shape
from nnbound.network.layers import (
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    Normalize,
)
from nnbound.network.network import Network
from nnbound.ops.registry import by_onnx, by_torch, get_op
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall

F64 = torch.float64
BIG = 2**62  # ONNX's "to the end"


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64)


# -- cases: a node, its input shapes, and a per-sample numpy reference -------------------
@dataclass
class Case:
    id: str
    node: Node
    in_shapes: list[Shape]
    ref: Callable[..., np.ndarray]


def _np(node: Node, key: str) -> np.ndarray:
    return node.params[key].numpy()


def _conv_transpose_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """The definition: each input pixel scatters its kernel, then the padding is cropped."""
    in_c, h, w_in = x.shape
    _, per_group, kh, kw = w.shape
    out_c = per_group * groups
    full_h = (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1 + output_padding[0]
    full_w = (w_in - 1) * stride[1] + dilation[1] * (kw - 1) + 1 + output_padding[1]
    full = np.zeros((out_c, full_h, full_w))
    in_per_group = in_c // groups
    for ic in range(in_c):
        g = ic // in_per_group
        for i in range(h):
            for j in range(w_in):
                for ki in range(kh):
                    for kj in range(kw):
                        r, c = i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]
                        full[g * per_group : (g + 1) * per_group, r, c] += (
                            x[ic, i, j] * w[ic, :, ki, kj]
                        )
    ph, pw = padding
    out = full[:, ph : full_h - ph, pw : full_w - pw]
    return out + b[:, None, None]


def _pad_ref(x: np.ndarray, pads: tuple[tuple[int, int], ...], value: float) -> np.ndarray:
    grow = [(max(b, 0), max(a, 0)) for b, a in pads]
    y = np.pad(x, grow, mode="constant", constant_values=value)
    crop = tuple(slice(max(-b, 0), y.shape[i] - max(-a, 0)) for i, (b, a) in enumerate(pads))
    return y[crop]


def _slice_ref(x: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[a] = slice(s, e, st)
    return x[tuple(index)]


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases: list[Case] = []

    def add(id_: str, node: Node, in_shapes: list[Shape], ref: Callable[..., np.ndarray]):
        cases.append(Case(id_, node, in_shapes, ref))

    # add / sub
    add("add", Node("add", ("x", "y"), "o"), [(2, 3, 4), (2, 3, 4)], lambda x, y: x + y)
    add("add-bcast", Node("add", ("x", "y"), "o"), [(2, 3, 4), (3, 1)], lambda x, y: x + y)
    add("add-bcast-both", Node("add", ("x", "y"), "o"), [(3, 1), (1, 4)], lambda x, y: x + y)
    add("add-rank", Node("add", ("x", "y"), "o"), [(4,), (2, 3, 1)], lambda x, y: x + y)
    c = _rand(g, 4)
    add("add-const", Node("add", ("x",), "o", {"constant": c}), [(3, 4)], lambda x: x + c.numpy())
    c2 = _rand(g, 2, 1, 1)
    add(
        "add-const-bcast",
        Node("add", ("x",), "o", {"constant": c2}),
        [(3, 4)],
        lambda x: x + c2.numpy(),
    )
    add(
        "add3", Node("add", ("x", "y", "z"), "o"), [(3,), (2, 3), (2, 1)], lambda x, y, z: x + y + z
    )
    c3 = _rand(g, 3, 1)
    add(
        "sub",
        Node("sub", ("x", "y"), "o", {"constant": c3}),
        [(3, 4), (1, 4)],
        lambda x, y: x - y + c3.numpy(),
    )
    add("sub-bcast", Node("sub", ("x", "y"), "o"), [(2, 1), (3,)], lambda x, y: x - y)
    # scale
    s = _rand(g, 3, 1, 1)
    s[1] = 0.0
    s[2] = -s[2].abs()
    t = _rand(g, 3, 1, 1)
    add(
        "scale-bn",
        Node("scale", ("x",), "o", {"scale": s, "shift": t}),
        [(3, 2, 2)],
        lambda x: x * s.numpy() + t.numpy(),
    )
    s2 = _rand(g, 2, 4)
    add(
        "scale-only-bcast",
        Node("scale", ("x",), "o", {"scale": s2}),
        [(4,)],
        lambda x: x * s2.numpy(),
    )
    t2 = _rand(g, 5)
    add("shift-only", Node("scale", ("x",), "o", {"shift": t2}), [(5,)], lambda x: x + t2.numpy())
    neg = torch.tensor(-1.0, dtype=F64)
    add("neg", Node("scale", ("x",), "o", {"scale": neg}), [(2, 3)], lambda x: -x)
    # concat
    add(
        "concat0",
        Node("concat", ("x", "y", "z"), "o", attrs={"axis": 0}),
        [(2, 3), (1, 3), (4, 3)],
        lambda x, y, z: np.concatenate([x, y, z], 0),
    )
    add(
        "concat-neg",
        Node("concat", ("x", "y"), "o", attrs={"axis": -1}),
        [(2, 3, 1), (2, 3, 2)],
        lambda x, y: np.concatenate([x, y], -1),
    )
    add(
        "concat-same",
        Node("concat", ("x", "x"), "o", attrs={"axis": 0}),
        [(3,), (3,)],
        lambda x, y: np.concatenate([x, y], 0),
    )
    # slice
    for sid, attrs in [
        ("slice-basic", {"starts": (1,), "ends": (4,), "axes": (0,)}),
        ("slice-step", {"starts": (0, 1), "ends": (BIG, -1), "axes": (1, 2), "steps": (2, 1)}),
        ("slice-neg-idx", {"starts": (-3,), "ends": (-1,), "axes": (-1,), "steps": (1,)}),
        ("slice-clamp", {"starts": (-100,), "ends": (100,), "axes": (1,), "steps": (3,)}),
        ("slice-neg-step", {"starts": (-1,), "ends": (-BIG,), "axes": (2,), "steps": (-1,)}),
        (
            "slice-neg-step2",
            {"starts": (4, 2), "ends": (0, -100), "axes": (2, 0), "steps": (-2, -1)},
        ),
    ]:
        steps = attrs.get("steps", (1,) * len(attrs["starts"]))
        ref = partial(
            _slice_ref, starts=attrs["starts"], ends=attrs["ends"], axes=attrs["axes"], steps=steps
        )
        add(sid, Node("slice", ("x",), "o", attrs=attrs), [(3, 4, 5)], ref)
    # gather
    for gid, axis, idx in [
        ("gather-dup", 1, (0, 2, 2, -1)),
        ("gather-scalar", 0, 1),
        ("gather-2d", -1, ((0, 3), (3, 1), (2, 2))),
    ]:
        ref = partial(np.take, indices=np.array(idx), axis=axis)
        add(
            gid, Node("gather", ("x",), "o", attrs={"axis": axis, "indices": idx}), [(3, 4, 4)], ref
        )
    # pad
    for pid, pads, value in [
        ("pad", ((0, 0), (1, 2), (2, 0)), 0.0),
        ("pad-value", ((1, 0), (0, 1), (1, 1)), 0.5),
        ("pad-crop", ((0, 0), (-1, 1), (2, -1)), -0.25),
    ]:
        ref = partial(_pad_ref, pads=pads, value=value)
        add(pid, Node("pad", ("x",), "o", attrs={"pads": pads, "value": value}), [(2, 3, 4)], ref)
    # transpose
    for perm in [(2, 0, 1), (1, 2, 0), (0, 2, 1)]:
        ref = partial(np.transpose, axes=perm)
        add(
            f"transpose{perm}",
            Node("transpose", ("x",), "o", attrs={"perm": perm}),
            [(2, 3, 4)],
            ref,
        )
    # conv_transpose2d
    for cid, in_c, out_c, k, st, pd, op, dl, gr, hw in [
        ("ct-basic", 2, 3, (3, 3), (1, 1), (0, 0), (0, 0), (1, 1), 1, (3, 4)),
        ("ct-stride", 2, 3, (3, 2), (2, 2), (1, 0), (1, 1), (1, 1), 1, (3, 3)),
        ("ct-dilate", 2, 2, (2, 3), (1, 2), (1, 1), (1, 0), (2, 1), 1, (4, 3)),
        ("ct-groups", 4, 2, (2, 2), (2, 1), (0, 1), (0, 0), (1, 1), 2, (3, 3)),
        ("ct-op-ge-stride", 1, 2, (3, 3), (1, 1), (0, 0), (1, 1), (2, 2), 1, (3, 3)),
    ]:
        w = _rand(g, in_c, out_c // gr, *k) * 0.5
        b = _rand(g, out_c)
        attrs = {"stride": st, "padding": pd, "output_padding": op, "dilation": dl, "groups": gr}
        ref = partial(
            _conv_transpose_ref,
            w=w.numpy(),
            b=b.numpy(),
            stride=st,
            padding=pd,
            output_padding=op,
            dilation=dl,
            groups=gr,
        )
        node = Node("conv_transpose2d", ("x",), "o", {"weight": w, "bias": b}, attrs)
        add(cid, node, [(in_c, *hw)], ref)
    # resize_nearest
    add(
        "resize",
        Node("resize_nearest", ("x",), "o", attrs={"scales": (2, 3)}),
        [(2, 3, 2)],
        lambda x: np.repeat(np.repeat(x, 2, axis=1), 3, axis=2),
    )
    # reduce
    for rid, op, axes, keep, fn in [
        ("rsum-keep", "reduce_sum", (0, 2), True, np.sum),
        ("rsum-drop", "reduce_sum", (-1,), False, np.sum),
        ("rmean-all", "reduce_mean", None, False, np.mean),
        ("rmean-hw", "reduce_mean", (1, 2), True, np.mean),
    ]:
        ref = partial(fn, axis=None if axes is None else tuple(axes), keepdims=keep)
        node = Node(op, ("x",), "o", attrs={"axes": axes, "keepdims": keep})
        add(rid, node, [(2, 3, 4)], ref)
    return cases


CASES = _cases()
IDS = [c.id for c in CASES]


def _node_dtype(node: Node, dtype: torch.dtype) -> Node:
    return Node(
        node.op,
        node.inputs,
        node.output,
        {k: v.to(dtype) for k, v in node.params.items()},
        node.attrs,
    )


def _inputs(case: Case, gen: torch.Generator, n: int, dtype: torch.dtype = F64) -> list[Tensor]:
    return [torch.randn(n, *s, generator=gen, dtype=F64).to(dtype) for s in case.in_shapes]


def _out_shape(case: Case) -> Shape:
    return tuple(get_op(case.node.op).out_shape(case.node, case.in_shapes))


# -- (1) forward ------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_numpy_reference(case: Case) -> None:
    op = get_op(case.node.op)
    gen = torch.Generator().manual_seed(1)
    xs = _inputs(case, gen, 3)
    y = op.forward(case.node, *xs)
    ref = np.stack([case.ref(*(x[b].numpy() for x in xs)) for b in range(3)])
    assert tuple(y.shape) == (3, *_out_shape(case)) == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_forward_matches_torch_modules() -> None:
    """conv_transpose2d against torch's own module, resize against F.interpolate."""
    gen = torch.Generator().manual_seed(2)
    mod = torch.nn.ConvTranspose2d(4, 6, (3, 2), (2, 1), (1, 0), (1, 0), groups=2, dilation=(1, 2))
    mod = mod.double()
    attrs = {
        "stride": (2, 1),
        "padding": (1, 0),
        "output_padding": (1, 0),
        "dilation": (1, 2),
        "groups": 2,
    }
    node = Node(
        "conv_transpose2d",
        ("x",),
        "o",
        {"weight": mod.weight.detach(), "bias": mod.bias.detach()},
        attrs,
    )
    x = torch.randn(2, 4, 3, 5, generator=gen, dtype=F64)
    op = get_op("conv_transpose2d")
    assert op.out_shape(node, [(4, 3, 5)]) == tuple(mod(x).shape[1:])
    torch.testing.assert_close(op.forward(node, x), mod(x).detach())
    up = Node("resize_nearest", ("x",), "o", attrs={"scales": (3, 2)})
    ref = torch.nn.functional.interpolate(x, scale_factor=(3, 2), mode="nearest")
    torch.testing.assert_close(get_op("resize_nearest").forward(up, x), ref)


# -- (2) transpose: the exact adjoint; bias: the image of zero -----------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_transpose_is_the_exact_adjoint(case: Case) -> None:
    op = get_op(case.node.op)
    gen = torch.Generator().manual_seed(3)
    n, s = 2, 3
    out_shape = _out_shape(case)
    xs = _inputs(case, gen, n)
    zeros = [torch.zeros_like(x) for x in xs]
    base = op.forward(case.node, *zeros)
    bias = op.bias(case.node, out_shape)
    expected = torch.zeros(out_shape, dtype=F64) if bias is None else bias.to(F64).expand(out_shape)
    torch.testing.assert_close(base, expected.expand(n, *out_shape), rtol=0, atol=1e-14)
    a = torch.randn(n, s, *out_shape, generator=gen, dtype=F64)
    back = op.transpose(case.node, a, case.in_shapes, out_shape)
    assert len(back) == len(xs)
    total = torch.zeros(n, s, dtype=F64)
    for i, (x, at) in enumerate(zip(xs, back, strict=True)):
        assert at is not None and tuple(at.shape) == (n, s, *case.in_shapes[i])
        only = list(zeros)
        only[i] = x
        lin = op.forward(case.node, *only) - base  # L_i x_i
        lhs = (a * lin.unsqueeze(1)).reshape(n, s, -1).sum(-1)
        rhs = (at * x.unsqueeze(1)).reshape(n, s, -1).sum(-1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
        total = total + rhs
    lin = op.forward(case.node, *xs) - base
    torch.testing.assert_close(
        (a * lin.unsqueeze(1)).reshape(n, s, -1).sum(-1), total, rtol=1e-12, atol=1e-12
    )


# -- (3) interval rules ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_interval_is_sound_and_exact(case: Case, dtype: torch.dtype) -> None:
    op = get_op(case.node.op)
    node = _node_dtype(case.node, dtype)
    gen = torch.Generator().manual_seed(4)
    n, m = 2, 200
    boxes = []
    for shape in case.in_shapes:
        lo = torch.randn(n, *shape, generator=gen, dtype=F64)
        width = torch.rand(n, *shape, generator=gen, dtype=F64) * 2
        width[0].reshape(-1)[0] = 0.0  # a degenerate entry
        boxes.append((lo.to(dtype), (lo + width).to(dtype)))
    lo_out, up_out = op.interval(node, boxes)
    assert lo_out.dtype == dtype and tuple(lo_out.shape) == (n, *_out_shape(case))
    # uniform samples and random corners of every input box, evaluated in the same dtype
    pts = []
    for lo, up in boxes:
        u = torch.rand(n, m, *lo.shape[1:], generator=gen, dtype=F64).to(dtype)
        corner = torch.randint(0, 2, (n, m, *lo.shape[1:]), generator=gen).bool()
        u[:, m // 2 :] = corner[:, m // 2 :].to(dtype)
        pts.append(
            (lo.unsqueeze(1) + u * (up - lo).unsqueeze(1)).clamp(lo.unsqueeze(1), up.unsqueeze(1))
        )
    ys = op.forward(node, *(p.reshape(n * m, *p.shape[2:]) for p in pts)).reshape(
        n, m, *lo_out.shape[1:]
    )
    # Every rule but the conv's centre/radius maps the corners through the forward pass's own
    # arithmetic, so rounding (monotone) cannot break it: no tolerance there.
    tol = 0.0
    if case.node.op == "conv_transpose2d":
        tol = 1e-5 if dtype == torch.float32 else 1e-12
    scale = 1 + ys.abs()
    assert float(((lo_out.unsqueeze(1) - ys) / scale).max()) <= tol
    assert float(((ys - up_out.unsqueeze(1)) / scale).max()) <= tol
    if op.traits.monotone:
        # the image of the two corners
        torch.testing.assert_close(lo_out, op.forward(node, *(b[0] for b in boxes)))
        torch.testing.assert_close(up_out, op.forward(node, *(b[1] for b in boxes)))
    if case.node.op == "scale":
        a, b = op.forward(node, boxes[0][0]), op.forward(node, boxes[0][1])
        torch.testing.assert_close(lo_out, a.minimum(b))
        torch.testing.assert_close(up_out, a.maximum(b))


def test_sub_interval_is_exact() -> None:
    node = Node("sub", ("x", "y"), "o")
    x = (torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 3.0]]))
    y = (torch.tensor([[-1.0]]), torch.tensor([[0.5]]))
    lo, up = get_op("sub").interval(node, [x, y])
    assert lo.tolist() == [[-0.5, 0.5]] and up.tolist() == [[3.0, 4.0]]


# -- shape checks and refusals ------------------------------------------------------------
@pytest.mark.parametrize(
    "op, inputs, params, attrs, shapes, match",
    [
        ("add", ("x", "y"), {}, {}, [(3,), (4,)], "broadcast"),
        ("sub", ("x",), {}, {}, [(3,)], "two inputs"),
        ("scale", ("x",), {"scale": torch.ones(2)}, {}, [(3,)], "broadcast"),
        ("concat", ("x", "y"), {}, {"axis": 0}, [(2, 3), (2, 4)], "differ"),
        ("concat", ("x",), {}, {"axis": 2}, [(2, 3)], "out of range"),
        ("slice", ("x",), {}, {"starts": (5,), "ends": (9,)}, [(3,)], "empty"),
        ("slice", ("x",), {}, {"starts": (0,), "ends": (1,), "steps": (0,)}, [(3,)], "step 0"),
        ("slice", ("x",), {}, {"starts": (0, 0), "ends": (1, 1), "axes": (0, 0)}, [(3,)], "twice"),
        ("gather", ("x",), {}, {"axis": 0, "indices": (3,)}, [(3,)], "out of range"),
        ("gather", ("x",), {}, {"axis": 0, "indices": ((1,), (1, 2))}, [(3,)], "nested"),
        ("pad", ("x",), {}, {"pads": ((1, 1),)}, [(2, 3)], "rank"),
        ("pad", ("x",), {}, {"pads": ((-2, -1),)}, [(3,)], "nothing"),
        ("transpose", ("x",), {}, {"perm": (0, 0)}, [(2, 3)], "permutation"),
        ("resize_nearest", ("x",), {}, {"scales": (1.5, 2)}, [(1, 2, 2)], "integers"),
        ("resize_nearest", ("x",), {}, {"scales": (2, 2)}, [(2, 2)], "C, H, W"),
        ("reduce_sum", ("x",), {}, {"axes": (0, 0)}, [(2, 3)], "repeat"),
        ("reduce_mean", ("x",), {}, {"axes": (2,)}, [(2, 3)], "out of range"),
        (
            "conv_transpose2d",
            ("x",),
            {"weight": torch.ones(2, 1, 2, 2), "bias": torch.ones(1)},
            {},
            [(3, 2, 2)],
            "input channels",
        ),
        (
            "conv_transpose2d",
            ("x",),
            {"weight": torch.ones(2, 1, 2, 2), "bias": torch.ones(1)},
            {"stride": 2, "output_padding": 2},
            [(2, 2, 2)],
            "output_padding",
        ),
    ],
)
def test_out_shape_rejects_mismatches(op, inputs, params, attrs, shapes, match) -> None:
    node = Node(op, inputs, "o", params, attrs)
    with pytest.raises(InputError, match=match):
        get_op(op).out_shape(node, shapes)


def test_pad_refuses_other_modes() -> None:
    node = Node("pad", ("input",), "o", attrs={"pads": ((1, 1),), "mode": "reflect"}, label="p7")
    with pytest.raises(UnsupportedError, match=r"pad node 'p7'.*reflect"):
        Graph((node,), (3,), "o")


def test_names_find_the_operators() -> None:
    for onnx, name in [
        ("Add", "add"),
        ("Sub", "sub"),
        ("Mul", "scale"),
        ("BatchNormalization", "scale"),
        ("Concat", "concat"),
        ("Slice", "slice"),
        ("Gather", "gather"),
        ("Pad", "pad"),
        ("Transpose", "transpose"),
        ("ConvTranspose", "conv_transpose2d"),
        ("Resize", "resize_nearest"),
        ("ReduceSum", "reduce_sum"),
        ("ReduceMean", "reduce_mean"),
    ]:
        assert name in [op.name for op in by_onnx(onnx)], onnx
    for torch_name, name in [
        ("__iadd__", "add"),
        ("permute", "transpose"),
        ("ConvTranspose2d", "conv_transpose2d"),
    ]:
        assert name in [op.name for op in by_torch(torch_name)], torch_name


# -- (4) graphs: bounds hold at samples, vertices and PGD extremes ------------------------
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

    def dense(self, x: str, n: int) -> str:
        if len(self.shapes[x]) != 1:
            x = self("flatten", (x,))
        k = self.shapes[x][0]
        w = torch.randn(n, k, generator=self.gen, dtype=F64) / math.sqrt(k)
        b = torch.randn(n, generator=self.gen, dtype=F64) * 0.3
        return self("dense", (x,), {"weight": w, "bias": b})

    def conv(self, x: str, c_out: int, k: int = 3, stride: int = 1, padding: int = 1) -> str:
        c_in = self.shapes[x][0]
        w = torch.randn(c_out, c_in, k, k, generator=self.gen, dtype=F64) / math.sqrt(c_in * k * k)
        b = torch.randn(c_out, generator=self.gen, dtype=F64) * 0.3
        attrs = {
            "stride": (stride, stride),
            "padding": (padding, padding),
            "dilation": (1, 1),
            "groups": 1,
        }
        return self("conv2d", (x,), {"weight": w, "bias": b}, **attrs)

    def relu(self, x: str) -> str:
        return self("relu", (x,))

    def graph(self, out: str) -> Graph:
        return Graph(tuple(self.nodes), self.input_shape, out)


def _g_residual() -> Graph:
    b = _Builder((6,), 10)
    h = b.dense(b.relu(b.dense("input", 6)), 6)
    return b.graph(b.dense(b.relu(b("add", ("input", h))), 3))


def _g_broadcast_add() -> Graph:
    b = _Builder((6,), 11)
    a = b("reshape", (b.relu(b.dense("input", 6)),), shape=(2, 3))
    c = b.relu(b.dense("input", 3))
    y = b("add", (a, c), {"constant": torch.tensor([[0.5], [-0.5]], dtype=F64)})
    return b.graph(b.dense(b.relu(y), 3))


def _g_sub() -> Graph:
    b = _Builder((5,), 12)
    h = b.relu(b.dense("input", 4))
    y = b("sub", (h, b.dense("input", 4)), {"constant": torch.full((4,), 0.1, dtype=F64)})
    return b.graph(b.dense(b.relu(y), 2))


def _g_scale() -> Graph:
    b = _Builder((2, 4, 4), 13)
    s = torch.tensor([[[1.5]], [[-0.7]], [[0.0]]], dtype=F64)
    t = torch.tensor([[[0.1]], [[-0.2]], [[0.3]]], dtype=F64)
    y = b("scale", (b.conv("input", 3),), {"scale": s, "shift": t})
    return b.graph(b.dense(b.relu(y), 3))


def _g_concat() -> Graph:
    b = _Builder((2, 4, 4), 14)
    left = b.relu(b.conv("input", 2))
    right = b.relu(b.conv("input", 1, k=1, padding=0))
    y = b("concat", (left, right, "input"), axis=0)
    return b.graph(b.dense(b.relu(b.conv(y, 2)), 3))


def _g_slice() -> Graph:
    b = _Builder((8,), 15)
    h = b.relu(b.dense("input", 8))
    part = b("slice", (h,), starts=(1,), ends=(BIG,), steps=(2,), axes=(0,))
    back = b("slice", (h,), starts=(-2,), ends=(-BIG,), steps=(-3,), axes=(0,))
    y = b("concat", (b.dense(part, 3), back), axis=0)
    return b.graph(b.dense(b.relu(y), 2))


def _g_slice_image() -> Graph:
    b = _Builder((2, 5, 5), 16)
    h = b.relu(b.conv("input", 3))
    y = b("slice", (h,), starts=(1, 0, -1), ends=(3, 4, 0), steps=(1, 2, -2), axes=(0, 1, 2))
    return b.graph(b.dense(b.relu(b.dense(y, 4)), 2))


def _g_gather() -> Graph:
    b = _Builder((6,), 17)
    h = b.relu(b.dense("input", 5))
    y = b("gather", (h,), axis=0, indices=((0, 3), (3, -1), (2, 2)))
    return b.graph(b.dense(b.relu(b.dense(y, 4)), 2))


def _g_pad() -> Graph:
    b = _Builder((1, 4, 4), 18)
    h = b.relu(b.conv("input", 2))
    y = b("pad", (h,), pads=((0, 0), (1, 0), (2, 1)), value=0.5)
    return b.graph(b.dense(b.relu(b.conv(y, 2, padding=0)), 3))


def _g_transpose() -> Graph:
    b = _Builder((2, 3, 4), 19)
    h = b.relu(b.conv("input", 2))
    y = b("transpose", (h,), perm=(1, 2, 0))
    y = b("flatten", (y,))
    return b.graph(b.dense(b.relu(b.dense(y, 5)), 2))


def _g_conv_transpose() -> Graph:
    b = _Builder((1, 5, 5), 20)
    h = b.relu(b.conv("input", 2, stride=2))
    w = torch.randn(2, 2, 3, 3, generator=b.gen, dtype=F64) / 3
    bias = torch.randn(2, generator=b.gen, dtype=F64) * 0.3
    attrs = {
        "stride": (2, 2),
        "padding": (1, 1),
        "output_padding": (1, 1),
        "dilation": (1, 1),
        "groups": 1,
    }
    y = b("conv_transpose2d", (h,), {"weight": w, "bias": bias}, **attrs)
    return b.graph(b.dense(b.relu(y), 3))


def _g_resize() -> Graph:
    b = _Builder((1, 3, 3), 21)
    h = b.relu(b.conv("input", 2))
    y = b("resize_nearest", (h,), scales=(2, 2))
    return b.graph(b.dense(b.relu(b.conv(y, 1, k=3, stride=2)), 3))


def _g_reduce() -> Graph:
    b = _Builder((2, 4, 4), 22)
    h = b.relu(b.conv("input", 3))
    m = b("reduce_mean", (h,), axes=(1, 2), keepdims=False)
    s = b("reduce_sum", (h,), axes=(0,), keepdims=True)
    y = b("concat", (m, b("flatten", (s,))), axis=0)
    return b.graph(b.dense(b.relu(b.dense(y, 5)), 2))


GRAPHS = {
    "residual-add": _g_residual,
    "broadcast-add": _g_broadcast_add,
    "sub": _g_sub,
    "scale": _g_scale,
    "concat": _g_concat,
    "slice": _g_slice,
    "slice-image": _g_slice_image,
    "gather": _g_gather,
    "pad": _g_pad,
    "transpose": _g_transpose,
    "conv-transpose": _g_conv_transpose,
    "resize": _g_resize,
    "reduce": _g_reduce,
}
SETS = ["inf", "2", "1", "box"]
METHODS = ("ibp", "crown", "crown-general")


def _make_set(kind: str, graph: Graph, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, *graph.input_shape, generator=gen, dtype=F64).to(dtype)
    if kind == "box":
        lo = x - torch.rand(x.shape, generator=gen, dtype=F64).to(dtype) * 0.3
        return Box.make(lo, x + torch.rand(x.shape, generator=gen, dtype=F64).to(dtype) * 0.3)
    eps = {"inf": 0.15, "2": 0.5, "1": 1.0}[kind]
    return LpBall.make(x, eps, p=float(kind))


def _outputs(graph: Graph, pts: Tensor) -> Tensor:
    n, m = pts.shape[:2]
    with torch.no_grad():
        return graph(pts.reshape(n * m, *pts.shape[2:])).reshape(n, m, -1)


def _pgd(graph: Graph, s, starts: Tensor, steps: int = 20) -> Tensor:
    """Values of every output at points PGD reached while minimising (first half of the
    copies) and maximising (second half) each output, from ``starts`` ``(N, 2 O, *shape)``."""
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
        (grad,) = torch.autograd.grad((val * sign).sum(), x)
        seen.append(out.detach())
        lr = 2.5 / steps * (0.5 * (1 + math.cos(math.pi * t / steps)) + 0.05)
        with torch.no_grad():
            if isinstance(s, Box) or s.p == math.inf:
                step = radius * grad.sign()
            else:
                flat = grad.reshape(n, m, -1)
                if s.p == 2.0:
                    flat = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-30)
                else:  # L1: the largest coordinate only
                    top = flat.abs().argmax(-1, keepdim=True)
                    flat = torch.zeros_like(flat).scatter(-1, top, flat.gather(-1, top).sign())
                step = radius * flat.reshape(grad.shape)
            x = s.project(x + lr * step).detach()
    seen.append(_outputs(graph, x))
    return torch.cat(seen, 1)


def _check_graph(graph: Graph, s, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    pts = torch.cat([s.sample(150, generator=gen), s.vertices(150, generator=gen)], 1)
    vals = _outputs(graph, pts)
    o = vals.shape[-1]
    # PGD from the best sampled point of each (output, side)
    idx = torch.cat([vals.argmin(1), vals.argmax(1)], 1)  # (N, 2 O)
    starts = pts[torch.arange(pts.shape[0])[:, None], idx]
    vals = torch.cat([vals, _pgd(graph, s, starts)], 1)
    assert vals.shape[-1] == o
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    for method in METHODS:
        b = graph_bounds(graph, s, method)
        lo, up = b.lower.reshape(-1, 1, o), b.upper.reshape(-1, 1, o)
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


def test_crown_is_no_looser_than_ibp_on_a_residual_graph() -> None:
    graph = _g_residual()
    s = _make_set("inf", graph, F64)
    ibp, crown = graph_bounds(graph, s, "ibp"), graph_bounds(graph, s, "crown")
    assert bool((crown.upper - crown.lower <= ibp.upper - ibp.lower + 1e-12).all())


# -- trivial nodes: the same CROWN bounds as the chain ----------------------------------
def _chain_mlp() -> tuple[Network, Graph]:
    gen = torch.Generator().manual_seed(30)
    w1, b1 = _rand(gen, 6, 4) / 2, _rand(gen, 6) * 0.3
    w2, b2 = _rand(gen, 6, 6) / 2.5, _rand(gen, 6) * 0.3
    w3, b3 = _rand(gen, 3, 6) / 2.5, _rand(gen, 3) * 0.3
    c = _rand(gen, 6) * 0.2
    net = Network(
        (Dense(w1, b1 + c), Activation("relu"), Dense(w2, b2), Activation("relu"), Dense(w3, b3)),
        (4,),
    )
    b = _Builder((4,), 0)
    h = b("dense", ("input",), {"weight": w1, "bias": b1})
    h = b("add", (h,), {"constant": c})
    h = b("scale", (h,), {"scale": torch.ones(6, dtype=F64), "shift": torch.zeros(6, dtype=F64)})
    h = b.relu(h)
    h = b("transpose", (h,), perm=(0,))
    h = b("slice", (h,), starts=(0,), ends=(BIG,))
    h = b("concat", (h,), axis=0)
    h = b("gather", (h,), axis=0, indices=tuple(range(6)))
    h = b("dense", (h,), {"weight": w2, "bias": b2})
    h = b("pad", (h,), pads=((0, 0),), value=0.0)
    h = b("reduce_sum", (b("reshape", (b.relu(h),), shape=(6, 1)),), axes=(1,), keepdims=False)
    h = b("dense", (h,), {"weight": w3, "bias": b3})
    return net, b.graph(h)


def _chain_cnn() -> tuple[Network, Graph]:
    """normalize -> conv (padding 1) -> relu -> global average pool -> dense, against
    scale -> pad -> conv (no padding) -> relu -> reduce_mean -> dense."""
    gen = torch.Generator().manual_seed(31)
    mean, std = _rand(gen, 2, 1, 1) * 0.1, _rand(gen, 2, 1, 1).abs() + 0.5
    w, bias = _rand(gen, 3, 2, 3, 3) / 4, _rand(gen, 3) * 0.3
    wd, bd = _rand(gen, 2, 3), _rand(gen, 2) * 0.3
    conv = {"stride": (1, 1), "dilation": (1, 1), "groups": 1}
    net = Network(
        (
            Normalize(mean, std),
            Conv2d(w, bias, padding=(1, 1), **conv),
            Activation("relu"),
            AvgPool2d(kernel_size=(4, 4), stride=(4, 4), padding=(0, 0)),
            Flatten(),
            Dense(wd, bd),
        ),
        (2, 4, 4),
    )
    b = _Builder((2, 4, 4), 0)
    h = b("scale", ("input",), {"scale": 1 / std, "shift": -mean / std})
    h = b("pad", (h,), pads=((0, 0), (1, 1), (1, 1)), value=0.0)
    h = b.relu(b("conv2d", (h,), {"weight": w, "bias": bias}, padding=(0, 0), **conv))
    h = b("reduce_mean", (h,), axes=(1, 2), keepdims=False)
    return net, b.graph(b("dense", (h,), {"weight": wd, "bias": bd}))


@pytest.mark.parametrize("make", [_chain_mlp, _chain_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("p", ["inf", 2, 1])
@pytest.mark.parametrize("method", ["crown", "crown-general", "ibp"])
def test_trivial_nodes_give_the_chain_bounds(make, p, method) -> None:
    net, graph = make()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, *net.input_shape, generator=gen, dtype=F64)
    ball = LpBall.make(x, eps=0.1 if p == "inf" else 0.4, p=p)
    chain = nnbound.bounds(net, ball, method=method)
    via_graph = graph_bounds(network_to_graph(net), ball, method)
    ours = graph_bounds(graph, ball, method)
    torch.testing.assert_close(graph(x), net(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.lower, chain.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours.upper, chain.upper, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(via_graph.lower, chain.lower, rtol=1e-9, atol=1e-9)
