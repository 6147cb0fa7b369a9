"""EAD: elastic-net attack, the L1 attack of the sandwich (sparse, small-L1 examples).

Paper: Chen, Sharma, Zhang, Yi, Hsieh, "EAD: Elastic-Net Attacks to Deep Neural Networks via
Adversarial Examples", AAAI 2018 (their ``en_attack.py``).

Distance: L1, ``||x_adv - x||_1`` (the L1 decision rule of the paper: of every adversarial
iterate, the one with the smallest L1 distance is returned).

Per row, for a constant ``c`` found by binary search as in Carlini-Wagner, FISTA minimises

    c * max(m(x_adv), -confidence) + ||x_adv - x||_2^2 + beta * ||x_adv - x||_1

with ``m`` the logit margin of :func:`~nnbound.attacks.base.adversarial_margin`. Each iteration
takes a gradient step on the smooth part at the momentum point ``y``, then the projected
shrinkage-thresholding operator ``S_beta`` (soft-threshold ``z - x`` by ``beta``, clip to the
domain), then the FISTA momentum ``y = x_k + k / (k + 3) (x_k - x_{k-1})``. The learning rate
decays as ``lr * (1 - k / steps) ** 0.5``. As in the reference implementation the threshold is
``beta`` itself, not ``lr * beta``: that is what makes the examples sparse at the reference's
settings.

Shapes: ``x`` ``(B, *input_shape)``, ``labels``/``targets`` ``(B,)`` (-1 = untargeted).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.attacks.base import Attack, Domain, adversarial_margin, require_counts, require_reals

_UPPER_C = 1e10


class EAD(Attack):
    """Elastic-net (EAD) attack, L1 decision rule (minimal L1 distortion).

    Args:
        binary_steps: rounds of the binary search over ``c`` (reference 9).
        steps: FISTA iterations per round (reference 1000).
        lr: initial step size (reference 0.01), decayed with power 0.5.
        initial_const: first ``c`` (reference 1e-3).
        beta: the L1 weight and shrinkage threshold (reference 1e-3).
        confidence: ``kappa`` (reference 0).
        domain, seed, batch_size, check_float64: see :class:`~nnbound.attacks.base.Attack`.

    Call: ``EAD()(model, x, labels, targets)`` -> ``AttackResult`` (L1 distances).
    """

    name = "ead"
    norm = 1.0
    requires_eps = False

    def __init__(
        self,
        binary_steps: int = 9,
        steps: int = 1000,
        lr: float = 0.01,
        initial_const: float = 1e-3,
        beta: float = 1e-3,
        confidence: float = 0.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.binary_steps = binary_steps
        self.steps = steps
        self.lr = lr
        self.initial_const = initial_const
        self.beta = beta
        self.confidence = confidence

    def check(self) -> None:
        require_counts(self, "binary_steps", "steps")
        require_reals(self, "lr", "initial_const")
        require_reals(self, "beta", "confidence", positive=False)

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
        b, dims = x.shape[0], x.dim() - 1
        view = (-1, *([1] * dims))
        beta, kappa = float(self.beta), float(self.confidence)

        def shrink(z: Tensor) -> Tensor:
            """Projected shrinkage-thresholding: soft-threshold ``z - x``, clip to the box."""
            diff = z - x
            out = x + diff.sign() * (diff.abs() - beta).clamp_min(0)
            if domain is not None:
                out = out.clamp(domain[0], domain[1])
            return out

        const = torch.full((b,), float(self.initial_const), dtype=torch.float64)
        lower = torch.zeros(b, dtype=torch.float64)
        upper = torch.full((b,), _UPPER_C, dtype=torch.float64)
        best = x.clone()
        best_l1 = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
        steps = int(self.steps)
        for _round in range(int(self.binary_steps)):
            c_dev = const.to(device=x.device, dtype=x.dtype)
            cur = x.clone()  # x_k
            y = x.clone()  # the FISTA momentum point (the reference's "slack")
            found = torch.zeros(b, dtype=torch.bool, device=x.device)
            for k in range(steps):
                lr = float(self.lr) * (1 - k / steps) ** 0.5
                y = y.detach().requires_grad_(True)
                margin = adversarial_margin(model(y), labels, targets)
                smooth = c_dev * margin.clamp_min(-kappa) + (y - x).pow(2).reshape(b, -1).sum(1)
                (grad,) = torch.autograd.grad(smooth.sum(), y)
                with torch.no_grad():
                    new = shrink(y - lr * grad)
                    y = new + k / (k + 3.0) * (new - cur)
                    cur = new
                    m_new = adversarial_margin(model(new), labels, targets)
                    ok = m_new < -kappa if kappa > 0 else m_new < 0
                    l1 = (new - x).abs().reshape(b, -1).sum(1)
                    closer = ok & (l1 < best_l1)
                    best = torch.where(closer.view(view), new, best)
                    best_l1 = torch.where(closer, l1, best_l1)
                    found |= ok
            ok = found.cpu()
            upper = torch.where(ok, torch.minimum(upper, const), upper)
            lower = torch.where(ok, lower, torch.maximum(lower, const))
            const = torch.where(upper < _UPPER_C, (lower + upper) / 2, const * 10)
        return best.detach()
