"""The attack contract: subclasses write ``run``; the final ``__call__`` validates, projects and
re-checks (foolbox v3's ``attacks/base.py``), so no attack can report a distance it did not earn.

An attack searches for an adversarial example ``x_adv`` of an input ``x`` (label ``y``):

* untargeted: some other class overtakes the label, ``max_{j != y} f_j(x_adv) > f_y(x_adv)``;
* targeted (target ``t``): ``t`` becomes the strict arg-max, ``f_t(x_adv) > max_{j != t} f_j``
  (stricter than ``f_t > f_y``, which is what a targeted certificate rules out, so a targeted
  attack distance is still an upper bound on the certified radius).

:meth:`Attack.__call__` then, whatever ``run`` returned:

1. projects the candidates onto the eps ball (when an ``eps`` is given) and clips them to the
   data domain (when the attack clips);
2. re-runs the model on the projected points -- in the model's dtype *and* in float64 (a float64
   copy of the model), so an example that is adversarial only through float32 rounding does not
   count: certificates talk about the exact network;
3. measures ``||x_adv - x||_p`` in float64 in the attack's norm and reports ``inf`` (and
   ``x_adv = x``) wherever the re-check fails.

Shapes: ``x`` is ``(B, *input_shape)``, ``labels`` and ``targets`` are ``(B,)`` long tensors,
``targets[i] = -1`` means untargeted.
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from nnbound.errors import InputError
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import lp_norm, norm_name, parse_norm

UNTARGETED = -1
"""``targets[i] == UNTARGETED``: any class other than the label will do."""

Model = nn.Module | Network
"""What an attack runs on: a differentiable ``nn.Module`` or an nnbound :class:`Network`, each
mapping ``(B, *input_shape)`` to logits ``(B, classes)``."""

Domain = tuple[float, float] | None


def adversarial_margin(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """``(B,)`` margin that is negative exactly where a row is adversarial (differentiable).

    Untargeted rows: ``f_y - max_{j != y} f_j``; targeted rows: ``max_{j != t} f_j - f_t``.
    ``logits`` is ``(B, classes)``, ``labels`` and ``targets`` ``(B,)`` (-1 = untargeted).
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    untargeted = targets == UNTARGETED
    # The class that must win (t) and the one it must beat (y, or the best non-t class).
    own = torch.where(untargeted, labels, targets)
    own_logit = logits[rows, own]
    others = logits.masked_fill(torch.nn.functional.one_hot(own, logits.shape[1]).bool(), -math.inf)
    best_other = others.amax(1)
    return torch.where(untargeted, own_logit - best_other, best_other - own_logit)


def is_adversarial(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """``(B,)`` bool: the row's label flips (strictly; a tie is not a flip)."""
    return adversarial_margin(logits, labels, targets) < 0


@dataclass(frozen=True, eq=False)
class AttackResult:
    """What an attack found for a batch.

    Attributes:
        adversarial: ``(B, *input_shape)`` the re-checked examples (``x`` itself where the
            attack failed), in the model's dtype and device.
        original: ``(B, *input_shape)`` the inputs attacked.
        success: ``(B,)`` bool, True where ``adversarial`` flips the label in the model's dtype
            and in float64, inside the eps ball and the domain.
        distance: ``(B,)`` float64 ``||adversarial - original||_norm``, ``inf`` where failed.
        norm: the distance's norm (1, 2 or inf).
        attack: the attack's name.
        seconds: wall-clock time of the call.
    """

    adversarial: Tensor
    original: Tensor
    success: Tensor
    distance: Tensor
    norm: float
    attack: str
    seconds: float

    def distance_in(self, p: float | str) -> Tensor:
        """``(B,)`` float64 distances of the same examples in another norm (inf where failed):
        any adversarial example bounds the minimal distortion in every norm."""
        p = parse_norm(p)
        b = self.original.shape[0]
        if b == 0:
            return torch.zeros(0, dtype=torch.float64)
        delta = (self.adversarial - self.original).to(torch.float64).reshape(b, -1)
        d = lp_norm(delta, p, 1).cpu()
        return torch.where(self.success.cpu(), d, torch.full_like(d, math.inf))


class Attack(ABC):
    """Base of every attack (scikit-learn style: ``__init__`` stores settings only).

    Subclasses set ``name``, ``norm`` (the distance they minimise or are bounded in; an
    instance attribute may override it) and ``requires_eps`` (True for fixed-budget attacks),
    and implement :meth:`run`.

    Args:
        domain: ``"auto"`` (a Network's ``input_range``, no clipping for a plain module), a data
            box ``(low, high)`` every example is clipped to, or None (no clipping).
        seed: seeds every random start (a ``torch.Generator`` on the model's device).
        batch_size: rows attacked together (memory bound; results do not depend on it except
            through the random streams).
        check_float64: also re-check success on a float64 copy of the model.
    """

    name: ClassVar[str] = "attack"
    norm: float = 2.0
    requires_eps: ClassVar[bool] = False

    def __init__(
        self,
        *,
        domain: Domain | str = "auto",
        seed: int = 0,
        batch_size: int = 1024,
        check_float64: bool = True,
    ) -> None:
        self.domain = domain
        self.seed = seed
        self.batch_size = batch_size
        self.check_float64 = check_float64

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({items})"

    # -- the subclass's part --------------------------------------------------------------
    @abstractmethod
    def run(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        labels: Tensor,
        targets: Tensor,
        eps: Tensor | None,
        domain: Domain,
        generator: torch.Generator,
    ) -> Tensor:
        """Candidate examples ``(B, *input_shape)`` for inputs ``x`` ``(B, *input_shape)``.

        ``labels``/``targets`` are ``(B,)`` (-1 = untargeted); ``eps`` is ``(B,)`` in the
        model's dtype or None; ``domain`` is the resolved data box or None. Candidates need not
        be adversarial, in the ball or in the domain: ``__call__`` projects and re-checks.
        """

    # -- the contract ---------------------------------------------------------------------
    @final
    def __call__(
        self,
        model: Model,
        x: Tensor,
        labels: Tensor,
        targets: Tensor | None = None,
        *,
        eps: float | Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` at each row of ``x``.

        Args:
            model: a differentiable ``nn.Module`` or a :class:`Network` returning logits.
            x: inputs ``(B, *input_shape)`` (inside the domain when the attack clips).
            labels: ``(B,)`` classes to move away from.
            targets: ``(B,)`` target classes, -1 (or None for all rows) for untargeted.
            eps: budget in the attack's norm: a scalar or ``(B,)``; required by fixed-budget
                attacks (PGD), optional for minimising ones (examples farther than eps are
                pulled back into the ball and re-checked).

        Returns:
            An :class:`AttackResult`.
        """
        t0 = time.perf_counter()
        self._check_settings()
        p = parse_norm(self.norm)
        f, f64, net_domain, device, dtype = _prepare_model(model, self.check_float64)
        domain = self._resolve_domain(net_domain)
        x = _check_x(x, device, dtype)
        b = x.shape[0]
        labels, targets = _check_classes(labels, targets, b, device)
        eps_t = _check_eps(eps, b, device, dtype)
        if self.requires_eps and eps_t is None:
            raise InputError(f"{self.name} is a fixed-budget attack: give eps")
        if domain is not None and not bool(((x >= domain[0]) & (x <= domain[1])).all()):
            raise InputError(
                f"inputs lie outside the data domain {domain}; pass domain=None to attack "
                "without clipping"
            )
        with torch.no_grad():
            num_classes = f(x[:1]).shape[1]
        if b and (int(labels.max()) >= num_classes or int(targets.max()) >= num_classes):
            raise InputError(f"a label or target is out of range [0, {num_classes})")
        gen = torch.Generator(device=device).manual_seed(int(self.seed))
        was_training = getattr(f, "training", False)
        if isinstance(f, nn.Module):
            f.eval()  # batch-norm statistics and dropout must not couple the rows
        try:
            chunks = []
            for lo in range(0, b, int(self.batch_size)):
                hi = min(b, lo + int(self.batch_size))
                with torch.enable_grad():
                    cand = self.run(
                        f,
                        x[lo:hi],
                        labels[lo:hi],
                        targets[lo:hi],
                        None if eps_t is None else eps_t[lo:hi],
                        domain,
                        gen,
                    )
                chunks.append(cand.detach().to(device=device, dtype=dtype))
            cand = torch.cat(chunks) if chunks else x.clone()
            if tuple(cand.shape) != tuple(x.shape):
                raise RuntimeError(
                    f"{self.name}.run returned shape {tuple(cand.shape)} for inputs "
                    f"{tuple(x.shape)}"
                )
            adv = self._project(cand, x, eps_t, p, domain)
            with torch.no_grad():
                ok = is_adversarial(f(adv), labels, targets)
                if f64 is not None:
                    ok &= is_adversarial(f64(adv.to(torch.float64)), labels, targets)
        finally:
            if isinstance(f, nn.Module):
                f.train(was_training)
        adv = torch.where(ok.view(-1, *([1] * (x.dim() - 1))), adv, x)
        delta = (adv - x).to(torch.float64).reshape(b, -1)
        dist = lp_norm(delta, p, 1).cpu() if b else torch.zeros(0, dtype=torch.float64)
        dist = torch.where(ok.cpu(), dist, torch.full_like(dist, math.inf))
        return AttackResult(
            adversarial=adv,
            original=x,
            success=ok.cpu(),
            distance=dist,
            norm=p,
            attack=self.name,
            seconds=time.perf_counter() - t0,
        )

    # -- helpers --------------------------------------------------------------------------
    def _check_settings(self) -> None:
        require_counts(self, "batch_size")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        self.check()

    def check(self) -> None:
        """Validate the subclass's settings (raise :class:`InputError`); called per call."""
        return None

    def _resolve_domain(self, net_domain: Domain) -> Domain:
        d = self.domain
        if isinstance(d, str):
            if d != "auto":
                raise InputError(f"domain must be 'auto', None or (low, high), got {d!r}")
            return net_domain
        if d is None:
            return None
        lo, hi = (float(v) for v in d)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InputError(f"domain must be finite with low < high, got {d!r}")
        return (lo, hi)

    @staticmethod
    def _project(cand: Tensor, x: Tensor, eps: Tensor | None, p: float, domain: Domain) -> Tensor:
        if not bool(torch.isfinite(cand).all()):
            # A diverged candidate (NaN/inf) is no example: fall back to the clean input.
            bad = ~torch.isfinite(cand).reshape(cand.shape[0], -1).all(1)
            cand = torch.where(bad.view(-1, *([1] * (x.dim() - 1))), x, cand)
        if eps is not None:
            # Ball projection then clipping: clipping to a box holding the centre never
            # increases any Lp distance to it, so the point stays in both sets.
            return LpBall.make(x, eps, p, domain).project(cand)
        if domain is not None:
            return cand.clamp(domain[0], domain[1])
        return cand


def _prepare_model(
    model: Model, check_float64: bool
) -> tuple[
    Callable[[Tensor], Tensor],
    Callable[[Tensor], Tensor] | None,
    Domain,
    torch.device,
    torch.dtype,
]:
    """(model callable, its float64 copy or None, the Network's domain, device, dtype)."""
    if isinstance(model, (Network, Graph)):
        f64 = None
        if check_float64 and model.dtype != torch.float64:
            f64 = model.to(dtype=torch.float64)
        return model, f64, model.input_range, model.device, model.dtype
    if isinstance(model, nn.Module):
        device, dtype = torch.device("cpu"), torch.get_default_dtype()
        for t in (*model.parameters(), *model.buffers()):
            if torch.is_floating_point(t):
                device, dtype = t.device, t.dtype
                break
        f64 = None
        if check_float64 and dtype != torch.float64:
            f64 = copy.deepcopy(model).to(torch.float64).eval()
        return model, f64, None, device, dtype
    raise InputError(
        f"model must be a torch.nn.Module or an nnbound Network, got {type(model).__name__}"
    )


def require_counts(settings: object, *names: str) -> None:
    """Each named attribute must be an integer >= 1 (bools refused)."""
    for name in names:
        v = getattr(settings, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be an integer >= 1, got {v!r}")


def require_reals(settings: object, *names: str, positive: bool = True) -> None:
    """Each named attribute must be a finite real number, > 0 (``positive``) or >= 0."""
    for name in names:
        v = getattr(settings, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (ok and (v > 0 if positive else v >= 0)):
            raise InputError(f"{name} must be {'>' if positive else '>='} 0, got {v!r}")


def _check_x(x: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() < 2:
        raise InputError(f"x must be a batch (B, *input_shape), got shape {tuple(x.shape)}")
    x = x.detach().to(device=device, dtype=dtype)
    if not bool(torch.isfinite(x).all()):
        raise InputError("x contains NaN or inf values")
    return x


def _check_classes(
    labels: Any, targets: Any, b: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    labels = torch.as_tensor(labels).reshape(-1).long().to(device)
    if targets is None:
        targets = torch.full((b,), UNTARGETED, dtype=torch.long, device=device)
    targets = torch.as_tensor(targets).reshape(-1).long().to(device)
    if targets.numel() == 1 and b > 1:
        targets = targets.expand(b).clone()
    if labels.shape[0] != b or targets.shape[0] != b:
        raise InputError(
            f"labels ({labels.shape[0]}) and targets ({targets.shape[0]}) must match the "
            f"batch ({b})"
        )
    if b and (int(labels.min()) < 0 or int(targets.min()) < UNTARGETED):
        raise InputError("labels must be >= 0 and targets >= 0 (or -1 for untargeted)")
    if bool((labels == targets).any()):
        raise InputError("a target class equals its label")
    return labels, targets


def _check_eps(eps: Any, b: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    if eps is None:
        return None
    e = torch.as_tensor(eps, dtype=dtype, device=device)
    if e.dim() == 0:
        e = e.expand(b)
    e = e.reshape(-1)
    if e.shape[0] != b:
        raise InputError(f"eps must be a scalar or (B,) = ({b},), got {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise InputError("eps must be finite and >= 0")
    return e.contiguous()


def describe_norm(p: float) -> str:
    """``"L1"``, ``"L2"`` or ``"Linf"``."""
    return "L" + norm_name(p)
