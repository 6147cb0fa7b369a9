"""The verifier end to end on ONNX files and VNN-LIB text: random tiny ReLU networks with random
properties, every ``unsat`` confirmed by an exact search (activation patterns enumerated
depth-first, one ``scipy.optimize.linprog`` per pattern prefix) and every ``sat``
counterexample re-checked independently; the competition's ``test`` instances give their
expected answers."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.errors import InputError
from nnbound.network.layers import Activation, Dense
from nnbound.network.network import Network
from nnbound.network.to_onnx import save_onnx
from nnbound.verify.bab import relu_split
from nnbound.verify.input_split import input_split
from nnbound.verify.spec import StackedSpec
from nnbound.verify.spec_batch import SpecBatch
from nnbound.verify.verifier import VerifyOptions, format_counterexample, verify, verify_files
from nnbound.verify.vnnlib import parse_vnnlib

DATA = Path(__file__).resolve().parents[1] / "data" / "vnncomp"
F64 = torch.float64


# -- an exact reference: min over the box of max_s (C_s y - d_s) --------------------------------
def _dense(net: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(la.weight.numpy(), la.bias.numpy()) for la in net.layers if isinstance(la, Dense)]


def exact_min(net: Network, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray) -> float:
    """``min_{lo <= x <= hi} max_s (C_s net(x) - d_s)``, exactly (up to LP tolerances).

    Depth-first over hidden neurons: each neuron's phase adds a linear constraint on ``x``;
    a prefix whose constraints are infeasible is pruned, a neuron whose phase the box already
    decides is not branched on. Each complete pattern makes the network affine on its region:
    one LP minimises the objective there.
    """
    layers = _dense(net)
    n = lo.size
    bounds = [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)] + [(None, None)]
    best = math.inf

    def feasible(a_ub: list[np.ndarray], b_ub: list[float]) -> bool:
        if not a_ub:
            return True
        res = linprog(
            np.zeros(n + 1), A_ub=np.array(a_ub), b_ub=np.array(b_ub), bounds=bounds, method="highs"
        )
        return res.status == 0

    def box_range(row: np.ndarray, c: float) -> tuple[float, float]:
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        m = float(row @ mid + c)
        r = float(np.abs(row) @ rad)
        return m - r, m + r

    def layer(li: int, P: np.ndarray, p: np.ndarray, a_ub: list, b_ub: list) -> None:
        nonlocal best
        W, b = layers[li]
        Z, z0 = W @ P, W @ p + b  # pre-activations affine in x
        if li == len(layers) - 1:
            # min t s.t. C_s (Z x + z0) - d_s <= t
            rows = [np.append(C[s] @ Z, -1.0) for s in range(C.shape[0])]
            rhs = [float(d[s] - C[s] @ z0) for s in range(C.shape[0])]
            cost = np.zeros(n + 1)
            cost[-1] = 1.0
            res = linprog(
                cost,
                A_ub=np.array([*a_ub, *rows]),
                b_ub=np.array([*b_ub, *rhs]),
                bounds=bounds,
                method="highs",
            )
            if res.status == 0:
                best = min(best, float(res.fun))
            return
        neuron(li, 0, Z, z0, np.ones(W.shape[0]), a_ub, b_ub)

    def neuron(li, k, Z, z0, phase, a_ub, b_ub) -> None:
        if k == Z.shape[0]:
            layer(li + 1, Z * phase[:, None], z0 * phase, a_ub, b_ub)
            return
        low, high = box_range(Z[k], z0[k])
        for active in (True, False):
            if (active and high < 0) or (not active and low > 0):
                continue
            ph = phase.copy()
            ph[k] = 1.0 if active else 0.0
            if low >= 0 or high <= 0:  # decided by the box: no constraint needed
                neuron(li, k + 1, Z, z0, ph, a_ub, b_ub)
                continue
            sign = -1.0 if active else 1.0  # active: -z <= 0, inactive: z <= 0
            row = np.append(sign * Z[k], 0.0)
            new_a, new_b = [*a_ub, row], [*b_ub, float(-sign * z0[k])]
            if feasible(new_a, new_b):
                neuron(li, k + 1, Z, z0, ph, new_a, new_b)

    layer(0, np.eye(n), np.zeros(n), [], [])
    return best


def exact_property_min(net: Network, text: str) -> float:
    """Min over disjuncts and groups of :func:`exact_min`: <= 0 iff a counterexample exists."""
    prop = parse_vnnlib(text)
    return min(
        exact_min(net, dj.lower, dj.upper, g.C, g.d) for dj in prop.disjuncts for g in dj.groups
    )


# -- random instances --------------------------------------------------------------------------
def write_property(lo, hi, groups) -> str:
    """VNN-LIB text for a box and output groups ``[(C, d)]`` (one ``or`` of ``and`` s)."""
    n, m = len(lo), groups[0][0].shape[1]
    out = [f"(declare-const X_{i} Real)" for i in range(n)]
    out += [f"(declare-const Y_{j} Real)" for j in range(m)]
    for i in range(n):
        out.append(f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))")
    ands = []
    for C, d in groups:
        atoms = []
        for row, rhs in zip(C, d, strict=True):
            terms = " ".join(f"(* {float(v)!r} Y_{j})" for j, v in enumerate(row) if v != 0)
            atoms.append(f"(<= (+ {terms}) {float(rhs)!r})")
        ands.append("(and " + " ".join(atoms) + ")")
    out.append("(assert (or\n  " + "\n  ".join(ands) + "\n))")
    return "\n".join(out) + "\n"


def random_instance(seed: int, sizes: list[int]) -> tuple[Network, str, float]:
    """A network, a property whose exact answer is at least 0.02 away from the boundary, and
    that exact min (> 0: unsat, < 0: sat)."""
    rng = np.random.default_rng(seed)
    net = random_network("relu", sizes, seed=seed)
    n, m = sizes[0], sizes[-1]
    while True:
        centre = rng.normal(size=n)
        width = rng.uniform(0.1, 0.6, size=n)
        lo, hi = centre - width, centre + width
        groups = []
        for _ in range(rng.integers(1, 3)):
            k = int(rng.integers(1, 3))
            C = np.round(rng.normal(size=(k, m)), 3)
            # Thresholds around the values at a random point: some groups are reachable.
            x = torch.as_tensor(rng.uniform(lo, hi, size=(1, n)))
            vals = (net(x).detach().numpy() @ C.T)[0]
            d = np.round(vals + rng.uniform(-0.5, 0.3, size=k), 3)
            groups.append((C, d))
        text = write_property(lo, hi, groups)
        value = exact_property_min(net, text)
        if abs(value) > 0.02:
            return net, text, value


def check_answer(net: Network, text: str, exact: float, res) -> None:
    prop = parse_vnnlib(text)
    if res.status == "unsat":
        assert exact > 0, f"wrong unsat: a counterexample exists (exact min {exact})"
    if res.status == "sat":
        assert exact < 0
        x, y = res.counterexample
        # Independent re-check: numpy forward pass of the weights, box and group membership.
        h = x.copy()
        layers = _dense(net)
        for i, (W, b) in enumerate(layers):
            h = W @ h + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        np.testing.assert_allclose(h, y, rtol=1e-9, atol=1e-12)
        hits = [
            g.holds(h.reshape(1, -1))[0]
            for dj in prop.disjuncts
            if np.all(x >= dj.lower) and np.all(x <= dj.upper)
            for g in dj.groups
        ]
        assert any(hits), "the counterexample is not one"


@pytest.mark.parametrize("seed", range(8))
def test_random_low_dimensional_instances_match_the_exact_answer(tmp_path: Path, seed: int) -> None:
    net, text, exact = random_instance(seed, [2, 6, 6, 3])
    onnx_path = save_onnx(net, tmp_path / "net.onnx")
    (tmp_path / "p.vnnlib").write_text(text)
    res = verify_files(onnx_path, tmp_path / "p.vnnlib", timeout=20)
    check_answer(net, text, exact, res)
    # Tiny networks and margins of at least 0.02: input splitting decides every one.
    assert res.status in ("sat", "unsat"), res


@pytest.mark.parametrize("seed", range(4))
def test_relu_splitting_through_the_verifier(seed: int) -> None:
    """Forced ReLU splitting (no input splitting, no PGD) on 4-input networks: leaves where
    every neuron is fixed are decided by an LP with a checked dual certificate, so the search
    is complete on these tiny networks."""
    net, text, exact = random_instance(100 + seed, [4, 8, 8, 2])
    opts = VerifyOptions(input_split_max_dims=0, attack_max_s=0.0, relu_batch=8)
    res = verify(net, parse_vnnlib(text), timeout=20, options=opts)
    check_answer(net, text, exact, res)
    assert res.status in ("sat", "unsat"), res


@pytest.mark.parametrize("seed", range(4))
def test_both_searches_directly(seed: int) -> None:
    """``input_split`` and ``relu_split`` alone (no attack first) on one disjunct: each
    answer agrees with the exact one, each counterexample re-checks."""
    net, text, exact = random_instance(200 + seed, [3, 8, 8, 2])
    spec = StackedSpec.make(parse_vnnlib(text).disjuncts[0], F64, torch.device("cpu"))
    for search in (input_split, relu_split):
        res = search(net, spec, time.monotonic() + 20)
        assert res.status == ("unsat" if exact > 0 else "sat"), (search.__name__, res)
        if res.status == "sat":
            x, y = res.counterexample
            assert bool(spec.satisfied(y.unsqueeze(0)).any()) and bool(spec.in_box(x[None]).all())
            torch.testing.assert_close(net(x[None])[0], y, rtol=0, atol=1e-12)


def test_input_split_over_many_disjuncts_equals_one_by_one() -> None:
    """The boxes of several disjuncts (different boxes and output rows, padded to one
    :class:`SpecBatch`) split together: ``unsat`` exactly when each alone is, and a ``sat``
    counterexample lies in one disjunct's box and meets that disjunct."""
    instances = [random_instance(300 + seed, [3, 8, 8, 2]) for seed in range(5)]
    net = instances[0][0]
    specs, answers = [], []
    for _, text, _ in instances:
        # Each property's box and rows, on the first network: decided alone, exactly.
        disjunct = parse_vnnlib(text).disjuncts[0]
        spec = StackedSpec.make(disjunct, F64, torch.device("cpu"))
        alone = input_split(net, spec, time.monotonic() + 20)
        assert alone.status in ("sat", "unsat"), alone
        specs.append(spec)
        answers.append(alone.status)
    assert "sat" in answers and "unsat" in answers, answers  # both kinds in the mix
    for subset in ([i for i, a in enumerate(answers) if a == "unsat"], list(range(5))):
        together = input_split(
            net, SpecBatch.make([specs[i] for i in subset]), time.monotonic() + 20
        )
        want = "sat" if any(answers[i] == "sat" for i in subset) else "unsat"
        assert together.status == want, (subset, together)
        if want == "sat":
            x, y = together.counterexample
            torch.testing.assert_close(net(x[None])[0], y, rtol=0, atol=1e-12)
            assert any(
                bool(specs[i].in_box(x[None]).all() and specs[i].satisfied(y[None]).any())
                for i in subset
                if answers[i] == "sat"
            )


def test_union_of_input_boxes(tmp_path: Path) -> None:
    net = random_network("relu", [2, 6, 6, 2], seed=3)
    y0 = float(net(torch.zeros(1, 2, dtype=F64))[0, 0])
    # Box A far away and box B around 0; the counterexample (Y_0 >= y0 - 0.01) sits in B.
    text = (
        "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
        "(declare-const Y_1 Real)\n(assert (or\n"
        " (and (>= X_0 5) (<= X_0 5.1) (>= X_1 5) (<= X_1 5.1))\n"
        " (and (>= X_0 -0.01) (<= X_0 0.01) (>= X_1 -0.01) (<= X_1 0.01))))\n"
        f"(assert (>= Y_0 {y0 - 1e-3!r}))\n"
    )
    exact = exact_property_min(net, text)
    res = verify(net, parse_vnnlib(text), timeout=20)
    check_answer(net, text, exact, res)
    assert res.status == "sat" and res.counterexample[0][0] < 1


def test_vnncomp_test_instances_give_the_expected_answers() -> None:
    with open(DATA / "instances.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    for r in rows:
        res = verify_files(DATA / r["onnx"], DATA / r["vnnlib"], timeout=30)
        assert res.status == r["expected"], (r, res)
        if res.status == "sat":
            x, y = res.counterexample
            assert res.stats.get("onnxruntime_agrees") in (True, None)
            text = format_counterexample(x, y)
            assert text.startswith("((X_0 ") and text.endswith(")") and "(Y_4 " in text


def test_trivial_properties_and_errors() -> None:
    net = random_network("relu", [2, 4, 2], seed=1)
    decl = (
        "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
        "(declare-const Y_1 Real)\n"
    )
    box = "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= X_1 1))\n"
    # Contradictory: no counterexample region at all.
    empty = verify(net, parse_vnnlib(decl + "(assert (and (>= X_0 1) (<= X_0 0)))"), timeout=5)
    assert (empty.status, empty.stage) == ("unsat", "empty")
    # No output constraint: every input of the box is a counterexample.
    res = verify(net, parse_vnnlib(decl + box), timeout=5)
    assert res.status == "sat"
    with pytest.raises(InputError, match="declares 2 outputs"):
        verify(random_network("relu", [2, 4, 3], seed=1), parse_vnnlib(decl + box), timeout=5)
    # A non-ReLU network: CROWN-general proves an easy property, never claims a hard one.
    tanh = random_network("tanh", [2, 6, 2], seed=2)
    easy = decl + box + "(assert (>= Y_0 100))"
    assert verify(tanh, parse_vnnlib(easy), timeout=5).status == "unsat"
    y = tanh(torch.full((1, 2), 0.5, dtype=F64))[0]
    hard = decl + box + f"(assert (<= (- Y_0 Y_1) {float(y[0] - y[1]) - 1e-3!r}))"
    assert verify(tanh, parse_vnnlib(hard), timeout=3).status in ("sat", "unknown", "timeout")


def test_layers_helper_matches_network() -> None:
    net = random_network("relu", [2, 5, 3], seed=0)
    assert isinstance(net.layers[1], Activation)
    x = np.array([0.3, -0.2])
    W1, b1 = _dense(net)[0]
    W2, b2 = _dense(net)[1]
    ref = W2 @ np.maximum(W1 @ x + b1, 0) + b2
    np.testing.assert_allclose(net(torch.as_tensor(x)[None])[0].detach().numpy(), ref)


def test_candidate_outputs_in_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack's candidate pool is run through the network in chunks sized by its
    activations (a U-Net's pool does not fit at once): same outputs, for a chain and for a
    graph whose forward drops tensors after their last use."""
    import nnbound.verify.spec as spec_module
    from nnbound.network.chain_graph import network_to_graph

    gen = torch.Generator().manual_seed(0)
    net = Network(
        (
            Dense(torch.randn(6, 3, generator=gen), torch.zeros(6)),
            Activation("relu"),
            Dense(torch.randn(2, 6, generator=gen), torch.zeros(2)),
        ),
        (3,),
    )
    x = torch.randn(37, 3, generator=gen)
    for model in (net, network_to_graph(net)):
        whole = spec_module.evaluate(model, x)
        monkeypatch.setattr(spec_module, "_EVAL_ELEMENTS", 40)  # 2 candidates per chunk
        torch.testing.assert_close(spec_module.evaluate(model, x), whole, rtol=0, atol=0)
        monkeypatch.undo()
        torch.testing.assert_close(whole, net(x), rtol=0, atol=0)


def test_a_counterexample_onnxruntime_rejects_is_no_answer(monkeypatch) -> None:
    """sat needs both re-checks: the float64 run and onnxruntime on the file itself."""
    import nnbound.verify.verifier as verifier

    sat_net = DATA.parent / "onnx" / "test_sat.onnx"
    prop = DATA / "test_prop.vnnlib"
    assert verify_files(sat_net, prop, timeout=20).status == "sat"
    monkeypatch.setattr(verifier, "onnxruntime_check", lambda *a: False)
    res = verify_files(sat_net, prop, timeout=20)
    assert (res.status, res.counterexample, res.stage) == ("unknown", None, "onnxruntime-rejected")


@pytest.mark.parametrize("seed", [0, 2])
def test_boxes_with_fixed_coordinates_are_split_on_their_free_ones(seed: int) -> None:
    """A 24-input network whose box fixes all but two coordinates (masks and one-hot fields
    in competition properties, e.g. nn4sys): input splitting over the two free ones decides
    it (before, counting every input sent it to ReLU splitting). The answer is checked on the
    2-input network the fixed coordinates reduce it to."""
    small = random_network("relu", [2, 12, 12, 3], seed=seed)
    rng = np.random.default_rng(seed)
    free = rng.choice(24, 2, replace=False)
    fixed_values = rng.normal(size=24)
    first = small.layers[0]
    assert isinstance(first, Dense)
    weight = torch.as_tensor(rng.normal(size=(12, 24)))
    weight[:, free] = first.weight
    # The fixed inputs' contribution is taken out of the bias: same function on the box.
    fixed = torch.as_tensor(np.delete(np.arange(24), free))
    bias = first.bias - weight[:, fixed] @ torch.as_tensor(fixed_values)[fixed]
    big = Network((Dense(weight, bias), *small.layers[1:]), (24,))
    centre = rng.normal(size=2)
    C = np.array([[1.0, -1.0, 0.0]])
    lowest = exact_min(small, centre - 2, centre + 2, C, np.zeros(1))
    d = np.array([lowest - 0.02])  # unsat, by a margin CROWN on the whole box cannot see
    lo, hi = fixed_values.copy(), fixed_values.copy()
    lo[free], hi[free] = centre - 2, centre + 2
    res = verify(big, parse_vnnlib(write_property(lo, hi, [(C, d)])), timeout=30)
    assert (res.status, res.stage) == ("unsat", "bab-input"), res
