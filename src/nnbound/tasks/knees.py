"""Where a radius search's margin bound bends: the radius at which many neurons of the first
activation turn unstable together.

Over an Lp ball without a data box, a first-layer neuron's bounds are ``z_j(x) -+ eps
||w_j||_q``, so it turns unstable at exactly ``|z_j(x)| / ||w_j||_q``. A convolution computes
the same value and norm at every position of a constant region (an MNIST digit's
background), so all those neurons of a channel turn unstable at one radius. On
``mnist-cnn-small`` six of its eight channels do so (70-90 neurons each) at radii
0.3000-0.3017, just below most images' certified radius (0.302-0.311): the layer-wise margin
bound stays nearly flat up to there and falls steeply past it. No smooth fit through points
on both sides of such a knee locates it, and the search crept up the flat part (10.75
float32 evaluations per image); told the knee, it evaluates there first
(:func:`nnbound.tasks.search.bracketed_binary_search`'s ``knee``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from nnbound.bounds.row_norms import first_block_row_norms
from nnbound.network.layers import Activation, Conv2d
from nnbound.network.network import Network
from nnbound.sets.norms import dual_norm

# A radius is a knee where at least this share of the first activation's neurons turn
# unstable together (a channel over a constant region; a dense layer's neurons never share).
KNEE_SHARE = 0.01
# Knees closer than this (relative) to the one before are one knee.
KNEE_GROUP = 0.01
# Neurons whose radii agree to this relative difference turn unstable together (a convolution
# may round the same patch differently at different positions).
_SAME_RADIUS = 1e-6


def first_layer_knee(
    net: Network, x: Tensor, p: float, domain: tuple[float, float] | None = None
) -> np.ndarray:
    """Per input row, its first knee: ``(N,)`` float64, inf where it has none, or where the
    ball has a data box or no convolution precedes the first activation. Knees less than
    :data:`KNEE_GROUP` apart (several channels over one region) count as one, at the largest
    of them, where all of them are unstable."""
    n = x.shape[0]
    knee = np.full(n, math.inf)
    end = next((i for i, layer in enumerate(net.layers) if isinstance(layer, Activation)), None)
    if domain is not None or end is None:
        return knee
    # Only a convolution repeats one neuron's weights over the positions of a constant region;
    # a dense layer's neurons never share a radius (and its knees would cost a b1 search 2%).
    if not any(isinstance(layer, Conv2d) for layer in net.layers[:end]):
        return knee
    with torch.no_grad():
        mid = x
        for layer in net.layers[:end]:
            mid = layer.forward(mid)
        norms = first_block_row_norms(
            net.layers, net.shapes, end, dual_norm(p), mid.dtype, mid.device
        ).reshape(1, -1)
        radii = (mid.reshape(n, -1).abs() / norms).to(torch.float64).cpu().numpy()
    need = max(2, math.ceil(KNEE_SHARE * radii.shape[1]))
    for i, row in enumerate(radii):
        knees = _clusters(np.sort(row[np.isfinite(row) & (row > 0)]), need)
        if knees:
            last = 0
            while last + 1 < len(knees) and knees[last + 1] <= knees[last] * (1 + KNEE_GROUP):
                last += 1
            knee[i] = knees[last]
    return knee


def _clusters(radii: np.ndarray, need: int) -> list[float]:
    """The largest radius of each run of at least ``need`` equal (to :data:`_SAME_RADIUS`)
    sorted radii: the radius at which the whole run is unstable."""
    if radii.size < need:
        return []
    breaks = np.flatnonzero(np.diff(radii) > _SAME_RADIUS * radii[1:]) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [radii.size]))
    return [float(radii[b - 1]) for a, b in zip(starts, stops, strict=True) if b - a >= need]
