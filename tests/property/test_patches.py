"""Patches coefficients (:mod:`nnbound.bounds.patches`) against dense coefficients.

Each patches rule is checked against its dense counterpart on random geometry (a row's window
through a convolution of any stride, padding, dilation, groups and kernel; sums of windows of
different sizes; reads of a tensor at the windows), and whole CROWN / Fast-Lin /
CROWN-general bounds on random CNNs with residual blocks and batch norm are the same with
patches as with dense coefficients, to rounding. Soundness of the patches path by sampling is
in ``test_graph_soundness.py`` (``test_conv_graph_bounds_are_sound``): patches are the default
path there.
"""

from __future__ import annotations

import importlib
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread)
from graph_factory import RandomChooser, conv_graph, resnet_graph
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.bounds.patches import Patches
from nnbound.errors import InputError
from nnbound.network.layers import Conv2d
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall

F64 = torch.float64
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def random_rows(gen: torch.Generator, shape: tuple[int, int, int], n: int, u: int) -> Patches:
    """``u`` one-hot rows per ball row at random entries of ``shape``."""
    idx = torch.randint(0, shape[0] * shape[1] * shape[2], (n, u), generator=gen)
    return Patches.identity(idx, shape, F64)


def random_conv(gen: torch.Generator, c_in: int, groups: int) -> Conv2d:
    """A convolution from ``c_in`` channels of random geometry (kernel 1-4 per axis, stride
    1-2, padding 0-2, dilation 1-2)."""
    c_out = groups * int(torch.randint(1, 3, (1,), generator=gen))
    k = [int(v) for v in torch.randint(1, 5, (2,), generator=gen)]
    stride = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=gen))
    pad = tuple(int(v) for v in torch.randint(0, 3, (2,), generator=gen))
    dil = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=gen))
    w = torch.randn(c_out, c_in // groups, *k, generator=gen, dtype=F64)
    return Conv2d(w, torch.randn(c_out, generator=gen, dtype=F64), stride, pad, dil, groups)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), groups=st.sampled_from((1, 2)), depth=st.integers(1, 3))
def test_conv_transpose_of_patches_equals_dense(seed: int, groups: int, depth: int) -> None:
    """Rows carried back through ``depth`` random convolutions as patches, made dense, equal
    the dense rows carried back by :meth:`Conv2d.transpose`; likewise a read of a tensor at
    the windows, the contraction with a bias map, and the sum of two rows' windows."""
    gen = torch.Generator().manual_seed(seed)
    size = [int(v) for v in torch.randint(8, 15, (2,), generator=gen)]
    shapes: list[tuple[int, int, int]] = [(2 * groups, size[0], size[1])]
    convs: list[Conv2d] = []
    for i in range(depth):
        conv = random_conv(gen, shapes[-1][0], groups if i == 0 else 1)
        try:
            out = conv.out_shape(shapes[-1])
        except InputError:
            break
        convs.append(conv)
        shapes.append(out)
    shapes.pop()
    top = convs[-1].out_shape(shapes[-1])
    p = random_rows(gen, top, 2, 5)
    p = p.with_values(p.values * torch.randn(p.values.shape, generator=gen, dtype=F64))
    d = p.to_dense()
    for conv, shape in zip(reversed(convs), reversed(shapes), strict=True):
        geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        p = p.conv_transpose(conv.weight, *geometry, shape)
        d = conv.transpose(d, shape)
        torch.testing.assert_close(p.to_dense(), d, rtol=0, atol=1e-12)
    t = torch.randn(2, 3, *shapes[0][1:], generator=gen, dtype=F64)
    read = p.gather(t)  # (N, U, 3, ph, pw)
    # The read, weighted by the values and summed, is the dense product with t.
    for ch in range(3):
        got = (read[:, :, ch : ch + 1] * p.values).flatten(2).sum(-1)
        want = (d * t[:, ch : ch + 1].unsqueeze(1)).flatten(2).sum(-1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    bias_map = torch.randn(shapes[0][0], 1, 1, generator=gen, dtype=F64).expand(shapes[0])
    torch.testing.assert_close(
        p.contract(bias_map), (d * bias_map).flatten(2).sum(-1), rtol=0, atol=1e-12
    )
    full = torch.randn(shapes[0], generator=gen, dtype=F64)
    torch.testing.assert_close(p.contract(full), (d * full).flatten(2).sum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.scale(full).to_dense(), d * full, rtol=0, atol=1e-12)
    # A second set of rows on the same entries, through fewer convolutions (a smaller
    # window): the sum on the union of the windows is the dense sum.
    q = Patches(
        torch.randn(*p.values.shape[:3], 1, 1, generator=gen, dtype=F64),
        p.row_y,
        p.row_x,
        p.stride,
        (0, 0),
        p.shape,
        p.grid,
    )
    q = q.with_values(q.values * q.mask())
    total = p.add(q)
    assert total is not None
    torch.testing.assert_close(total.to_dense(), d + q.to_dense(), rtol=0, atol=1e-12)


def test_identity_rows_are_one_hot() -> None:
    idx = torch.tensor([[0, 5, 23], [7, 7, 11]])
    p = Patches.identity(idx, (2, 3, 4), F64)
    d = p.to_dense().reshape(2, 3, -1)
    want = torch.zeros(2, 3, 24, dtype=F64).scatter_(2, idx.unsqueeze(-1), 1.0)
    assert torch.equal(d, want)


def _sets(center: torch.Tensor, gen: torch.Generator):
    yield LpBall.make(center, 0.05, "inf")
    yield LpBall.make(center, 0.3, "2", domain=(-0.2, 1.0))
    yield LpBall.make(center, 0.5, "1")
    r = (torch.rand(center.shape, generator=gen, dtype=F64) * 0.05).to(center.dtype)
    yield Box.make(center - r, center + r)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), f32=st.booleans())
def test_patches_bounds_equal_dense_bounds(seed: int, f32: bool) -> None:
    """CROWN, Fast-Lin and CROWN-general (leaky ReLU / tanh) bounds of random CNNs with
    residual blocks and batch norm: the same with patches as with dense coefficients."""
    ch = RandomChooser(random.Random(seed))
    acts = ch.pick((("relu",), ("relu", "leaky_relu"), ("tanh", "relu")))
    shape = (ch.integer(1, 3), ch.integer(6, 10), ch.integer(6, 10))
    graph = conv_graph(ch, shape, 3, seed=seed, layers=ch.integer(2, 4), acts=acts)
    dtype = torch.float32 if f32 else F64
    graph = graph.to(dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand(ch.integer(1, 2), *shape, generator=gen, dtype=F64)
    spec = torch.randn(center.shape[0], 2, 3, generator=gen, dtype=F64).to(dtype)
    methods = ("crown", "fastlin") if acts != ("tanh", "relu") else ("crown-general",)
    atol = 1e-9 if dtype == F64 else 2e-4
    for input_set in _sets(center.to(dtype), gen):
        for method in methods:
            fast = graph_bounds(graph, input_set, method, C=spec)
            slow = graph_bounds(graph, input_set, method, C=spec, patches=False)
            scale = 1.0 + float(torch.maximum(slow.lower.abs(), slow.upper.abs()).max())
            for a, b in ((fast.lower, slow.lower), (fast.upper, slow.upper)):
                torch.testing.assert_close(a, b, rtol=0, atol=atol * scale, msg=method)
            for name, (lo, up) in slow.intermediate.pre.items():
                f_lo, f_up = fast.intermediate.pre[name]
                sc = 1.0 + float(torch.maximum(lo.abs(), up.abs()).max())
                torch.testing.assert_close(f_lo, lo, rtol=0, atol=atol * sc, msg=name)
                torch.testing.assert_close(f_up, up, rtol=0, atol=atol * sc, msg=name)


def _record_windows(monkeypatch: pytest.MonkeyPatch, method: str) -> list:
    """The window of every Patches whose ``method`` is called from now on."""
    calls: list = []
    cls = importlib.import_module("nnbound.bounds.patches").Patches
    original = getattr(cls, method)

    def recorded(self, *args, **kwargs):
        calls.append(self.window)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, recorded)
    return calls


def test_resnet_passes_carry_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a ResNet's 12x12 feature maps the passes do go through convolutions as patches
    (the equality above is not only dense against dense), and the bounds still agree."""
    calls = _record_windows(monkeypatch, "conv_transpose")
    graph = resnet_graph((4, 6), 1, input_shape=(3, 12, 12), classes=4, seed=3)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=F64)
    ball = LpBall.make(x, 0.01, "inf")
    fast = graph_bounds(graph, ball, "crown")
    assert calls, "no pass carried patches"
    slow = graph_bounds(graph, ball, "crown", patches=False)
    torch.testing.assert_close(fast.lower, slow.lower, rtol=0, atol=1e-9)
    torch.testing.assert_close(fast.upper, slow.upper, rtol=0, atol=1e-9)


def _sliced_input_graph(seed: int):
    """A U-Net-like head: the image's first three channels through conv-relu-conv-relu, the
    last channel (a 1x1 conv of it) added; the input slices keep every row and column."""
    from graph_factory import GraphBuilder

    b = GraphBuilder((4, 9, 11), torch.Generator().manual_seed(seed))
    rgb = b.node("slice", ["input"], attrs={"starts": (0,), "ends": (3,), "axes": (0,)})
    mask = b.node("slice", ["input"], attrs={"starts": (3,), "ends": (4,), "axes": (0,)})
    x = b.act(b.conv(rgb, 6), "relu")
    x = b.act(b.conv(x, 5), "relu")
    x = b.node("add", [b.conv(x, 2, k=1), b.conv(mask, 2, k=1)])
    return b.graph(b.dense(b.act(x, "relu"), 3))


@pytest.mark.parametrize("seed", range(3))
def test_patches_through_input_slices_equal_dense(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channel slices of the input keep rows as patches down to the input, where each window
    is concretized alone (over a box, or over a ball and its domain's box): the same bounds as
    dense rows, for boxes and balls."""
    at_box = _record_windows(monkeypatch, "box_bounds")
    at_ball = _record_windows(monkeypatch, "ball_bounds")
    graph = _sliced_input_graph(seed)
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand(2, 4, 9, 11, generator=gen, dtype=F64)
    for input_set in _sets(center, gen):
        at_box.clear()
        at_ball.clear()
        fast = graph_bounds(graph, input_set, "crown")
        slow = graph_bounds(graph, input_set, "crown", patches=False)
        assert bool(at_ball) == isinstance(input_set, LpBall)
        assert bool(at_box) == (isinstance(input_set, Box) or input_set.domain is not None)
        torch.testing.assert_close(fast.lower, slow.lower, rtol=0, atol=1e-9)
        torch.testing.assert_close(fast.upper, slow.upper, rtol=0, atol=1e-9)
        for name, (lo, up) in slow.intermediate.pre.items():
            torch.testing.assert_close(fast.intermediate.pre[name][0], lo, rtol=0, atol=1e-9)
            torch.testing.assert_close(fast.intermediate.pre[name][1], up, rtol=0, atol=1e-9)


def test_row_elements_follow_the_receptive_field() -> None:
    """A patches row's largest tensor: its window grown through each 3x3 convolution (two
    of them reach 5x5 on the input's three sliced channels), the whole tensor past an
    operator without a patches rule."""
    from nnbound.bounds.patches_rules import row_elements

    graph = _sliced_input_graph(0)
    convs = [n.output for n in graph.nodes if n.op == "conv2d"]
    # Rows of the second conv's output: 6 x 3 x 3 on the first relu, 3 x 5 x 5 on the slice
    # and 4 x 5 x 5 on the input (channels padded back).
    assert row_elements(graph, convs[1]) == max(6 * 9, 4 * 25, 5)
    assert row_elements(graph, convs[0]) == 4 * 9
    flat = next(n.output for n in graph.nodes if n.op == "flatten")
    assert row_elements(graph, flat) == max(math.prod(graph.shapes[n]) for n in graph.shapes)
