"""A network as a Jacobian chain: the matrices between activations and the activations'
derivative intervals over an input set.

For ``C @ f(x)`` with hidden activations ``h_{k+1} = act_k(z_k)``, ``z_k = W_k h_k + b_k``
(``k = 0 .. H-1``, ``h_0 = x`` flattened) and logits ``W_H h_H + b_H``, the Jacobian is::

    J(x) = V S_{H-1} W_{H-1} ... S_0 W_0,   V = C W_H,   S_k = diag(act_k'(z_k(x)))

Every purely linear block between two activations (Dense, possibly with Flatten / Reshape /
Normalize / Conv2d around it) is folded into one dense matrix ``W_k`` with
:func:`nnbound.bounds.spectral.block_matrix` (biases do not enter the Jacobian). The
derivative of activation ``k`` at any point of the input set lies in ``[dlo_k, dhi_k]``, the
relaxation's ``derivative_interval`` of the pre-activation bounds a layer-wise method found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.spectral import block_matrix
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import Activation
from nnbound.network.network import Network
from nnbound.relax.registry import relaxation_for

# A folded block larger than this (elements) is refused: dense folding of a big conv would not
# fit in memory, and the Jacobian recursion would be far too slow on it anyway.
MAX_BLOCK_ELEMENTS = 1 << 26


@dataclass(frozen=True, eq=False)
class JacobianChain:
    """``J = last S_{H-1} weights[H-1] ... S_0 weights[0]`` with ``S_k in [dlo[k], dhi[k]]``.

    Attributes:
        weights: ``W_k`` ``(m_k, n_k)`` shared by every row (``n_0`` = flat input size,
            ``n_{k+1} = m_k``).
        last: ``V = C W_H`` ``(N, S, m_{H-1})`` (``(N, S, n_0)`` when there is no activation).
        dlo, dhi: derivative intervals ``(N, m_k)`` of each activation.
        piecewise_linear: every activation is ReLU / leaky ReLU.
        global_range: per activation, the derivative range over the whole real line when it
            is attained by an interval (ReLU ``[0, 1]``, leaky ``[alpha, 1]``), else ``None``.
    """

    weights: tuple[Tensor, ...]
    last: Tensor
    dlo: tuple[Tensor, ...]
    dhi: tuple[Tensor, ...]
    piecewise_linear: bool
    global_range: tuple[tuple[float, float] | None, ...]

    @property
    def depth(self) -> int:
        """Number of activation layers H."""
        return len(self.weights)


def activation_indices(net: Network) -> list[int]:
    return [i for i, layer in enumerate(net.layers) if isinstance(layer, Activation)]


def fold_blocks(net: Network) -> tuple[list[Tensor], Tensor]:
    """``([W_0, ..., W_{H-1}], W_H)``: the folded linear blocks (dense, biases dropped)."""
    layers, shapes = net.layers, net.shapes
    acts = activation_indices(net)
    bounds = [0, *[j + 1 for j in acts]]
    ends = [*acts, len(layers)]
    mats = []
    for start, end in zip(bounds, ends, strict=True):
        size = math.prod(shapes[start]) * math.prod(shapes[end])
        if size > MAX_BLOCK_ELEMENTS:
            raise UnsupportedError(
                f"Jacobian bounds fold each linear block into a dense matrix; the block of "
                f"layers {start}..{end - 1} ({math.prod(shapes[end])}x{math.prod(shapes[start])})"
                " is too large (large convolutional layers are not supported)"
            )
        if start == end:  # two activations in a row: the identity
            n = math.prod(shapes[start])
            mats.append(torch.eye(n, dtype=net.dtype, device=net.device))
        else:
            mats.append(block_matrix(layers, shapes, start, end))
    return mats[:-1], mats[-1]


def build_chain(
    net: Network,
    pre: dict[int, tuple[Tensor, Tensor]],
    spec: Tensor,
) -> JacobianChain:
    """The chain of ``spec @ net`` given pre-activation bounds ``pre`` (from
    ``layerwise_bounds(...).intermediate.pre``, each ``(N, *shape)``).

    Args:
        net: the network.
        pre: ``{activation layer index: (lower, upper)}``.
        spec: ``(N, S, num_outputs)``.
    """
    acts = activation_indices(net)
    missing = [i for i in acts if i not in pre]
    if missing:
        raise InputError(f"no pre-activation bounds for activation layers {missing}")
    weights, out = fold_blocks(net)
    n = spec.shape[0]
    last = spec.reshape(n, spec.shape[1], -1) @ out
    dlo, dhi, ranges = [], [], []
    piecewise = True
    for i in acts:
        act = net.layers[i]
        assert isinstance(act, Activation)
        relax = relaxation_for(act)
        lo, up = pre[i]
        lo = lo.reshape(n, -1)
        up = torch.maximum(up.reshape(n, -1), lo)
        g_lo, g_hi = relax.derivative_interval(lo, up)
        dlo.append(g_lo.to(spec.dtype))
        dhi.append(g_hi.to(spec.dtype))
        if act.name == "relu":
            ranges.append((0.0, 1.0))
        elif act.name == "leaky_relu":
            ranges.append((min(act.alpha, 1.0), max(act.alpha, 1.0)))
        else:
            ranges.append(None)
            piecewise = False
    return JacobianChain(tuple(weights), last, tuple(dlo), tuple(dhi), piecewise, tuple(ranges))


def is_global(chain: JacobianChain) -> Tensor:
    """``(N,)`` bool: every derivative interval is the activation's whole derivative range, so
    Jacobian bounds built on them hold on the whole input space (a global Lipschitz bound)."""
    n = chain.last.shape[0]
    out = torch.ones(n, dtype=torch.bool, device=chain.last.device)
    for lo, hi, rng in zip(chain.dlo, chain.dhi, chain.global_range, strict=True):
        if rng is None:
            return torch.zeros_like(out)
        out &= ((lo <= rng[0]) & (hi >= rng[1])).all(-1)
    return out
