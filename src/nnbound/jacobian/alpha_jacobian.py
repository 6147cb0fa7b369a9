"""alpha-optimised ``crown-jacobian``: the free relaxations of the gradient graph optimised by
projected gradient descent on the Lipschitz bound, as alpha-CROWN does for output bounds.

The bound of the gradient's dual norm as one functional (``sum_j |g_j|`` or ``||g||_2``, see
:mod:`nnbound.jacobian.propagation`) is one backward pass through the gradient graph, whose
relaxations each hold for a whole family of parameters ``theta`` in ``[0, 1]``:

* the forward activations' lines (ReLU lower slopes, S-shaped tangent points: the
  :class:`~nnbound.relax.base.ParametricLines` alpha-CROWN already optimises);
* the derivative nodes' lines (:mod:`nnbound.ops.derivative_families`: corner-line slopes of
  ReLU's step, tangent points of smooth derivatives);
* the products ``d * h`` (:mod:`nnbound.ops.gradient_product`: convex combinations of two
  valid planes per side).

Every iterate is a sound bound (the parameters are projected onto ``[0, 1]`` after each step
and every rule clamps them again), so the best value seen per row is kept, never worse than
the unoptimised bound it starts from. With ``intermediate`` the bounds of each upstream
gradient a product reads are optimised first, per bound
(:mod:`nnbound.jacobian.alpha_intermediate`), and the gradient's element-wise bounds
re-bounded from them; the forward pre-activations keep the layer-wise method's bounds. The
final functional has one parameter set per ball row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.alpha_crown import _Adam
from nnbound.bounds.engine import BoundState
from nnbound.bounds.graph_bounds import tighten_tensor
from nnbound.errors import InputError
from nnbound.jacobian.alpha_intermediate import make_params, optimise_intermediate, param_state

Joint = Callable[[BoundState, Tensor, Tensor], Tensor]
"""``(state, lower, upper) -> (N,)``: an upper bound of a norm of the gradient graph's output
(:func:`~nnbound.jacobian.propagation.abs_sum_bound` or ``square_sum_bound``)."""


@dataclass(frozen=True)
class JacobianAlpha:
    """alpha-optimisation of ``crown-jacobian`` (parsed once at the edge).

    Attributes:
        steps: projected Adam steps (0: off).
        lr: Adam learning rate (decayed x0.98 per step).
        intermediate: also optimise the bounds of the upstream gradients
            (:mod:`nnbound.jacobian.alpha_intermediate`) first.
    """

    steps: int = 0
    lr: float = 0.1
    intermediate: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise InputError(f"alpha steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise InputError(f"alpha learning rate must be > 0, got {self.lr}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


NO_ALPHA = JacobianAlpha()


def optimise_elementwise(
    state: BoundState, lower: Tensor, upper: Tensor, alpha: JacobianAlpha
) -> tuple[Tensor, Tensor]:
    """With ``alpha.intermediate``: the upstream gradients' bounds in ``state`` optimised in
    place, then the gradient's element-wise bounds re-bounded from them (intersected with
    ``lower`` / ``upper``); else ``lower`` / ``upper``."""
    if not (alpha.enabled and alpha.intermediate):
        return lower, upper
    optimise_intermediate(state, alpha.steps, alpha.lr)
    every = torch.ones(lower.shape[0], lower[0].numel(), dtype=torch.bool, device=lower.device)
    return tighten_tensor(state, state.graph.output, every, (lower, upper), True)


def optimise_joint(
    state: BoundState,
    lower: Tensor,
    upper: Tensor,
    joint: Joint,
    start: Tensor,
    alpha: JacobianAlpha,
) -> Tensor:
    """The best ``(N,)`` bound of ``joint`` over ``alpha.steps`` projected Adam steps on the
    relaxations' parameters (``start``: the unoptimised bound, kept where nothing beats it);
    ``state`` holds the bounds of every tensor the pass relaxes (they stay fixed)."""
    graph = state.graph
    table, thetas, mix = make_params(state, list(graph.nodes), 1)
    params = list(thetas.values()) + [t for d in mix.values() for t in d.values()]
    best = start.clone()
    if not params:
        return best
    adam = _Adam(params, alpha.lr)
    for _ in range(alpha.steps):
        run = param_state(state, mix, table)
        with torch.enable_grad():  # callers may run under no_grad (the CLI tasks)
            value = joint(run, lower, upper)
            if not value.requires_grad:  # no parameter reaches the bound
                break
            grads = torch.autograd.grad(value.sum(), params, allow_unused=True)
        best = torch.minimum(best, value.detach())
        adam.step(grads)
        with torch.no_grad():
            for p in params:
                p.clamp_(0.0, 1.0)  # projection: every iterate stays sound
    with torch.no_grad():
        run = param_state(state, mix, table)
        best = torch.minimum(best, joint(run, lower, upper))
    return best


__all__ = ["NO_ALPHA", "JacobianAlpha", "Joint", "optimise_elementwise", "optimise_joint"]
