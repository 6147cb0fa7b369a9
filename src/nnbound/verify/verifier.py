"""Decide a VNN-LIB property on a network: ``unsat`` (it holds), ``sat`` (counterexample),
``unknown`` or ``timeout``.

The stages, cheapest first, share one deadline:

1. attack every disjunct (random points, then PGD on the counterexample objective);
2. bound every disjunct's box with CROWN, then alpha-CROWN (intermediate parameters
   optimised too when they fit; :mod:`nnbound.bounds.alpha_crown`);
3. branch and bound on what is left: input splitting for low-dimensional inputs, ReLU
   splitting otherwise where every activation is a (leaky) ReLU (:mod:`nnbound.verify.bab`);
4. with time left after an undecided search, a longer attack (at most a quarter of the
   timeout).

``sat`` is reported only with a counterexample re-checked by running the network (in float64)
on an input inside the box; ``unsat`` only when sound bounds refute every output group on
every piece of a partition of every disjunct's box. All arithmetic is float64: a float32
network is widened first (its weights are exactly representable), which keeps rounding of
the bounds orders of magnitude below any margin they prove.

The network may be a chain :class:`~nnbound.network.network.Network` or any
:class:`~nnbound.network.graph.Graph` the bound engine supports (residual, branching); the
bounds always run on the graph engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnbound.bounds.alpha_crown import LinearBoundResult, Pre, linear_bounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.box import Box
from nnbound.verify.attack import attack
from nnbound.verify.bab import (
    SAT,
    TIMEOUT,
    UNKNOWN,
    UNSAT,
    as_graph,
    input_split,
    relu_split,
    relu_tensors,
)
from nnbound.verify.spec import StackedSpec
from nnbound.verify.vnnlib import Property, read_vnnlib

RESULTS = (UNSAT, SAT, UNKNOWN, TIMEOUT)


@dataclass(frozen=True)
class VerifyOptions:
    """Knobs of :func:`verify` (the defaults suit CPU runs of VNN-COMP-sized instances).

    Attributes:
        seed: random seed of the attacks.
        attack_share: fraction of the timeout the first attack may use (at most
            ``attack_max_s``).
        attack_max_s: cap on the first attack's time.
        root_alpha_steps: alpha-CROWN steps on each disjunct's whole box.
        input_split_max_dims: inputs up to this many coordinates use input splitting.
        input_batch / relu_batch: sub-domains bounded together in each search.
        input_alpha_steps / relu_alpha_steps: alpha-CROWN steps per batch in each search.
        bab: run branch and bound at all (off: attack + bounds only).
    """

    seed: int = 0
    attack_share: float = 0.1
    attack_max_s: float = 10.0
    root_alpha_steps: int = 30
    input_split_max_dims: int = 16
    input_batch: int = 1024
    relu_batch: int = 64
    input_alpha_steps: int = 0
    relu_alpha_steps: int = 8
    bab: bool = True


@dataclass
class VerificationResult:
    """Outcome of :func:`verify`.

    Attributes:
        status: ``unsat`` / ``sat`` / ``unknown`` / ``timeout``.
        counterexample: for ``sat``, the flat input ``x`` ``(n,)`` and output ``y`` ``(m,)``
            (float64) that were re-checked.
        time: seconds spent.
        stage: what decided it (``attack``, ``crown``, ``alpha-crown``, ``bab-input``,
            ``bab-relu``, ``empty``, or ``-``).
        stats: counters (sub-domains visited...).
    """

    status: str
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    time: float = 0.0
    stage: str = "-"
    stats: dict[str, Any] = field(default_factory=dict)

    def result_text(self) -> str:
        """The competition's result file: the word, then for ``sat`` the assignment."""
        if self.status == SAT and self.counterexample is not None:
            return f"sat\n{format_counterexample(*self.counterexample)}\n"
        return f"{self.status}\n"


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """``((X_0 v) ... (Y_0 v) ...)`` with shortest round-trip decimals, one pair a line."""
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(x))]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(y))]
    return "(" + "\n ".join(pairs) + ")"


def _check_sizes(net: Network | Graph, prop: Property) -> None:
    if net.num_inputs != prop.num_inputs:
        raise InputError(
            f"the property declares {prop.num_inputs} inputs X_i, the network takes "
            f"{net.num_inputs} (shape {net.input_shape})"
        )
    if net.num_outputs != prop.num_outputs:
        raise InputError(
            f"the property declares {prop.num_outputs} outputs Y_j, the network has "
            f"{net.num_outputs}"
        )


def _refuted_all(spec: StackedSpec, lower: torch.Tensor) -> bool:
    return bool((spec.group_max(lower.reshape(1, -1)) > 0).all())


def verify(
    net: Network | Graph,
    prop: Property,
    *,
    timeout: float = 60.0,
    options: VerifyOptions | None = None,
) -> VerificationResult:
    """Decide ``prop`` on ``net`` within ``timeout`` seconds (see the module docstring)."""
    opts = options or VerifyOptions()
    start = time.monotonic()
    deadline = start + max(0.0, float(timeout))
    _check_sizes(net, prop)
    net = net.to(dtype=torch.float64)
    graph = as_graph(net)
    dev = net.device
    gen = torch.Generator(device=dev).manual_seed(int(opts.seed))
    stats: dict[str, Any] = {"disjuncts": len(prop.disjuncts)}

    def done(status: str, stage: str, cex=None) -> VerificationResult:
        if cex is not None:
            cex = (cex[0].cpu().numpy(), cex[1].cpu().numpy())
        return VerificationResult(status, cex, time.monotonic() - start, stage, stats)

    if not prop.disjuncts:
        return done(UNSAT, "empty")
    specs = [StackedSpec.make(d, torch.float64, dev) for d in prop.disjuncts]

    # 1. A cheap attack on every disjunct.
    budget = min(opts.attack_max_s, opts.attack_share * timeout) / len(specs)
    for spec in specs:
        found = attack(net, spec, deadline=min(deadline, time.monotonic() + budget), generator=gen)
        if found is not None:
            return done(SAT, "attack", found)
    if time.monotonic() > deadline:
        return done(TIMEOUT, "attack")

    # 2. CROWN then alpha-CROWN on each whole box.
    try:
        relu_tensors(graph)
        piecewise = True
    except UnsupportedError:
        piecewise = False
    remaining: list[tuple[StackedSpec, Pre | None]] = []
    stage = "crown"
    for spec in specs:
        res = _root_bounds(graph, spec, 0)
        if _refuted_all(spec, res.lower) or bool(res.empty.all()):
            continue
        if time.monotonic() > deadline:
            return done(TIMEOUT, "crown")
        low_dim = spec.lower.numel() <= opts.input_split_max_dims and opts.bab
        # Input splitting closes small boxes faster than parameter optimisation tightens
        # them: there, only a few steps on the final bound's parameters (cheap), no
        # intermediate ones.
        steps = min(opts.root_alpha_steps, 5) if low_dim else opts.root_alpha_steps
        res = _root_bounds(graph, spec, steps, False if low_dim else None, deadline=deadline)
        if _refuted_all(spec, res.lower) or bool(res.empty.all()):
            stage = "alpha-crown"
            continue
        remaining.append((spec, res.pre))
    if not remaining:
        return done(UNSAT, stage)
    # An undecided search leaves time: a longer attack may still find a counterexample, but
    # not for the whole remaining budget (a verifier that cannot decide should say so).
    final_cap = max(2.0, 0.25 * timeout)
    if not opts.bab:
        return _final_attack(
            net, remaining, min(deadline, time.monotonic() + final_cap), gen, done, UNKNOWN
        )

    # 3. Branch and bound, disjunct by disjunct.
    undecided = []
    for spec, pre in remaining:
        if time.monotonic() > deadline:
            return done(TIMEOUT, "bab")
        if spec.lower.numel() <= opts.input_split_max_dims:
            stage = "bab-input"
            res = input_split(
                net,
                spec,
                deadline,
                root_pre=pre,
                batch=opts.input_batch,
                alpha_steps=opts.input_alpha_steps,
            )
        elif not piecewise:
            # ReLU splitting decides its leaves as affine maps: (leaky) ReLU graphs only.
            undecided.append((spec, pre))
            continue
        else:
            stage = "bab-relu"
            res = relu_split(
                net,
                spec,
                deadline,
                root_pre=pre,
                batch=opts.relu_batch,
                alpha_steps=opts.relu_alpha_steps,
            )
        for k, v in res.stats.items():
            key = f"{stage}:{k}"
            # Several disjuncts: counters add up, other entries keep the last value.
            both_numbers = isinstance(v, (int, float)) and isinstance(stats.get(key), (int, float))
            stats[key] = stats[key] + v if both_numbers else v
        if res.status == SAT:
            return done(SAT, stage, res.counterexample)
        if res.status == TIMEOUT:
            return done(TIMEOUT, stage)
        if res.status == UNKNOWN:
            undecided.append((spec, pre))
    if not undecided:
        return done(UNSAT, stage)
    return _final_attack(
        net, undecided, min(deadline, time.monotonic() + final_cap), gen, done, UNKNOWN
    )


def _root_bounds(
    graph: Graph,
    spec: StackedSpec,
    steps: int,
    optimize_intermediate: bool | None = None,
    deadline: float = math.inf,
) -> LinearBoundResult:
    box = Box(
        spec.lower.reshape(1, *graph.input_shape), spec.upper.reshape(1, *graph.input_shape), (1,)
    )
    rows = spec.C.reshape(1, spec.num_rows, *graph.output_shape)

    def proven(lower: torch.Tensor, empty: torch.Tensor) -> bool:
        return _refuted_all(spec, lower) or bool(empty.all()) or time.monotonic() > deadline

    return linear_bounds(
        graph,
        box,
        rows,
        -spec.d.unsqueeze(0),
        steps=steps,
        stop=proven,
        optimize_intermediate=optimize_intermediate,
    )


def _final_attack(
    net: Network | Graph,
    pending: list[tuple[StackedSpec, Pre | None]],
    deadline: float,
    gen: torch.Generator,
    done: Callable[..., VerificationResult],
    stage_if_none: str,
) -> VerificationResult:
    """Spend the time left on longer attacks (more restarts and steps) of the pending
    disjuncts; ``stage_if_none`` is the answer when none succeeds."""
    for spec, _ in pending:
        if time.monotonic() > deadline - 0.5:
            break
        share = (deadline - time.monotonic()) / len(pending)
        found = attack(
            net,
            spec,
            deadline=time.monotonic() + share,
            samples=2048,
            restarts=32,
            steps=200,
            generator=gen,
        )
        if found is not None:
            return done(SAT, "attack", found)
    return done(stage_if_none, "-")


def onnxruntime_check(model_path: str | Path, prop: Property, x: np.ndarray) -> bool | None:
    """Whether onnxruntime, run on the ONNX file at ``x`` (in the file's input dtype and
    shape), also lands in some output group of a disjunct containing ``x``; None if
    onnxruntime is not installed or the model cannot run."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = np.float64 if "double" in inp.type else np.float32
        y = sess.run(None, {inp.name: np.asarray(x, dtype=dtype).reshape(shape)})[0]
    except Exception:  # any runtime failure only means "no second opinion"
        return None
    y = np.asarray(y, dtype=np.float64).reshape(1, -1)
    for d in prop.disjuncts:
        inside = bool(np.all(x >= d.lower) and np.all(x <= d.upper))
        if inside and any(bool(g.holds(y)[0]) for g in d.groups):
            return True
    return False


def verify_files(
    model: str | Path,
    prop_path: str | Path,
    *,
    timeout: float = 60.0,
    options: VerifyOptions | None = None,
) -> VerificationResult:
    """Load an ONNX (or any supported) model and a VNN-LIB file and :func:`verify` them; a
    ``sat`` result also records whether onnxruntime agrees (``stats["onnxruntime_agrees"]``).
    The timeout counts from the call (loading included)."""
    from nnbound.network.load import load_model

    start = time.monotonic()
    net = load_model(model)
    prop = read_vnnlib(prop_path)
    left = timeout - (time.monotonic() - start)
    res = verify(net, prop, timeout=max(0.0, left), options=options)
    res.time = time.monotonic() - start
    if res.status == SAT and res.counterexample is not None and str(model).endswith(".onnx"):
        res.stats["onnxruntime_agrees"] = onnxruntime_check(model, prop, res.counterexample[0])
    return res


__all__ = [
    "RESULTS",
    "VerificationResult",
    "VerifyOptions",
    "format_counterexample",
    "onnxruntime_check",
    "verify",
    "verify_files",
]
