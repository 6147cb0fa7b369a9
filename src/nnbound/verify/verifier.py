"""Decide a VNN-LIB property on a network: ``unsat`` (it holds), ``sat`` (counterexample),
``unknown`` or ``timeout``.

The stages, cheapest first, share one deadline:

1. attack every disjunct (random points, then PGD on the counterexample objective), all
   disjuncts in one batch (:mod:`nnbound.verify.attack`);
2. bound every disjunct's box with CROWN, then alpha-CROWN (intermediate parameters
   optimised too when they fit; :mod:`nnbound.bounds.alpha_crown`), many disjuncts per pass
   (:mod:`nnbound.verify.root_bounds`);
3. branch and bound on what is left: input splitting where a box lets few coordinates vary
   (:mod:`nnbound.verify.input_split`), ReLU splitting otherwise where every activation is a
   (leaky) ReLU (:mod:`nnbound.verify.bab`), activation-interval splitting for other
   activations (:mod:`nnbound.verify.activation_split`);
4. with time left after an undecided search, a longer attack (at most a quarter of the
   timeout).

One deadline (:mod:`nnbound.verify.deadline`) is checked inside every stage.

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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnbound.bounds.alpha_crown import Pre
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.verify.activation_split import activation_split
from nnbound.verify.attack import attack_batch
from nnbound.verify.bab import (
    SAT,
    TIMEOUT,
    UNKNOWN,
    UNSAT,
    as_graph,
    relu_split,
    relu_tensors,
)
from nnbound.verify.deadline import Deadline, DeadlineReached, checked_timeout
from nnbound.verify.input_split import input_split
from nnbound.verify.root_bounds import disjuncts_per_pass, root_bounds
from nnbound.verify.spec import StackedSpec
from nnbound.verify.spec_batch import SpecBatch
from nnbound.verify.vnnlib import Property, read_vnnlib

RESULTS = (UNSAT, SAT, UNKNOWN, TIMEOUT)
# Coefficients of the widest tensor one input-split round may carry on wide graphs (a cGAN
# round of 1,024 boxes overran a deadline by 3.8 s).
_ROUND_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class VerifyOptions:
    """Knobs of :func:`verify` (the defaults suit CPU runs of VNN-COMP-sized instances).

    Attributes:
        seed: random seed of the attacks.
        attack_share: fraction of the timeout the first attack may use (at most
            ``attack_max_s``).
        attack_max_s: cap on the first attack's time.
        root_alpha_steps: alpha-CROWN steps on each disjunct's whole box.
        input_split_max_dims: disjuncts whose box lets at most this many input coordinates
            vary use input splitting (fixed coordinates do not count).
        input_batch / relu_batch: sub-domains bounded together in each search.
        input_alpha_steps / relu_alpha_steps / activation_alpha_steps: alpha-CROWN steps per
            batch in each search (input splitting, ReLU splitting, activation-interval
            splitting for other activations).
        bab: run branch and bound at all (off: attack + bounds only).
        disjunct_batch: disjuncts attacked and bounded together (1: one by one).
        forward_width_per_free: on boxes input splitting takes, graphs whose widest tensor
            has at least this many entries per free input coordinate get forward-mode
            intermediate bounds: a backward pass per entry costs more there than the looser
            bounds cost in extra splits (measured: a 5-input ACAS Xu net, 50 wide, went
            from 0.9 s to a timeout with them; nn4sys, 768 entries per free coordinate, and
            the cGAN, 7,200, only get through their sub-boxes with them).
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
    activation_alpha_steps: int = 8
    bab: bool = True
    disjunct_batch: int = 256
    forward_width_per_free: int = 64


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


class _Run:
    """One :func:`verify` call: the clock, the stage reached and the counters."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.start = time.monotonic()
        self.stage = "-"
        self.stats = stats

    def done(
        self, status: str, stage: str, cex: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> VerificationResult:
        pair = None if cex is None else (cex[0].cpu().numpy(), cex[1].cpu().numpy())
        return VerificationResult(status, pair, time.monotonic() - self.start, stage, self.stats)

    def add_stats(self, stage: str, stats: dict[str, float | str]) -> None:
        for k, v in stats.items():
            key = f"{stage}:{k}"
            # Several disjuncts: counters add up, other entries keep the last value.
            old = self.stats.get(key)
            both = isinstance(v, (int, float)) and isinstance(old, (int, float))
            self.stats[key] = old + v if both else v  # type: ignore[operator]


def verify(
    net: Network | Graph,
    prop: Property,
    *,
    timeout: float = 60.0,
    options: VerifyOptions | None = None,
) -> VerificationResult:
    """Decide ``prop`` on ``net`` within ``timeout`` seconds (see the module docstring).

    The answer comes within ``timeout`` plus one engine node's backward step, one PGD step
    or one leaf LP (the checks' granularity; see :mod:`nnbound.verify.deadline`). A timeout
    that is not a finite number > 0 raises InputError.
    """
    timeout = checked_timeout(timeout)
    opts = options or VerifyOptions()
    run = _Run({"disjuncts": len(prop.disjuncts)})
    deadline = Deadline(run.start + timeout)
    _check_sizes(net, prop)
    if not prop.disjuncts:
        return run.done(UNSAT, "empty")
    try:
        return _decide(net, prop, timeout, deadline, opts, run)
    except DeadlineReached:
        return run.done(TIMEOUT, run.stage)


def _decide(
    net: Network | Graph,
    prop: Property,
    timeout: float,
    deadline: Deadline,
    opts: VerifyOptions,
    run: _Run,
) -> VerificationResult:
    net = net.to(dtype=torch.float64)
    graph = as_graph(net)
    dev = net.device
    gen = torch.Generator(device=dev).manual_seed(int(opts.seed))
    specs = [StackedSpec.make(d, torch.float64, dev) for d in prop.disjuncts]

    # 1. A cheap attack on every disjunct at once.
    run.stage = "attack"
    # One budget for all chunks of disjuncts (thousands of them must not multiply it).
    attack_until = deadline.sooner(min(opts.attack_max_s, opts.attack_share * timeout))
    for group in _chunks(specs, opts.disjunct_batch):
        if attack_until.passed():
            break
        found = attack_batch(net, SpecBatch.make(group), deadline=attack_until, generator=gen)
        if found is not None:
            return run.done(SAT, "attack", (found[1], found[2]))
    deadline.check()

    # 2. CROWN then alpha-CROWN on each whole box, many disjuncts per pass.
    run.stage = "crown"
    low_dim = max(s.free_dims for s in specs) <= opts.input_split_max_dims and opts.bab
    # Input splitting closes small boxes faster than parameter optimisation tightens them:
    # there, only a few steps on the final bound's parameters (cheap), no intermediate ones.
    steps = min(opts.root_alpha_steps, 5) if low_dim else opts.root_alpha_steps
    batch = SpecBatch.make(specs)
    free = max(s.free_dims for s in specs)
    forward = low_dim and graph.widest >= opts.forward_width_per_free * max(1, free)
    run.stats["forward_intermediate"] = forward
    # Boxes per input-split round: a round's final backward pass carries coefficients of the
    # widest tensor for every box, and deadlines are checked between its nodes.
    box_batch = opts.input_batch
    if forward:
        box_batch = max(1, min(box_batch, _ROUND_ELEMENTS // graph.widest))
    roots = root_bounds(
        graph,
        batch,
        deadline,
        alpha_steps=steps,
        optimize_intermediate=False if low_dim else None,
        per_pass=disjuncts_per_pass(graph, batch, opts.disjunct_batch),
        forward=forward,
    )
    run.stats.update({f"refuted:{k}": v for k, v in roots.refuted_by.items()})
    if not roots.open:
        return run.done(UNSAT, "alpha-crown" if roots.refuted_by["alpha-crown"] else "crown")
    remaining = roots.open
    # An undecided search leaves time: a longer attack may still find a counterexample, but
    # not for the whole remaining budget (a verifier that cannot decide should say so).
    final_cap = max(2.0, 0.25 * timeout)
    if not opts.bab:
        return _final_attack(net, remaining, deadline.sooner(final_cap), gen, run)

    # 3. Branch and bound: input-split disjuncts together, the others one by one.
    try:
        relu_tensors(graph)
        piecewise = True
    except UnsupportedError:
        piecewise = False
    undecided = []
    stage = "bab"
    # Disjuncts input splitting takes share its rounds: their boxes travel together (nn4sys:
    # hundreds of one-coordinate disjuncts close in a handful of rounds, not hundreds).
    small = [(s, p) for s, p in remaining if s.free_dims <= opts.input_split_max_dims]
    remaining = [(s, p) for s, p in remaining if s.free_dims > opts.input_split_max_dims]
    if small:
        run.stage = stage = "bab-input"
        res = input_split(
            net,
            SpecBatch.make([s for s, _ in small]),
            deadline.end,
            root_pre=_stacked_pre([p for _, p in small]),
            batch=box_batch,
            alpha_steps=opts.input_alpha_steps,
            forward=forward,
        )
        run.add_stats(stage, res.stats)
        if res.status in (SAT, TIMEOUT):
            return run.done(res.status, stage, res.counterexample)
        if res.status == UNKNOWN:
            undecided.extend(small)
    for spec, pre in remaining:
        run.stage = stage
        deadline.check()
        if not piecewise:
            # ReLU splitting decides its leaves as affine maps: (leaky) ReLU graphs only;
            # other activations get their input intervals split.
            stage = "bab-activation"
            res = activation_split(
                net,
                spec,
                deadline.end,
                root_pre=pre,
                batch=opts.relu_batch,
                alpha_steps=opts.activation_alpha_steps,
            )
        else:
            stage = "bab-relu"
            res = relu_split(
                net,
                spec,
                deadline.end,
                root_pre=pre,
                batch=opts.relu_batch,
                alpha_steps=opts.relu_alpha_steps,
            )
        run.add_stats(stage, res.stats)
        if res.status == SAT:
            return run.done(SAT, stage, res.counterexample)
        if res.status == TIMEOUT:
            return run.done(TIMEOUT, stage)
        if res.status == UNKNOWN:
            undecided.append((spec, pre))
    if not undecided:
        return run.done(UNSAT, stage)
    return _final_attack(net, undecided, deadline.sooner(final_cap), gen, run)


def _stacked_pre(pres: list[Pre]) -> Pre:
    """Per-disjunct bounds (``(1, *shape)`` each) as one ``(D, *shape)`` pair per tensor."""
    return {
        name: (torch.cat([p[name][0] for p in pres]), torch.cat([p[name][1] for p in pres]))
        for name in pres[0]
    }


def _chunks(items: list[StackedSpec], size: int) -> list[list[StackedSpec]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _final_attack(
    net: Network | Graph,
    pending: list[tuple[StackedSpec, Pre]],
    deadline: Deadline,
    gen: torch.Generator,
    run: _Run,
) -> VerificationResult:
    """Spend the time left on a longer attack (more samples, restarts and steps) of the
    pending disjuncts, all at once; ``unknown`` when none succeeds."""
    run.stage = "attack"
    if deadline.left() > 0.5:
        found = attack_batch(
            net,
            SpecBatch.make([spec for spec, _ in pending]),
            deadline=deadline,
            samples=2048,
            restarts=32,
            steps=200,
            generator=gen,
        )
        if found is not None:
            return run.done(SAT, "attack", (found[1], found[2]))
    return run.done(UNKNOWN, "-")


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
    device: torch.device | str | None = None,
) -> VerificationResult:
    """Load an ONNX (or any supported) model and a VNN-LIB file and :func:`verify` them on
    ``device`` (default: where the loader puts the network, the CPU); a ``sat`` result also
    records whether onnxruntime agrees (``stats["onnxruntime_agrees"]``) and becomes
    ``unknown`` when it does not.
    The timeout counts from the call (loading included)."""
    from nnbound.network.load import load_model

    timeout = checked_timeout(timeout)
    start = time.monotonic()
    net = load_model(model)
    if device is not None:
        net = net.to(device=torch.device(device))
    prop = read_vnnlib(prop_path)
    left = timeout - (time.monotonic() - start)
    if left <= 0:
        # Loading alone used the whole limit.
        return VerificationResult(TIMEOUT, None, time.monotonic() - start, "load")
    res = verify(net, prop, timeout=left, options=options)
    res.time = time.monotonic() - start
    if res.status == SAT and res.counterexample is not None and str(model).endswith(".onnx"):
        agrees = onnxruntime_check(model, prop, res.counterexample[0])
        res.stats["onnxruntime_agrees"] = agrees
        if agrees is False:
            # The float64 run says counterexample, the file's own runtime (float32) says no:
            # the point sits on the boundary to within rounding. A checker running the file
            # would reject it, so it is no answer.
            res.status, res.counterexample, res.stage = UNKNOWN, None, "onnxruntime-rejected"
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
