"""The CLEVER estimator: sample gradient norms around an input, fit their maxima, form scores.

CLEVER (Weng et al., ICLR 2018) estimates the minimal adversarial distortion of a correctly
classified input ``x0`` (class ``c``) towards a target ``j`` as ``g(x0) / L``, where
``g(x) = f_c(x) - f_j(x)`` on logits and ``L`` estimates the local Lipschitz constant of ``g``
in the dual norm, ``max ||grad g(x)||_q`` over a ball around ``x0``. ``L`` is the right end point
of a reverse-Weibull distribution fitted to ``N_b`` per-batch maxima of ``||grad g||_q`` over
``N_s`` random samples each (extreme value theory). Untargeted CLEVER is the minimum over all
other classes. See ``/work/shared/reference/clever_spec.md`` for the reference's exact rules;
this module follows them, with these deliberate differences:

* samples are drawn on the model's device with a seeded ``torch.Generator`` per target (and
  per sampling ball), so a run is reproducible for the same settings and a target's numbers do
  not depend on which other targets are evaluated with it;
* ``nsamp`` samples per batch exactly (the reference silently dropped ``nsamp % batch_size``
  samples and raised ``nsamp`` to ``batch_size`` when smaller); ``batch_size`` only sets how
  many rows one forward/backward pass holds;
* rows of several targets share one autograd pass (each row carries its own ``e_c - e_j``
  output weights), so untargeted CLEVER is one stream of large passes; with
  ``share_samples=True`` all targets also share the samples: one forward pass, one backward per
  target (cheaper; each target's estimate has the same distribution, but targets become
  correlated, which the reference's independent runs are not);
* the paper's cap ``min(score, R)`` is available (``cap_at_radius=True``), off by default as in
  the reference code;
* order 2: the L1 and Linf scores are NaN (the reference copies the L2 value into them:
  "haven't implemented"); the power iteration takes at least two steps before its convergence
  test and loop B restarts from the same random vector as loop A; piecewise-linear models are
  refused (:class:`UnsupportedError`: their Hessian is 0 almost everywhere, the reference
  divides by zero there);
* a model is put in eval mode for the run (rows of a pass must not interact through dropout
  or batch-norm) and restored afterwards; it is never moved or cast in place (a copy is, when
  ``device``/``dtype`` differ from its own).

The estimator follows scikit-learn's convention: ``__init__`` only stores the settings (checked
when it is called), ``get_params``/``set_params`` read and change them.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nnbound.clever.sampling import (
    NORM_KEYS,
    SAMPLING_MODES,
    Sampler,
    norm_key,
    resolve_radii,
)
from nnbound.clever.transforms import apply_transform, check_transform
from nnbound.clever.weibull import (
    C_INIT,
    FIT_METHODS,
    PENALISED,
    START_RULES,
    WeibullFit,
    fit_reverse_weibull,
)
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Graph
from nnbound.network.network import Network

ProgressFn = Callable[[int], None]
"""Called with the number of (target, batch) maxima just finished."""

_PIECEWISE_LINEAR_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.PReLU,
    nn.RReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.MaxPool1d,
    nn.MaxPool2d,
)


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class CleverSamples:
    """What the sampling step collects for one input (the reference's ``.mat`` files).

    Attributes:
        label: the class ``c`` of ``x0`` (its prediction).
        targets: the target classes ``j``, length T.
        g_x0: ``(T,)`` float64, ``f_c(x0) - f_j(x0)`` at the clean input.
        grad_norm_x0: ``(T, 3)`` float64, ``||grad g(x0)||_q`` for the score norms
            ``p = 1, 2, inf`` (columns in :data:`NORM_KEYS` order, q the dual of p).
        maxima: ``(T, 3, niters)`` float64: per target and score norm the ``niters`` batch
            maxima to fit. Order 1: maxima of ``||grad g||_q`` (column ``"1"`` holds
            ``||grad g||_inf``, ``"2"`` ``||grad g||_2``, ``"inf"`` ``||grad g||_1``).
            Order 2: column ``"2"`` holds the batch maxima of ``|lambda|`` (the Hessian
            eigenvalue of §9), the other columns are NaN.
        logits: ``(K,)`` float64 clean logits.
        order: 1 or 2.
        settings: the sampling settings (nsamp, niters, sampling, sample_norm, radii, box...).
        seconds: wall-clock time of the sampling step.
    """

    label: int
    targets: tuple[int, ...]
    g_x0: np.ndarray
    grad_norm_x0: np.ndarray
    maxima: np.ndarray
    logits: np.ndarray
    order: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(int(t) for t in self.targets))
        object.__setattr__(self, "settings", _frozen(self.settings))
        t = len(self.targets)
        for name, shape in (("g_x0", (t,)), ("grad_norm_x0", (t, 3))):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise InputError(f"{name} has shape {arr.shape}, expected {shape}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        m = np.asarray(self.maxima, dtype=np.float64)
        if m.ndim != 3 or m.shape[:2] != (t, 3) or m.shape[2] < 1:
            raise InputError(f"maxima has shape {m.shape}, expected ({t}, 3, niters >= 1)")
        m.setflags(write=False)
        object.__setattr__(self, "maxima", m)
        lg = np.asarray(self.logits, dtype=np.float64).reshape(-1)
        lg.setflags(write=False)
        object.__setattr__(self, "logits", lg)
        if self.order not in (1, 2):
            raise InputError(f"order must be 1 or 2, got {self.order}")

    @property
    def niters(self) -> int:
        return int(self.maxima.shape[2])


@dataclass(frozen=True)
class TargetScore:
    """CLEVER against one target class ``j``.

    Attributes:
        target: ``j``.
        g_x0: ``f_c(x0) - f_j(x0)``.
        scores: score per norm key ``"1"``, ``"2"``, ``"inf"`` (order 2: only ``"2"``, the
            others NaN): ``g(x0) / L_q`` (order 1), or the root of
            ``g - ||grad g(x0)||_2 d - M d^2 / 2 = 0`` (order 2); capped at ``R_p`` if asked.
        fits: the :class:`WeibullFit` behind each score (order 2: only ``"2"``, fitted to the
            curvature maxima, ``fit.lip`` = M).
        grad_norm_x0: ``||grad g(x0)||_q`` per score norm key.
    """

    target: int
    g_x0: float
    scores: Mapping[str, float]
    fits: Mapping[str, WeibullFit]
    grad_norm_x0: Mapping[str, float]


@dataclass(frozen=True)
class CleverResult:
    """CLEVER scores of one input.

    Attributes:
        label: the class ``c``.
        per_target: one :class:`TargetScore` per target, in the order asked.
        scores: per norm key the minimum over ``per_target`` (the untargeted score when the
            targets are all other classes; the target's own score for a single target).
        argmin: per norm key the target achieving that minimum.
        order: 1 or 2.
        samples: the :class:`CleverSamples` the scores were fitted from.
        seconds: sampling time (as recorded in ``samples``) plus fitting time.
    """

    label: int
    per_target: tuple[TargetScore, ...]
    scores: Mapping[str, float]
    argmin: Mapping[str, int]
    order: int
    samples: CleverSamples
    seconds: float

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(t.target for t in self.per_target)

    def target(self, j: int) -> TargetScore:
        """The :class:`TargetScore` of class ``j``."""
        for t in self.per_target:
            if t.target == j:
                return t
        raise KeyError(f"class {j} was not a target")


# -- model handling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    f: nn.Module
    x0: Tensor  # one input, no batch axis
    box: tuple[float, float] | None
    device: torch.device
    dtype: torch.dtype


def _module_of(
    model: nn.Module | Network | Graph,
) -> tuple[nn.Module, tuple[float, float] | None]:
    if isinstance(model, Graph):
        from nnbound.network.graph_module import GraphModule

        return GraphModule(model).requires_grad_(False), model.input_range
    if isinstance(model, Network):
        from nnbound.network.to_torch import to_torch

        # Our own module: its parameters need no gradients (about 8% of a backward pass on a
        # small CNN). A caller's module is left as it is.
        return to_torch(model).requires_grad_(False), model.input_range
    if isinstance(model, nn.Module):
        return model, None
    raise InputError(
        f"model must be a torch.nn.Module or an nnbound Network, got {type(model).__name__}"
    )


def _param_device_dtype(f: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for t in (*f.parameters(), *f.buffers()):
        if torch.is_floating_point(t):
            return t.device, t.dtype
    return None, None


def _logits_of(f: nn.Module, xb: Tensor) -> Tensor | None:
    """``f(xb)`` if it is a ``(1, K)`` logit row, else None (the guess of the batch axis was
    wrong)."""
    was_training = f.training
    f.eval()  # a batch of one in training mode would trip batch-norm
    try:
        with torch.no_grad():
            out = f(xb)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return None
    finally:
        f.train(was_training)
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == 1 and out.shape[1] >= 2:
        return out
    return None


# -- the estimator ----------------------------------------------------------------------------


class Clever:
    """CLEVER robustness estimate (scikit-learn style: settings here, work in ``__call__``).

    Args:
        nsamp: samples per batch ``N_s`` (reference 1024); one maximum per batch.
        niters: number of batches ``N_b`` (reference 500) = maxima fed to the Weibull fit.
        sample_norm: ``1``, ``2`` or ``inf``: the ball of ``"reference"`` sampling (default 2,
            one ball for all three scores). Ignored by ``"ball"`` sampling.
        sampling: ``"reference"`` (the reference code's samplers with a random radial scale)
            or ``"ball"`` (uniform in the radius-R ball of each score's own norm, the
            paper/ART); see :mod:`nnbound.clever.sampling`.
        radius: ``R``: None for the reference's radii (L2 3, L1 30, Linf 0.1) times the width
            of the input range; one float for every norm; or a mapping norm -> float.
        order: 1 (CLEVER) or 2 (second-order CLEVER, L2 only, twice-differentiable models).
        transform: ``none``, ``reduce``, ``jpeg`` or ``png``: preprocessing evaluated with BPDA
            (:mod:`nnbound.clever.transforms`).
        seed: seeds every sampling generator (reference 1215); also the random target.
        batch_size: rows per forward/backward pass (reference 1024).
        device: where to sample and differentiate; None = the model's device.
        dtype: computation dtype; None = the model's.
        cap_at_radius: report ``min(score, R_p)`` (the paper's Algorithm 1; ART does). Off by
            default, as the reference code.
        method: Weibull fit ``"mle_reg"`` (reference), ``"mle"`` or ``"maxsamp"``.
        shape_reg: penalty coefficient of ``"mle_reg"`` (reference 0.01).
        start: initial loc/scale rule of the fit, ``"reference"`` or ``"moments"``.
        penalise: ``"scale"`` (the reference, bug-compatible) or ``"shape"``.
        input_range: the data box ``(lo, hi)`` samples are clipped to and radii are scaled by;
            ``"auto"`` = the Network's ``input_range`` (None for a plain module); None = no
            clipping, width 1.
        share_samples: all targets share the samples of a batch (faster, correlated targets).
        power_iters: order 2: maximum power-iteration steps (reference 500).
        power_tol: order 2: stop when ``||lambda_k - lambda_{k-1}||_2`` over the pass <= this.
        norms: the score norms to compute (default all of 1, 2, inf). The others are NaN; this
            saves their Weibull fits and, with ``"ball"`` sampling, their samples.
    """

    def __init__(
        self,
        nsamp: int = 1024,
        niters: int = 500,
        *,
        sample_norm: int | float | str = 2,
        sampling: str = "reference",
        radius: float | Mapping[str, float] | None = None,
        order: int = 1,
        transform: str = "none",
        seed: int = 1215,
        batch_size: int = 1024,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cap_at_radius: bool = False,
        method: str = "mle_reg",
        shape_reg: float = 0.01,
        start: str = "reference",
        penalise: str = "scale",
        input_range: tuple[float, float] | str | None = "auto",
        share_samples: bool = False,
        power_iters: int = 500,
        power_tol: float = 1e-3,
        norms: Sequence[int | float | str] = ("1", "2", "inf"),
    ) -> None:
        self.nsamp = nsamp
        self.niters = niters
        self.sample_norm = sample_norm
        self.sampling = sampling
        self.radius = radius
        self.order = order
        self.transform = transform
        self.seed = seed
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.cap_at_radius = cap_at_radius
        self.method = method
        self.shape_reg = shape_reg
        self.start = start
        self.penalise = penalise
        self.input_range = input_range
        self.share_samples = share_samples
        self.power_iters = power_iters
        self.power_tol = power_tol
        self.norms = norms

    _PARAMS = (
        "nsamp",
        "niters",
        "sample_norm",
        "sampling",
        "radius",
        "order",
        "transform",
        "seed",
        "batch_size",
        "device",
        "dtype",
        "cap_at_radius",
        "method",
        "shape_reg",
        "start",
        "penalise",
        "input_range",
        "share_samples",
        "power_iters",
        "power_tol",
        "norms",
    )

    def get_params(self) -> dict[str, Any]:
        """The settings, as given to ``__init__``."""
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any) -> Clever:
        """Change settings in place (unknown names raise :class:`InputError`); returns self."""
        for k, v in params.items():
            if k not in self._PARAMS:
                raise InputError(f"unknown CLEVER setting {k!r}; known: {', '.join(self._PARAMS)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        defaults = Clever().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"Clever({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every setting; :class:`InputError` names the first bad one. Called by
        :meth:`collect` and :meth:`evaluate` (scikit-learn style: not by ``__init__``)."""

        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")

        for name in ("nsamp", "niters", "batch_size", "power_iters"):
            positive_int(name)
        if self.sampling not in SAMPLING_MODES:
            raise InputError(
                f"unknown sampling {self.sampling!r}; use {' or '.join(SAMPLING_MODES)}"
            )
        norm_key(self.sample_norm)
        if self.order not in (1, 2) or isinstance(self.order, bool):
            raise InputError(f"order must be 1 or 2, got {self.order!r}")
        check_transform(self.transform)
        if self.method not in FIT_METHODS:
            raise InputError(f"unknown fit method {self.method!r}; use {', '.join(FIT_METHODS)}")
        if self.start not in START_RULES:
            raise InputError(f"unknown start rule {self.start!r}; use {', '.join(START_RULES)}")
        if self.penalise not in PENALISED:
            raise InputError(f"penalise must be 'scale' or 'shape', got {self.penalise!r}")
        if not (
            isinstance(self.shape_reg, (int, float))
            and math.isfinite(self.shape_reg)
            and self.shape_reg >= 0
        ):
            raise InputError(f"shape_reg must be finite and >= 0, got {self.shape_reg!r}")
        if not (isinstance(self.power_tol, (int, float)) and self.power_tol > 0):
            raise InputError(f"power_tol must be > 0, got {self.power_tol!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        resolve_radii(self.radius, 1.0)
        if not self.norm_keys():
            raise InputError("norms must name at least one of 1, 2, inf")

    # -- public entry points ------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module | Network,
        x: Tensor | np.ndarray,
        label: int | None = None,
        targets: str | int | Sequence[int] = "untargeted",
        *,
        progress: ProgressFn | None = None,
    ) -> CleverResult:
        """CLEVER scores of ``model`` at ``x``.

        Args:
            model: a differentiable ``nn.Module`` returning logits ``(B, K)``, or a Network.
            x: one input: its shape without a batch axis, or ``(1, *shape)``.
            label: the true class; None = the prediction. A label the model does not predict
                raises :class:`InputError` (the reference skips such inputs).
            targets: ``"untargeted"`` (every other class, the score is the minimum),
                ``"top2"``, ``"least"``, ``"random"``, a class number or a list of classes.
            progress: called after each (target, batch) maximum with the count finished.

        Returns:
            A :class:`CleverResult`.
        """
        samples = self.collect(model, x, label, targets, progress=progress)
        return self.evaluate(samples)

    def collect(
        self,
        model: nn.Module | Network,
        x: Tensor | np.ndarray,
        label: int | None = None,
        targets: str | int | Sequence[int] = "untargeted",
        *,
        progress: ProgressFn | None = None,
    ) -> CleverSamples:
        """The sampling step only (the reference's ``collect_gradients.py``): the batch maxima
        of the gradient norms, ``g(x0)`` and the settings; :meth:`evaluate` fits them."""
        self.validate()
        t0 = time.perf_counter()
        prep = self._prepare(model, x)
        if check_transform(self.transform) != "none" and prep.box is None:
            raise InputError(
                f"the {self.transform} transform needs the model's input range (to map pixels to "
                "8 bits); pass input_range=(lo, hi)"
            )
        f = prep.f
        was_training = f.training
        f.eval()  # dropout / batch-norm statistics must not couple the rows of a pass
        try:
            logits = self._logits(f, prep.x0)
            k = logits.shape[0]
            pred = int(logits.argmax())
            c = pred if label is None else int(label)
            if not 0 <= c < k:
                raise InputError(f"label {c} out of range [0, {k})")
            if c != pred:
                raise InputError(
                    f"the model predicts class {pred}, not the label {c}: CLEVER is defined for "
                    "correctly classified inputs (the reference skips such images)"
                )
            tgts = self._targets(logits, c, targets)
            # Row t of the output weights picks g_t = f_c - f_j: one pass serves all targets.
            weights = torch.zeros(len(tgts), k, device=prep.device, dtype=prep.dtype)
            weights[:, c] = 1.0
            rows = torch.arange(len(tgts), device=prep.device)
            weights[rows, torch.tensor(tgts, device=prep.device)] = -1.0
            g_x0, gn_x0 = self._at_x0(f, prep.x0, weights)
            radii = resolve_radii(self.radius, self._width(prep.box))
            if self.order == 2:
                self._check_twice_differentiable(model, f)
                maxima = self._collect_order2(prep, weights, tgts, radii, progress)
            else:
                maxima = self._collect_order1(prep, weights, tgts, radii, progress)
        finally:
            f.train(was_training)
        used = [NORM_KEYS.index(k) for k in self.norm_keys()] if self.order == 1 else [1]
        filled = maxima[:, used]
        if not bool(torch.isfinite(filled).all()):
            raise InputError("the model's gradients are NaN or inf at some samples")
        settings = {
            "nsamp": int(self.nsamp),
            "niters": int(self.niters),
            "sampling": self.sampling,
            "sample_norm": norm_key(self.sample_norm),
            "radii": radii,
            "box": list(prep.box) if prep.box is not None else None,
            "order": int(self.order),
            "transform": check_transform(self.transform),
            "seed": int(self.seed),
            "batch_size": int(self.batch_size),
            "share_samples": bool(self.share_samples),
            "device": str(prep.device),
            "dtype": str(prep.dtype).replace("torch.", ""),
            "n_features": int(prep.x0.numel()),
        }
        return CleverSamples(
            label=c,
            targets=tuple(tgts),
            g_x0=g_x0,
            grad_norm_x0=gn_x0,
            maxima=maxima.cpu().to(torch.float64).numpy(),
            logits=logits.cpu().to(torch.float64).numpy(),
            order=int(self.order),
            settings=settings,
            seconds=time.perf_counter() - t0,
        )

    def evaluate(self, samples: CleverSamples) -> CleverResult:
        """Fit the maxima of ``samples`` (the reference's ``clever.py``) and form the scores
        with this estimator's fit settings (method, shape_reg, start, penalise, cap)."""
        self.validate()
        t0 = time.perf_counter()
        radii = dict(samples.settings.get("radii") or resolve_radii(self.radius, 1.0))
        # the requested norms that these samples hold (ball-mode files may lack some)
        keys = [
            k
            for k in (self.norm_keys() if samples.order == 1 else ("2",))
            if not np.isnan(samples.maxima[:, NORM_KEYS.index(k)]).any()
        ]
        per_target = []
        for ti, j in enumerate(samples.targets):
            g = float(samples.g_x0[ti])
            fits: dict[str, WeibullFit] = {}
            scores = dict.fromkeys(NORM_KEYS, math.nan)
            gnorm = {key: float(samples.grad_norm_x0[ti, ki]) for ki, key in enumerate(NORM_KEYS)}
            for key in keys:
                fit = fit_reverse_weibull(
                    samples.maxima[ti, NORM_KEYS.index(key)],
                    method=self.method,
                    shape_reg=float(self.shape_reg),
                    c_init=C_INIT,
                    start=self.start,
                    penalise=self.penalise,
                )
                fits[key] = fit
                if samples.order == 1:
                    s = _ratio(g, fit.lip)
                else:
                    s = second_order_bound(g, gnorm["2"], fit.lip)
                if self.cap_at_radius:
                    s = min(s, float(radii[key]))
                scores[key] = s
            per_target.append(TargetScore(j, g, _frozen(scores), _frozen(fits), _frozen(gnorm)))
        best: dict[str, float] = {}
        argmin: dict[str, int] = {}
        for key in NORM_KEYS:
            vals = [(t.scores[key], t.target) for t in per_target if not math.isnan(t.scores[key])]
            if vals:
                best[key], argmin[key] = min(vals)
            else:
                best[key], argmin[key] = math.nan, -1
        return CleverResult(
            label=samples.label,
            per_target=tuple(per_target),
            scores=_frozen(best),
            argmin=_frozen(argmin),
            order=samples.order,
            samples=samples,
            seconds=samples.seconds + time.perf_counter() - t0,
        )

    # -- internals ------------------------------------------------------------------------------
    def _prepare(self, model: nn.Module | Network, x: Tensor | np.ndarray) -> _Prepared:
        f, net_range = _module_of(model)
        x = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x)
        if not torch.is_floating_point(x):
            x = x.to(torch.get_default_dtype())
        if not bool(torch.isfinite(x).all()):
            raise InputError("the input contains NaN or inf values")
        p_dev, p_dtype = _param_device_dtype(f)
        device = torch.device(self.device) if self.device is not None else (p_dev or x.device)
        dtype = self.dtype or p_dtype or x.dtype
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device cuda requested but CUDA is not available")
        if (p_dev is not None and p_dev != device) or (p_dtype is not None and p_dtype != dtype):
            # Never move the caller's model in place: work on a copy.
            f = copy.deepcopy(f).to(device=device, dtype=dtype).requires_grad_(False)
        if isinstance(model, (Network, Graph)):
            x0 = model.check_input(x.to(model.dtype))
            if x0.shape[0] != 1:
                raise InputError(f"CLEVER takes one input, got a batch of {x0.shape[0]}")
            x0 = x0[0].to(device=device, dtype=dtype)
        else:
            x = x.to(device=device, dtype=dtype)
            # One input without batch axis, or (1, *shape): the form the model accepts wins.
            x0 = None
            if _logits_of(f, x.unsqueeze(0)) is not None:
                x0 = x
            elif x.dim() >= 1 and x.shape[0] == 1 and _logits_of(f, x) is not None:
                x0 = x[0]
            if x0 is None:
                raise InputError(
                    f"the model does not map an input of shape {tuple(x.shape)} (with or without "
                    "a batch axis) to a (1, classes) logit row"
                )
        if isinstance(self.input_range, str):
            if self.input_range != "auto":
                raise InputError(
                    f"input_range must be 'auto', None or (lo, hi), got {self.input_range!r}"
                )
            box = net_range
        elif self.input_range is None:
            box = None
        else:
            from nnbound.data.dataset import check_input_range

            box = check_input_range(self.input_range)
        if box is not None:
            lo, hi = box
            if bool((x0 < lo - 1e-6 * (hi - lo)).any() or (x0 > hi + 1e-6 * (hi - lo)).any()):
                raise InputError(f"the input lies outside the input range {box}")
        return _Prepared(f, x0.detach(), box, device, dtype)

    @staticmethod
    def _width(box: tuple[float, float] | None) -> float:
        return 1.0 if box is None else box[1] - box[0]

    @staticmethod
    def _logits(f: nn.Module, x0: Tensor) -> Tensor:
        out = _logits_of(f, x0.unsqueeze(0))
        if out is None:
            raise InputError("the model does not return a (1, classes) logit row")
        if not bool(torch.isfinite(out).all()):
            raise InputError("the model's logits at the input are NaN or inf")
        return out[0].detach()

    def _targets(self, logits: Tensor, c: int, targets: str | int | Sequence[int]) -> list[int]:
        k = logits.shape[0]
        order = logits.argsort()
        least, top2 = int(order[0]), int(order[-2])
        if isinstance(targets, str):
            key = targets.strip().lower()
            key = {"runnerup": "top2", "all": "untargeted"}.get(key, key)
            if key == "untargeted":
                return [j for j in range(k) if j != c]
            if key == "top2":
                return [top2]
            if key == "least":
                return [least]
            if key == "random":
                if k < 4:
                    raise InputError("random targets need at least 4 classes")
                rng = random.Random(int(self.seed))
                j = c
                while j in (least, top2, c):
                    j = rng.randint(0, k - 1)
                return [j]
            if key.isdigit():
                targets = int(key)
            else:
                raise InputError(
                    f"unknown targets {targets!r}; use untargeted, top2, least, random, a class "
                    "or a list of classes"
                )
        tg = [int(targets)] if isinstance(targets, (int, np.integer)) else [int(t) for t in targets]
        if not tg:
            raise InputError("no target classes given")
        for j in tg:
            if not 0 <= j < k:
                raise InputError(f"target class {j} out of range [0, {k})")
            if j == c:
                raise InputError(f"target class {j} is the input's own class")
        return tg

    def _generator(self, device: torch.device, *key: int) -> torch.Generator:
        """A generator whose stream depends on (seed, key) only (SeedSequence mixing)."""
        state = np.random.SeedSequence([int(self.seed) & 0xFFFFFFFF, *key]).generate_state(2)
        seed = (int(state[0]) << 32 | int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF
        return torch.Generator(device=device).manual_seed(seed)

    def _at_x0(self, f: nn.Module, x0: Tensor, weights: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``g(x0)`` ``(T,)`` and ``||grad g(x0)||_q`` ``(T, 3)`` at the clean input."""
        x = x0.unsqueeze(0).expand(weights.shape[0], *x0.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            out = f(x)
            g = (out * weights).sum(1)
            (grad,) = torch.autograd.grad(g.sum(), x)
        return (
            g.detach().cpu().to(torch.float64).numpy(),
            _dual_norms(grad).detach().cpu().to(torch.float64).numpy(),
        )

    def _streams(
        self, radii: Mapping[str, float], box: tuple[float, float] | None
    ) -> list[tuple[int, Sampler, tuple[int, ...]]]:
        """(stream key, sampler, norm columns it feeds): one reference ball for every score,
        or one ball per requested score norm. The key seeds the stream's generators, so a
        norm's samples do not depend on which other norms are asked for."""
        if self.sampling == "reference":
            key = norm_key(self.sample_norm)
            return [(0, Sampler("reference", key, radii[key], box), (0, 1, 2))]
        return [
            (10 + i, Sampler("ball", key, radii[key], box), (i,))
            for i, key in enumerate(NORM_KEYS)
            if key in self.norm_keys()
        ]

    def norm_keys(self) -> tuple[str, ...]:
        """The requested score norms, in :data:`NORM_KEYS` order."""
        asked = {
            norm_key(p)
            for p in (self.norms if not isinstance(self.norms, (str, int, float)) else [self.norms])
        }
        return tuple(k for k in NORM_KEYS if k in asked)

    def _grad_norms(
        self, f: nn.Module, x: Tensor, w: Tensor, box: tuple[float, float] | None
    ) -> Tensor:
        """``(R, 3)`` dual norms of ``grad (f(T(x)) . w)`` per row (BPDA through ``T``)."""
        xt = apply_transform(self.transform, x, box).detach().requires_grad_(True)
        with torch.enable_grad():
            out = f(xt)
            (grad,) = torch.autograd.grad((out * w).sum(), xt)
        return _dual_norms(grad)

    def _collect_order1(
        self,
        prep: _Prepared,
        weights: Tensor,
        tgts: list[int],
        radii: Mapping[str, float],
        progress: ProgressFn | None,
    ) -> Tensor:
        t_count, nsamp, batch = len(tgts), int(self.nsamp), int(self.batch_size)
        maxima = torch.full(
            (t_count, 3, int(self.niters)), math.nan, device=prep.device, dtype=prep.dtype
        )
        streams = self._streams(radii, prep.box)
        cols_all = torch.arange(3, device=prep.device)
        for si, sampler, cols in streams:
            col_idx = cols_all[list(cols)]
            if self.share_samples:
                gen = self._generator(prep.device, si, 1 << 20)
                for it in range(int(self.niters)):
                    maxima[:, col_idx, it] = self._shared_batch(prep, sampler, gen, weights)[
                        :, col_idx
                    ]
                    if progress is not None:
                        progress(t_count)
                continue
            gens = [self._generator(prep.device, si, t) for t in tgts]
            # Whole targets per pass when a batch fits; else each target's batch in chunks.
            per_pass = max(1, batch // nsamp)
            groups = [
                list(range(i, min(i + per_pass, t_count))) for i in range(0, t_count, per_pass)
            ]
            for it in range(int(self.niters)):
                for group in groups:
                    if nsamp <= batch:
                        x = torch.cat(
                            [sampler.draw(prep.x0, nsamp, generator=gens[t]) for t in group]
                        )
                        w = weights[group].repeat_interleave(nsamp, 0)
                        norms = self._grad_norms(prep.f, x, w, prep.box)
                        mx = norms.view(len(group), nsamp, 3).amax(1)
                    else:
                        t = group[0]
                        mx = torch.full((1, 3), -math.inf, device=prep.device, dtype=prep.dtype)
                        for lo in range(0, nsamp, batch):
                            n = min(batch, nsamp - lo)
                            x = sampler.draw(prep.x0, n, generator=gens[t])
                            w = weights[t : t + 1].expand(n, -1)
                            norms = self._grad_norms(prep.f, x, w, prep.box)
                            mx = torch.maximum(mx, norms.amax(0, keepdim=True))
                    maxima[group[0] : group[-1] + 1, col_idx, it] = mx[:, col_idx]
                    if progress is not None:
                        progress(len(group))
        return maxima

    def _shared_batch(
        self, prep: _Prepared, sampler: Sampler, gen: torch.Generator, weights: Tensor
    ) -> Tensor:
        """``(T, 3)`` maxima over one batch of ``nsamp`` samples shared by every target: one
        forward pass per chunk, one backward pass per target."""
        t_count, nsamp, batch = weights.shape[0], int(self.nsamp), int(self.batch_size)
        mx = torch.full((t_count, 3), -math.inf, device=prep.device, dtype=prep.dtype)
        for lo in range(0, nsamp, batch):
            n = min(batch, nsamp - lo)
            x = sampler.draw(prep.x0, n, generator=gen)
            xt = apply_transform(self.transform, x, prep.box).detach().requires_grad_(True)
            with torch.enable_grad():
                out = prep.f(xt)
                for t in range(t_count):
                    (grad,) = torch.autograd.grad(
                        out,
                        xt,
                        grad_outputs=weights[t].expand_as(out),
                        retain_graph=t < t_count - 1,
                    )
                    mx[t] = torch.maximum(mx[t], _dual_norms(grad).amax(0))
        return mx

    # -- order 2 ----------------------------------------------------------------------------
    @staticmethod
    def _check_twice_differentiable(model: nn.Module | Network, f: nn.Module) -> None:
        if isinstance(model, (Network, Graph)):
            bad = [a.name for a in model.activations if a.op.traits.piecewise_linear]
        else:
            bad = [
                type(m).__name__ for m in f.modules() if isinstance(m, _PIECEWISE_LINEAR_MODULES)
            ]
        if bad:
            raise UnsupportedError(
                f"second-order CLEVER needs a twice-differentiable model; this one has "
                f"{sorted(set(bad))} (its Hessian is 0 almost everywhere); use order 1"
            )

    def _collect_order2(
        self,
        prep: _Prepared,
        weights: Tensor,
        tgts: list[int],
        radii: Mapping[str, float],
        progress: ProgressFn | None,
    ) -> Tensor:
        """Batch maxima of the Hessian curvature ``|lambda|`` (spec §9) in column ``"2"``."""
        t_count, nsamp, batch = len(tgts), int(self.nsamp), int(self.batch_size)
        maxima = torch.full(
            (t_count, 3, int(self.niters)), math.nan, device=prep.device, dtype=prep.dtype
        )
        if self.sampling == "reference":
            key = norm_key(self.sample_norm)
            sampler = Sampler("reference", key, radii[key], prep.box)
        else:
            sampler = Sampler("ball", "2", radii["2"], prep.box)
        gens = [self._generator(prep.device, 2, t) for t in tgts]
        for it in range(int(self.niters)):
            for ti in range(t_count):
                best = torch.zeros((), device=prep.device, dtype=prep.dtype)
                for lo in range(0, nsamp, batch):
                    n = min(batch, nsamp - lo)
                    x = sampler.draw(prep.x0, n, generator=gens[ti])
                    v0 = torch.randn(
                        n, prep.x0.numel(), generator=gens[ti], device=prep.device, dtype=prep.dtype
                    )
                    h = self._curvature(prep, x, weights[ti : ti + 1].expand(n, -1), v0)
                    cand = h[h.abs().argmax()]
                    if cand.abs() > best.abs():
                        best = cand
                maxima[ti, 1, it] = best.abs()
                if progress is not None:
                    progress(1)
        return maxima

    def _curvature(self, prep: _Prepared, x: Tensor, w: Tensor, v0: Tensor) -> Tensor:
        """Per row the curvature of §9: the largest-magnitude Hessian eigenvalue ``lambda_A``,
        replaced by the most negative one ``lambda_B`` where ``lambda_A > 0``; ``(R,)``."""
        xt = apply_transform(self.transform, x, prep.box).detach().requires_grad_(True)
        with torch.enable_grad():
            out = prep.f(xt)
            (grad,) = torch.autograd.grad((out * w).sum(), xt, create_graph=True)

            def hvp(v: Tensor) -> Tensor:
                (hv,) = torch.autograd.grad(
                    grad, xt, grad_outputs=v.view_as(xt), retain_graph=True, allow_unused=False
                )
                return hv.detach().flatten(1)

            lam_a = self._power(hvp, v0, 0.0)
            if bool(lam_a.max() > 0):
                sigma = float(lam_a.max())
                lam_b = self._power(hvp, v0, sigma) + sigma
                return torch.where(lam_a > 0, lam_b, lam_a)
            return lam_a

    def _power(self, hvp: Callable[[Tensor], Tensor], v0: Tensor, shift: float) -> Tensor:
        """Power iteration on ``H - shift*I`` per row; the Rayleigh quotient of the iterate
        before each update; stops when the change over the whole pass is <= power_tol."""
        v = v0.clone()
        prev: Tensor | None = None
        lam = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
        for _ in range(int(self.power_iters)):
            hv = hvp(v) - shift * v
            lam = (v * hv).sum(1) / (v * v).sum(1)
            nrm = hv.norm(dim=1, keepdim=True)
            # A zero Hv (H v = shift v exactly) keeps v: dividing would give NaN.
            v = torch.where(nrm > 0, hv / nrm.clamp_min(torch.finfo(v.dtype).tiny), v)
            # At least two steps: the reference's first difference is against its initial
            # lambda placeholder, which says nothing about convergence.
            if prev is not None and float((lam - prev).norm()) <= float(self.power_tol):
                break
            prev = lam
        return lam


def gradient_norms(model: nn.Module | Network, x: Tensor, label: int, target: int) -> Tensor:
    """``(R, 3)`` dual norms ``||grad g||_inf, ||grad g||_2, ||grad g||_1`` of
    ``g = f_label - f_target`` at each row of ``x`` ``(R, *input_shape)``: the quantities whose
    batch maxima CLEVER fits (columns for the score norms p = 1, 2, inf)."""
    f, _ = _module_of(model)
    was_training = f.training
    f.eval()
    try:
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = f(xr)
            w = torch.zeros_like(out)
            w[:, int(label)] = 1.0
            w[:, int(target)] -= 1.0
            (grad,) = torch.autograd.grad((out * w).sum(), xr)
    finally:
        f.train(was_training)
    return _dual_norms(grad)


def _dual_norms(grad: Tensor) -> Tensor:
    """``(R, 3)``: per row ``||grad||_inf, ||grad||_2, ||grad||_1``, i.e. the dual norms q
    of the score norms p = 1, 2, inf (columns in :data:`NORM_KEYS` order)."""
    flat = grad.flatten(1)
    a = flat.abs()
    return torch.stack((a.amax(1), torch.linalg.vector_norm(flat, 2, dim=1), a.sum(1)), 1)


def _ratio(g: float, lip: float) -> float:
    """``g / lip`` without a division warning: inf when the gradient vanished everywhere."""
    if lip == 0:
        return math.inf if g > 0 else 0.0
    return g / lip


def second_order_bound(g: float, grad_norm: float, m: float) -> float:
    """The positive root ``d`` of ``g - grad_norm*d - m*d^2/2 = 0`` (second-order CLEVER),
    written in the cancellation-free form ``2g / (a + sqrt(a^2 + 2gm))``; ``g / a`` at m = 0."""
    if m < 0:
        raise InputError(f"curvature bound must be >= 0, got {m}")
    if g <= 0:
        return 0.0
    den = grad_norm + math.sqrt(grad_norm * grad_norm + 2.0 * g * m)
    if den == 0:
        return math.inf if g > 0 else 0.0
    return 2.0 * g / den


def clever(
    model: nn.Module | Network,
    x: Tensor | np.ndarray,
    label: int | None = None,
    targets: str | int | Sequence[int] = "untargeted",
    *,
    progress: ProgressFn | None = None,
    **settings: Any,
) -> CleverResult:
    """CLEVER scores of ``model`` at one input ``x``: ``Clever(**settings)(model, x, label,
    targets)``.

    Example::

        res = nnbound.clever(net, x, targets="untargeted", nsamp=256, niters=100)
        res.scores["2"], res.scores["inf"]      # untargeted L2 / Linf scores
        res.target(3).fits["2"].p_value          # K-S p-value of the L2 fit against class 3

    See :class:`Clever` for the settings (reference defaults: 1024 samples x 500 batches).
    """
    unknown = set(settings) - set(Clever._PARAMS)
    if unknown:
        raise InputError(
            f"unknown CLEVER setting(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(Clever._PARAMS)}"
        )
    return Clever(**settings)(model, x, label, targets, progress=progress)
