"""Pre-activation bounds for a sweep of growing balls around the same centres, skipping the
layers a smaller ball already saturated.

A Lipschitz sweep (``lipschitz``, ``landscape``) needs, for every radius of a grid, only the
derivative intervals of the activations. Once every neuron of an activation layer has its
whole derivative range over a ball (every ReLU unstable: ``[0, 1]``), that whole range is
also a valid derivative interval over any larger ball -- it holds on all of input space --
and what a fresh layer-wise pass would give there (never narrower, barring a relaxation that
is not monotone in the radius) is the same. When a *suffix* of the activation layers is
saturated that way, the layer-wise pass of a larger radius stops before it: the layers past
its last needed activation (the deepest, hence dearest ones) are never bounded, and their
bounds are set to ``(-inf, inf)`` (whose derivative interval is the whole range).

Bounds over a larger ball around the same centre hold over a smaller one, so they may be
intersected into its pass (``layerwise_bounds(prior=...)``), which then bounds only the
neurons they leave unstable. The result is never looser than a fresh pass; on ReLU nets it
has been the same numbers (every bench net and test: a larger ball's bounds seldom beat a
fresh pass's by enough to change a state), on smooth nets it is tighter.

Order: with ``chunk >= K`` every radius goes in one batched pass (small nets). Otherwise
radii are bounded one at a time (ascending order per centre), and each benefits from one of
two things: the saturation learnt at a smaller radius (it skips deep layers, which matters
once the deep layers are mostly unstable) or the bounds of a larger radius as prior (which
spare the backward passes of the neurons they prove stable, which matters while most are).
So every ``chunk``-th radius is probed first, upwards, until a probe's deepest bounded layer
has at least :data:`DENSE_PROBES_FROM` of its neurons unstable (whole derivative range): from
there on every radius is probed upwards, each learning its neighbour's saturation. Then the
radii between the sparse probes go downwards, each with the bounds of the next larger radius
as prior. Layers whose activation has no attained whole range (tanh, sigmoid: the derivative
range ``(0, 1]`` of tanh is never an interval's image) never saturate, so their probes stay
sparse and every other radius gets a prior (which tightens a smooth net's bounds).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from nnbound.bounds.api import bounds, has_convolution
from nnbound.bounds.methods import layerwise_bounds
from nnbound.jacobian.chain import activation_indices
from nnbound.network.layers import Activation
from nnbound.network.network import Network
from nnbound.relax.registry import relaxation_for
from nnbound.sets.lp_ball import LpBall

# Stride of the sparse probes (every SWEEP_CHUNK-th radius), and the fraction of whole-range
# neurons in a probe's deepest bounded layer from which every larger radius is probed. Measured
# on 784-[1024]x6-10 and 784-[1024]x5-10 random MLPs, 21 radii: strides 3-8 with the switch
# took 1.8-2.3 s and 1.35-1.6 s of layer bounds, strides 3-6 without it 2.4-4.7 s and 1.6 s
# (where a probe lands in the radii where layers saturate decided it).
SWEEP_CHUNK = 6
DENSE_PROBES_FROM = 0.05


def whole_range(net: Network, index: int) -> tuple[float, float] | None:
    """The derivative range of activation layer ``index`` when an interval attains it."""
    layer = net.layers[index]
    if not isinstance(layer, Activation) or layer.op.derivative_range is None:
        return None
    return layer.op.derivative_range(layer.alpha)


def whole_fraction(net: Network, index: int, lo: Tensor, up: Tensor) -> Tensor:
    """``(N,)`` the fraction of the neurons of activation ``index`` that have their whole
    derivative range over pre-activation bounds ``lo``, ``up`` ``(N, *shape)`` (0 for an
    activation without an attained whole range)."""
    rng = whole_range(net, index)
    n = lo.shape[0]
    if rng is None:
        return torch.zeros(n, dtype=torch.float64, device=lo.device)
    layer = net.layers[index]
    assert isinstance(layer, Activation)
    g_lo, g_hi = relaxation_for(layer).derivative_interval(lo.reshape(n, -1), up.reshape(n, -1))
    return ((g_lo <= rng[0]) & (g_hi >= rng[1])).to(torch.float64).mean(-1)


def sweep_pre_bounds(
    net: Network,
    x: Tensor,
    eps: Tensor,
    p: float,
    layer_method: str,
    *,
    chunk: int = SWEEP_CHUNK,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Pre-activation bounds ``{activation index: (lower, upper)}``, each ``(B * K, *shape)``
    (row ``b * K + k``), for the balls of radius ``eps[b, k]`` ``(B, K)`` around ``x[b]``."""
    acts = activation_indices(net)
    b, k = eps.shape
    n = b * k
    dev, dt = x.device, x.dtype
    pre = {
        i: (
            torch.full((n, *net.shapes[i]), -math.inf, dtype=dt, device=dev),
            torch.full((n, *net.shapes[i]), math.inf, dtype=dt, device=dev),
        )
        for i in acts
    }
    # sat_eps[b, a]: the smallest radius of centre b over which activation acts[a] saturated
    sat_eps = torch.full((b, len(acts)), math.inf, dtype=torch.float64)
    order = torch.argsort(eps.to(torch.float64).cpu(), dim=1, stable=True)

    prefixes: dict[int, Network] = {}

    def bound(cols: Tensor, prior_cols: Tensor | None) -> float:
        """Bound the rows at sorted positions ``cols`` ``(B, c)``, intersecting the bounds of
        the rows at ``prior_cols`` (a larger radius around the same centre) where given.
        Returns the largest fraction of whole-range neurons in a row's deepest bounded
        layer."""
        rows_b = torch.arange(b).unsqueeze(1).expand_as(cols).reshape(-1)
        rows = (rows_b * k + cols.reshape(-1)).tolist()
        radii = eps.to(torch.float64).cpu()[rows_b, cols.reshape(-1)]
        # per row, the number of leading activations that must be bounded: those before
        # the longest suffix already saturated at a radius <= this one
        known = radii.unsqueeze(1) >= sat_eps[rows_b]  # (R, A)
        tail = torch.flip(torch.cumprod(torch.flip(known, [1]).int(), 1), [1]).sum(1)
        needed = len(acts) - tail  # (R,)
        depth = int(needed.max()) if needed.numel() else 0
        if depth == 0:
            return 1.0  # every layer saturated already
        end = acts[depth] if depth < len(acts) else len(net.layers)
        if end not in prefixes:  # (a new Network checks every weight is finite: once each)
            layers = net.layers[:end]
            prefixes[end] = dataclasses.replace(net, layers=layers, name=f"{net.name}[:{end}]")
        prefix = prefixes[end]
        # one zero spec row: the prefix's own output bounds are not needed
        spec = torch.zeros(1, prefix.num_outputs, dtype=dt, device=dev)
        centres = x[rows_b.to(dev)]
        ball = LpBall.make(centres, radii.to(device=dev, dtype=dt), p)
        prior = None
        if prior_cols is not None:
            src = torch.tensor((rows_b * k + prior_cols.reshape(-1)).tolist(), device=dev)
            prior = {i: (pre[i][0][src], pre[i][1][src]) for i in acts[:depth]}
        if has_convolution(prefix):
            # bounds() takes a chain with convolutions to the graph engine's patches (both
            # sides of every neuron: the same states as the one-sided pass below)
            lb = bounds(prefix, ball, layer_method, spec, prior=prior, outward=False)
        else:
            # the prefix's last activation is read only for its derivative intervals (states)
            lb = layerwise_bounds(
                prefix, ball, layer_method, spec, prior=prior, last_signs_only=True
            )
        row_t = torch.tensor(rows, device=dev)
        deepest = torch.zeros(len(rows), dtype=torch.float64)
        for a, i in enumerate(acts[:depth]):
            lo, up = lb.intermediate.pre[i]
            use = (needed > a).to(dev)  # rows whose suffix starts later keep (-inf, inf)
            view = (-1,) + (1,) * (lo.dim() - 1)
            pre[i][0][row_t] = torch.where(use.reshape(view), lo, pre[i][0][row_t])
            pre[i][1][row_t] = torch.where(use.reshape(view), up, pre[i][1][row_t])
            fraction = whole_fraction(net, i, lo, up).cpu()
            full = (fraction == 1.0) & (needed > a)
            mins = torch.where(full, radii, torch.full_like(radii, math.inf))
            sat_eps[:, a] = torch.minimum(sat_eps[:, a], mins.reshape(b, -1).amin(1))
            deepest = torch.where(needed == a + 1, fraction, deepest)
        return float(deepest.max())

    if chunk >= k:
        bound(order, None)
        return pre
    # Sparse probes upwards, then every radius upwards once the probes reach the radii where
    # layers start to saturate, then the radii between the sparse probes downwards, each with
    # the bounds of the next larger radius as prior (see the module docstring).
    probes: set[int] = set()
    s, stride = 0, chunk
    while s < k:
        probes.add(s)
        if bound(order[:, s : s + 1], None) >= DENSE_PROBES_FROM:
            stride = 1
        s += stride
    for s in range(k - 1, -1, -1):
        if s not in probes:
            bound(order[:, s : s + 1], order[:, s + 1 : s + 2] if s + 1 < k else None)
    return pre
