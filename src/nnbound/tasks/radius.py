"""Certified robustness radius: the largest eps whose margin lower bound stays positive."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.bounds.api import bounds
from nnbound.bounds.centre_products import CentreProducts
from nnbound.bounds.methods import ALL_METHODS, LAYERWISE_METHODS
from nnbound.bounds.sides import SideOrder
from nnbound.bounds.spectral import spectral_lipschitz
from nnbound.errors import InputError
from nnbound.network.graph import Graph
from nnbound.network.layers import NONLINEAR_TYPES
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm, lp_norm, parse_norm
from nnbound.sets.spec import all_margins_spec, margin_spec
from nnbound.tasks.knees import first_layer_knee
from nnbound.tasks.search import batched_binary_search, bracketed_binary_search, recheck
from nnbound.tasks.targets import UNTARGETED


def margin_specs(labels: Tensor, targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(B, S, classes)`` margins: one row ``e_y - e_t`` per targeted input, all ``classes - 1``
    rows for an untargeted one (targeted rows are padded by repeating the row, which leaves
    the minimum over rows unchanged)."""
    untargeted = targets == UNTARGETED
    if bool(untargeted.all()):
        return all_margins_spec(labels, num_classes, dtype)
    if not bool(untargeted.any()):
        return margin_spec(labels, targets, num_classes, dtype)
    full = all_margins_spec(labels, num_classes, dtype)
    safe_t = torch.where(untargeted, (labels + 1) % num_classes, targets)
    single = margin_spec(labels, safe_t, num_classes, dtype).expand_as(full)
    return torch.where(untargeted.view(-1, 1, 1), full, single)


def relaxed_count(net: Network | Graph) -> int:
    """How many layers (nodes) bound methods relax (activations, max pools, products...)."""
    if isinstance(net, Graph):
        from nnbound.bounds.graph_bounds import relaxed_nodes

        return len(relaxed_nodes(net))
    return sum(isinstance(la, NONLINEAR_TYPES) for la in net.layers)


class _Certifier:
    """The search condition "margin lower bound > 0 at eps" for rows of a batch.

    It remembers, per row, the pre-activation bounds of the last eps that failed: the search
    only tries smaller eps afterwards, whose balls lie inside that one, so those bounds still
    hold and mark neurons stable without a backward pass (``prior``).
    """

    def __init__(
        self,
        net: Network | Graph,
        x: Tensor,
        spec: Tensor,
        p: float,
        method: str,
        domain: tuple[float, float] | None,
        reference: bool,
        reuse: bool,
        sides: SideOrder = SideOrder.BOTH,
    ) -> None:
        self.net, self.x, self.spec, self.p = net, x, spec, p
        self.sides = sides
        self.method, self.domain, self.reference = method, domain, reference
        self.reuse = reuse and not reference and method not in ("spectral", "quad", "ibp")
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}
        self.cache_eps = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
        # Per-centre products of an MLP's first two layers, shared by every eps of the search.
        self.centre_cache = None if reference else CentreProducts()

    def _prior(self, rows: Tensor, eps: Tensor) -> dict[int, tuple[Tensor, Tensor]] | None:
        if not self.cache:
            return None
        valid = (eps <= self.cache_eps[rows]).to(self.x.device)
        prior = {}
        for j, (lo, up) in self.cache.items():
            v = valid.view(-1, *([1] * (lo.dim() - 1)))
            prior[j] = (
                torch.where(v, lo[rows], torch.full_like(lo[rows], -math.inf)),
                torch.where(v, up[rows], torch.full_like(up[rows], math.inf)),
            )
        return prior

    def __call__(self, rows: Tensor, eps: Tensor) -> Tensor:
        return self.margin(rows, eps) > 0

    def margin(self, rows: Tensor, eps: Tensor) -> Tensor:
        """Per row, the lower bound of the smallest spec margin over the ball (``(R,)``, CPU).

        With ``sides`` ``SIGNS_FIRST``, the rows whose bounds skipped sides
        (``Bounds.sides_skipped``) and do not certify are bounded again with
        ``INACTIVE_FIRST`` (the full bounds): a certified row's margin is then a valid bound
        that may differ from the full one, an uncertified row's is the full one, so no row is
        decided worse than by the full bounds."""
        margin, sides_skipped = self._margin(rows, eps, self.sides)
        again = margin <= 0
        if sides_skipped and bool(again.any()):
            margin[again] = self._margin(rows[again], eps[again], SideOrder.INACTIVE_FIRST)[0]
        return margin

    def _margin(self, rows: Tensor, eps: Tensor, sides: SideOrder) -> tuple[Tensor, bool]:
        """:meth:`margin` from one bound computation, and whether it skipped sides."""
        rows_dev = rows.to(self.x.device)
        ball = LpBall.make(
            self.x[rows_dev], eps.to(device=self.x.device, dtype=self.x.dtype), self.p, self.domain
        )
        prior = self._prior(rows, eps) if self.reuse else None
        b = bounds(
            self.net,
            ball,
            self.method,
            self.spec[rows_dev],
            reference=self.reference,
            prior=prior,
            centre_cache=self.centre_cache if self.method in LAYERWISE_METHODS else None,
            # the search steers by float32 bounds and re-certifies its radius in float64
            outward=False,
            sides=sides,
        )
        margin = b.lower.amin(-1).cpu()
        ok = margin > 0
        # Keep the bounds of a failed eps when it is smaller than the one remembered.
        keep = ~ok & (eps < self.cache_eps[rows])
        if self.reuse and bool(keep.any()):
            for j, (lo, up) in b.intermediate.pre.items():
                if j not in self.cache:
                    full = (self.x.shape[0], *lo.shape[1:])
                    self.cache[j] = (
                        torch.full(full, -math.inf, dtype=lo.dtype, device=lo.device),
                        torch.full(full, math.inf, dtype=up.dtype, device=up.device),
                    )
                k = keep.to(lo.device)
                target = rows_dev[k]
                self.cache[j][0][target] = lo[k]
                self.cache[j][1][target] = up[k]
            self.cache_eps[rows[keep]] = eps[keep]
        return margin, b.sides_skipped

    def centre_margin(self) -> tuple[Tensor, Tensor]:
        """At each centre, the smallest spec margin (any bound's value at eps = 0) and the dual
        norm of its gradient (the rate at which a tight bound falls at first), ``(B,)`` each."""
        with torch.enable_grad():
            x = self.x.detach().clone().requires_grad_(True)
            logits = self.net.forward(x).reshape(x.shape[0], -1, 1)
            margins = (self.spec.reshape(*self.spec.shape[:2], -1) @ logits).squeeze(-1)
            smallest = margins.amin(-1)
            (grad,) = torch.autograd.grad(smallest.sum(), x)
        slope = lp_norm(grad, dual_norm(self.p), grad.dim() - 1)
        return smallest.detach().cpu(), slope.detach().cpu()


# The first evaluation's eps is at least this fraction of the first-order root.
_SMALLEST_FIRST_SCALE = 1 / 32


def first_scale(relaxed_layers: int) -> float:
    """Where a radius search evaluates first, as a fraction of the first-order root
    ``margin / ||gradient||_*`` at the centre: ``2^-(relaxed_layers - 1)``, at least
    :data:`_SMALLEST_FIRST_SCALE`.

    Every relaxed layer makes layer-wise bounds fall faster with eps, so the certified radius
    lies further below the first-order root the deeper the network. Measured (CROWN, Linf and
    L2, 130 searches), the median of the first-order root over the radius was 2.2-2.6 for two
    relaxed layers (``mnist-fc-3layer``, a random 784-1024-1024-10), 4.2 for three (random
    3x1024) and 5.7 for the trained MNIST / CIFAR CNNs (whose spread is wide: 0.8 to 1,100),
    2.3 for four (random 4x256), 24 for five (random 5x512) and 33 for six (random 6x1024).
    A first evaluation near the radius needs fewer evaluations after it, and when it fails
    its bounds serve the later ones as priors; one 30 times above it (the first-order root
    of a 6x1024) was the most expensive evaluation of the search and its bounds helped none.
    """
    return max(0.5 ** max(relaxed_layers - 1, 0), _SMALLEST_FIRST_SCALE)


# From this many relaxed layers on, a layer-wise margin bound is flat far below its root and
# falls off a cliff past it (random MLPs of 3 to 6 relaxed layers; two-layer networks' bounds
# are close to quadratic): the search then fits its fall-ratio model. Float32 evaluations
# per row without and with it: 784-[512]x5-10 8.2 -> 4.8, 784-[1024]x6-10 5.0 -> 3.5,
# 784-[1024]x3-10 3.4 -> 2.9; the trained MNIST CNNs (three relaxed layers) 10.65 -> 10.75,
# 5.8 -> 5.6 and 5.0 -> 4.8.
_STEEP_FROM_RELAXED_LAYERS = 3


def steep(relaxed_layers: int) -> bool:
    """Whether a radius search fits the fall-ratio model to a bracket
    (``bracketed_binary_search(..., steep=True)``) for a network with this many relaxed
    layers."""
    return relaxed_layers >= _STEEP_FROM_RELAXED_LAYERS


def certified_radius(
    net: Network | Graph,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    norm: float | str = "inf",
    method: str = "crown",
    eps0: float = 0.005,
    steps: int = 15,
    domain: tuple[float, float] | None = None,
    verify_float64: bool = True,
    reference: bool = False,
) -> Tensor:
    """Certified radius per input, ``(B,)`` float64.

    Args:
        net: the network (float32 or float64, any device).
        x: inputs ``(B, *input_shape)``.
        labels: ``(B,)`` classes whose margin must stay positive.
        targets: ``(B,)`` target classes, or ``-1`` for untargeted (all other classes).
        norm: perturbation norm ``1``, ``2`` or ``inf``.
        method: any bound method (``spectral`` uses the closed form ``margin / Lipschitz``).
        eps0, steps: the reference's binary-search start and number of evaluations.
        domain: clip the ball to this data box (off by default, as in the reference).
        verify_float64: when ``net`` is float32, re-certify each final radius in float64 and,
            where float64 does not confirm it, bisect below it in float64 -- so a reported
            radius never rests on float32 rounding.
        reference: reproduce the reference's layer-wise bounds exactly.
    """
    if method not in ALL_METHODS:
        raise InputError(f"unknown bound method {method!r}; choose from {', '.join(ALL_METHODS)}")
    if eps0 <= 0:
        raise InputError(f"the initial eps must be > 0, got {eps0}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    p = parse_norm(norm)
    x = net.check_input(x)
    labels = torch.as_tensor(labels).reshape(-1).long().to(x.device)
    targets = torch.as_tensor(targets).reshape(-1).long().to(x.device)
    if labels.shape[0] != x.shape[0] or targets.shape[0] != x.shape[0]:
        raise InputError("x, labels and targets must have the same batch size")
    spec = margin_specs(labels, targets, net.num_outputs, net.dtype)
    if method == "spectral":
        net64 = net.to(dtype=torch.float64)
        spec64 = spec.to(torch.float64)
        x64 = x.to(torch.float64)
        margin = (spec64 @ net64.forward(x64).reshape(x.shape[0], -1, 1)).squeeze(-1)
        lip = spectral_lipschitz(net64, spec64, p)
        return (margin / lip).clamp_min(0).amin(-1).cpu()
    # The float32 search skips only lower sides that nothing reads (the same bounds); the
    # float64 confirmation, which only asks "certified?", settling sides first.
    condition = _Certifier(
        net, x, spec, p, method, domain, reference, reuse=True, sides=SideOrder.INACTIVE_FIRST
    )
    cond64 = None
    if verify_float64 and net.dtype != torch.float64:
        net64 = net.to(dtype=torch.float64)
        x64, spec64 = x.to(torch.float64), spec.to(torch.float64)
        cond64 = _Certifier(
            net64,
            x64,
            spec64,
            p,
            method,
            domain,
            reference,
            reuse=False,
            sides=SideOrder.SIGNS_FIRST,
        )
        if cond64.centre_cache is not None:
            # The float32 search's norm references bound the float64 evaluations' norms too.
            cond64.centre_cache.lower_precision = condition.centre_cache
    if reference:
        radius = batched_binary_search(condition, x.shape[0], eps0, max_steps=steps)
        if cond64 is not None:
            radius = recheck(cond64, radius, steps)
    else:
        # The evaluation expected to give the radius is made in float64 directly (confirm).
        margin0, slope0 = condition.centre_margin()
        relaxed = relaxed_count(net)
        # Inference mode: no autograd bookkeeping on the search's many small operations
        # (one-image searches on mnist-fc-3layer ~12% faster; the tensors it makes stay
        # inside, the radius leaves as a copy). Not for alpha-CROWN, which optimises its
        # slopes by gradients.
        with torch.inference_mode(method != "alpha-crown"):
            radius = bracketed_binary_search(
                condition.margin,
                margin0,
                eps0,
                slope0=slope0,
                confirm=cond64.margin if cond64 is not None else None,
                first_scale=first_scale(relaxed),
                steep=steep(relaxed),
                knee=first_layer_knee(net, x, p, domain) if isinstance(net, Network) else None,
                max_steps=steps,
            )
        radius = radius.clone()
    return radius
