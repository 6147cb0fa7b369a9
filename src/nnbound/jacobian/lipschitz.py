"""Local Lipschitz constants from Jacobian bounds, and the spectral global baseline.

For an input set in the p-norm, ``|c.f(x) - c.f(y)| <= max_z ||J_c(z)||_q ||x - y||_p`` (q the
dual norm) along the segment, which stays in the (convex) set. With element-wise bounds
``L <= J <= U`` and ``M = max(|L|, |U|)``: q = inf (p = 1) gives ``max_i M_i``, q = 2 gives
``||M||_2``, and q = 1 (p = inf) gives ``sum_i M_i`` -- which RecurJac refines (spec §8.3,
``last_layer_abs_sum``) by bounding the sum of the entries of known sign as one functional.
These are the reference's ``get_final_bound`` rules; a single spec row's matrix norms there
(``np.linalg.norm(M, 1)``, ``np.linalg.norm(M, 2)``) are these vector norms. Fast-Lip gets the
plain sums, as in the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.bounds.methods import _spec_tensor
from nnbound.bounds.spectral import SpectralFactors, spectral_lipschitz
from nnbound.jacobian.alpha_jacobian import NO_ALPHA, JacobianAlpha
from nnbound.jacobian.api import jacobian_bounds, sequential_network
from nnbound.jacobian.recurjac import Chain, Recursion, abs_sum_upper, dual_norm_rows
from nnbound.jacobian.result import JacobianBounds, LipschitzBounds
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm, parse_norm


def chain_lipschitz(
    ch: Chain,
    rec: Recursion | None,
    shifted: tuple[Tensor, Tensor] | None,
    lo: Tensor,
    up: Tensor,
    q: float,
    method: str,
    direction: int,
    shift: int,
    refine: bool = True,
) -> Tensor:
    """Fast-Lip / RecurJac constants ``(N, S)`` in the dual norm ``q`` from the bounds
    ``(N, S, n)`` of a chain's Jacobian (with RecurJac's q = 1 refinement when ``refine``)."""
    if q == 1.0 and refine and method == "recurjac":
        return abs_sum_upper(ch, lo, up, direction=direction, shift=shift, rec=rec, shifted=shifted)
    return dual_norm_rows(lo, up, q)


def lipschitz_from_jacobian(jac: JacobianBounds, p: float | str, *, refine: bool = True) -> Tensor:
    """Lipschitz constants ``(*batch_shape, S)`` w.r.t. ``||.||_p`` from Jacobian bounds
    (``refine``: RecurJac's Linf refinement, for p = inf and method recurjac)."""
    p = parse_norm(p)
    q = dual_norm(p)
    dims = jac._input_dims
    lead = jac.lower.shape[: jac.lower.dim() - dims]
    lo = jac.lower.reshape(-1, lead[-1], math.prod(jac.lower.shape[len(lead) :]))
    up = jac.upper.reshape(lo.shape)
    if jac.method != "crown-jacobian" and jac._state is not None:
        st = jac._state
        value = chain_lipschitz(
            st.chain, st.rec, st.shifted, lo, up, q, jac.method, jac.direction, jac.shift, refine
        )
    elif jac.method == "crown-jacobian":
        # summed in float64 and nudged up: a float32 sum of hundreds of terms can round down
        value64 = dual_norm_rows(lo.double(), up.double(), q)
        value = (value64 * (1.0 + 8.0 * torch.finfo(lo.dtype).eps)).to(lo.dtype)
        st = jac._state
        joint = st.joint_norm if st is not None and st.joint_q == q else None
        if joint is not None:  # the dual norm bounded as one functional (where tighter)
            value = torch.minimum(value, joint.to(value.dtype).reshape(value.shape))
    else:
        value = dual_norm_rows(lo, up, q)
    if jac.method == "crown-jacobian" and jac._state is not None:
        # the spectral (global) constant holds everywhere: keep it where it is tighter
        spectral = jac._state.spectral.to(value.dtype).reshape(value.shape)
        value = torch.minimum(value, spectral)
    return value.reshape(lead)


def lipschitz_bounds(
    net: Network | Graph,
    ball: LpBall,
    C: Tensor | None = None,
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    *,
    refine: bool = True,
    reference: bool = False,
    structural: bool | None = None,
    alpha: JacobianAlpha = NO_ALPHA,
    spectral: SpectralFactors | None = None,
) -> LipschitzBounds:
    """Local Lipschitz constants of ``C f`` over ``ball`` with their Jacobian bounds (see
    :func:`local_lipschitz` and :func:`~nnbound.jacobian.api.jacobian_bounds` for the
    arguments)."""
    jac = jacobian_bounds(
        net,
        ball,
        C,
        method,
        layer_method,
        direction,
        shift,
        reference=reference,
        structural=structural,
        alpha=alpha,
        spectral=spectral,
    )
    return LipschitzBounds(lipschitz_from_jacobian(jac, ball.p, refine=refine), ball.p, jac)


def local_lipschitz(
    net: Network | Graph,
    ball: LpBall,
    C: Tensor | None = None,
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    *,
    refine: bool = True,
    alpha: JacobianAlpha = NO_ALPHA,
) -> Tensor:
    """Upper bounds of the local Lipschitz constant of each spec row over each input set.

    ``|c_s . f(x) - c_s . f(y)| <= L_s ||x - y||_p`` for all x, y in a row's ball (p =
    ``ball.p``). With ``eps = 0`` it is the dual norm of the gradient at the centre.

    Args:
        net, ball, C, method, layer_method, direction, shift: as :func:`jacobian_bounds`.
        refine: RecurJac's refinement of the p = inf constant (``last_layer_abs_sum``).
        alpha: ``crown-jacobian``'s alpha-optimisation (off by default).

    Returns:
        ``(*batch_shape, S)`` tensor.
    """
    return lipschitz_bounds(
        net, ball, C, method, layer_method, direction, shift, refine=refine, alpha=alpha
    ).value


def opnorm_global_lipschitz(
    net: Network, C: Tensor | None, p: float | str, factors: SpectralFactors | None = None
) -> Tensor:
    """The reference's ``opnorm_global_lipschitz``: the product of the layers' induced p-norms
    (times the activations' Lipschitz constants), ``(B, S)`` for spec ``C`` ``(B, S, outputs)``
    or ``(S, outputs)`` (``(1, S)``); ``None`` = the logits. ``factors``: the network's
    :func:`~nnbound.bounds.spectral.spectral_factors` when the caller keeps them."""
    p = parse_norm(p)
    net = sequential_network(net)
    if C is None:
        spec = _spec_tensor(None, 1, (1,), net).reshape(1, net.num_outputs, -1)
    else:
        c = torch.as_tensor(C).to(dtype=net.dtype, device=net.device)
        spec = c.unsqueeze(0) if c.dim() == 2 else c
    return spectral_lipschitz(net, spec, p, factors)


def gradient_dual_norm(net: Network, x: Tensor, C: Tensor, p: float | str) -> Tensor:
    """``||grad_x (C f)(x)||_q`` by autograd, ``(B, S)`` for ``x`` ``(B, *input_shape)`` and
    ``C`` ``(B, S, outputs)`` (the eps = 0 value a local Lipschitz constant must equal)."""
    q = dual_norm(parse_norm(p))
    x = x.detach().clone().requires_grad_(True)
    out = torch.einsum("bo,bso->bs", net(x).reshape(x.shape[0], -1), C.to(x.dtype))
    rows = []
    for s in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, s].sum(), x, retain_graph=s + 1 < out.shape[1])
        rows.append(torch.linalg.vector_norm(g.reshape(x.shape[0], -1), q, dim=-1))
    return torch.stack(rows, 1).detach()
