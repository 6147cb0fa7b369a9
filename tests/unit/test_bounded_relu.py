"""The bounded ReLU ``min(max(z, 0), c)`` (the CLEVER reference's ``brelu``): hand-derived
lines, exhaustive soundness on a tiny net, Jacobian bounds, importers and exporters.

The random-network probes over every method and norm (hypothesis, PGD) include ``brelu`` via
``helpers.ALL_ACTIVATIONS``; the dense-grid line checks are in ``test_relaxations.py``.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import methods_for, random_network
from nnbound.bounds import bounds, layerwise_bounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.jacobian import jacobian_bounds
from nnbound.network.from_onnx import from_onnx
from nnbound.network.from_torch import from_torch, load_torchscript
from nnbound.network.layers import Activation, Dense
from nnbound.network.load import load_model, save_model
from nnbound.network.network import Network
from nnbound.network.to_onnx import save_onnx
from nnbound.network.to_torch import to_torch
from nnbound.relax import BoundedReluRelaxation, LowerSlope, relaxation_for
from nnbound.sets import LpBall

F64 = torch.float64


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def _lines(r: BoundedReluRelaxation, lo: float, up: float) -> tuple[float, ...]:
    lin = r.linear(_t(lo), _t(up))
    return tuple(
        float(t) for t in (lin.lower_slope, lin.lower_bias, lin.upper_slope, lin.upper_bias)
    )


# -- the IR activation ------------------------------------------------------------------------
def test_activation_default_cap_and_forward() -> None:
    assert Activation("brelu").alpha == 1.0  # the reference's K.relu(x, max_value=1)
    act = Activation("brelu", 0.5)
    z = _t(-2.0, 0.0, 0.25, 0.5, 3.0)
    assert torch.equal(act.forward(z), _t(0.0, 0.0, 0.25, 0.5, 0.5))
    with pytest.raises(InputError):
        Activation("brelu", -1.0)
    with pytest.raises(InputError):
        BoundedReluRelaxation(0.0)
    assert isinstance(relaxation_for(act), BoundedReluRelaxation)
    assert relaxation_for(act).kinks == (0.0, 0.5)


# -- hand-derived lines (cap 1) ------------------------------------------------------------------
@pytest.mark.parametrize("rule", list(LowerSlope), ids=lambda r: r.value)
@pytest.mark.parametrize(
    ("lo", "up", "exact"),
    [
        (-3.0, -1.0, (0.0, 0.0)),
        (1.5, 4.0, (0.0, 1.0)),
        (0.2, 0.7, (1.0, 0.0)),
        (0.0, 1.0, (1.0, 0.0)),
        (-1.0, 0.0, (0.0, 0.0)),
        (1.0, 2.0, (0.0, 1.0)),
    ],
)
def test_stable_intervals_are_exact(rule: LowerSlope, lo: float, up: float, exact) -> None:
    assert _lines(BoundedReluRelaxation(1.0, rule), lo, up) == (*exact, *exact)


def test_relu_kink_only_matches_relu_relaxation() -> None:
    """l < 0 < u <= c: the same lines as the ReLU's (the cap is not reached)."""
    from nnbound.relax import LeakyReluRelaxation

    for rule in LowerSlope:
        for lo, up in ((-2.0, 1.0), (-0.5, 1.0), (-1.0, 0.3), (-0.4, 0.4)):
            got = _lines(BoundedReluRelaxation(1.0, rule), lo, up)
            want = _lines(LeakyReluRelaxation(0.0, rule), lo, up)  # type: ignore[arg-type]
            assert got == pytest.approx(want, abs=1e-15), (rule, lo, up)


def test_cap_kink_only_hand_derived() -> None:
    """0 <= l < c < u: lower = chord (l, l)-(u, c); upper through (c, c), slope 1 or 0."""
    # [0.5, 3]: chord slope (1 - 0.5) / 2.5 = 0.2, bias 0.5 - 0.1 = 0.4; l + u = 3.5 > 2c -> 0
    assert _lines(BoundedReluRelaxation(1.0), 0.5, 3.0) == pytest.approx((0.2, 0.4, 0.0, 1.0))
    # [0, 1.5]: l + u = 1.5 <= 2 -> the identity above (slope 1 through (1, 1))
    assert _lines(BoundedReluRelaxation(1.0), 0.0, 1.5) == pytest.approx((1 / 1.5, 0.0, 1.0, 0.0))
    # tie l + u = 2c: adaptive takes slope 1, strict 0
    assert _lines(BoundedReluRelaxation(1.0), 0.5, 1.5)[2] == 1.0
    assert _lines(BoundedReluRelaxation(1.0, LowerSlope.ADAPTIVE_STRICT), 0.5, 1.5)[2] == 0.0
    # Fast-Lin: the upper line parallel to the chord, through (c, c)
    s, _, t, d = _lines(BoundedReluRelaxation(1.0, LowerSlope.PARALLEL), 0.5, 3.0)
    assert (s, t) == pytest.approx((0.2, 0.2)) and d == pytest.approx(0.8)


def test_both_kinks_hand_derived() -> None:
    """l < 0, u > c: lower s z with s in {0, c/u}; upper c + t (z - c), t in {0, c/(c-l)}."""
    c = 1.0
    # [-1, 4]: l + u = 3 >= 0 -> s = 1/4; l + u = 3 > 2 -> t = 0
    assert _lines(BoundedReluRelaxation(c), -1.0, 4.0) == pytest.approx((0.25, 0.0, 0.0, 1.0))
    # [-3, 1.5]: l + u < 0 -> s = 0; l + u < 2 -> t = 1/4, bias 3/4
    assert _lines(BoundedReluRelaxation(c), -3.0, 1.5) == pytest.approx((0.0, 0.0, 0.25, 0.75))
    # Fast-Lin: both slopes c / (u - l)
    s, b, t, d = _lines(BoundedReluRelaxation(c, LowerSlope.PARALLEL), -1.0, 4.0)
    assert (s, b, t, d) == pytest.approx((0.2, 0.0, 0.2, 0.8))
    assert _lines(BoundedReluRelaxation(c, LowerSlope.ZERO), -1.0, 4.0) == (0.0, 0.0, 0.0, 1.0)


def test_adaptive_choice_minimises_the_enclosed_area() -> None:
    """Among the admissible extremes, ADAPTIVE's line is the one closer to f on [l, u]
    (checked by quadrature on random intervals with both kinks)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = float(rng.uniform(0.2, 3))
        lo, up = -float(rng.uniform(0.01, 5)), c + float(rng.uniform(0.01, 5))
        z = np.linspace(lo, up, 4001)
        f = np.clip(z, 0, c)
        s, _, t, d = _lines(BoundedReluRelaxation(c), lo, up)
        for s_alt in (0.0, min(1.0, c / up)):
            assert np.trapezoid(f - s * z, z) <= np.trapezoid(f - s_alt * z, z) + 1e-9
        for t_alt in (0.0, c / (c - lo)):
            alt = c + t_alt * (z - c)
            assert np.trapezoid(t * z + d - f, z) <= np.trapezoid(alt - f, z) + 1e-9


def test_derivative_interval_cases() -> None:
    r = BoundedReluRelaxation(2.0)
    lo = _t(-3.0, 0.5, 2.5, -1.0, 1.0, 0.0, -1.0)
    up = _t(-1.0, 1.5, 4.0, 1.0, 3.0, 1.0, 0.0)
    dlo, dhi = r.derivative_interval(lo, up)
    assert dlo.tolist() == [0, 1, 0, 0, 0, 0, 0]
    # a closed kink inside the interval ([0, 1], [-1, 0]) allows either one-sided derivative
    assert dhi.tolist() == [0, 1, 0, 1, 1, 1, 1]


# -- exhaustive check on a tiny net ---------------------------------------------------------------
def test_tiny_net_bounds_contain_the_exact_range_on_a_fine_grid() -> None:
    """A 2-input net: every method's bounds contain min/max over a 601x601 grid of the box (the
    function is piecewise linear with Lipschitz constant L, so the grid's extremes are within
    L * h / 2 of the true ones), and CROWN-adaptive is not looser than IBP."""
    net = random_network("brelu", [2, 6, 5, 3], seed=3, weight_scale=2.0)
    x0 = _t(0.3, -0.2).reshape(1, 2)
    eps = 0.6
    ball = LpBall.make(x0, eps, math.inf)
    g = torch.linspace(-eps, eps, 601, dtype=F64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + x0
    with torch.no_grad():
        out = net(pts)
    lip = 1.0
    for layer in net.layers:
        if isinstance(layer, Dense):
            lip *= float(torch.linalg.matrix_norm(layer.weight, 2))
    slack = lip * float(g[1] - g[0])  # grid spacing * Lipschitz (L2 norm bounds the L_inf step)
    bounds = {m: layerwise_bounds(net, ball, m) for m in methods_for("brelu")}
    for m, b in bounds.items():
        assert bool((b.lower[0] <= out.min(0).values + 1e-12).all()), m
        assert bool((b.upper[0] >= out.max(0).values - 1e-12).all()), m
        # and not absurd: within a generous factor of the true range
        assert bool(
            (b.upper[0] - b.lower[0] <= 50 * (out.max(0).values - out.min(0).values + slack)).all()
        ), m
    ibp, crown = bounds["ibp"], bounds["crown-adaptive"]
    assert bool((crown.upper - crown.lower <= ibp.upper - ibp.lower + 1e-12).all())


def test_one_neuron_bounds() -> None:
    """f(x) = brelu(x) and -f(x) on [l, u]: every method contains the exact range
    [f(l), f(u)]; IBP is exact, and so is every method when [l, u] lies in one piece."""
    net = Network(
        (
            Dense(_t(1.0).reshape(1, 1), _t(0.0)),
            Activation("brelu", 1.0),
            Dense(_t(1.0, -1.0).reshape(2, 1), _t(0.0, 0.0)),
        ),
        (1,),
    )
    for lo, up in ((-1.0, 3.0), (-3.0, 0.5), (0.2, 0.8), (0.5, 2.0), (1.5, 2.0)):
        ball = LpBall.make(_t((lo + up) / 2).reshape(1, 1), (up - lo) / 2, math.inf)
        f_lo, f_up = min(max(lo, 0), 1), min(max(up, 0), 1)
        stable = up <= 0 or lo >= 1 or (lo >= 0 and up <= 1)
        for m in methods_for("brelu"):
            b = layerwise_bounds(net, ball, m)
            got = (
                float(b.lower[0, 0]),
                float(b.upper[0, 0]),
                float(b.lower[0, 1]),
                float(b.upper[0, 1]),
            )
            assert got[0] <= f_lo + 1e-12 and got[1] >= f_up - 1e-12, (m, lo, up)
            assert got[2] <= -f_up + 1e-12 and got[3] >= -f_lo - 1e-12, (m, lo, up)
            if m == "ibp" or stable:
                assert got == pytest.approx((f_lo, f_up, -f_up, -f_lo), abs=1e-12), (m, lo, up)


def test_jacobian_bounds_contain_sampled_gradients_and_fastlip_runs() -> None:
    net = random_network("brelu", [4, 7, 6, 3], seed=8, weight_scale=1.5)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, generator=gen, dtype=F64) * 0.5
    C = torch.randn(2, 3, generator=gen, dtype=F64)
    ball = LpBall.make(x0, 0.3, 2.0)
    pts = ball.sample(400, generator=gen).reshape(-1, 4).requires_grad_(True)
    grads = []
    for s in range(2):
        y = net(pts) @ C[s]
        grads.append(torch.autograd.grad(y.sum(), pts)[0].reshape(2, 400, 4))
    true = torch.stack(grads, 2)  # (N, M, S, 4)
    for method in ("fastlip", "recurjac"):
        jb = jacobian_bounds(net, ball, C, method, "crown-adaptive")
        assert bool((true >= jb.lower.unsqueeze(1) - 1e-10).all()), method
        assert bool((true <= jb.upper.unsqueeze(1) + 1e-10).all()), method


# -- importers and exporters ----------------------------------------------------------------------
def _brelu_net(cap: float = 0.5) -> Network:
    gen = torch.Generator().manual_seed(0)
    return Network(
        (
            Dense(
                torch.randn(5, 3, generator=gen, dtype=F64),
                torch.randn(5, generator=gen, dtype=F64),
            ),
            Activation("brelu", cap),
            Dense(torch.randn(2, 5, generator=gen, dtype=F64), torch.zeros(2, dtype=F64)),
        ),
        (3,),
        name="brelu-net",
    )


@pytest.mark.parametrize("opset", [10, 17])
def test_onnx_round_trip_is_clip(tmp_path: Path, opset: int) -> None:
    net = _brelu_net()
    path = save_onnx(net, tmp_path / "b.onnx", opset=opset)
    assert [n.op_type for n in onnx.load(path).graph.node] == ["Gemm", "Clip", "Gemm"]
    back = from_onnx(path)
    assert isinstance(back.layers[1], Activation) and back.layers[1].name == "brelu"
    assert back.layers[1].alpha == 0.5
    x = torch.randn(7, 3, dtype=F64) * 3
    assert torch.equal(back(x), net(x))
    # an independent runtime agrees (float32: onnxruntime's Clip-6 has no double kernel)
    import onnxruntime as ort

    net32 = net.to(dtype=torch.float32)
    path32 = save_onnx(net32, tmp_path / "b32.onnx", opset=opset)
    sess = ort.InferenceSession(str(path32), providers=["CPUExecutionProvider"])
    x32 = x.float()
    (y,) = sess.run(None, {"input": x32.numpy()})
    np.testing.assert_allclose(y, net32(x32).numpy(), rtol=1e-5, atol=1e-5)


def test_onnx_clip_with_negative_min_imports_as_a_graph(tmp_path: Path) -> None:
    # no chain activation is Clip(-1, 1); the graph importer writes it as -1 + brelu(x + 1, 2)
    from nnbound.network.graph import Graph

    node = helper.make_node("Clip", ["input"], ["out"], min=-1.0, max=1.0)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    net = from_onnx(model)
    assert isinstance(net, Graph)
    assert "brelu" in {n.op for n in net.nodes}
    x = torch.randn(7, 3) * 3
    torch.testing.assert_close(net(x), x.clamp(-1.0, 1.0))


def test_native_and_torch_round_trips(tmp_path: Path) -> None:
    net = _brelu_net(2.5)
    back = load_model(save_model(net, tmp_path / "b.safetensors"))
    assert back.layers[1].alpha == 2.5 and back.layers[1].name == "brelu"
    module = to_torch(net)
    assert isinstance(module[1], nn.Hardtanh)
    again = from_torch(module, (3,))
    x = torch.randn(9, 3, dtype=F64) * 3
    for other in (back, again):
        assert torch.equal(other(x), net(x))


class _Clamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 4)
        self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.a(x), 0.0, 2.0)
        x = self.b(x).clamp(min=0, max=1)
        x = F.hardtanh(self.c(x), 0.0, 3.0)
        x = F.relu6(x)
        return self.d(torch.clamp(x, min=0.0))


def test_from_torch_reads_relu6_hardtanh_and_clamps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 4), nn.Hardtanh(0.0, 0.5), nn.Linear(4, 2)
    ).double()
    net = from_torch(seq, (3,))
    acts = [(a.name, a.alpha) for a in net.activations]
    assert acts == [("brelu", 6.0), ("brelu", 0.5)]
    fx_net = from_torch(_Clamps().double(), (3,))
    assert [(a.name, a.alpha) for a in fx_net.activations] == [
        ("brelu", 2.0),
        ("brelu", 1.0),
        ("brelu", 3.0),
        ("brelu", 6.0),
        ("relu", 0.0),
    ]
    # TorchScript graphs carry aten::clamp / aten::hardtanh
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        torch.jit.save(torch.jit.script(_Clamps().double()), path)
    ts = load_torchscript(path, (3,))
    assert [a.name for a in ts.activations] == ["brelu"] * 4 + ["relu"]
    with pytest.raises(UnsupportedError, match="bounded ReLU"):
        from_torch(nn.Sequential(nn.Linear(3, 3), nn.Hardtanh()), (3,))


def test_spectral_and_quad_and_alpha_crown() -> None:
    """Spectral uses the bounded ReLU's Lipschitz constant 1 and alpha-CROWN optimises its two
    kink slopes (both sound against samples, alpha-CROWN never looser than CROWN); quad
    (ReLU-only) refuses it with a clear error."""
    net = _brelu_net()
    gen = torch.Generator().manual_seed(0)
    ball = LpBall.make(torch.randn(2, 3, generator=gen, dtype=F64), 0.4, 2.0)
    with torch.no_grad():
        out = net(ball.sample(500, generator=gen).reshape(-1, 3)).reshape(2, 500, 2)
    for m in ("spectral", "alpha-crown"):
        b = bounds(net, ball, method=m)
        assert bool((b.lower.unsqueeze(1) <= out + 1e-12).all())
        assert bool((b.upper.unsqueeze(1) >= out - 1e-12).all())
    crown = bounds(net, ball, method="crown")
    assert bool((b.lower >= crown.lower).all() and (b.upper <= crown.upper).all())
    with pytest.raises(UnsupportedError):
        bounds(net, ball, method="quad")
