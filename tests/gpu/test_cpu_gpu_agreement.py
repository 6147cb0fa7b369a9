"""Every method and task gives the CPU's results on the accelerator, and gives them back there.

Each test computes a result on the CPU (float64 unless noted), then the same with the network
and inputs moved to ``dev`` (see ``gpu_cases``): deterministic results must agree to rounding
(float64: rtol 1e-9, atol 1e-10), search radii to the search's own tolerance, tensors must
come back on ``dev`` (no silent CPU fallback). Random parts (CLEVER's samples, random attack
starts: torch's CUDA generator draws other numbers than the CPU's from the same seed) are
compared where they are deterministic, and otherwise checked for validity and statistically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gpu_cases import (
    ATOL32,
    ATOL64,
    EPS,
    NORM_IDS,
    NORMS,
    RTOL32,
    RTOL64,
    SEARCH_TOL,
    agree,
    inputs,
    labels,
    network,
    on_device,
)
from torch import Tensor

from nnbound.attacks import EAD, PGD, CarliniWagnerL2, MinimalPGD, adversarial_margin
from nnbound.bounds.api import bounds
from nnbound.bounds.methods import ALIASES, ALL_METHODS
from nnbound.clever.estimator import Clever, gradient_norms
from nnbound.clever.sampling import NORM_KEYS
from nnbound.jacobian.api import JACOBIAN_METHODS, jacobian_bounds
from nnbound.jacobian.lipschitz import lipschitz_from_jacobian, local_lipschitz
from nnbound.network.load import load_model
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.spec import all_margins_spec, margin_spec
from nnbound.tasks.batch_bounds import chunked_bounds
from nnbound.tasks.jacobian_radius import jacobian_certified_radius
from nnbound.tasks.landscape import landscape
from nnbound.tasks.lipschitz import eps_grid, lipschitz_curve
from nnbound.tasks.radius import certified_radius
from nnbound.verify.verifier import verify_files
from nnbound.verify.vnnlib import read_vnnlib

DATA = Path(__file__).resolve().parents[1] / "data"
F64 = torch.float64
UNTARGETED = -1

BOUND_CASES = {
    "mlp-relu": (
        "ibp",
        "fastlin",
        "fastlin-interval",
        "crown-adaptive",
        "crown-interval",
        "crown-general",
        "spectral",
        "alpha-crown",
    ),
    "mlp1-relu": ("quad",),  # one hidden ReLU layer only
    "mlp-tanh": ("ibp", "crown-general", "spectral", "alpha-crown"),
    "mlp-sigmoid": ("crown-general", "alpha-crown"),
    "cnn-relu": ("ibp", "fastlin", "crown-adaptive", "crown-general", "spectral", "alpha-crown"),
    "cnn-tanh": ("crown-general",),
    "resnet": ("ibp", "crown", "crown-general", "alpha-crown"),
    "graph-tanh": ("ibp", "crown-general"),  # alpha-crown: 9 s here, resnet covers graphs
}
# (network, method, direction, shift)
JACOBIAN_CASES = [
    ("mlp-relu", "fastlip", -1, 0),
    ("mlp-relu", "recurjac", -1, 0),
    ("mlp-relu", "recurjac", 1, 0),
    ("mlp-relu", "recurjac", 1, 1),
    ("mlp-relu", "crown-jacobian", -1, 0),
    ("mlp-tanh", "recurjac", -1, 0),
    ("mlp-tanh", "crown-jacobian", -1, 0),
    ("cnn-relu", "fastlip", -1, 0),
    ("cnn-relu", "recurjac", -1, 0),
    ("cnn-tanh", "crown-jacobian", -1, 0),
    ("graph-residual", "crown-jacobian", -1, 0),
]
# alpha-CROWN optimises its slopes by gradient steps: rounding differences may move them a bit.
ALPHA_TOL = {"rtol": 1e-6, "atol": 1e-8}


def spec(name: str, x: Tensor, p: float) -> Tensor | None:
    """Linf: the logits; L2: one random spec shared by all inputs; L1: per-input margins."""
    if p == math.inf:
        return None
    if p == 2.0:
        return torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    return all_margins_spec(labels(name, x), 4, F64)


def to(t: Tensor | None, dev: torch.device) -> Tensor | None:
    return None if t is None else t.to(dev)


def test_every_method_is_covered() -> None:
    bound_methods = {m for methods in BOUND_CASES.values() for m in methods}
    assert set(ALL_METHODS) - set(ALIASES) <= bound_methods
    assert set(JACOBIAN_METHODS) == {case[1] for case in JACOBIAN_CASES}


@pytest.mark.parametrize("p", NORMS, ids=NORM_IDS)
@pytest.mark.parametrize(
    ("name", "method"), [(n, m) for n, methods in BOUND_CASES.items() for m in methods]
)
def test_bounds_agree(dev: torch.device, name: str, method: str, p: float) -> None:
    net, x = network(name), inputs(name)
    C = spec(name, x, p)
    want = bounds(net, LpBall.make(x, EPS[p], p), method, C)
    got = bounds(net.to(device=dev), LpBall.make(x.to(dev), EPS[p], p), method, to(C, dev))
    tol = ALPHA_TOL if method == "alpha-crown" else {"rtol": RTOL64, "atol": ATOL64}
    agree(got.lower, want.lower, dev, what=f"{name} {method} lower", **tol)
    agree(got.upper, want.upper, dev, what=f"{name} {method} upper", **tol)
    assert set(got.intermediate.pre) == set(want.intermediate.pre)
    for key, (lo, up) in want.intermediate.pre.items():
        agree(got.intermediate.pre[key][0], lo, dev, what=f"pre {key} lower", **tol)
        agree(got.intermediate.pre[key][1], up, dev, what=f"pre {key} upper", **tol)


@pytest.mark.parametrize(
    ("name", "method", "outward"),
    [
        ("mlp-relu", "crown", True),
        ("mlp-relu", "crown", False),  # float32 arithmetic on the device itself
        ("mlp-tanh", "crown-general", False),
        ("cnn-relu", "crown-general", True),
        ("resnet", "crown", True),
    ],
)
def test_float32_bounds_agree(dev: torch.device, name: str, method: str, outward: bool) -> None:
    net32, x32 = network(name).to(dtype=torch.float32), inputs(name).float()
    want = bounds(net32, LpBall.make(x32, 0.05), method, outward=outward)
    got = bounds(net32.to(device=dev), LpBall.make(x32.to(dev), 0.05), method, outward=outward)
    agree(got.lower, want.lower, dev, rtol=RTOL32, atol=ATOL32, what="float32 lower")
    agree(got.upper, want.upper, dev, rtol=RTOL32, atol=ATOL32, what="float32 upper")
    if outward:  # rounded outward from float64: they hold for the float32 net's real function
        exact = bounds(net32.to(dtype=F64), LpBall.make(x32.double(), 0.05), method)
        assert bool((got.lower.cpu().double() <= exact.lower + 1e-12).all())
        assert bool((got.upper.cpu().double() >= exact.upper - 1e-12).all())


@pytest.mark.parametrize("name", ["mlp-relu", "resnet"])
def test_box_bounds_agree(dev: torch.device, name: str) -> None:
    net, x = network(name), inputs(name)
    want = bounds(net, Box.make(x - 0.03, x + 0.02), "crown")
    got = bounds(net.to(device=dev), Box.make(x.to(dev) - 0.03, x.to(dev) + 0.02), "crown")
    agree(got.lower, want.lower, dev, what="box lower")
    agree(got.upper, want.upper, dev, what="box upper")


def test_chunked_bounds_agree(dev: torch.device) -> None:
    net, x = network("cnn-relu"), inputs("cnn-relu", batch=5)
    C = all_margins_spec(labels("cnn-relu", x), 4, F64)
    kw = {"rows_per_chunk": 2, "keep_intermediate": True}
    want = chunked_bounds(net, LpBall.make(x, 0.05), "crown", C, **kw)
    got = chunked_bounds(net.to(device=dev), LpBall.make(x.to(dev), 0.05), "crown", C.to(dev), **kw)
    agree(got.lower, want.lower, dev, what="chunked lower")
    agree(got.upper, want.upper, dev, what="chunked upper")
    for key, (lo, up) in want.intermediate.pre.items():
        agree(got.intermediate.pre[key][0], lo, dev, what=f"chunked pre {key}")
        agree(got.intermediate.pre[key][1], up, dev, what=f"chunked pre {key}")


@pytest.mark.parametrize("p", NORMS, ids=NORM_IDS)
@pytest.mark.parametrize(("name", "method", "direction", "shift"), JACOBIAN_CASES)
def test_jacobian_bounds_agree(
    dev: torch.device, name: str, method: str, direction: int, shift: int, p: float
) -> None:
    net, x = network(name), inputs(name)
    C = spec(name, x, p)
    kw = {"method": method, "direction": direction, "shift": shift}
    want = jacobian_bounds(net, LpBall.make(x, EPS[p], p), C, **kw)
    got = jacobian_bounds(net.to(device=dev), LpBall.make(x.to(dev), EPS[p], p), to(C, dev), **kw)
    agree(got.lower, want.lower, dev, what=f"{method} jacobian lower")
    agree(got.upper, want.upper, dev, what=f"{method} jacobian upper")
    assert on_device(got.global_bound, dev)
    assert torch.equal(got.global_bound.cpu(), want.global_bound)
    lip = lipschitz_from_jacobian(got, p)
    agree(lip, lipschitz_from_jacobian(want, p), dev, what="lipschitz")


def _classes(name: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """Labels, and targets mixing untargeted and targeted rows."""
    y = labels(name, x)
    t = (y + 1) % 4
    t[0] = UNTARGETED
    return y, t


RADIUS_CASES = [
    *[("mlp-relu", "crown", p) for p in NORMS],
    *[("mlp-relu", m, math.inf) for m in ("ibp", "fastlin", "crown-general", "alpha-crown")],
    ("mlp-tanh", "spectral", 2.0),
    ("cnn-relu", "crown", 2.0),
    ("resnet", "crown", math.inf),
    ("graph-tanh", "crown-general", 1.0),
]


@pytest.mark.parametrize(("name", "method", "p"), RADIUS_CASES)
def test_certified_radius_agrees(dev: torch.device, name: str, method: str, p: float) -> None:
    net, x = network(name), inputs(name, batch=3)
    y, t = _classes(name, x)
    want = certified_radius(net, x, y, t, norm=p, method=method)
    got = certified_radius(
        net.to(device=dev), x.to(dev), y.to(dev), t.to(dev), norm=p, method=method
    )
    assert bool((want > 0).all()), "a radius of 0 would compare nothing"
    torch.testing.assert_close(got.cpu(), want, rtol=RTOL64, atol=SEARCH_TOL)


def test_float32_radius_agrees(dev: torch.device) -> None:
    """float32 search on the device, re-certified in float64 (on the device too)."""
    net32, x32 = network("mlp-relu").to(dtype=torch.float32), inputs("mlp-relu", 3).float()
    y, t = _classes("mlp-relu", inputs("mlp-relu", 3))
    want = certified_radius(net32, x32, y, t, method="crown")
    got = certified_radius(net32.to(device=dev), x32.to(dev), y.to(dev), t.to(dev), method="crown")
    torch.testing.assert_close(got.cpu(), want, rtol=RTOL32, atol=SEARCH_TOL)


@pytest.mark.parametrize(
    ("name", "method", "p"),
    [
        ("mlp-relu", "recurjac", math.inf),
        ("mlp-relu", "fastlip", 2.0),
        ("cnn-relu", "recurjac", 1.0),
    ],
)
def test_jacobian_radius_agrees(dev: torch.device, name: str, method: str, p: float) -> None:
    net, x = network(name), inputs(name, batch=3)
    y, t = _classes(name, x)
    kw = {"norm": p, "method": method, "lipsteps": 5}
    want = jacobian_certified_radius(net, x, y, t, **kw)
    got = jacobian_certified_radius(net.to(device=dev), x.to(dev), y.to(dev), t.to(dev), **kw)
    assert bool((want > 0).all())
    torch.testing.assert_close(got.cpu(), want, rtol=RTOL64, atol=SEARCH_TOL)


@pytest.mark.parametrize(
    ("name", "method", "p"),
    [
        ("mlp-tanh", "recurjac", 2.0),
        ("mlp-tanh", "crown-jacobian", math.inf),
        ("mlp-relu", "fastlip", 1.0),
        ("cnn-relu", "recurjac", math.inf),
    ],
)
def test_lipschitz_curve_agrees(dev: torch.device, name: str, method: str, p: float) -> None:
    net, x = network(name), inputs(name)
    y, grid = labels(name, x), eps_grid(0.2, 4)
    want = lipschitz_curve(net, x, y, grid, norm=p, method=method)
    got = lipschitz_curve(net.to(device=dev), x.to(dev), y.to(dev), grid, norm=p, method=method)
    cpu = torch.device("cpu")  # the curve is a small report, documented to come back on the host
    for field in ("values", "grad_norm", "opnorm"):
        agree(getattr(got, field), getattr(want, field), cpu, what=f"curve {field}")
    assert torch.equal(got.unsure, want.unsure) and torch.equal(got.global_bound, want.global_bound)


@pytest.mark.parametrize(("name", "p"), [("mlp-relu", 2.0), ("mlp-tanh", math.inf)])
def test_landscape_agrees(dev: torch.device, name: str, p: float) -> None:
    net, x = network(name), inputs(name)
    y = labels(name, x)
    r_want, c_want = landscape(net, x, y, norm=p, lipsteps=3)
    r_got, c_got = landscape(net.to(device=dev), x.to(dev), y.to(dev), norm=p, lipsteps=3)
    assert bool((r_want > 0).all())
    torch.testing.assert_close(r_got.cpu(), r_want, rtol=RTOL64, atol=SEARCH_TOL)
    torch.testing.assert_close(c_got.values, c_want.values, rtol=1e-6, atol=1e-6)


def test_clever_agrees(dev: torch.device) -> None:
    name = "mlp-tanh"
    net, x = network(name), inputs(name)[0]
    c = int(labels(name, x[None]))
    j = (c + 1) % 4
    est = Clever(nsamp=64, niters=30, radius=0.3, sampling="ball", input_range=None, seed=7)
    want = est(net, x, targets=[j])
    got = est(net.to(device=dev), x.to(dev), targets=[j])
    assert str(got.samples.settings["device"]).startswith(dev.type)
    for field in ("g_x0", "grad_norm_x0", "logits"):  # deterministic: at x0 itself
        a, b = getattr(got.samples, field), getattr(want.samples, field)
        np.testing.assert_allclose(a, b, rtol=RTOL64, atol=ATOL64, err_msg=field)
    # The gradient norms CLEVER samples, at the same points on both devices.
    gen = torch.Generator().manual_seed(3)
    pts = LpBall.make(x[None], 0.3, 2.0).sample(50, generator=gen)[0]
    want_norms = gradient_norms(net, pts, c, j)
    agree(gradient_norms(net.to(device=dev), pts.to(dev), c, j), want_norms, dev, what="norms")
    # The samples differ with the device's generator: every sampled maximum must stay below the
    # certified local Lipschitz constant of its ball, and near the CPU's (max over 1920 draws).
    C = margin_spec(torch.tensor([c]), torch.tensor([j]), 4, F64)
    for k, (key, p) in enumerate(zip(NORM_KEYS, (1.0, 2.0, math.inf), strict=True)):
        bound = float(local_lipschitz(net, LpBall.make(x[None], 0.3, p), C))
        top_got, top_want = got.samples.maxima[0, k].max(), want.samples.maxima[0, k].max()
        assert top_got <= bound * (1 + 1e-9), key
        assert abs(top_got - top_want) <= 0.3 * top_want, key
        assert 0.5 <= got.scores[key] / want.scores[key] <= 2.0, key


ATTACKS = {
    "pgd-inf": (lambda: PGD(norm="inf", steps=30), 1.5),
    "pgd-l2": (lambda: PGD(norm=2, steps=30), 2.5),
    "pgd-l1": (lambda: PGD(norm=1, steps=30), 8.0),
    "minimal-pgd": (lambda: MinimalPGD(norm=2, steps=20), None),
    "cw": (lambda: CarliniWagnerL2(binary_steps=4, steps=50, lr=0.05, initial_const=1.0), None),
    "ead": (lambda: EAD(binary_steps=4, steps=50, lr=0.05, initial_const=1.0), None),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_deterministic_attacks_agree(dev: torch.device, attack: str) -> None:
    """One restart starts at the input itself, and CW / EAD draw nothing: no randomness."""
    make, eps = ATTACKS[attack]
    net, x = network("mlp-relu"), inputs("mlp-relu", batch=3)
    y = labels("mlp-relu", x)
    want = make()(net, x, y, eps=eps)
    got = make()(net.to(device=dev), x.to(dev), y.to(dev), eps=eps)
    assert bool(want.success.any()), "nothing found: the comparison would be trivial"
    assert torch.equal(got.success, want.success)
    agree(got.adversarial, want.adversarial, dev, rtol=1e-7, atol=1e-9, what="adversarial")
    torch.testing.assert_close(got.distance, want.distance, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_random_restart_pgd_is_valid(dev: torch.device, norm: str) -> None:
    """Random starts come from the device's generator: check the examples, not equality."""
    net, x = network("mlp-relu"), inputs("mlp-relu", batch=3)
    y, eps = labels("mlp-relu", x), {"inf": 1.5, "2": 2.5}[norm]
    single = PGD(norm=norm, steps=30)(net, x, y, eps=eps)
    got = PGD(norm=norm, steps=30, restarts=4, seed=5)(
        net.to(device=dev), x.to(dev), y.to(dev), eps=eps
    )
    assert on_device(got.adversarial, dev)
    # restart 0 runs the single-start attack, so the restarts find at least as much
    assert bool((got.success | ~single.success).all()) and bool(got.success.any())
    adv = got.adversarial.cpu()[got.success]
    margin = adversarial_margin(
        net(adv), y[got.success], torch.full_like(y, UNTARGETED)[: len(adv)]
    )
    assert bool((margin < 0).all()), "a reported example does not flip the label on the CPU"
    dist = torch.linalg.vector_norm(adv - x[got.success], float(norm), dim=1)
    assert bool((dist <= eps * (1 + 1e-12)).all())


@pytest.mark.parametrize(
    ("model", "prop", "expected"),
    [
        ("onnx/test_small.onnx", "vnncomp/test_small.vnnlib", "unsat"),
        ("vnncomp/test_unsat.onnx", "vnncomp/test_prop.vnnlib", "unsat"),
        ("onnx/test_sat.onnx", "vnncomp/test_prop.vnnlib", "sat"),
    ],
)
def test_verify_files_agrees(dev: torch.device, model: str, prop: str, expected: str) -> None:
    want = verify_files(DATA / model, DATA / prop, timeout=60, device="cpu")
    got = verify_files(DATA / model, DATA / prop, timeout=60, device=dev)
    assert want.status == got.status == expected
    if expected == "unsat":  # decided by the bounds: deterministic
        assert got.stage == want.stage
        return
    assert got.counterexample is not None  # found by a random attack: check it on the CPU
    cx, cy = got.counterexample
    net = load_model(DATA / model).to(dtype=F64)
    y = net(torch.as_tensor(cx, dtype=F64).reshape(1, *net.input_shape)).detach().numpy()
    np.testing.assert_allclose(y.ravel(), cy, rtol=1e-9, atol=1e-9)
    inside = [
        d for d in read_vnnlib(DATA / prop).disjuncts if np.all((cx >= d.lower) & (cx <= d.upper))
    ]
    assert any(bool(g.holds(y)[0]) for d in inside for g in d.groups)
