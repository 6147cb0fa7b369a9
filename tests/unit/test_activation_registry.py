"""One activation = one operator in :mod:`nnbound.ops`: everything else asks the registry.

A toy activation (softsign, ``x / (1 + |x|)``, with the crudest sound relaxation: the constant
lines ``f(l) <= f(z) <= f(u)`` of an increasing function) is registered for the duration of a
test only, and then works in the chain IR, CROWN-general / IBP (sound by sampling, vertices
and PGD), the graph engine, the Jacobian bounds, the spectral bound, the ONNX / torch /
native round trips -- none of which names it. GELU (``ops/gelu.py``) goes through the chain
importers and exporters the same way when it is registered. ELU scales outside ``[0, 1]``
are refused by every bound path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import pgd_extremes, random_network
from nnbound.bounds.api import bounds
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.bounds.spectral import activation_lipschitz
from nnbound.errors import UnsupportedError
from nnbound.jacobian.api import jacobian_bounds
from nnbound.network import layers
from nnbound.network.chain_graph import graph_to_network, network_to_graph
from nnbound.network.from_onnx import from_onnx
from nnbound.network.from_torch import from_torch
from nnbound.network.layers import Activation, Dense
from nnbound.network.native import load_network, save_network
from nnbound.network.network import Network, layer_summary
from nnbound.network.to_onnx import save_onnx
from nnbound.network.to_torch import activation_of_module, to_torch
from nnbound.ops import registry
from nnbound.ops.activation import ActivationOp, activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.base import LinearRelaxation
from nnbound.relax.registry import relaxation_for
from nnbound.sets.lp_ball import LpBall

TOY = "toy_softsign"
TOL = 1e-5


@dataclass(frozen=True)
class SoftsignRelaxation:
    """Softsign is increasing: constant lines at ``f(l)`` and ``f(u)`` sandwich it on
    ``[l, u]``; its derivative ``1 / (1 + |z|)^2`` is largest nearest 0."""

    @property
    def is_piecewise_linear(self) -> bool:
        return False

    @property
    def kinks(self) -> tuple[float, ...]:
        return ()

    def linear(self, lower: Tensor, upper: Tensor) -> LinearRelaxation:
        zero = torch.zeros_like(lower)
        return LinearRelaxation(zero, F.softsign(lower), zero, F.softsign(upper))

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return F.softsign(lower), F.softsign(upper)

    def derivative_interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        far = torch.maximum(lower.abs(), upper.abs())
        across = (lower <= 0) & (upper >= 0)
        near = torch.where(across, torch.zeros_like(lower), torch.minimum(lower.abs(), upper.abs()))
        return 1 / (1 + far) ** 2, 1 / (1 + near) ** 2


TOY_OP = activation_op(
    TOY,
    lambda alpha: F.softsign,
    lambda alpha, options: SoftsignRelaxation(),
    Traits(monotone=True, lipschitz=1.0, smooth=True),
    Names(onnx=("Softsign",), torch=("Softsign", "softsign"), keras=("softsign",)),
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> ActivationOp:
    """The toy activation, registered for this test only."""
    monkeypatch.setitem(registry.OPS, TOY, TOY_OP)
    for index, names in (
        (registry._ONNX, TOY_OP.names.onnx),
        (registry._TORCH, TOY_OP.names.torch),
        (registry._KERAS, TOY_OP.names.keras),
    ):
        for name in names:
            monkeypatch.setitem(index, name, [TOY_OP])
    return TOY_OP


def _key(act: object) -> tuple[str, float] | None:
    """``(name, alpha)`` of an activation record (records compare by identity)."""
    return None if act is None else (act.name, act.alpha)  # type: ignore[attr-defined]


def _toy_net(dtype: torch.dtype, seed: int = 0) -> Network:
    return random_network(TOY, [4, 7, 6, 3], seed=seed, dtype=dtype, weight_scale=2.0)


def _ball(net: Network, p: float, eps: float, seed: int = 0) -> LpBall:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *net.input_shape, generator=gen, dtype=torch.float64).to(net.dtype)
    return LpBall.make(x, eps, p)


def _assert_inside(net: Network, ball: LpBall, lower: Tensor, upper: Tensor) -> None:
    """Every sampled point, vertex and PGD extreme of ``net`` over ``ball`` lies in the bounds
    (``lower`` / ``upper`` ``(N, outputs)``), up to float32-sized rounding."""
    gen = torch.Generator().manual_seed(1)
    pts = torch.cat([ball.sample(200, generator=gen), ball.vertices(64, generator=gen)], 1)
    n, m = pts.shape[:2]
    with torch.no_grad():
        vals = net(pts.reshape(n * m, *net.input_shape)).reshape(n, m, -1)
    mins, maxs = pgd_extremes(net, ball, steps=25, restarts=2, pool=64)
    scale = 1 + torch.maximum(lower.abs(), upper.abs())
    slack = TOL * scale
    assert bool((vals >= (lower - slack).unsqueeze(1)).all())
    assert bool((vals <= (upper + slack).unsqueeze(1)).all())
    assert bool((mins >= lower - slack).all()) and bool((maxs <= upper + slack).all())


# -- the chain IR ----------------------------------------------------------------------------
def test_toy_is_a_chain_activation(toy: ActivationOp) -> None:
    assert TOY in layers.ACTIVATIONS
    act = Activation(TOY)
    x = torch.linspace(-5, 5, 11)
    assert torch.equal(act.forward(x), F.softsign(x))
    assert act.op is toy
    assert isinstance(relaxation_for(act), SoftsignRelaxation)
    assert layer_summary(act) == f"Activation({TOY})"
    assert activation_lipschitz(act) == 1.0


def test_unknown_activation_lists_the_registry(toy: ActivationOp) -> None:
    with pytest.raises(UnsupportedError, match=rf"unsupported activation 'nope'.*{TOY}"):
        Activation("nope")


def test_without_registration_it_is_unknown() -> None:
    assert TOY not in layers.ACTIVATIONS
    with pytest.raises(UnsupportedError, match="unsupported activation"):
        Activation(TOY)


# -- bounds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [math.inf, 2.0])
@pytest.mark.parametrize("method", ["ibp", "crown-general", "spectral"])
def test_toy_bounds_are_sound(toy: ActivationOp, dtype: torch.dtype, p: float, method: str) -> None:
    net = _toy_net(dtype)
    ball = _ball(net, p, 0.4 if p == math.inf else 0.7)
    b = bounds(net, ball, method)
    assert bool((b.lower <= b.upper).all())
    _assert_inside(net, ball, b.lower, b.upper)
    if method == "crown-general":
        # never looser than interval arithmetic (the toy's constant lines make them equal in
        # real arithmetic: "tighter somewhere" held only by float32 rounding noise, which the
        # outward-rounded float32 bounds no longer have)
        ibp = bounds(net, ball, "ibp")
        assert bool((b.upper - b.lower <= ibp.upper - ibp.lower + 1e-5).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_toy_graph_engine_bounds_are_sound(toy: ActivationOp, dtype: torch.dtype) -> None:
    net = _toy_net(dtype, seed=3)
    graph = network_to_graph(net)
    assert graph_to_network(graph) is not None  # the graph is a chain of chain layers
    ball = _ball(net, math.inf, 0.3, seed=3)
    for method in ("ibp", "crown-general"):
        b = graph_bounds(graph, ball, method)
        _assert_inside(net, ball, b.lower, b.upper)


def test_toy_refused_by_relu_only_methods(toy: ActivationOp) -> None:
    net = _toy_net(torch.float64)
    with pytest.raises(UnsupportedError, match=r"ReLU networks; this network has toy_softsign"):
        bounds(net, _ball(net, math.inf, 0.1), "fastlin")


def test_toy_jacobian_bounds_hold_at_samples(toy: ActivationOp) -> None:
    net = _toy_net(torch.float64, seed=5)
    ball = _ball(net, math.inf, 0.3, seed=5)
    jb = jacobian_bounds(net, ball, method="recurjac")
    gen = torch.Generator().manual_seed(5)
    pts = torch.cat([ball.sample(64, generator=gen), ball.vertices(16, generator=gen)], 1)
    jac = torch.func.vmap(torch.func.vmap(torch.func.jacrev(lambda v: net(v[None])[0])))(pts)
    lo, up = jb.lower.unsqueeze(1), jb.upper.unsqueeze(1)
    assert bool((jac >= lo - 1e-9).all()) and bool((jac <= up + 1e-9).all())
    assert not bool(jb.global_bound.any())  # no derivative_range: a local bound


# -- import / export ------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [9, 17])
def test_toy_onnx_round_trip(toy: ActivationOp, tmp_path: Path, opset: int) -> None:
    import onnx
    import onnxruntime as ort

    net = _toy_net(torch.float32)
    path = save_onnx(net, tmp_path / "toy.onnx", opset=opset)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Softsign") == 2
    back = from_onnx(path)
    assert [a.name for a in back.activations] == [TOY, TOY]
    x = torch.randn(5, 4)
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_toy_torch_and_native_round_trips(toy: ActivationOp, tmp_path: Path) -> None:
    net = _toy_net(torch.float64)
    module = to_torch(net)
    assert isinstance(module[1], nn.Softsign)  # the torch.nn class its names give
    assert _key(activation_of_module(module[1])) == _key(Activation(TOY))
    back = from_torch(module, (4,))
    assert [a.name for a in back.activations] == [TOY, TOY]
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    save_network(net, tmp_path / "toy.safetensors")
    loaded = load_network(tmp_path / "toy.safetensors")
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_toy_torch_functional_call_is_imported(toy: ActivationOp) -> None:
    class Fc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc2(F.softsign(self.fc1(x)))

    model = Fc()
    net = from_torch(model, (4,))
    assert [a.name for a in net.activations] == [TOY]
    x = torch.randn(3, 4)
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)


def test_keras_activation_names_come_from_the_registry(toy: ActivationOp) -> None:
    from nnbound.network.from_keras_h5 import _activation

    assert _key(_activation("softsign", "here")) == _key(Activation(TOY))
    assert _key(_activation("bounded_relu", "here")) == _key(Activation("brelu", 1.0))
    assert _key(_activation("elu", "here")) == _key(Activation("elu", 1.0))
    assert _activation("linear", "here") is None
    # Keras's leaky_relu function has its own default slope: not guessed
    with pytest.raises(UnsupportedError, match="unsupported Keras activation 'leaky_relu'"):
        _activation("leaky_relu", "here")


def test_torch_module_settings_that_change_the_function_are_refused() -> None:
    assert _key(activation_of_module(nn.ReLU6())) == _key(Activation("brelu", 6.0))
    assert _key(activation_of_module(nn.LeakyReLU(0.2))) == _key(Activation("leaky_relu", 0.2))
    assert activation_of_module(nn.Linear(2, 2)) is None
    with pytest.raises(UnsupportedError, match="min_val=-1"):
        activation_of_module(nn.Hardtanh())
    with pytest.raises(UnsupportedError, match="beta=2"):
        activation_of_module(nn.Softplus(beta=2.0))
    with pytest.raises(UnsupportedError, match="alpha=0"):
        activation_of_module(nn.ELU(alpha=0.0))  # ELU(0) is ReLU; the IR reads 0 as 1
    model = nn.Sequential(nn.Linear(3, 4), nn.ELU(alpha=0.0), nn.Linear(4, 2))
    net = from_torch(model, (3,))  # the importer's own ELU rule: ReLU, not ELU(1)
    assert [_key(a) for a in net.activations] == [("relu", 0.0)]
    x = torch.randn(6, 3)
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)


def test_every_registered_activation_exports_and_imports(tmp_path: Path) -> None:
    """Every activation of the registry through ONNX (at an opset that has its operator) and
    torch, with the parameter kept."""
    import onnx

    for name in layers.activation_names():
        op = layers.activation_operator(name)
        alpha = {"leaky_relu": 0.2, "elu": 0.7, "brelu": 2.5}.get(name, 0.0)
        gen = torch.Generator().manual_seed(0)
        net = Network(
            (
                Dense(torch.randn(5, 3, generator=gen), torch.randn(5, generator=gen)),
                Activation(name, alpha),
                Dense(torch.randn(2, 5, generator=gen), torch.randn(2, generator=gen)),
            ),
            (3,),
        )
        x = torch.randn(7, 3, generator=gen) * 3
        module = to_torch(net)
        assert _key(activation_of_module(module[1])) == _key(net.layers[1])
        torch.testing.assert_close(from_torch(module, (3,))(x), net(x), rtol=0, atol=0)
        opset = max(17, onnx.defs.get_schema(op.onnx_node(alpha, 17).op_type).since_version)
        back = from_onnx(save_onnx(net, tmp_path / f"{name}.onnx", opset=opset))
        assert back.activations == [] or back.activations[0].name in (name, "relu")
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)


# -- ELU scales without a convex relaxation -------------------------------------------------
@pytest.mark.parametrize("alpha", [-0.5, 1.5])
def test_elu_outside_unit_scale_is_refused_by_every_bound_path(alpha: float) -> None:
    net = random_network("elu", [3, 5, 2], alpha=alpha)
    assert _key(net.layers[1]) == ("elu", alpha)  # held and evaluated ...
    assert bool(torch.isfinite(net(torch.randn(4, 3, dtype=torch.float64))).all())
    ball = _ball(net, math.inf, 0.1)
    pattern = rf"ELU with alpha={alpha} is not convex"
    with pytest.raises(UnsupportedError, match=pattern):
        relaxation_for(net.layers[1])
    for method in ("ibp", "crown-general"):  # ... but never relaxed
        with pytest.raises(UnsupportedError, match=pattern):
            bounds(net, ball, method)
        with pytest.raises(UnsupportedError, match=pattern):
            graph_bounds(network_to_graph(net), ball, method)
    with pytest.raises(UnsupportedError, match=pattern):
        jacobian_bounds(net, ball, method="recurjac")


# -- GELU (ops/gelu.py) ---------------------------------------------------------------------
needs_gelu = pytest.mark.skipif(
    "gelu" not in registry.OPS, reason="GELU is not registered (no nnbound/ops/gelu.py)"
)


@needs_gelu
def test_gelu_through_the_chain_importers_and_exporters(tmp_path: Path) -> None:
    import onnx

    net = random_network("gelu", [4, 6, 3], dtype=torch.float32)
    x = torch.randn(5, 4)
    assert _key(net.layers[1]) == ("gelu", 0.0)
    torch.testing.assert_close(net(x), to_torch(net)(x), rtol=0, atol=0)
    back = from_torch(to_torch(net), (4,))
    assert [a.name for a in back.activations] == ["gelu"]
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    op_type = layers.activation_operator("gelu").onnx_node(0.0, 20).op_type
    opset = max(17, onnx.defs.get_schema(op_type).since_version)
    back = from_onnx(save_onnx(net, tmp_path / "gelu.onnx", opset=opset))
    assert [a.name for a in back.activations] == ["gelu"]
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    save_network(net, tmp_path / "gelu.safetensors")
    torch.testing.assert_close(load_network(tmp_path / "gelu.safetensors")(x), net(x))
    from nnbound.network.from_keras_h5 import _activation

    assert _key(_activation("gelu", "here")) == ("gelu", 0.0)
    ball = _ball(net, math.inf, 0.3)
    for method in ("ibp", "crown-general", "spectral"):
        b = bounds(net, ball, method)
        _assert_inside(net, ball, b.lower, b.upper)
    net64 = net.to(dtype=torch.float64)
    ball64 = _ball(net64, math.inf, 0.3)
    jb = jacobian_bounds(net64, ball64, method="recurjac")
    pts = ball64.sample(64, generator=torch.Generator().manual_seed(2))
    jac = torch.func.vmap(torch.func.vmap(torch.func.jacrev(lambda v: net64(v[None])[0])))(pts)
    lo, up = jb.lower.unsqueeze(1), jb.upper.unsqueeze(1)
    assert bool((jac >= lo - 1e-9).all()) and bool((jac <= up + 1e-9).all())


# -- a GELU-like operator: settings at the framework's default are accepted, others refused --
TOY_GELU = activation_op(
    "toy_gelu",
    lambda alpha: F.gelu,
    lambda alpha, options: SoftsignRelaxation(),  # never used here: import / export only
    Traits(smooth=True),
    # no settings declared: the frameworks' defaults (approximate="none") are what it computes
    Names(onnx=("Gelu",), torch=("GELU", "gelu"), keras=("gelu",)),
)


@pytest.fixture
def toy_gelu(monkeypatch: pytest.MonkeyPatch) -> ActivationOp:
    """The toy GELU, registered for this test only in place of the real one (if any)."""
    monkeypatch.delitem(registry.OPS, "gelu", raising=False)
    monkeypatch.setitem(registry.OPS, TOY_GELU.name, TOY_GELU)
    for index, names in (
        (registry._ONNX, TOY_GELU.names.onnx),
        (registry._TORCH, TOY_GELU.names.torch),
        (registry._KERAS, TOY_GELU.names.keras),
    ):
        for name in names:
            monkeypatch.setitem(index, name, [TOY_GELU])
    return TOY_GELU


def test_settings_are_read_from_every_framework(toy_gelu: ActivationOp, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    assert _key(activation_of_module(nn.GELU())) == ("toy_gelu", 0.0)
    with pytest.raises(UnsupportedError, match="approximate='tanh'"):
        activation_of_module(nn.GELU(approximate="tanh"))

    class Fc(nn.Module):
        def __init__(self, approximate: str) -> None:
            super().__init__()
            self.fc, self.approximate = nn.Linear(3, 2), approximate

        def forward(self, x: Tensor) -> Tensor:
            return F.gelu(self.fc(x), approximate=self.approximate)

    x = torch.randn(4, 3)
    model = Fc("none")
    torch.testing.assert_close(from_torch(model, (3,))(x), model(x), rtol=0, atol=0)
    with pytest.raises(UnsupportedError, match="approximate='tanh'"):
        from_torch(Fc("tanh"), (3,))
    # ONNX: an explicit default attribute is accepted, another value refused
    for approximate, ok in (("none", True), ("tanh", False)):
        graph = helper.make_graph(
            [helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        )
        model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        onnx.save_model(model_proto, str(tmp_path / "g.onnx"))
        if ok:
            assert [a.name for a in from_onnx(tmp_path / "g.onnx").activations] == ["toy_gelu"]
        else:
            with pytest.raises(UnsupportedError, match="approximate='tanh'"):
                from_onnx(tmp_path / "g.onnx")
    # export: the operator exists from opset 20 on; older opsets are refused by name
    net = Network(
        (Dense(torch.randn(4, 3), torch.randn(4)), Activation("toy_gelu")),
        (3,),
    )
    with pytest.raises(UnsupportedError, match=r"layer 1 \(toy_gelu\) to ONNX opset 17.*Gelu"):
        save_onnx(net, tmp_path / "old.onnx", opset=17)
    back = from_onnx(save_onnx(net, tmp_path / "new.onnx", opset=20))
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
