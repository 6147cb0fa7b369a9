"""Projected gradient descent (PGD) on the logit margin, and the smallest eps it breaks.

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (Linf and L2 steps, random restarts). The L1 step is SLIDE's
sparse steepest descent: Tramèr & Boneh, "Adversarial Training and Robustness for Multiple
Perturbations", NeurIPS 2019 (move only the coordinates whose |gradient| is in the top
``1 - l1_sparsity`` fraction, skipping coordinates pinned at the domain boundary).

Distance: the Lp norm ``norm`` (1, 2 or inf) of ``x_adv - x``.

* :class:`PGD` (fixed budget): for each row, ``steps`` iterations of
  ``x <- Proj_{B_p(x0, eps) ∩ domain}(x - alpha_t * d_p(grad m))`` where ``m`` is the margin of
  :func:`~nnbound.attacks.base.adversarial_margin` (negative = adversarial; the Carlini-Wagner
  logit loss, which unlike cross-entropy does not saturate), ``d_p`` the steepest-descent
  direction of unit p-norm (sign, normalised gradient, sparse sign), and ``alpha_t`` the step
  schedule: ``rel_stepsize * eps`` times 1 (``"constant"``) or a cosine decay from 1 to 0.05
  (``"cosine"``). Restart 0 starts at ``x0``, the others uniformly in the ball. Every iterate of
  every restart that is adversarial is a candidate; the closest one is returned.
* :class:`MinimalPGD` (minimal distortion): a batched search over eps per row: grow eps by
  ``growth`` until PGD succeeds (or shrink it while it does), then bisect between the largest
  failing eps and the distance of the closest example found; ``search_steps`` PGD runs in all.

Shapes: ``x`` ``(B, *input_shape)``, ``labels``/``targets`` ``(B,)`` (-1 = untargeted), eps
scalar or ``(B,)``; restarts are run as ``B * restarts`` rows of one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.attacks.base import Attack, Domain, adversarial_margin, require_counts, require_reals
from nnbound.errors import InputError
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import lp_norm, parse_norm

SCHEDULES = ("cosine", "constant")

DEFAULT_EPS_INIT = {math.inf: 0.05, 2.0: 1.0, 1.0: 8.0}
"""MinimalPGD's first eps per norm, in units of the domain width (1 without a domain)."""


def descent_direction(
    grad: Tensor, p: float, x: Tensor | None = None, domain: Domain = None, sparsity: float = 0.99
) -> Tensor:
    """The unit-p-norm direction ``d`` maximising ``<-grad, d>`` (rows of ``grad``
    ``(N, *shape)``); for p = 1 the SLIDE sparse version (coordinates whose |grad| is in the
    top ``1 - sparsity`` fraction, equal weights; with ``x``/``domain`` given, coordinates at a
    boundary the step would cross are left out)."""
    g = grad.reshape(grad.shape[0], -1)
    if p == math.inf:
        d = -g.sign()
    elif p == 2.0:
        d = -g / torch.linalg.vector_norm(g, 2, dim=1, keepdim=True).clamp_min(1e-30)
    else:
        score = g.abs()
        if x is not None and domain is not None:
            xf = x.reshape(x.shape[0], -1)
            # -g > 0 pushes up: useless at the upper bound (and vice versa).
            blocked = ((xf >= domain[1]) & (g < 0)) | ((xf <= domain[0]) & (g > 0))
            score = score.masked_fill(blocked, 0.0)
        k = max(1, math.ceil((1.0 - sparsity) * g.shape[1]))
        top = score.topk(k, dim=1).indices
        d = torch.zeros_like(g)
        d.scatter_(1, top, 1.0)
        d = d * (score > 0)  # no weight on blocked or zero-gradient coordinates
        d = -g.sign() * d / d.sum(1, keepdim=True).clamp_min(1.0)
    return d.reshape(grad.shape)


def pgd_search(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    eps: Tensor,
    *,
    norm: float,
    steps: int,
    restarts: int,
    rel_stepsize: float,
    schedule: str,
    sparsity: float,
    domain: Domain,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched PGD with restarts (see the module docstring).

    Returns ``(best, found, distance)``: per row the closest adversarial iterate
    ``(B, *shape)`` (the lowest-margin iterate where none was adversarial), whether one was
    adversarial ``(B,)`` bool, and its ``norm`` distance ``(B,)`` (inf where not found).
    """
    b, shape = x.shape[0], tuple(x.shape[1:])
    dims = len(shape)
    r = max(1, int(restarts))
    x0 = x.repeat_interleave(r, 0)  # (B*R, *shape), restart-major within each row
    e = eps.repeat_interleave(r, 0)
    lab, tar = labels.repeat_interleave(r, 0), targets.repeat_interleave(r, 0)
    ball = LpBall.make(x0, e, norm, domain)
    cur = x0.clone()
    if r > 1:
        start = ball.sample(1, generator=generator)[:, 0]
        first = torch.zeros(b * r, dtype=torch.bool, device=x.device)
        first[::r] = True  # restart 0 of each row starts at the clean input
        cur = torch.where(first.view(-1, *([1] * dims)), x0, start)
    n = b * r
    best = cur.clone()
    best_dist = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    best_margin = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    fallback = cur.clone()  # lowest-margin iterate, returned where nothing was adversarial
    e_view = e.view(-1, *([1] * dims))
    for t in range(steps + 1):
        cur = cur.detach().requires_grad_(True)
        margin = adversarial_margin(model(cur), lab, tar)
        with torch.no_grad():
            dist = lp_norm(cur - x0, norm, dims)
            adv = margin < 0
            closer = adv & (dist < best_dist)
            best = torch.where(closer.view(-1, *([1] * dims)), cur, best)
            best_dist = torch.where(closer, dist, best_dist)
            lower = margin < best_margin
            fallback = torch.where(lower.view(-1, *([1] * dims)), cur, fallback)
            best_margin = torch.minimum(margin, best_margin)
        if t == steps:
            break
        (grad,) = torch.autograd.grad(margin.sum(), cur)
        with torch.no_grad():
            scale = 1.0
            if schedule == "cosine":
                scale = 0.5 * (1 + math.cos(math.pi * t / steps)) * 0.95 + 0.05
            step = rel_stepsize * scale * e_view
            d = descent_direction(grad, norm, cur, domain, sparsity)
            cur = ball.project(cur + step * d)
    found_rows = torch.isfinite(best_dist)
    best = torch.where(found_rows.view(-1, *([1] * dims)), best, fallback)
    # Pick per input the restart with the closest example (or the lowest margin).
    key = torch.where(found_rows, best_dist, math.inf).view(b, r)
    pick = torch.where(torch.isfinite(key).any(1), key.argmin(1), best_margin.view(b, r).argmin(1))
    idx = torch.arange(b, device=x.device) * r + pick
    dist_out = best_dist[idx].to(torch.float64)
    return best[idx].detach(), torch.isfinite(dist_out), dist_out


class _PGDSettings(Attack):
    """Settings shared by :class:`PGD` and :class:`MinimalPGD`."""

    def __init__(
        self,
        norm: float | str = "inf",
        steps: int = 50,
        restarts: int = 1,
        rel_stepsize: float | None = None,
        schedule: str = "cosine",
        l1_sparsity: float = 0.99,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.norm = norm  # type: ignore[assignment]
        self.steps = steps
        self.restarts = restarts
        self.rel_stepsize = rel_stepsize
        self.schedule = schedule
        self.l1_sparsity = l1_sparsity

    def check(self) -> None:
        parse_norm(self.norm)
        require_counts(self, "steps", "restarts")
        if self.rel_stepsize is not None:
            require_reals(self, "rel_stepsize")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if not 0.0 <= float(self.l1_sparsity) < 1.0:
            raise InputError(f"l1_sparsity must be in [0, 1), got {self.l1_sparsity!r}")

    def _pgd(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        labels: Tensor,
        targets: Tensor,
        eps: Tensor,
        domain: Domain,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor]:
        # 2.5 eps / steps (Madry et al.) lets a path from the centre reach the boundary and
        # still move along it; the cosine decay then refines.
        rel = self.rel_stepsize if self.rel_stepsize is not None else 2.5 / self.steps
        if self.schedule == "cosine" and self.rel_stepsize is None:
            rel *= 2.0  # the cosine schedule's mean step is about half its first one
        return pgd_search(
            model,
            x,
            labels,
            targets,
            eps,
            norm=parse_norm(self.norm),
            steps=int(self.steps),
            restarts=int(self.restarts),
            rel_stepsize=float(rel),
            schedule=self.schedule,
            sparsity=float(self.l1_sparsity),
            domain=domain,
            generator=generator,
        )


class PGD(_PGDSettings):
    """Fixed-budget PGD: an adversarial example within ``eps`` of each input, if it finds one.

    Args:
        norm: ``1``, ``2`` or ``inf`` (``i``): the ball and the distance.
        steps: gradient steps per restart.
        restarts: independent starts per input (the first at the input itself).
        rel_stepsize: first step as a fraction of eps (default ``2.5 / steps``, doubled for
            the cosine schedule).
        schedule: ``"cosine"`` (decay to 5%) or ``"constant"``.
        l1_sparsity: for ``norm=1``, the fraction of coordinates left still per step.
        domain, seed, batch_size, check_float64: see :class:`~nnbound.attacks.base.Attack`.

    Call: ``PGD(norm="inf")(model, x, labels, targets, eps=0.03)`` -> ``AttackResult``.
    """

    name = "pgd"
    requires_eps = True

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
        assert eps is not None
        return self._pgd(model, x, labels, targets, eps, domain, generator)[0]


class MinimalPGD(_PGDSettings):
    """The smallest eps at which PGD finds an adversarial example, by a batched search.

    Args:
        norm, steps, restarts, rel_stepsize, schedule, l1_sparsity: as :class:`PGD`.
        search_steps: PGD runs per input (bracketing plus bisection).
        eps_init: first eps tried; None = :data:`DEFAULT_EPS_INIT` times the domain width.
        growth: factor eps grows (no example yet) or shrinks (every eps so far succeeded) by
            until the answer is bracketed.
        eps_max: give up on an input once eps exceeds this (default 1000 x eps_init).
        domain, seed, batch_size, check_float64: see :class:`~nnbound.attacks.base.Attack`.

    Call: ``MinimalPGD(norm=2)(model, x, labels)`` -> ``AttackResult`` (``distance`` is the
    distance of the closest example found, which is at most the last successful eps).
    """

    name = "pgd"
    requires_eps = False

    def __init__(
        self,
        norm: float | str = "inf",
        steps: int = 50,
        restarts: int = 1,
        rel_stepsize: float | None = None,
        schedule: str = "cosine",
        l1_sparsity: float = 0.99,
        search_steps: int = 10,
        eps_init: float | None = None,
        growth: float = 4.0,
        eps_max: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(norm, steps, restarts, rel_stepsize, schedule, l1_sparsity, **kwargs)
        self.search_steps = search_steps
        self.eps_init = eps_init
        self.growth = growth
        self.eps_max = eps_max

    def check(self) -> None:
        super().check()
        require_counts(self, "search_steps")
        if self.eps_init is not None:
            require_reals(self, "eps_init")
        if not (math.isfinite(self.growth) and self.growth > 1):
            raise InputError(f"growth must be > 1, got {self.growth!r}")

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
        p = parse_norm(self.norm)
        width = (domain[1] - domain[0]) if domain is not None else 1.0
        init = self.eps_init if self.eps_init is not None else DEFAULT_EPS_INIT[p] * width
        if eps is not None:
            init_t = torch.minimum(torch.full_like(eps, init), eps).to(torch.float64).cpu()
        else:
            init_t = torch.full((x.shape[0],), float(init), dtype=torch.float64)
        cap = self.eps_max if self.eps_max is not None else 1000.0 * float(init)
        b = x.shape[0]
        lo = torch.zeros(b, dtype=torch.float64)  # largest eps where PGD failed
        hi = torch.full((b,), math.inf, dtype=torch.float64)  # closest example's distance
        cur = init_t.clamp_min(1e-12)
        best = x.clone()
        active = torch.ones(b, dtype=torch.bool)
        for _ in range(int(self.search_steps)):
            rows = torch.nonzero(active).squeeze(1)
            if rows.numel() == 0:
                break
            rd = rows.to(x.device)
            adv, found, dist = self._pgd(
                model,
                x[rd],
                labels[rd],
                targets[rd],
                cur[rows].to(device=x.device, dtype=x.dtype),
                domain,
                generator,
            )
            found, dist = found.cpu(), dist.cpu()
            improved = found & (dist < hi[rows])
            best[rd[improved.to(x.device)]] = adv[improved.to(x.device)]
            hi[rows] = torch.where(improved, dist, hi[rows])
            lo[rows] = torch.where(found, lo[rows], torch.maximum(lo[rows], cur[rows]))
            h, low = hi[rows], lo[rows]
            nxt = torch.where(
                torch.isfinite(h),
                torch.where(low > 0, (low + h) / 2, h / self.growth),
                cur[rows] * self.growth,
            )
            cur[rows] = nxt
            # Stop a row whose bracket is tight (0.1%) or that no budget below the cap breaks.
            tight = torch.isfinite(h) & (h - low <= 1e-3 * h)
            hopeless = ~torch.isfinite(h) & (nxt > cap)
            if eps is not None:
                hopeless |= ~torch.isfinite(h) & (low >= eps[rd].to(torch.float64).cpu())
                cur[rows] = torch.minimum(cur[rows], eps[rd].to(torch.float64).cpu())
            active[rows] = ~(tight | hopeless)
        return best
