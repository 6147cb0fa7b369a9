"""The reference's quadratic bound (``--quad``, spec §6) for networks with one hidden ReLU layer.

For a spec row ``c`` of ``W2 relu(z) + b2`` with ``z = M x + m``, let ``w = c W2``. Where
``w_i > 0`` the lower bound needs ``relu(z_i)`` from below, and an unstable neuron gets the
reference's quadratic lower bound (``get_best_lower_quad``): 0 if ``|l| >= |u|``, ``z`` if
``u >= 2|l|``, else ``(z^2 - l z) / (u - l)``; where ``w_i < 0`` it gets the chord from above.
The result ``Q(x)`` is a convex quadratic below the spec on the ball (the upper side mirrors it
with a concave one). The reference minimises it by projected gradient and reports the value it
reaches, which is only a bound if the solver converged. We run the same kind of solver and then
certify its answer: by convexity ``Q(x) >= Q(x*) + grad Q(x*) . (x - x*)``, and the minimum of
that linear function over the ball is exact -- a valid lower bound whatever ``x*`` is.
The final bound is combined element-wise with CROWN-adaptive's, as in the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.bounds.methods import _first_block_bounds, _spec_tensor, layerwise_bounds
from nnbound.bounds.result import Bounds
from nnbound.bounds.spectral import block_matrix
from nnbound.errors import UnsupportedError
from nnbound.network.layers import Activation, MaxPool2d
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall

_ITERATIONS = 200


def _quad_coefficients(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, b)`` of the reference's lower quadratic ``a z^2 + b z <= relu(z)`` on ``[l, u]``."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    width = torch.where(unstable, u - l, torch.ones_like(u))
    a = torch.where(
        unstable & (u.abs() > l.abs()) & (u < 2 * l.abs()), 1.0 / width, torch.zeros_like(u)
    )
    b = torch.where(
        unstable & (u.abs() > l.abs()) & (u < 2 * l.abs()), -l / width, torch.zeros_like(u)
    )
    b = torch.where(unstable & (u >= 2 * l.abs()), torch.ones_like(u), b)
    b = torch.where(active, torch.ones_like(u), b)
    return a, b


def _chord(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    width = torch.where(unstable, u - l, torch.ones_like(u))
    s = torch.where(unstable, u / width, active.to(u.dtype))
    t = torch.where(unstable, -l * u / width, torch.zeros_like(u))
    return s, t


def _certified_min(
    w: Tensor, big_m: Tensor, m: Tensor, l: Tensor, u: Tensor, const: Tensor, ball: LpBall
) -> Tensor:
    """Certified ``min_x sum_i w_i phi_i(z_i) + const`` over the ball, ``phi_i`` the quadratic
    lower bound where ``w_i > 0`` and the chord where ``w_i < 0``. Shapes: ``w`` ``(N, S, H)``,
    ``big_m`` ``(H, D)``, ``m``/``l``/``u`` ``(N, H)``, ``const`` ``(N, S)``."""
    a, b = _quad_coefficients(l, u)
    s, t = _chord(l, u)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    quad = wp * a.unsqueeze(1)  # (N, S, H) >= 0: convex
    lin = wp * b.unsqueeze(1) + wn * s.unsqueeze(1)
    offset = (wn * t.unsqueeze(1)).sum(-1) + const

    def value_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
        z = x @ big_m.T + m.unsqueeze(1)  # (N, S, H)
        val = (quad * z * z + lin * z).sum(-1) + offset
        grad = (2 * quad * z + lin) @ big_m  # (N, S, D)
        return val, grad

    n, sdim = w.shape[:2]
    center = ball.center.reshape(n, 1, -1).expand(n, sdim, -1)
    ball_rows = LpBall(
        center.reshape(n * sdim, -1),
        ball.eps.repeat_interleave(sdim),
        ball.p,
        ball.domain if ball.p == math.inf else None,
        (),
    )
    sigma = torch.linalg.matrix_norm(big_m, ord=2)
    lip = 2 * quad.amax(-1, keepdim=True) * sigma**2  # gradient Lipschitz constant per row
    step = 1.0 / lip.clamp_min(1e-12)
    x = center.clone()
    for _ in range(_ITERATIONS):
        _, g = value_and_grad(x)
        x = ball_rows.project((x - step * g).reshape(n * sdim, -1)).reshape(n, sdim, -1)
    val, g = value_and_grad(x)
    lin_lo, _ = ball_rows.concretize(g.reshape(n * sdim, 1, -1))
    lin_lo = lin_lo.reshape(n, sdim)
    return val - (g * x).sum(-1) + lin_lo


def quadratic_bounds(net: Network, ball: LpBall, C: Tensor | None = None) -> Bounds:
    """CROWN-adaptive tightened by the certified quadratic bound (one hidden ReLU layer)."""
    if any(isinstance(layer, MaxPool2d) for layer in net.layers):
        raise UnsupportedError(
            "the quad bound applies to networks with exactly one hidden ReLU layer and linear "
            "layers; this network has max pooling"
        )
    acts = [i for i, layer in enumerate(net.layers) if isinstance(layer, Activation)]
    if len(acts) != 1 or net.layers[acts[0]].name != "relu":
        raise UnsupportedError(
            "the quad bound applies to networks with exactly one hidden ReLU layer"
        )
    base = layerwise_bounds(net, ball, "crown-adaptive", C)
    j = acts[0]
    n = ball.center.shape[0]
    spec = _spec_tensor(C, n, ball.batch_shape, net)
    spec = spec.reshape(n, spec.shape[1], -1)
    shapes = net.shapes
    big_m = block_matrix(net.layers, shapes, 0, j, dtype=net.dtype)  # (H, D)
    mid = ball.center
    for layer in net.layers[:j]:
        mid = layer.forward(mid)
    offset_m = mid.reshape(n, -1) - ball.center.reshape(n, -1) @ big_m.T  # the first block's bias
    l, u = (t.reshape(n, -1) for t in _first_block_bounds(net, j, ball))
    w2 = block_matrix(net.layers, shapes, j + 1, len(net.layers), dtype=net.dtype)  # (outputs, H)
    # The second block's bias: its output at a zero hidden vector.
    h0 = torch.zeros(1, *shapes[j + 1], dtype=w2.dtype, device=w2.device)
    for layer in net.layers[j + 1 :]:
        h0 = layer.forward(h0)
    const = spec @ h0.reshape(-1)  # (N, S)
    w = spec @ w2  # (N, S, H)
    lower = _certified_min(w, big_m, offset_m, l, u, const, ball)
    upper = -_certified_min(-w, big_m, offset_m, l, u, -const, ball)
    shape = base.lower.shape
    return Bounds(
        torch.maximum(base.lower, lower.reshape(shape)),
        torch.minimum(base.upper, upper.reshape(shape)),
        "quad",
        base.intermediate,
    )
