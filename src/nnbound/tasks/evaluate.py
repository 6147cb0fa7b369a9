"""The robustness sandwich per input: certified lower bounds <= CLEVER <= attack distances.

For each input ``x`` (label ``y``) and target (a class ``t``, or untargeted) in one norm:

* **certified** radii (sound lower bounds on the minimal adversarial distortion): the layer-wise
  bound methods (``crown``, ``fastlin``, ``ibp``, ... via
  :func:`~nnbound.tasks.radius.certified_radius`) and the Jacobian methods (``recurjac``,
  ``fastlip`` via :func:`~nnbound.tasks.jacobian_radius.jacobian_certified_radius`);
* the **CLEVER** score (an estimate, not a bound: :mod:`nnbound.clever`);
* **attack** distances (upper bounds: the distance of a re-checked adversarial example):
  ``pgd`` (:class:`~nnbound.attacks.MinimalPGD` in the evaluation norm), ``cw``
  (:class:`~nnbound.attacks.CarliniWagnerL2`, an L2 attack) and ``ead``
  (:class:`~nnbound.attacks.EAD`, an L1 attack). Every attack distance is measured in the
  evaluation norm: an adversarial example bounds the minimal distortion in any norm, an attack
  built for another norm just bounds it less tightly.

Verdicts per record (:class:`Flag`):

* ``bug``: a certified radius above an attack distance. Impossible for a sound certificate and
  a real adversarial example: never ignore it.
* ``clever_above_attack``: the CLEVER score exceeds an attack distance -- the estimate claims
  more robustness than an example disproves (the gradient-masking critique of CLEVER).
* ``clever_below_certified``: CLEVER is below a proven lower bound (the estimate is
  conservative there; reported, not an error).
* ``no_attack``: no attack found an example (no upper bound for this input).

Targets: untargeted rows (``-1``) attack every other class and certify every margin; a targeted
row certifies the margin ``y - t`` and counts an attack only when ``t`` becomes the arg-max,
which implies that margin is negative, so ``certified <= attack`` holds in both cases.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from nnbound.attacks import EAD, Attack, AttackResult, CarliniWagnerL2, MinimalPGD
from nnbound.bounds.methods import ALL_METHODS
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.norms import norm_name, parse_norm
from nnbound.tasks.radius import certified_radius
from nnbound.tasks.targets import UNTARGETED

JACOBIAN_CERTIFIED = ("recurjac", "fastlip")
ESTIMATES = ("clever",)
ATTACK_METHODS = ("pgd", "cw", "ead")
EVALUATE_METHODS = ("crown", "fastlin", "ibp", "recurjac", "clever", "pgd", "cw", "ead")
"""The methods ``nnbound evaluate`` lists; any other bound method of
:data:`~nnbound.bounds.methods.ALL_METHODS` is accepted as a certified method too."""

ATTACK_NORM = {"cw": 2.0, "ead": 1.0}
"""The norm each fixed-norm attack minimises (``pgd`` works in the evaluation norm)."""

FLAG_KINDS = ("bug", "clever_above_attack", "clever_below_certified", "no_attack")

# Relative slack before a certified radius above an attack distance is called a bug: both are
# float64 numbers computed from float32 models, so exact ties may differ in the last bits.
BUG_RTOL = 1e-6


def method_kind(name: str) -> str:
    """``"certified"``, ``"estimate"`` or ``"attack"`` (InputError for an unknown name)."""
    if name in ESTIMATES:
        return "estimate"
    if name in ATTACK_METHODS:
        return "attack"
    if name in JACOBIAN_CERTIFIED or name in ALL_METHODS:
        return "certified"
    raise InputError(
        f"unknown method {name!r}; choose from {', '.join(EVALUATE_METHODS)} "
        f"(or any bound method: {', '.join(ALL_METHODS)})"
    )


def clever_available() -> str | None:
    """None if the CLEVER estimator can be imported, else why not."""
    try:
        from nnbound.clever import Clever, fit_reverse_weibull  # noqa: F401
    except ImportError as exc:
        return f"nnbound.clever is not importable ({exc})"
    return None


def jacobian_available(net: Network | Graph) -> str | None:
    """None if RecurJac / Fast-Lip radii can be computed for ``net``, else why not."""
    try:
        from nnbound.tasks.jacobian_radius import jacobian_certified_radius  # noqa: F401
    except ImportError as exc:
        return f"the Jacobian bounds are not importable ({exc})"
    if isinstance(net, Graph):
        return "Jacobian bounds (Fast-Lip, RecurJac) are defined for sequential networks"
    # Any sequential network: dense and conv layers alike (the same Jacobian bounds `lipschitz`
    # and `robustness --jacbndalg` run on CNNs).
    return None


def _piecewise_linear(net: Network | Graph) -> bool:
    if isinstance(net, Graph):
        from nnbound.ops.base import OpKind
        from nnbound.ops.registry import get_op

        ops = [get_op(n.op, n) for n in net.nodes]
        return all(op.traits.piecewise_linear for op in ops if op.kind is OpKind.ELEMENTWISE)
    return all(a.op.traits.piecewise_linear for a in net.activations)


Model = Network | Graph | nn.Module
"""What :func:`evaluate` runs on: a :class:`Network` or :class:`Graph` (every method; the
Jacobian bounds on sequential networks only), or a differentiable ``nn.Module`` returning
logits that carries ``input_range`` (its data domain) and ``name`` attributes: CLEVER and the
attacks only, since certified bounds need nnbound's IR (convert it with
:func:`nnbound.network.from_torch.from_torch`)."""


def certified_unavailable(net: Model) -> str | None:
    """None for a :class:`Network` or :class:`Graph`; for a torch module, why certified
    bounds are not run."""
    if isinstance(net, (Network, Graph)):
        return None
    name = getattr(net, "name", type(net).__name__)
    return (
        f"certified bounds are not available for {name}: it is a torch module (residual / "
        "concatenating graph) outside nnbound's sequential network IR; CLEVER and the "
        "attacks run on any differentiable model"
    )


def _range_of(net: Model) -> tuple[float, float] | None:
    r = getattr(net, "input_range", None)
    return None if r is None else (float(r[0]), float(r[1]))


def _as_input(net: Model, x: Tensor) -> Tensor:
    if isinstance(net, (Network, Graph)):
        return net.check_input(x)
    x = torch.as_tensor(x)
    tensors = (*net.parameters(), *net.buffers())
    ref = next((t for t in tensors if torch.is_floating_point(t)), None)
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype)
    shape = getattr(net, "input_shape", None)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InputError(f"inputs of shape {tuple(x.shape[1:])}, the model expects {shape}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("the inputs contain NaN or inf values")
    return x


def available_methods(net: Model) -> tuple[list[str], dict[str, str]]:
    """The default methods for ``net`` and, for each left out, why.

    Fast-Lin and CROWN-adaptive need ReLU / leaky-ReLU activations (``crown-general`` replaces
    ``crown`` otherwise); ``fastlip`` likewise; RecurJac is opt-in (slow); ``clever`` needs
    :mod:`nnbound.clever`.
    """
    chosen: list[str] = []
    missing: dict[str, str] = {}
    if (why := certified_unavailable(net)) is not None:
        missing.update(dict.fromkeys(("crown", "fastlin", "ibp", "recurjac"), why))
        if (why := clever_available()) is None:
            chosen.append("clever")
        else:
            missing["clever"] = why
        return [*chosen, *ATTACK_METHODS], missing
    if _piecewise_linear(net):
        chosen += ["crown", "fastlin", "ibp"]
    else:
        chosen += ["crown-general", "ibp"]
        missing["crown"] = missing["fastlin"] = "needs ReLU / leaky-ReLU activations"
    # RecurJac costs seconds per image on an MNIST MLP (its integral takes --lipsteps Jacobian
    # bounds per search step); it is left to --methods so the default run stays quick.
    why = jacobian_available(net)
    missing["recurjac"] = why or "slow (seconds per image): add it with --methods"
    why = clever_available()
    if why is None:
        chosen.append("clever")
    else:
        missing["clever"] = why
    chosen += list(ATTACK_METHODS)
    return chosen, missing


def parse_methods(spec: str | Sequence[str] | None, net: Model) -> list[str]:
    """Methods from a comma list (None/``"auto"`` = :func:`available_methods`), validated:
    unknown names and unavailable methods raise a one-line error."""
    if spec is None or spec == "auto" or spec == "all":
        return available_methods(net)[0]
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        method_kind(name)
        if method_kind(name) == "certified" and (why := certified_unavailable(net)):
            raise UnsupportedError(f"--methods {name}: {why}")
        if name == "clever" and (why := clever_available()) is not None:
            raise UnsupportedError(f"--methods clever: {why}; leave clever out")
        if name in JACOBIAN_CERTIFIED and (why := jacobian_available(net)) is not None:
            raise UnsupportedError(f"--methods {name}: {why}")
        if name in ("crown", "fastlin", "fastlip") and not _piecewise_linear(net):
            raise UnsupportedError(
                f"--methods {name} needs ReLU / leaky-ReLU activations; use crown-general"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise InputError("no methods given")
    return out


@dataclass(frozen=True)
class EvaluateSettings:
    """How much work each method does (defaults: fast enough for 10 MNIST images a minute).

    Attributes:
        eps0, steps: certified binary search start and evaluations.
        bounded_input: certify over the ball intersected with the data domain.
        attack_clip: attacks clip their examples to the data domain (real images). Must be on
            with ``bounded_input`` (an unclipped example is no counterexample to a certificate
            over the clipped ball).
        jacobian_lipsteps: pieces of the RecurJac / Fast-Lip Lipschitz integral.
        clever_nsamp, clever_niters, clever_batch: CLEVER samples per batch, batches,
            rows per pass (reference 1024 x 500).
        clever_share: targets share CLEVER's samples (faster for untargeted).
        pgd_steps, pgd_restarts, pgd_search_steps: PGD iterations, restarts and eps-search
            runs.
        cw_binary_steps, cw_steps, cw_lr, cw_const: Carlini-Wagner search over c, Adam
            iterations, learning rate, first c.
        ead_binary_steps, ead_steps, ead_lr, ead_const, ead_beta: EAD likewise, and its L1
            weight (0.05, not the reference's 1e-3: with 100 iterations a larger weight is what
            makes the examples sparse; on MNIST it brings EAD's L1 distances to PGD-L1's).
        seed: seeds CLEVER (per image: seed + dataset index) and the attacks.
        batch_size: inputs certified / attacked together.
    """

    eps0: float = 0.005
    steps: int = 15
    bounded_input: bool = False
    attack_clip: bool = True
    jacobian_lipsteps: int = 10
    clever_nsamp: int = 128
    clever_niters: int = 40
    clever_batch: int = 1024
    clever_share: bool = True
    pgd_steps: int = 40
    pgd_restarts: int = 1
    pgd_search_steps: int = 10
    cw_binary_steps: int = 6
    cw_steps: int = 100
    cw_lr: float = 0.1
    cw_const: float = 1.0
    ead_binary_steps: int = 6
    ead_steps: int = 100
    ead_lr: float = 0.01
    ead_const: float = 1.0
    ead_beta: float = 0.05
    seed: int = 1228
    batch_size: int = 100

    def check(self) -> None:
        if not (math.isfinite(self.eps0) and self.eps0 > 0):
            raise InputError(f"the initial eps must be > 0, got {self.eps0}")
        for name in (
            "steps",
            "jacobian_lipsteps",
            "clever_nsamp",
            "clever_niters",
            "clever_batch",
            "pgd_steps",
            "pgd_restarts",
            "pgd_search_steps",
            "cw_binary_steps",
            "cw_steps",
            "ead_binary_steps",
            "ead_steps",
            "batch_size",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if self.bounded_input and not self.attack_clip:
            raise InputError(
                "certifying over the data domain (bounded input) needs attacks that clip to it: "
                "an unclipped example is no counterexample to that certificate"
            )


@dataclass(frozen=True)
class Flag:
    """One remark on a record: ``kind`` (one of :data:`FLAG_KINDS`) and a sentence."""

    kind: str
    message: str


@dataclass(frozen=True)
class SandwichRecord:
    """The sandwich of one input and target.

    Attributes:
        index: the input's index in its source (dataset row).
        label: the class ``y``.
        target: the target class, or -1 for untargeted.
        margin: ``f_y - f_t`` at the clean input (untargeted: minus the best other logit).
        certified: method -> certified radius (>= 0).
        clever: the CLEVER score, NaN when not run.
        attacks: attack -> distance of its re-checked example in the evaluation norm (inf when
            it found none).
        seconds: method -> time spent on this input (a batched stage's time is split evenly).
        flags: the verdict's remarks (empty when ``certified <= clever <= attack`` holds).
    """

    index: int
    label: int
    target: int
    margin: float
    certified: Mapping[str, float]
    clever: float
    attacks: Mapping[str, float]
    seconds: Mapping[str, float]
    flags: tuple[Flag, ...] = ()

    @property
    def best_certified(self) -> float:
        """The largest certified radius (all are sound, so the largest is), NaN if none."""
        return max(self.certified.values()) if self.certified else math.nan

    @property
    def best_attack(self) -> float:
        """The smallest attack distance (inf if no attack succeeded, NaN if none ran)."""
        return min(self.attacks.values()) if self.attacks else math.nan

    @property
    def verdict(self) -> str:
        """``ok``, or the flag kinds joined by ``+`` (``BUG`` first when present)."""
        kinds = [f.kind for f in self.flags]
        if not kinds:
            return "ok"
        order = [k for k in FLAG_KINDS if k in kinds]
        return "+".join("BUG" if k == "bug" else k for k in order)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "target": "untargeted" if self.target == UNTARGETED else self.target,
            "margin": self.margin,
            "certified": dict(self.certified),
            "clever": self.clever,
            "attacks": dict(self.attacks),
            "best_certified": self.best_certified,
            "best_attack": self.best_attack,
            "verdict": self.verdict,
            "flags": [{"kind": f.kind, "message": f.message} for f in self.flags],
            "seconds": dict(self.seconds),
        }


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Every record of one ``evaluate`` run plus what produced it.

    Attributes:
        model: the model's name.
        norm: the evaluation norm (1, 2 or inf).
        methods: the methods run, in order.
        records: one :class:`SandwichRecord` per (input, target).
        stage_seconds: method -> wall-clock seconds of its whole stage.
        settings: the :class:`EvaluateSettings` used.
        inputs: ``(M, *input_shape)`` the inputs (for reports).
        examples: attack -> ``(M, *input_shape)`` its adversarial examples (the input itself
            where it failed), for reports.
        input_range: the model's data domain.
    """

    model: str
    norm: float
    methods: tuple[str, ...]
    records: tuple[SandwichRecord, ...]
    stage_seconds: Mapping[str, float]
    settings: EvaluateSettings
    inputs: Tensor
    examples: Mapping[str, Tensor] = field(default_factory=dict)
    input_range: tuple[float, float] | None = None

    @property
    def certified_methods(self) -> list[str]:
        return [m for m in self.methods if method_kind(m) == "certified"]

    @property
    def attack_methods(self) -> list[str]:
        return [m for m in self.methods if method_kind(m) == "attack"]

    @property
    def has_clever(self) -> bool:
        return "clever" in self.methods

    def values(self, method: str) -> list[float]:
        """Every record's value of ``method`` (radius, score or distance)."""
        kind = method_kind(method)
        if kind == "certified":
            return [r.certified[method] for r in self.records]
        if kind == "attack":
            return [r.attacks[method] for r in self.records]
        return [r.clever for r in self.records]

    def count(self, kind: str) -> int:
        """Number of records with a flag of ``kind``."""
        return sum(any(f.kind == kind for f in r.flags) for r in self.records)

    def summary(self) -> dict[str, Any]:
        """Per method: mean and median over finite values, successes; and the flag counts."""
        per_method: dict[str, dict[str, float | int]] = {}
        for m in self.methods:
            vals = [v for v in self.values(m) if math.isfinite(v)]
            per_method[m] = {
                "kind": method_kind(m),
                "mean": statistics.fmean(vals) if vals else math.nan,
                "median": statistics.median(vals) if vals else math.nan,
                "finite": len(vals),
                "seconds": float(self.stage_seconds.get(m, 0.0)),
            }
        return {
            "records": len(self.records),
            "ok": sum(not r.flags for r in self.records),
            "bugs": self.count("bug"),
            "clever_above_attack": self.count("clever_above_attack"),
            "clever_below_certified": self.count("clever_below_certified"),
            "no_attack": self.count("no_attack"),
            "methods": per_method,
            "total_seconds": float(sum(self.stage_seconds.values())),
        }

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "model": self.model,
            "norm": norm_name(self.norm),
            "methods": list(self.methods),
            "attack_norms": {
                m: norm_name(ATTACK_NORM.get(m, self.norm)) for m in self.attack_methods
            },
            "settings": asdict(self.settings),
            "records": [r.to_dict() for r in self.records],
            "summary": self.summary(),
            "stage_seconds": dict(self.stage_seconds),
        }

    def table(self) -> tuple[list[str], list[list[object]]]:
        """Headers and rows of the per-record table (one column per method)."""
        headers = ["index", "label", "target", "margin", *self.methods, "verdict"]
        rows: list[list[object]] = []
        for r in self.records:
            row: list[object] = [
                r.index,
                r.label,
                "untargeted" if r.target == UNTARGETED else r.target,
                r.margin,
            ]
            for m in self.methods:
                row.append(self.values_of(r, m))
            row.append(r.verdict)
            rows.append(row)
        return headers, rows

    def values_of(self, r: SandwichRecord, method: str) -> float:
        kind = method_kind(method)
        if kind == "certified":
            return r.certified[method]
        if kind == "attack":
            return r.attacks[method]
        return r.clever


ProgressFn = Callable[[str, int], None]
"""``progress(method, n)``: ``n`` more inputs done by ``method`` (``n = 0`` when its stage
starts)."""


def sandwich_flags(
    certified: Mapping[str, float], clever: float, attacks: Mapping[str, float]
) -> tuple[Flag, ...]:
    """The verdict's remarks for one record (see the module docstring)."""
    flags: list[Flag] = []
    found = {a: d for a, d in attacks.items() if math.isfinite(d)}
    for c, r in certified.items():
        for a, d in found.items():
            if r > d * (1 + BUG_RTOL):
                flags.append(
                    Flag(
                        "bug",
                        f"certified {c} radius {r:.6g} > {a} attack distance {d:.6g}: a sound "
                        "bound can never exceed a real adversarial example",
                    )
                )
    if math.isfinite(clever):
        above = [(a, d) for a, d in found.items() if clever > d]
        for a, d in above:
            flags.append(
                Flag(
                    "clever_above_attack",
                    f"CLEVER {clever:.6g} > {a} attack distance {d:.6g}: the estimate "
                    "overstates robustness here (gradient masking critique)",
                )
            )
        below = [(c, r) for c, r in certified.items() if clever < r]
        for c, r in below:
            flags.append(
                Flag(
                    "clever_below_certified",
                    f"CLEVER {clever:.6g} < certified {c} radius {r:.6g}: the estimate is "
                    "below a proven lower bound",
                )
            )
    if attacks and not found:
        flags.append(Flag("no_attack", "no attack found an adversarial example"))
    return tuple(flags)


def _margins(logits: Tensor, labels: Tensor, targets: Tensor) -> list[float]:
    out = []
    for lg, y, t in zip(logits.to(torch.float64), labels.tolist(), targets.tolist(), strict=True):
        other = lg.clone()
        other[y] = -math.inf
        out.append(float(lg[y] - (other.max() if t == UNTARGETED else lg[t])))
    return out


def _clever_scores(
    net: Model,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    indices: Sequence[int],
    p: float,
    s: EvaluateSettings,
    progress: ProgressFn | None,
) -> list[float]:
    """CLEVER score in norm ``p`` per input (one :class:`~nnbound.clever.Clever` sampling run
    each). Only the evaluation norm's maxima are fitted: the Weibull fits dominate CLEVER's
    time on CPU and the other two norms' scores are not used here."""
    from nnbound.clever import NORM_KEYS, Clever, fit_reverse_weibull

    key = norm_name(p)
    col = NORM_KEYS.index(key)
    scores = []
    for i in range(x.shape[0]):
        t = int(targets[i])
        est = Clever(
            nsamp=s.clever_nsamp,
            niters=s.clever_niters,
            batch_size=s.clever_batch,
            seed=s.seed + int(indices[i]),
            share_samples=s.clever_share,
            input_range=_range_of(net),
        )
        samples = est.collect(
            net, x[i], label=int(labels[i]), targets="untargeted" if t == UNTARGETED else [t]
        )
        best = math.inf
        for ti in range(len(samples.targets)):
            fit = fit_reverse_weibull(
                samples.maxima[ti, col],
                method=est.method,
                shape_reg=float(est.shape_reg),
                start=est.start,
                penalise=est.penalise,
            )
            g = float(samples.g_x0[ti])
            score = g / fit.lip if fit.lip > 0 else (math.inf if g > 0 else 0.0)
            best = min(best, score)
        scores.append(best)
        if progress is not None:
            progress("clever", 1)
    return scores


def _attack(
    name: str, p: float, s: EvaluateSettings, domain: tuple[float, float] | str | None
) -> Attack:
    common: dict[str, Any] = {"domain": domain, "seed": s.seed, "batch_size": s.batch_size}
    if name == "pgd":
        return MinimalPGD(
            norm=p,
            steps=s.pgd_steps,
            restarts=s.pgd_restarts,
            search_steps=s.pgd_search_steps,
            **common,
        )
    if name == "cw":
        return CarliniWagnerL2(
            binary_steps=s.cw_binary_steps,
            steps=s.cw_steps,
            lr=s.cw_lr,
            initial_const=s.cw_const,
            **common,
        )
    return EAD(
        binary_steps=s.ead_binary_steps,
        steps=s.ead_steps,
        lr=s.ead_lr,
        initial_const=s.ead_const,
        beta=s.ead_beta,
        **common,
    )


def evaluate(
    net: Model,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    norm: float | str = "inf",
    methods: Sequence[str] | str | None = None,
    indices: Sequence[int] | Tensor | None = None,
    settings: EvaluateSettings | None = None,
    progress: ProgressFn | None = None,
) -> Evaluation:
    """The sandwich for each input.

    Args:
        net: the network (any device, float32 or float64), or a torch module with
            ``input_range`` and ``name`` attributes (see :data:`Model`; no certified methods).
        x: correctly classified inputs ``(M, *input_shape)``.
        labels: ``(M,)`` their classes.
        targets: ``(M,)`` target classes, -1 for untargeted.
        norm: ``1``, ``2`` or ``inf``.
        methods: names (see :data:`EVALUATE_METHODS`); None = :func:`available_methods`.
        indices: ``(M,)`` the inputs' indices in their source (default ``0..M-1``).
        settings: the work per method (:class:`EvaluateSettings`).
        progress: called as ``progress(method, n)`` as inputs finish.

    Returns:
        An :class:`Evaluation`.
    """
    s = settings or EvaluateSettings()
    s.check()
    p = parse_norm(norm)
    chosen = parse_methods(methods, net)
    x = _as_input(net, x)
    m = x.shape[0]
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    targets = torch.as_tensor(targets).reshape(-1).long().cpu()
    if labels.shape[0] != m or targets.shape[0] != m:
        raise InputError("x, labels and targets must have the same length")
    idx = list(range(m)) if indices is None else [int(i) for i in torch.as_tensor(indices)]
    with torch.no_grad():
        logits = net(x).cpu()
    wrong = (logits.argmax(1) != labels).nonzero().flatten().tolist()
    if wrong:
        raise InputError(
            f"inputs {[idx[i] for i in wrong]} are misclassified: the sandwich is defined for "
            "correctly classified inputs"
        )
    domain_cert = _range_of(net) if s.bounded_input else None
    attack_domain = _range_of(net) if s.attack_clip else None
    margins = _margins(logits, labels, targets)
    certified: dict[str, list[float]] = {}
    attacks: dict[str, list[float]] = {}
    examples: dict[str, Tensor] = {}
    clever: list[float] = [math.nan] * m
    stage: dict[str, float] = {}
    per_input: dict[str, list[float]] = {}
    bs = s.batch_size
    for method in chosen:
        kind = method_kind(method)
        if progress is not None:
            progress(method, 0)  # announce the stage before its first (possibly slow) batch
        t0 = time.perf_counter()
        times = [0.0] * m
        if kind == "certified":
            vals: list[float] = []
            for lo in range(0, m, bs):
                hi = min(m, lo + bs)
                tb = time.perf_counter()
                with torch.no_grad():
                    r = _certify(
                        net, method, x[lo:hi], labels[lo:hi], targets[lo:hi], p, s, domain_cert
                    )
                vals.extend(float(v) for v in r)
                share = (time.perf_counter() - tb) / (hi - lo)
                times[lo:hi] = [share] * (hi - lo)
                if progress is not None:
                    progress(method, hi - lo)
            certified[method] = vals
        elif kind == "estimate":
            tb = time.perf_counter()
            clever = _clever_scores(net, x, labels, targets, idx, p, s, progress)
            times = [(time.perf_counter() - tb) / max(m, 1)] * m
        else:
            attack = _attack(method, p, s, attack_domain)
            dists: list[float] = []
            advs: list[Tensor] = []
            for lo in range(0, m, bs):
                hi = min(m, lo + bs)
                tb = time.perf_counter()
                res: AttackResult = attack(net, x[lo:hi], labels[lo:hi], targets[lo:hi])
                dists.extend(float(d) for d in res.distance_in(p))
                advs.append(res.adversarial.detach().cpu())
                share = (time.perf_counter() - tb) / (hi - lo)
                times[lo:hi] = [share] * (hi - lo)
                if progress is not None:
                    progress(method, hi - lo)
            attacks[method] = dists
            examples[method] = torch.cat(advs) if advs else x[:0].cpu()
        stage[method] = time.perf_counter() - t0
        per_input[method] = times
    records = []
    for i in range(m):
        cert_i = {k: v[i] for k, v in certified.items()}
        att_i = {k: v[i] for k, v in attacks.items()}
        records.append(
            SandwichRecord(
                index=idx[i],
                label=int(labels[i]),
                target=int(targets[i]),
                margin=margins[i],
                certified=cert_i,
                clever=float(clever[i]),
                attacks=att_i,
                seconds={k: v[i] for k, v in per_input.items()},
                flags=sandwich_flags(cert_i, float(clever[i]), att_i),
            )
        )
    return Evaluation(
        model=getattr(net, "name", type(net).__name__),
        norm=p,
        methods=tuple(chosen),
        records=tuple(records),
        stage_seconds=stage,
        settings=s,
        inputs=x.detach().cpu(),
        examples=examples,
        input_range=_range_of(net),
    )


def _certify(
    net: Network | Graph,
    method: str,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    p: float,
    s: EvaluateSettings,
    domain: tuple[float, float] | None,
) -> Tensor:
    if method in JACOBIAN_CERTIFIED:
        from nnbound.tasks.jacobian_radius import jacobian_certified_radius

        layer = "crown-adaptive" if _piecewise_linear(net) else "crown-general"
        return jacobian_certified_radius(
            net,
            x,
            labels,
            targets,
            norm=p,
            method=method,
            layer_method=layer,
            lipsteps=s.jacobian_lipsteps,
            eps0=s.eps0,
            steps=s.steps,
            domain=domain,
        )
    return certified_radius(
        net, x, labels, targets, norm=p, method=method, eps0=s.eps0, steps=s.steps, domain=domain
    )


def best_examples(ev: Evaluation) -> tuple[list[str | None], Tensor]:
    """Per record the attack with the smallest distance (None if none succeeded) and its
    example ``(M, *input_shape)`` (the input itself where none succeeded)."""
    names: list[str | None] = []
    out = ev.inputs.clone()
    for i, r in enumerate(ev.records):
        found = {a: d for a, d in r.attacks.items() if math.isfinite(d)}
        if not found:
            names.append(None)
            continue
        a = min(found, key=lambda k: found[k])
        names.append(a)
        out[i] = ev.examples[a][i]
    return names, out


def with_settings(settings: EvaluateSettings, **changes: Any) -> EvaluateSettings:
    """A copy of ``settings`` with ``changes`` (unknown names raise InputError)."""
    known = set(EvaluateSettings.__dataclass_fields__)
    bad = set(changes) - known
    if bad:
        raise InputError(f"unknown evaluate setting(s): {', '.join(sorted(bad))}")
    return replace(settings, **changes)


__all__ = [
    "ATTACK_METHODS",
    "EVALUATE_METHODS",
    "FLAG_KINDS",
    "EvaluateSettings",
    "Evaluation",
    "Flag",
    "Model",
    "SandwichRecord",
    "available_methods",
    "best_examples",
    "certified_unavailable",
    "evaluate",
    "method_kind",
    "parse_methods",
    "sandwich_flags",
    "with_settings",
]
