"""alpha-CROWN and branch and bound on computation graphs (residual ``add``, ``concat``).

* every parameterised relaxation family gives sound lines for any parameter in ``[0, 1]``
  and its defaults reproduce the relaxation's own lines;
* alpha-CROWN is never looser than CROWN (CROWN-general for smooth activations) and sound
  under samples, vertices and PGD, for the output and every intermediate tensor, in float64
  and float32;
* split phases, beta multipliers, empty domains and warm starts on a residual graph;
* ReLU splitting and input splitting decide a small residual-graph property as a dense grid
  plus an attack says they should, with checked counterexamples.
"""

from __future__ import annotations

import math
import random
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import check_points_within, pgd_extremes
from nnbound.bounds.alpha_crown import alpha_crown_bounds, linear_bounds
from nnbound.bounds.graph_bounds import graph_bounds
from nnbound.errors import UnsupportedError
from nnbound.network.graph import Graph, Node
from nnbound.ops.registry import DEFAULT_OPTIONS, OPS, get_op
from nnbound.relax.bounded_relu import BoundedReluRelaxation
from nnbound.relax.convex import ConvexRelaxation
from nnbound.relax.functions import ARCTAN, SIGMOID, SOFTPLUS, TANH, elu_function
from nnbound.relax.relu import LeakyReluRelaxation, LowerSlope
from nnbound.relax.s_shaped import SShapedRelaxation
from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall
from nnbound.verify.bab import relu_split
from nnbound.verify.input_split import input_split
from nnbound.verify.spec import StackedSpec
from nnbound.verify.verifier import VerifyOptions, verify
from nnbound.verify.vnnlib import parse_vnnlib

F64 = torch.float64
pytestmark = pytest.mark.skipif(
    not {"add", "concat"} <= set(OPS), reason="the add / concat operators are not registered"
)


# -- graphs ------------------------------------------------------------------------------------
def residual_graph(act: str, seed: int, n_in: int = 4, alpha: float | None = None) -> Graph:
    """``input -> dense -> act -> dense -(+ skip)-> act -> dense``, concatenated with a
    second branch ``input -> dense -> act``, then ``act -> dense -> 3 outputs``."""
    gen = torch.Generator().manual_seed(seed)
    attrs = {} if alpha is None else {"alpha": alpha}

    def dense(i: str, o: str, a: int, b: int, scale: float = 1.5) -> Node:
        w = torch.randn(b, a, generator=gen, dtype=F64) * scale / math.sqrt(a)
        return Node(
            "dense", (i,), o, {"weight": w, "bias": torch.randn(b, generator=gen, dtype=F64) * 0.3}
        )

    nodes = [
        dense("input", "d1", n_in, 10),
        Node(act, ("d1",), "a1", attrs=attrs),
        dense("a1", "d2", 10, 10),
        Node("add", ("d2", "d1"), "r1"),
        Node(act, ("r1",), "a2", attrs=attrs),
        dense("a2", "d3", 10, 6),
        dense("input", "e1", n_in, 4),
        Node(act, ("e1",), "b1", attrs=attrs),
        Node("concat", ("d3", "b1"), "c1", attrs={"axis": 0}),
        Node(act, ("c1",), "a3", attrs=attrs),
        dense("a3", "out", 10, 3),
    ]
    return Graph(tuple(nodes), (n_in,), "out", name=f"residual-{act}")


def _base(graph: Graph, ball, spec: torch.Tensor):
    method = "crown" if get_op(graph.nodes[1].op).traits.piecewise_linear else "crown-general"
    return graph_bounds(graph, ball, method, spec)


def _margins(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Spec rows ``y_label - y_j`` for the graph's own prediction (``(N, 2, 3)``)."""
    with torch.no_grad():
        labels = graph(x).argmax(1)
    eye = torch.eye(3, dtype=x.dtype)
    rows = [torch.stack([eye[k] - eye[j] for j in range(3) if j != k]) for k in labels.tolist()]
    return torch.stack(rows)


# -- the families ---------------------------------------------------------------------------
FAMILIES = {
    "relu": (LeakyReluRelaxation(0.0, LowerSlope.ADAPTIVE), torch.relu),
    "leaky": (
        LeakyReluRelaxation(0.2, LowerSlope.ADAPTIVE_STRICT),
        lambda z: torch.maximum(z, 0.2 * z),
    ),
    "brelu": (BoundedReluRelaxation(1.5), lambda z: z.clamp(0.0, 1.5)),
    "tanh": (SShapedRelaxation(TANH), torch.tanh),
    "sigmoid": (SShapedRelaxation(SIGMOID), torch.sigmoid),
    "arctan": (SShapedRelaxation(ARCTAN), torch.atan),
    "softplus": (ConvexRelaxation(SOFTPLUS), torch.nn.functional.softplus),
    "elu": (ConvexRelaxation(elu_function(0.5)), lambda z: torch.nn.functional.elu(z, 0.5)),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_are_sound_for_every_parameter(name: str, dtype: torch.dtype) -> None:
    relax, f = FAMILIES[name]
    gen = torch.Generator().manual_seed(len(name))
    centre = torch.randn(400, generator=gen, dtype=F64) * 3
    width = torch.rand(400, generator=gen, dtype=F64) * 6
    width[:20] = 0.0  # point intervals
    # One row (N = 1) of 400 entries.
    lo = (centre - width / 2).to(dtype).unsqueeze(0)
    up = (centre + width / 2).to(dtype).unsqueeze(0)
    fam = relax.parametric(lo, up)
    s = 7
    thetas = torch.rand(1, s, 400, generator=gen, dtype=F64).to(dtype)
    thetas[:, 0], thetas[:, 1] = 0.0, 1.0
    lines = fam.make(
        thetas if fam.default_lower is not None else None,
        thetas.flip(1) if fam.default_upper is not None else None,
    )
    t = torch.linspace(0, 1, 201, dtype=F64)
    l64, u64 = lo[0].double().unsqueeze(-1), up[0].double().unsqueeze(-1)
    # 201 points of each interval, ends included, representable in the working dtype.
    z = torch.minimum(torch.maximum(l64 + t * (u64 - l64), l64), u64).to(dtype).double()
    fz = f(z)
    tol = 1e-12 if dtype == F64 else 2e-6
    ls, lb, us, ub = (
        v.double().expand(1, s, 400).unsqueeze(-1)
        for v in (lines.lower_slope, lines.lower_bias, lines.upper_slope, lines.upper_bias)
    )
    scale = 1.0 + fz.abs()
    assert float(((ls * z + lb - fz) / scale).max()) <= tol, name
    assert float(((fz - us * z - ub) / scale).max()) <= tol, name
    # The defaults give the relaxation's own lines.
    own = relax.linear(lo, up)
    default = fam.make(
        None if fam.default_lower is None else fam.default_lower.unsqueeze(1),
        None if fam.default_upper is None else fam.default_upper.unsqueeze(1),
    )
    for mine, ref in (
        (default.lower_slope, own.lower_slope),
        (default.lower_bias, own.lower_bias),
        (default.upper_slope, own.upper_slope),
        (default.upper_bias, own.upper_bias),
    ):
        torch.testing.assert_close(mine[:, 0], ref, rtol=1e-5, atol=1e-6 if dtype == F64 else 1e-5)


# -- bounds on residual graphs ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("act", "kind", "dtype"),
    [
        ("relu", "inf", F64),
        ("relu", "2", F64),
        ("relu", "box", F64),
        ("relu", "inf", torch.float32),
        ("leaky_relu", "inf", F64),
        ("brelu", "inf", F64),
        ("tanh", "inf", F64),
        ("tanh", "2", torch.float32),
        ("sigmoid", "inf", F64),
    ],
)
def test_alpha_crown_on_residual_graphs(act: str, kind: str, dtype: torch.dtype) -> None:
    seed = zlib.crc32(f"{act}-{kind}-{dtype}".encode()) % 1000
    graph = residual_graph(act, seed, alpha=0.1 if act == "leaky_relu" else None).to(dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=gen, dtype=dtype)
    spec = _margins(graph, x)
    if kind == "box":
        ball = Box.make(x - torch.rand(3, 4, generator=gen, dtype=dtype) * 0.6, x + 0.3)
    else:
        p = {"inf": math.inf, "2": 2.0}[kind]
        ball = LpBall.make(x, {"inf": 0.3, "2": 0.6}[kind], p)
    base = _base(graph, ball, spec)
    alpha = alpha_crown_bounds(graph, ball, spec, steps=15)
    assert alpha.method == "alpha-crown"
    assert torch.all(alpha.lower >= base.lower) and torch.all(alpha.upper <= base.upper)
    gap_alpha = float((alpha.upper - alpha.lower).mean())
    gap_base = float((base.upper - base.lower).mean())
    assert gap_alpha < gap_base, (gap_alpha, gap_base)
    tol = 1e-9 if dtype == F64 else 1e-4
    points = torch.cat([ball.sample(400, generator=gen), ball.vertices(400, generator=gen)], 1)
    below, above = check_points_within(graph, points, spec, alpha.lower, alpha.upper)
    assert below <= tol and above <= tol
    if isinstance(ball, LpBall):
        mins, maxs = pgd_extremes(graph, ball, spec, steps=25, restarts=2, pool=64)
        assert torch.all(alpha.lower <= mins + tol) and torch.all(maxs <= alpha.upper + tol)
    # Every intermediate bound holds at every probe.
    with torch.no_grad():
        values = graph.evaluate(points.reshape(-1, 4))
    for name, (lo, up) in alpha.intermediate.pre.items():
        v = values[name].reshape(3, -1, *lo.shape[1:])
        assert torch.all(lo.unsqueeze(1) <= v + tol) and torch.all(v <= up.unsqueeze(1) + tol), name


@pytest.mark.parametrize("seed", range(8))
def test_alpha_crown_on_random_factory_graphs(seed: int) -> None:
    """Random graphs of :mod:`graph_factory` (residual blocks, concatenated branches, slices,
    pooling; flat or image inputs): never looser than CROWN, sound at samples, vertices and
    PGD points."""
    graph_factory = pytest.importorskip("graph_factory")
    rng = random.Random(seed)
    acts = ("relu",) if seed % 2 == 0 else ("relu", "leaky_relu", "tanh", "sigmoid")
    shape = (2, 6, 6) if seed % 4 < 2 else (5,)
    graph = graph_factory.random_graph(
        graph_factory.RandomChooser(rng),
        shape,
        3,
        seed=seed,
        blocks=2,
        only=("linear_act", "residual", "concat", "slices", "pool"),
        acts=acts,
    )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *shape, generator=gen, dtype=F64)
    ball = LpBall.make(x, 0.15, math.inf)
    spec = _margins(graph, x)
    method = "crown" if graph_factory.piecewise_linear(graph) else "crown-general"
    base = graph_bounds(graph, ball, method, spec)
    alpha = alpha_crown_bounds(graph, ball, spec, steps=10)
    assert torch.all(alpha.lower >= base.lower) and torch.all(alpha.upper <= base.upper)
    points = torch.cat([ball.sample(300, generator=gen), ball.vertices(300, generator=gen)], 1)
    below, above = check_points_within(graph, points, spec, alpha.lower, alpha.upper)
    assert below <= 1e-9 and above <= 1e-9
    mins, maxs = pgd_extremes(graph, ball, spec, steps=20, restarts=2, pool=64)
    assert torch.all(alpha.lower <= mins + 1e-9) and torch.all(maxs <= alpha.upper + 1e-9)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_alpha_crown_reusing_a_crown_pass_equals_recomputing_it(
    act: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``crown_pre``: alpha-CROWN started from an earlier CROWN call's ``pre`` (the
    verifier's root: CROWN first, alpha-CROWN on what it leaves open) skips the CROWN
    backward passes for the intermediate bounds and ends exactly where recomputing them does."""
    graph = residual_graph(act, 31)
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(3, 4, generator=gen, dtype=F64)
    box = Box.make(x - 0.4, x + 0.4)
    spec = _margins(graph, x)
    crown = linear_bounds(graph, box, spec)
    fresh = linear_bounds(graph, box, spec, steps=6, optimize_intermediate=True)
    reused = linear_bounds(
        graph, box, spec, steps=6, optimize_intermediate=True, crown_pre=crown.pre
    )
    assert fresh.steps == reused.steps
    torch.testing.assert_close(reused.lower, fresh.lower, rtol=0, atol=1e-12)
    for name, (lo, up) in fresh.pre.items():
        torch.testing.assert_close(reused.pre[name][0], lo, rtol=0, atol=1e-12)
        torch.testing.assert_close(reused.pre[name][1], up, rtol=0, atol=1e-12)
    # The reused pass does fewer backward passes: count them.
    module = sys.modules[linear_bounds.__module__]
    original = module.backward
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "backward", counting)
    counts = []
    for kwargs in ({}, {"crown_pre": crown.pre}):
        calls["n"] = 0
        linear_bounds(graph, box, spec, **kwargs)
        counts.append(calls["n"])
    assert counts[1] < counts[0], counts


def test_splits_betas_empty_domains_and_warm_starts() -> None:
    graph = residual_graph("relu", 9)
    box = Box.make(-torch.ones(1, 4, dtype=F64), torch.ones(1, 4, dtype=F64))
    spec = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]], dtype=F64)
    free = linear_bounds(graph, box, spec)
    lo, up = free.pre["d1"]  # read by a ReLU and by the residual add
    unstable = torch.nonzero((lo[0] < 0) & (up[0] > 0)).squeeze(1)
    assert unstable.numel() > 0
    k = int(unstable[0])
    x = box.sample(20000, generator=torch.Generator().manual_seed(0))[0]
    with torch.no_grad():
        vals = graph.evaluate(x)
    z, y = vals["d1"][:, k], vals["out"] @ spec[0].T
    for phase in (1, -1):
        s = torch.zeros(1, 10, dtype=torch.int8)
        s[0, k] = phase
        res = linear_bounds(graph, box, spec, splits={"d1": s}, prior=free.pre, steps=20)
        keep = z >= 0 if phase > 0 else z <= 0
        assert not bool(res.empty.any())
        assert torch.all(res.lower[0] <= y[keep].min(0).values + 1e-9)
        assert torch.all(res.lower >= free.lower - 1e-9)
        assert res.params["beta"]["d1"].shape == (1, 2, 10)
        assert bool((res.params["beta"]["d1"] >= 0).all())
    # A phase that contradicts the bounds proves the sub-domain empty.
    stable_neg = torch.nonzero(up[0] < -1e-3).squeeze(1)
    if stable_neg.numel():
        s = torch.zeros(1, 10, dtype=torch.int8)
        s[0, int(stable_neg[0])] = 1
        assert bool(linear_bounds(graph, box, spec, splits={"d1": s}).empty.all())
    # Warm starts: a previous run's parameters are used from the first step; any values
    # (out of range, NaN) are projected and stay sound.
    run = linear_bounds(graph, box, spec, steps=20)
    warm = linear_bounds(graph, box, spec, steps=1, warm=run.params)
    assert torch.all(warm.lower >= free.lower) and float((warm.lower - free.lower).sum()) > 0
    wild = {"alpha": {k: torch.full_like(v, 3.0) for k, v in run.params["alpha"].items()}}
    first = next(iter(wild["alpha"]))
    wild["alpha"][first][..., 0] = math.nan
    odd = linear_bounds(graph, box, spec, steps=3, warm=wild)
    assert torch.all(odd.lower[0] <= y.min(0).values + 1e-9)


# -- branch and bound ------------------------------------------------------------------------
def _property(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, row: list[float], d: float) -> str:
    """VNN-LIB text: the box and the counterexample region ``row . y <= d``."""
    out = [f"(declare-const X_{i} Real)" for i in range(lo.numel())]
    out += [f"(declare-const Y_{j} Real)" for j in range(len(row))]
    for i in range(lo.numel()):
        out.append(f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))")
    terms = " ".join(f"(* {v!r} Y_{j})" for j, v in enumerate(row) if v != 0)
    out.append(f"(assert (<= (+ {terms}) {d!r}))")
    return "\n".join(out) + "\n"


def _brute_min(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, row: torch.Tensor) -> float:
    """Min of ``row . graph(x)`` over the box: a 41^3 grid, then sign-gradient descent from
    the 32 best grid points."""
    axes = [torch.linspace(float(a), float(b), 41, dtype=F64) for a, b in zip(lo, hi, strict=True)]
    grid = torch.cartesian_prod(*axes)
    with torch.no_grad():
        vals = graph(grid) @ row
    x = grid[vals.topk(32, largest=False).indices].clone()
    for t in range(60):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad((graph(x) @ row).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - 0.02 * (1 - t / 60) * (hi - lo) * g.sign(), lo), hi)
    with torch.no_grad():
        return min(float(vals.min()), float((graph(x) @ row).min()))


def test_branch_and_bound_decides_a_residual_property() -> None:
    graph = residual_graph("relu", 4, n_in=3)
    lo = torch.tensor([-0.6, -0.2, 0.1], dtype=F64)
    hi = torch.tensor([0.4, 0.7, 0.9], dtype=F64)
    row = [1.0, -1.0, 0.0]
    true_min = _brute_min(graph, lo, hi, torch.tensor(row, dtype=F64))
    # The box's CROWN bound must leave work for the search.
    box = Box.make(lo.unsqueeze(0), hi.unsqueeze(0))
    crown = graph_bounds(graph, box, "crown", torch.tensor([[row]], dtype=F64))
    spread = true_min - float(crown.lower)
    assert spread > 0.2, spread
    margin = 0.05 * spread
    for d, expected in ((true_min - margin, "unsat"), (true_min + margin, "sat")):
        prop = parse_vnnlib(_property(graph, lo, hi, row, d))
        spec = StackedSpec.make(prop.disjuncts[0], F64, torch.device("cpu"))
        for search in (relu_split, input_split):
            res = search(graph, spec, time.monotonic() + 20)
            assert res.status == expected, (search.__name__, d, res)
            if res.status == "sat":
                x, y = res.counterexample
                assert bool(spec.in_box(x[None]).all())
                torch.testing.assert_close(graph(x[None])[0], y, rtol=0, atol=1e-12)
                assert float(y[0] - y[1]) <= d
        # The whole pipeline, ReLU splitting forced (no input splitting, no attack first).
        opts = VerifyOptions(input_split_max_dims=0, attack_max_s=0.0, relu_batch=8)
        assert verify(graph, prop, timeout=20, options=opts).status == expected


def test_relu_splitting_needs_relu_graphs() -> None:
    graph = residual_graph("tanh", 1, n_in=3)
    text = _property(graph, -torch.ones(3), torch.ones(3), [1.0, -1.0, 0.0], -50.0)
    spec = StackedSpec.make(parse_vnnlib(text).disjuncts[0], F64, torch.device("cpu"))
    with pytest.raises(UnsupportedError, match="tanh"):
        relu_split(graph, spec, time.monotonic() + 5)
    # Input splitting and the verifier work on any graph the engine bounds.
    assert input_split(graph, spec, time.monotonic() + 10).status == "unsat"
    assert verify(graph, parse_vnnlib(text), timeout=10).status == "unsat"


def test_default_options_are_crowns() -> None:
    """With no steps, linear_bounds is CROWN's pass (the graph engine's own numbers)."""
    graph = residual_graph("relu", 2)
    ball = LpBall.make(
        torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=F64), 0.2
    )
    spec = torch.eye(3, dtype=F64).unsqueeze(0).expand(2, -1, -1)
    res = linear_bounds(graph, ball, spec, options=DEFAULT_OPTIONS)
    crown = graph_bounds(graph, ball, "crown")
    torch.testing.assert_close(res.lower, crown.lower, rtol=1e-9, atol=1e-9)
