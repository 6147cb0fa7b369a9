"""``jacobian_bounds()``: element-wise Jacobian bounds of ``C @ net(x)`` over an input set.

``method="crown-jacobian"`` runs CROWN on the gradient graph instead
(:mod:`nnbound.jacobian.propagation`); the rest of this docstring is about Fast-Lip / RecurJac.

The layer-wise method gives pre-activation bounds, hence derivative intervals; the network is
folded into a chain of matrices (:mod:`nnbound.jacobian.chain`) and bounded by Fast-Lip
(:mod:`~nnbound.jacobian.fastlip`) or RecurJac (:mod:`~nnbound.jacobian.recurjac`), batched
over every ball row and spec row at once, on the network's device and dtype.

Where this differs from the reference (each choice sound, none looser):

* any activation with a derivative interval (also softplus and ELU); Fast-Lip on a smooth
  activation is a clear ``UnsupportedError`` (the reference crashes, spec §12.9);
* any spec ``C`` (several rows, any linear combination of logits), not only margins;
* unknown-sign terms use the exact interval product (the reference assumes ``dlo >= 0``);
* forward mode with one hidden layer and ``shift = 1`` works (the reference asserts);
* the Linf refinement is capped by the plain sum and uses each spec row's own functional in
  forward mode (see :func:`nnbound.jacobian.recurjac.abs_sum_upper`);
* convolutional networks of any size: each linear block is applied as its IR layers (conv /
  conv_transpose) or, when small, as a dense matrix (:mod:`nnbound.jacobian.chain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nnbound.bounds.api import bounds
from nnbound.bounds.methods import LAYERWISE_METHODS, _spec_tensor
from nnbound.errors import InputError, UnsupportedError
from nnbound.jacobian.alpha_jacobian import NO_ALPHA, JacobianAlpha
from nnbound.jacobian.chain import JacobianChain, build_chain, is_global
from nnbound.jacobian.fastlip import interval_level_bounds
from nnbound.jacobian.recurjac import Chain, Recursion, forward_levels, recurjac_levels
from nnbound.jacobian.result import JacobianBounds
from nnbound.network.chain_graph import graph_to_network
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall

if TYPE_CHECKING:
    from nnbound.bounds.spectral import SpectralFactors

JACOBIAN_METHODS = ("recurjac", "fastlip", "crown-jacobian")
"""``crown-jacobian``: bound propagation through the gradient graph
(:mod:`nnbound.jacobian.propagation`)."""


@dataclass(frozen=True, eq=False)
class _State:
    """What the Linf refinement of the Lipschitz constant needs besides the bounds."""

    chain: Chain
    rec: Recursion | None
    shifted: tuple[Tensor, Tensor] | None
    input_dims: int


def check_options(method: str, layer_method: str, direction: int, shift: int) -> str:
    """Validate the options; returns the canonical method name."""
    canonical = {name.replace("-", ""): name for name in JACOBIAN_METHODS}
    m = canonical.get(method.strip().lower().replace("-", "").replace("_", ""), "")
    if not m:
        raise InputError(
            f"unknown Jacobian method {method!r}; choose from {', '.join(JACOBIAN_METHODS)}"
        )
    if layer_method not in LAYERWISE_METHODS:
        raise InputError(
            f"Jacobian bounds need a layer-wise method for the pre-activation bounds, not "
            f"{layer_method!r}; choose from {', '.join(LAYERWISE_METHODS)}"
        )
    if direction not in (-1, 1):
        raise InputError(f"direction must be -1 (backward) or +1 (forward), got {direction}")
    if shift not in (0, 1):
        raise InputError(f"shift must be 0 or 1, got {shift}")
    return m


def check_fastlip(net: Network) -> None:
    for act in net.activations:
        if not act.op.traits.piecewise_linear:
            raise UnsupportedError(
                f"fastlip is defined for (leaky / bounded) ReLU networks; this network has "
                f"{act.name}: use recurjac"
            )


def chain_bounds(
    chain: JacobianChain, method: str, direction: int, shift: int
) -> tuple[Tensor, Tensor, Chain, Recursion | None, tuple[Tensor, Tensor] | None]:
    """Bounds ``(N, S, n_0)`` of the Jacobian of a chain, plus the state the Linf refinement
    reuses."""
    ch = Chain(chain.weights, chain.last, chain.dlo, chain.dhi)
    if not ch.mats:  # no activation: the Jacobian is the constant V
        return ch.end, ch.end, ch, None, None
    if method == "fastlip":
        lo, up = interval_level_bounds(ch)[0]
        return lo, up, ch, None, None
    if direction == -1:
        levels, rec = recurjac_levels(ch)
        lo, up = levels[0]
        return lo, up, ch, rec, None
    lo, up, shifted = forward_levels(ch, shift)
    return lo, torch.maximum(up, lo), ch, None, shifted


def sequential_network(net: Network | Graph) -> Network:
    """``net`` as a chain, or a clear refusal: the Fast-Lip / RecurJac recursions multiply
    one layer's Jacobian after another, which a graph with branches does not have."""
    if not isinstance(net, Graph):
        return net
    chain = graph_to_network(net)
    if chain is None:
        raise UnsupportedError(
            f"Jacobian bounds (Fast-Lip, RecurJac) are defined for sequential networks; "
            f"{net.name} is a general graph (residual, branching or sliced): use the bound "
            "methods (ibp, crown, crown-general, alpha-crown) or CLEVER"
        )
    return chain


def jacobian_bounds(
    net: Network | Graph,
    ball: LpBall,
    C: Tensor | None = None,
    method: str = "recurjac",
    layer_method: str = "crown-general",
    direction: int = -1,
    shift: int = 0,
    *,
    reference: bool = False,
    structural: bool | None = None,
    alpha: JacobianAlpha = NO_ALPHA,
    spectral: SpectralFactors | None = None,
) -> JacobianBounds:
    """Element-wise bounds of the Jacobian ``d(C f)/dx`` at every x of ``ball``.

    Args:
        net: a feed-forward network of linear layers (Dense, Conv2d, Flatten, Reshape,
            Normalize, average pooling) and any activation that has a derivative interval;
            with ``crown-jacobian`` also a graph with residual sums / differences
            (:mod:`nnbound.jacobian.graph_gradient`).
        ball: the input set (N rows, ``batch_shape`` ``(B,)`` or ``(B, K)``).
        C: spec ``(S, outputs)`` or ``(B, S, outputs)``; ``None`` = the logits (S = outputs).
        method: ``recurjac`` (any activation), ``fastlip`` (ReLU / leaky ReLU) or
            ``crown-jacobian`` (bound propagation through the gradient graph; any activation
            with a derivative interval; ``direction`` / ``shift`` do not apply).
        layer_method: layer-wise method for the pre-activation bounds (default crown-general).
        direction: RecurJac order, -1 backward (default) or +1 forward.
        shift: with ``direction=+1``, start the forward recursion at the first hidden layer.
        reference: layer-wise bounds exactly as the reference (no interval intersection).
        structural: apply every linear block as its layers (True) or as a dense matrix
            (False); ``None`` (default) picks per block by size (same bounds up to rounding,
            see :func:`nnbound.jacobian.chain.choose_dense`).
        alpha: ``crown-jacobian`` only: optimise its relaxations
            (:mod:`nnbound.jacobian.alpha_jacobian`); off by default.
        spectral: ``crown-jacobian`` only: ``net``'s operator-norm factors
            (:func:`~nnbound.bounds.spectral.spectral_factors`) when the caller keeps them
            (its Lipschitz value is capped by that global constant); built here otherwise.

    Returns:
        :class:`JacobianBounds` with ``lower``/``upper`` ``(*batch_shape, S, *input_shape)``.
    """
    method = check_options(method, layer_method, direction, shift)
    if method == "crown-jacobian":  # general graphs too (residual, branching)
        chain = graph_to_network(net) if isinstance(net, Graph) else net
        return _propagation_jacobian(
            chain or net, ball, C, layer_method, reference, alpha, spectral
        )
    net = sequential_network(net)
    if method == "fastlip":
        check_fastlip(net)
    if alpha.enabled:
        raise InputError(f"alpha-optimisation applies to crown-jacobian, not {method}")
    # bounds(): a chain with convolutions gets its layer bounds from the graph engine's patches
    lb = bounds(net, ball, layer_method, C, reference=reference, outward=False)
    n = ball.center.shape[0]
    spec = _spec_tensor(C, n, ball.batch_shape, net)
    spec = spec.reshape(n, spec.shape[1], -1)
    chain = build_chain(net, lb.intermediate.pre, spec, structural=structural)
    lo, up, ch, rec, shifted = chain_bounds(chain, method, direction, shift)
    lead = tuple(ball.batch_shape) if ball.batch_shape else (n,)
    shape = (*lead, spec.shape[1], *net.input_shape)
    state = _State(ch, rec, shifted, len(net.input_shape))
    return JacobianBounds(
        lo.reshape(shape),
        up.reshape(shape),
        method,
        layer_method,
        direction,
        shift,
        lb,
        is_global(chain).reshape(lead),
        state,
    )


def _propagation_jacobian(
    net: Network | Graph,
    ball: LpBall,
    C: Tensor | None,
    layer_method: str,
    reference: bool,
    alpha: JacobianAlpha,
    spectral: SpectralFactors | None,
) -> JacobianBounds:
    from nnbound.jacobian.propagation import propagation_bounds

    lo, up, lb, state = propagation_bounds(
        net, ball, C, layer_method, reference=reference, alpha=alpha, spectral=spectral
    )
    n = ball.center.shape[0]
    lead = tuple(ball.batch_shape) if ball.batch_shape else (n,)
    shape = (*lead, lo.shape[1], *net.input_shape)
    # never claimed global: the bounds hold on the ball (its derivative lines are local)
    global_bound = torch.zeros(lead, dtype=torch.bool, device=lo.device)
    return JacobianBounds(
        lo.reshape(shape),
        up.reshape(shape),
        "crown-jacobian",
        layer_method,
        -1,
        0,
        lb,
        global_bound,
        state,
    )
