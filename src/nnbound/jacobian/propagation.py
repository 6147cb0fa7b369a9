"""``crown-jacobian``: Jacobian bounds by linear bound propagation through the gradient graph
(Shi, Wang, Zhang, Kolter, Hsieh, NeurIPS 2022; auto_LiRPA's Jacobian bounds).

For each spec row ``c`` the gradient graph of ``c . f`` (:mod:`nnbound.jacobian.gradient_graph`)
is bounded with the one backward engine (:mod:`nnbound.bounds.engine`), CROWN-style:

* the forward pre-activations ``z_i`` take the layer-wise method's bounds (the same ones
  Fast-Lip and RecurJac use);
* each derivative ``act'(z_i)`` takes its exact interval over ``z_i``'s bounds (a backward
  pass through its own lines could not beat that: the lines are evaluated over the same
  range);
* each upstream gradient a product reads is bounded by a backward pass through everything
  before it -- McCormick planes of the products, the derivative's lines in ``z_i``, and the
  forward network's relaxations back to ``x`` -- where RecurJac multiplies intervals;
* finally every coordinate of ``grad_x (c . f)`` is bounded the same way.

Because the pass reaches ``x`` through both the gradient and the forward nodes, it keeps the
correlation between a neuron's derivative and its pre-activation, which interval products
lose: as the ball shrinks the lines tend to the tangents at ``x`` and the bounds to the exact
gradient (RecurJac's, built from derivative intervals, do too but only at first order in the
intervals' width, which is what leaves it several times looser on tanh networks).

Spec rows are grouped: one gradient graph per distinct row ``c``, bounded over every ball row
that uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nnbound.bounds.engine import BoundState, CoefHook, backward
from nnbound.bounds.graph_bounds import needs_bounds, tighten_tensor
from nnbound.bounds.methods import _spec_tensor
from nnbound.bounds.result import Bounds
from nnbound.jacobian.alpha_jacobian import (
    NO_ALPHA,
    JacobianAlpha,
    optimise_elementwise,
    optimise_joint,
)
from nnbound.jacobian.gradient_graph import gradient_graph
from nnbound.jacobian.graph_gradient import graph_gradient_graph
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.ops.base import Interval, OpKind, RelaxOptions
from nnbound.ops.registry import DEFAULT_OPTIONS, get_op

if TYPE_CHECKING:
    from nnbound.bounds.spectral import SpectralFactors
from nnbound.sets.lp_ball import LpBall


@dataclass(frozen=True, eq=False)
class PropagationState:
    """What :func:`nnbound.jacobian.lipschitz.lipschitz_from_jacobian` reads besides the
    element-wise bounds of a ``crown-jacobian`` result.

    Attributes:
        input_dims: rank of one input sample.
        spectral: ``(N, S)`` the spectral (global) Lipschitz bound of each spec row in the
            ball's norm; a local constant never needs to exceed it.
        joint_norm: ``(N, S)`` an upper bound of the gradient's dual norm bounded as one
            functional (``||g||_1`` for Linf balls, ``||g||_2`` for L2 balls), else ``None``.
        joint_q: the norm ``joint_norm`` bounds.
    """

    input_dims: int
    spectral: Tensor
    joint_norm: Tensor | None = None
    joint_q: float | None = None


def _chord_functional(
    state: BoundState, lower: Tensor, upper: Tensor, slope: Tensor, bias: Tensor
) -> Tensor:
    """An upper bound ``(N,)`` of ``sum_j slope_j g_j + bias_j`` (float64 ``(N, *shape)``
    coefficients) over the ball, ``g`` the gradient graph's output, by one backward pass."""
    l, u = lower.double(), torch.maximum(upper, lower).double()
    n = l.shape[0]
    graph = state.graph
    a = slope.to(lower.dtype).reshape(n, 1, *graph.output_shape)
    # the intercepts' float64 sum, moved up by the rounding of the slopes to the working dtype
    slack = (slope - a.double().reshape(slope.shape)).abs() * torch.maximum(l.abs(), u.abs())
    const = (bias + slack).reshape(n, -1).sum(-1, keepdim=True)
    const = const + const.abs() * torch.finfo(lower.dtype).eps  # its rounding to the dtype
    _, up, _ = backward(state, graph.output, a, const.to(lower.dtype), lower=False)
    assert up is not None
    return up[:, 0] + up[:, 0].abs() * (8.0 * torch.finfo(up.dtype).eps)


def abs_sum_bound(state: BoundState, lower: Tensor, upper: Tensor) -> Tensor:
    """An upper bound ``(N,)`` of ``sum_j |g_j|`` over the ball, ``g`` the gradient graph's
    output with element-wise bounds ``lower`` / ``upper`` ``(N, *shape)``, as one linear
    functional (auto_LiRPA's L1 Jacobian norm): ``|g_j|`` is ``g_j`` or ``-g_j`` where its
    sign is known and below the chord ``s_j g_j + b_j`` of ``|.|`` over ``[l_j, u_j]``
    elsewhere, and ``sum_j s_j g_j + b_j`` is bounded by one backward pass, which keeps the
    cancellations between coordinates that summing ``max(|l_j|, |u_j|)`` loses."""
    l, u = lower.double(), torch.maximum(upper, lower).double()
    across = (l < 0) & (u > 0)
    safe = torch.where(across, u - l, torch.ones_like(l))
    slope = torch.where(across, (u + l) / safe, torch.where(u <= 0, -1.0, 1.0))
    bias = torch.where(across, -2.0 * l * u / safe, torch.zeros_like(l))
    return _chord_functional(state, lower, upper, slope, bias)


def square_sum_bound(state: BoundState, lower: Tensor, upper: Tensor) -> Tensor:
    """An upper bound ``(N,)`` of ``||g||_2``: ``g_j^2`` lies below its chord ``(l_j + u_j) g_j
    - l_j u_j`` over ``[l_j, u_j]`` (convexity), whose sum one backward pass bounds."""
    l, u = lower.double(), torch.maximum(upper, lower).double()
    total = _chord_functional(state, lower, upper, l + u, -l * u)
    return total.clamp_min(0.0).sqrt() * (1.0 + 4.0 * torch.finfo(lower.dtype).eps)


def zero_dropper(graph: Graph) -> CoefHook:
    """An engine coefficient hook that drops coefficients that are all zero on tensors made
    by linear or relaxed nodes (their rules take "nothing"; an element-wise node's do not),
    so the pass does not carry them on. A ReLU derivative's constant lines hand its ``z``
    exactly zero, which would otherwise travel through the whole forward network to the
    input (measured: most of a pass's matrix products on a 784-1024-1024-10 ReLU MLP)."""
    droppable = {
        node.output for node in graph.nodes if get_op(node.op, node).kind is not OpKind.ELEMENTWISE
    }

    def hook(
        tensor: str, a_lower: Tensor | None, a_upper: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        if tensor not in droppable:
            return a_lower, a_upper
        for a in (a_lower, a_upper):
            # a zero that depends on optimised parameters still carries their gradient
            if a is not None and (a.requires_grad or bool(a.any())):
                return a_lower, a_upper
        return None, None

    return hook


def gradient_graph_bounds(
    graph: Graph,
    ball: LpBall,
    prior: dict[str, Interval],
    options: RelaxOptions = DEFAULT_OPTIONS,
) -> tuple[Tensor, Tensor, BoundState]:
    """Bounds ``(N, *input_shape)`` of the gradient graph's output over ``ball`` (N rows),
    with ``prior`` bounds of the forward pre-activations (by tensor name), and the bound
    state (for further passes)."""
    state = BoundState(graph, ball, options, coef_hook=zero_dropper(graph))
    state.bounds[graph.input_name] = ball.box()
    need = needs_bounds(graph, list(graph.nodes))
    n = ball.center.shape[0]
    for node in graph.nodes:
        op = get_op(node.op, node)
        lo, up = op.interval(node, [state.bounds[i] for i in node.inputs])
        name = node.output
        if name in prior:
            lo, up = lo.maximum(prior[name][0]), up.minimum(prior[name][1])
        elif name in need and node.op != "derivative":
            every = torch.ones(n, lo[0].numel(), dtype=torch.bool, device=lo.device)
            lo, up = tighten_tensor(state, name, every, (lo, up), True)
        state.bounds[name] = (lo, torch.maximum(up, lo))
    lo, up = state.bounds[graph.output]
    every = torch.ones(n, lo[0].numel(), dtype=torch.bool, device=lo.device)
    lo, up = tighten_tensor(state, graph.output, every, (lo, up), True)
    return lo, up, state


def propagation_bounds(
    net: Network | Graph,
    ball: LpBall,
    C: Tensor | None,
    layer_method: str,
    *,
    reference: bool = False,
    alpha: JacobianAlpha = NO_ALPHA,
    spectral: SpectralFactors | None = None,
) -> tuple[Tensor, Tensor, Bounds, PropagationState]:
    """Bounds ``(N, S, n_0)`` of the Jacobian rows of ``C f`` over the ball's rows, the
    layer-wise bounds they started from, and the Lipschitz side information (``alpha``:
    optimise the relaxations of the dual norm's joint bound, see
    :mod:`nnbound.jacobian.alpha_jacobian`; ``spectral``: ``net``'s operator-norm factors
    when the caller keeps them, see :func:`~nnbound.bounds.spectral.spectral_factors`)."""
    from nnbound.bounds.api import bounds
    from nnbound.bounds.spectral import spectral_lipschitz

    if isinstance(net, Graph):  # a residual / branching graph (a chain comes as a Network)
        lb = bounds(net, ball, layer_method, C, outward=False)
        pre: dict = {}
    else:
        lb = bounds(net, ball, layer_method, C, reference=reference, outward=False)
        pre = lb.intermediate.pre
    n = ball.center.shape[0]
    spec = _spec_tensor(C, n, ball.batch_shape, net)
    spec = spec.reshape(n, spec.shape[1], -1)
    s_rows = spec.shape[1]
    n0 = net.num_inputs
    lower = torch.empty(n, s_rows, n0, dtype=net.dtype, device=net.device)
    upper = torch.empty_like(lower)
    # the dual norm as one functional: L1 (Linf balls), L2 (L2 balls); max |g_j| (L1 balls)
    # is already exact from the element-wise bounds
    joint = {math.inf: abs_sum_bound, 2.0: square_sum_bound}.get(ball.p)
    joint_norm = torch.full((n, s_rows), math.inf, dtype=net.dtype, device=net.device)
    for s in range(s_rows):
        rows_c, which = torch.unique(spec[:, s], dim=0, return_inverse=True)
        for k in range(rows_c.shape[0]):
            idx = torch.nonzero(which == k).squeeze(1)
            gg = (
                graph_gradient_graph(net, rows_c[k])
                if isinstance(net, Graph)
                else gradient_graph(net, rows_c[k])
            )
            if gg.graph is None:
                assert gg.constant is not None
                lower[idx, s] = gg.constant.reshape(-1)
                upper[idx, s] = gg.constant.reshape(-1)
                continue
            prior = {
                name: (pre[i][0][idx], pre[i][1][idx]) for i, name in gg.preactivations.items()
            }
            lo, up, state = gradient_graph_bounds(gg.graph, ball.rows(idx), prior)
            lo, up = optimise_elementwise(state, lo, up, alpha)
            lower[idx, s] = lo.reshape(len(idx), -1)
            upper[idx, s] = up.reshape(len(idx), -1)
            if joint is not None:
                value = joint(state, lo, up)
                if alpha.enabled:
                    value = optimise_joint(state, lo, up, joint, value, alpha)
                joint_norm[idx, s] = value
    if isinstance(net, Graph):  # no spectral bound of a general graph here
        spectral_bound = torch.full((n, s_rows), math.inf, dtype=net.dtype, device=net.device)
    else:
        spectral_bound = spectral_lipschitz(net, spec, ball.p, spectral)
    state_out = PropagationState(
        len(net.input_shape),
        spectral_bound,
        joint_norm if joint is not None else None,
        ball.q if joint is not None else None,
    )
    return lower, upper, lb, state_out


__all__ = ["PropagationState", "gradient_graph_bounds", "propagation_bounds", "zero_dropper"]
