"""The ``lipschitz`` task (spec §9.2): local Lipschitz constants of the predicted logit over
balls of growing radius.

For each selected input and each eps of the grid -- ``linspace(0, eps, lipsteps + 1)``, or
``[0] + logspace(liplogstart, liplogend, lipsteps)`` when the two differ -- the local Lipschitz
constant of logit ``c`` (the label) over the p-ball of radius eps, in the dual norm (spec §8).
At eps = 0 it equals the gradient's dual norm at the input (checked with autograd). As eps
grows, more neurons become unstable; once every derivative interval is the activation's whole
range (every ReLU unstable) the bound no longer depends on eps: it is then a *global* Lipschitz
constant, usually far below the operator-norm product ``opnorm_global_lipschitz``.

Image selection follows the reference: correctly classified inputs from ``--startimage`` on;
a numeric ``--targettype N`` keeps only images of class N. (The reference selects nothing for
N = 0 -- spec §12.8 -- and prints the operator-norm baseline only for a forced class; here
class 0 works and the baseline is always reported, averaged over the images' classes.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.spectral import SpectralFactors, spectral_factors
from nnbound.errors import InputError
from nnbound.jacobian.alpha_jacobian import NO_ALPHA, JacobianAlpha
from nnbound.jacobian.api import check_options, sequential_network
from nnbound.jacobian.lipschitz import gradient_dual_norm, lipschitz_bounds, opnorm_global_lipschitz
from nnbound.jacobian.sweep import lipschitz_sweep
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import parse_norm
from nnbound.tasks.targets import parse_target_type, select_targets

SATURATION_RTOL = 1e-6


@dataclass(frozen=True)
class ImageChoice:
    """Selected inputs: positions in the candidate rows ``rows`` ``(M,)`` and classes
    ``(M,)``; ``forced`` if one class was asked for."""

    rows: Tensor
    classes: Tensor
    forced: bool


def select_images(
    logits: Tensor, labels: Tensor, target_type: str | int, *, num_images: int, seed: int
) -> ImageChoice:
    """Correctly classified rows (up to ``num_images``); a class number keeps that class only."""
    kind = parse_target_type(target_type)
    if isinstance(kind, int):
        if not 0 <= kind < logits.shape[1]:
            raise InputError(f"class {kind} out of range [0, {logits.shape[1]})")
        ok = (logits.argmax(1) == labels) & (labels == kind)
        rows = torch.nonzero(ok).squeeze(1)[:num_images]
        return ImageChoice(rows, labels[rows].long(), True)
    sel = select_targets(logits, labels, kind, num_images=num_images, start=0, seed=seed)
    return ImageChoice(sel.indices, sel.labels, False)


def eps_grid(eps: float, lipsteps: int, liplogstart: float = 0.0, liplogend: float = 0.0) -> Tensor:
    """The reference's eps grid, float64 ``(lipsteps + 1,)``, starting with 0."""
    if lipsteps < 1:
        raise InputError(f"lipsteps must be >= 1, got {lipsteps}")
    if liplogstart == liplogend:
        if not (math.isfinite(eps) and eps >= 0):
            raise InputError(f"eps must be finite and >= 0, got {eps}")
        return torch.linspace(0.0, float(eps), lipsteps + 1, dtype=torch.float64)
    exps = torch.linspace(float(liplogstart), float(liplogend), lipsteps, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), 10.0**exps])


def class_spec(classes: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(B, 1, classes)``: the logit of each class alone (the reference's ``j = -1``)."""
    c = torch.zeros(classes.shape[0], 1, num_classes, dtype=dtype, device=classes.device)
    c[torch.arange(classes.shape[0], device=classes.device), 0, classes] = 1.0
    return c


@dataclass(frozen=True)
class LipschitzCurve:
    """Per input ``b`` and grid point ``k`` (all ``(B, K)`` unless noted).

    Attributes:
        eps: the radii.
        values: local Lipschitz constants of the class logit.
        unsure: Jacobian entries of unknown sign.
        global_bound: the value is a global bound (every derivative interval is the whole
            range of its activation).
        grad_norm: ``(B,)`` the gradient's dual norm at the input (autograd).
        opnorm: ``(B,)`` the operator-norm-product (global) constant of the class logit.
    """

    eps: Tensor
    values: Tensor
    unsure: Tensor
    global_bound: Tensor
    grad_norm: Tensor
    opnorm: Tensor

    def monotone(self) -> Tensor:
        """``(B, K)`` the reported constants: at each eps the smallest bound of any ball at
        least as large, and of the global operator-norm bound.

        A Lipschitz constant over a ball holds on every ball inside it, so each of those is a
        bound for eps too; the raw curve can dip and rise again (a looser relaxation at a
        smaller eps), which reads as nonsense although each value is sound."""
        eps, vals = self.eps.to(torch.float64), self.values
        larger = eps.unsqueeze(1) >= eps.unsqueeze(2)  # [b, k, j]: eps_j >= eps_k
        inf = torch.full_like(vals, math.inf)
        over = torch.where(larger, vals.unsqueeze(1), inf.unsqueeze(1)).amin(-1)
        return torch.minimum(over, self.opnorm.unsqueeze(1).to(vals.dtype))

    def eps_zero_matches(self, rtol: float) -> Tensor:
        """``(B,)`` whether the eps = 0 value equals the gradient norm (where eps = 0)."""
        zero = self.eps[:, 0] == 0
        close = torch.isclose(self.values[:, 0], self.grad_norm, rtol=rtol, atol=rtol * 1e-3)
        return close | ~zero


def lipschitz_curve(
    net: Network,
    x: Tensor,
    classes: Tensor,
    grid: Tensor,
    *,
    norm: float | str = "inf",
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    alpha: JacobianAlpha = NO_ALPHA,
    opnorm: SpectralFactors | None = None,
) -> LipschitzCurve:
    """Local Lipschitz constants of logit ``classes[b]`` at ``x[b]`` for each radius of
    ``grid`` (``(K,)`` shared or ``(B, K)`` per input), all evaluated in one batched call.
    ``opnorm``: the network's :func:`opnorm_factors` (a caller with many batches of one
    network builds them once; seconds on a CNN)."""
    method = check_options(method, layer_method, direction, shift)
    p = parse_norm(norm)
    x = net.check_input(x)
    b = x.shape[0]
    grid = grid.to(torch.float64)
    eps = grid.unsqueeze(0).expand(b, -1) if grid.dim() == 1 else grid
    spec = class_spec(classes.to(x.device), net.num_outputs, net.dtype)
    with torch.no_grad():
        if method == "crown-jacobian":
            ball = LpBall.make(x, eps.to(device=x.device, dtype=x.dtype), p)
            res = lipschitz_bounds(
                net,
                ball,
                spec,
                method,
                layer_method,
                direction,
                shift,
                alpha=alpha,
                spectral=opnorm,
            )
            values, unsure, whole = res.value, res.jacobian.unsure, res.global_bound
        else:
            if alpha.enabled:
                raise InputError(f"alpha-optimisation applies to crown-jacobian, not {method}")
            # the same constants, with the layer bounds and recursions shared across radii
            sw = lipschitz_sweep(
                sequential_network(net), x, eps, spec, p, method, layer_method, direction, shift
            )
            values, unsure = sw.values.reshape(b, -1, 1), sw.unsure.reshape(b, -1, 1)
            whole = sw.global_bound.reshape(b, -1)
        opnorm_values = opnorm_global_lipschitz(net, spec, p, opnorm)[:, 0]
    return LipschitzCurve(
        eps.cpu(),
        values[..., 0].to(torch.float64).cpu(),
        unsure[..., 0].cpu(),
        whole.cpu(),
        gradient_dual_norm(net, x, spec, p)[:, 0].to(torch.float64).cpu(),
        opnorm_values.to(torch.float64).cpu(),
    )


def opnorm_factors(net: Network, norm: float | str) -> SpectralFactors:
    """What :func:`lipschitz_curve` needs of the operator-norm baseline, for one network and
    norm (pass it as ``opnorm`` to every curve of that network)."""
    return spectral_factors(sequential_network(net), parse_norm(norm))


def saturation_index(values: Tensor, rtol: float = SATURATION_RTOL) -> int | None:
    """First index from which a curve ``(K,)`` stays equal to its last value (relative
    ``rtol``), if that happens before the last point; else ``None``."""
    last = values[-1]
    close = (values - last).abs() <= rtol * last.abs().clamp_min(1e-300)
    k = len(values) - 1
    while k > 0 and bool(close[k - 1]):
        k -= 1
    return k if k < len(values) - 1 else None
