"""``bounds()``: one entry point for every bound method."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from nnbound.bounds.centre_products import CentreProducts
from nnbound.bounds.methods import ALL_METHODS, _spec_tensor, layerwise_bounds
from nnbound.bounds.outward import (
    nan_to_trivial,
    needs_float64_pass,
    round_outward,
    set_in_float64,
)
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.bounds.sides import SideOrder
from nnbound.bounds.spectral import spectral_bounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.chain_graph import graph_to_network, network_to_graph
from nnbound.network.graph import Graph
from nnbound.network.layers import Conv2d
from nnbound.network.network import Network
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.box import InputSet
from nnbound.sets.lp_ball import LpBall


def bounds(
    net: Network | Graph,
    ball: InputSet,
    method: str = "crown",
    C: Tensor | None = None,
    *,
    reference: bool = False,
    tangent: TangentRule = TangentRule.EXACT,
    prior: dict[int, tuple[Tensor, Tensor]] | None = None,
    centre_cache: CentreProducts | None = None,
    outward: bool = True,
    sides: SideOrder = SideOrder.BOTH,
) -> Bounds:
    """Certified lower/upper bounds of ``C @ net(x)`` for all ``x`` in ``ball``.

    Args:
        net: the network: a chain :class:`Network` or a :class:`Graph` (a graph that is a
            chain of chain layers takes the chain's code paths; any other graph the graph
            engine, :func:`nnbound.bounds.graph_bounds.graph_bounds`, with ``prior`` keyed
            by tensor name).
        ball: input set from :meth:`LpBall.make` (rows ``N``, ``batch_shape`` ``(B,)`` or
            ``(B, K)``) or :meth:`~nnbound.sets.box.Box.make`.
        method: ``ibp`` (``interval``), ``fastlin``, ``fastlin-interval``, ``crown-adaptive``
            (``crown``), ``crown-interval``, ``crown-general``, ``spectral``, ``quad``
            (one hidden ReLU layer) or ``alpha-crown`` (CROWN with optimised relaxation
            lines, see :mod:`nnbound.bounds.alpha_crown`).
        C: spec ``(S, outputs)`` or ``(B, S, outputs)``; ``None`` bounds the logits.
        reference: reproduce the reference's layer-wise bounds exactly (see
            :func:`nnbound.bounds.methods.layerwise_bounds`).
        tangent: tangent rule of S-shaped relaxations.
        prior: pre-activation bounds known to hold over the ball (see
            :func:`nnbound.bounds.methods.layerwise_bounds`).
        centre_cache: products reused across calls with the same centres (see
            :func:`nnbound.bounds.methods.layerwise_bounds`; layer-wise methods only).
        outward: bounds of a float32 (or narrower) network hold for the real network: they
            are computed in float64 and rounded outward (:mod:`nnbound.bounds.outward`).
            ``False`` keeps the network's dtype and its rounding (a radius search, which
            re-certifies in float64 itself).
        sides: which sides of hidden ReLU neurons get backward passes, in what order
            (chains of layer-wise methods without convolutions; see
            :class:`~nnbound.bounds.sides.SideOrder`).

    Returns:
        :class:`Bounds` with ``lower``/``upper`` shaped ``(*ball.batch_shape, S)`` in the
        network's dtype; a bound that overflowed is ``-inf`` / ``inf``, never NaN.
    """
    if method not in ALL_METHODS:
        raise InputError(f"unknown bound method {method!r}; choose from {', '.join(ALL_METHODS)}")
    dtype = net.dtype
    if not (outward and needs_float64_pass(dtype)):
        return nan_to_trivial(
            _bounds_in_dtype(net, ball, method, C, reference, tangent, prior, centre_cache, sides)
        )
    if ball.center.dtype != dtype:
        raise InputError(f"input dtype {ball.center.dtype} differs from the network's {dtype}")
    prior64 = (
        None
        if prior is None
        else {k: (lo.to(torch.float64), up.to(torch.float64)) for k, (lo, up) in prior.items()}
    )
    b64 = _bounds_in_dtype(
        net.to(dtype=torch.float64),
        set_in_float64(ball),
        method,
        None if C is None else torch.as_tensor(C).to(torch.float64),
        reference,
        tangent,
        prior64,
        None,  # the cache holds products in the network's dtype
        sides,
    )
    return round_outward(b64, dtype)


def _bounds_in_dtype(
    net: Network | Graph,
    ball: InputSet,
    method: str,
    C: Tensor | None,
    reference: bool,
    tangent: TangentRule,
    prior: dict | None,
    centre_cache: CentreProducts | None,
    sides: SideOrder = SideOrder.BOTH,
) -> Bounds:
    """:func:`bounds` computed in the network's dtype, with its rounding."""
    if method not in ALL_METHODS:
        raise InputError(f"unknown bound method {method!r}; choose from {', '.join(ALL_METHODS)}")
    if isinstance(net, Graph):
        chain = graph_to_network(net)
        if chain is None:
            return _graph_bounds(net, ball, method, C, reference, tangent, prior)
        net = chain
    if method in ("spectral", "quad") and not isinstance(ball, LpBall):
        raise UnsupportedError(f"method {method} needs an Lp ball input set, not a box")
    if method == "alpha-crown":
        from nnbound.bounds.alpha_crown import chain_alpha_crown_bounds

        return chain_alpha_crown_bounds(net, ball, C, prior=prior)
    if method == "spectral":
        # The Lipschitz bound holds on the whole ball, hence on its intersection with a domain.
        if ball.center.dtype != net.dtype:
            raise InputError(
                f"input dtype {ball.center.dtype} differs from the network's {net.dtype}"
            )
        n = ball.center.shape[0]
        spec = _spec_tensor(C, n, ball.batch_shape, net)
        lower, upper = spectral_bounds(net, ball.center, ball.eps, spec, ball.p)
        shape = (*ball.batch_shape, spec.shape[1]) if ball.batch_shape else tuple(lower.shape)
        return Bounds(lower.reshape(shape), upper.reshape(shape), "spectral", IntermediateBounds())
    if method == "quad":
        from nnbound.bounds.quadratic import quadratic_bounds

        return quadratic_bounds(net, ball, C)
    if not reference and has_convolution(net):
        return _chain_on_graph_engine(net, ball, method, C, tangent, prior)
    return layerwise_bounds(
        net,
        ball,
        method,
        C,
        reference=reference,
        tangent=tangent,
        prior=prior,
        centre_cache=centre_cache,
        sides=sides,
    )


def has_convolution(net: Network) -> bool:
    """Whether :func:`bounds` takes this chain to the graph engine (outside reference mode):
    it has a convolution, whose rows the engine carries as patches."""
    return any(isinstance(layer, Conv2d) for layer in net.layers)


def _chain_on_graph_engine(
    net: Network,
    ball: InputSet,
    method: str,
    C: Tensor | None,
    tangent: TangentRule,
    prior: dict | None,
) -> Bounds:
    """Layer-wise bounds of a chain with convolutions by the graph engine, whose rows are
    patches (each row's receptive field only) where the chain's backward passes carry whole
    images (``bench/bench_cnn.py`` measures both), the same bounds to rounding. Priors and
    intermediate bounds keep the chain's keys (layer ``j``'s input is tensor ``t{j}``)."""
    from nnbound.bounds.graph_bounds import graph_bounds

    def name(j: int) -> str:
        return f"t{j}" if j > 0 else "input"

    graph_prior = None if prior is None else {name(j): v for j, v in prior.items()}
    b = graph_bounds(network_to_graph(net), ball, method, C, tangent=tangent, prior=graph_prior)
    index = {name(j): j for j in range(len(net.layers))}
    pre = {index[k]: v for k, v in b.intermediate.pre.items()}
    return replace(b, intermediate=IntermediateBounds(pre))


def _graph_bounds(
    graph: Graph,
    ball: InputSet,
    method: str,
    C: Tensor | None,
    reference: bool,
    tangent: TangentRule,
    prior: dict | None,
) -> Bounds:
    """:func:`bounds` of a graph that is not a chain."""
    if method in ("spectral", "quad"):
        raise UnsupportedError(
            f"method {method} is defined for sequential networks; {graph.name} is a general "
            "graph: use ibp, crown, crown-general or alpha-crown"
        )
    if method == "alpha-crown":
        from nnbound.bounds.alpha_crown import alpha_crown_bounds

        return alpha_crown_bounds(graph, ball, C, prior=prior)
    from nnbound.bounds.graph_bounds import graph_bounds

    return graph_bounds(graph, ball, method, C, reference=reference, tangent=tangent, prior=prior)
