"""Carlini-Wagner L2: the smallest L2 perturbation found by Adam on a penalised objective.

Paper: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017
(the L2 attack of Section V-A, as in their ``l2_attack.py``).

Distance: L2, ``||x_adv - x||_2``.

Per row, for a constant ``c`` found by binary search, Adam minimises

    ||x_adv - x||_2^2 + c * max(m(x_adv), -confidence)

where ``m`` is the logit margin of :func:`~nnbound.attacks.base.adversarial_margin` (untargeted:
``f_y - max_{j != y} f_j``; targeted: ``max_{j != t} f_j - f_t``). With a data domain
``(lo, hi)`` the variable is ``w`` in tanh space, ``x_adv = mid + half * tanh(w)`` (the box
constraint by change of variables, as the paper); without one it is ``delta = x_adv - x``.
``c`` starts at ``initial_const``; after each of ``binary_steps`` rounds it is halved towards
the last failing value if the round found an example, else multiplied by 10 (until a success
brackets it), per row. Every iterate that is adversarial is a candidate; the one with the
smallest L2 distance is returned. Rows are independent (Adam is element-wise), so a batch is
``B`` problems solved at once.

Shapes: ``x`` ``(B, *input_shape)``, ``labels``/``targets`` ``(B,)`` (-1 = untargeted).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.attacks.base import Attack, Domain, adversarial_margin, require_counts, require_reals

_UPPER_C = 1e10
"""The reference's "no upper bound on c yet" sentinel."""


class _Adam:
    """Adam (Kingma & Ba 2015, the reference's optimiser) on one tensor, element-wise, so each
    row of a batch is its own problem. Written out because ``torch.optim`` pulls in
    ``torch._dynamo`` on first use, which costs seconds of import time per process."""

    def __init__(
        self, like: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = 0

    def step(self, param: Tensor, grad: Tensor) -> Tensor:
        self.t += 1
        self.m.mul_(self.b1).add_(grad, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return param - self.lr * m_hat / (v_hat.sqrt() + self.eps)


class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2 attack (minimal distortion).

    Args:
        binary_steps: rounds of the binary search over ``c`` (reference 9).
        steps: Adam iterations per round (reference 10000; 100-1000 is usual).
        lr: Adam learning rate (reference 0.01).
        initial_const: first ``c`` (reference 1e-3).
        confidence: ``kappa``, the margin beyond the boundary asked for (reference 0).
        abort_early: stop a round when the objective has not decreased by 0.01% over the last
            ``steps // 10`` iterations (the reference's rule).
        domain, seed, batch_size, check_float64: see :class:`~nnbound.attacks.base.Attack`.

    Call: ``CarliniWagnerL2()(model, x, labels, targets)`` -> ``AttackResult`` (L2 distances).
    """

    name = "cw"
    norm = 2.0
    requires_eps = False

    def __init__(
        self,
        binary_steps: int = 9,
        steps: int = 1000,
        lr: float = 0.01,
        initial_const: float = 1e-3,
        confidence: float = 0.0,
        abort_early: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.binary_steps = binary_steps
        self.steps = steps
        self.lr = lr
        self.initial_const = initial_const
        self.confidence = confidence
        self.abort_early = abort_early

    def check(self) -> None:
        require_counts(self, "binary_steps", "steps")
        require_reals(self, "lr", "initial_const")
        require_reals(self, "confidence", positive=False)

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
        if domain is not None:
            mid, half = (domain[0] + domain[1]) / 2, (domain[1] - domain[0]) / 2
            # Pixels exactly at the box edge would need w = +-inf: pull them in by 1e-6 (the
            # reference's factor); distances are still measured from the true x.
            w0 = torch.atanh(((x - mid) / half).clamp(-1 + 1e-6, 1 - 1e-6))

            def to_x(v: Tensor) -> Tensor:
                return mid + half * torch.tanh(w0 + v)

        else:

            def to_x(v: Tensor) -> Tensor:
                return x + v

        const = torch.full((b,), float(self.initial_const), dtype=torch.float64)
        lower = torch.zeros(b, dtype=torch.float64)
        upper = torch.full((b,), _UPPER_C, dtype=torch.float64)
        best = x.clone()
        best_dist = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
        patience = max(1, int(self.steps) // 10)
        for _round in range(int(self.binary_steps)):
            c_dev = const.to(device=x.device, dtype=x.dtype)
            var = torch.zeros_like(x)
            adam = _Adam(var, float(self.lr))
            found = torch.zeros(b, dtype=torch.bool, device=x.device)
            prev = math.inf
            for it in range(int(self.steps)):
                var = var.detach().requires_grad_(True)
                xa = to_x(var)
                margin = adversarial_margin(model(xa), labels, targets)
                dist2 = (xa - x).pow(2).reshape(b, -1).sum(1)
                loss_rows = dist2 + c_dev * margin.clamp_min(-float(self.confidence))
                loss = loss_rows.sum()
                with torch.no_grad():
                    # The iterate is adversarial with the asked confidence: a candidate.
                    ok = margin < -float(self.confidence) if self.confidence > 0 else margin < 0
                    d = dist2.sqrt()
                    closer = ok & (d < best_dist)
                    best = torch.where(closer.view(view), xa.detach(), best)
                    best_dist = torch.where(closer, d, best_dist)
                    found |= ok
                if self.abort_early and it % patience == 0:
                    cur = float(loss.detach())
                    if cur > prev * 0.9999:
                        break
                    prev = cur
                (grad,) = torch.autograd.grad(loss, var)
                var = adam.step(var.detach(), grad)
            ok = found.cpu()
            upper = torch.where(ok, torch.minimum(upper, const), upper)
            lower = torch.where(ok, lower, torch.maximum(lower, const))
            const = torch.where(
                upper < _UPPER_C,
                (lower + upper) / 2,
                const * 10,
            )
        return best.detach()
