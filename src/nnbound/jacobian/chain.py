"""A network as a Jacobian chain: the matrices between activations and the activations'
derivative intervals over an input set.

For ``C @ f(x)`` with hidden activations ``h_{k+1} = act_k(z_k)``, ``z_k = W_k h_k + b_k``
(``k = 0 .. H-1``, ``h_0 = x`` flattened) and logits ``W_H h_H + b_H``, the Jacobian is::

    J(x) = V S_{H-1} W_{H-1} ... S_0 W_0,   V = C W_H,   S_k = diag(act_k'(z_k(x)))

Every purely linear block between two activations (Dense, Conv2d, with Flatten / Reshape /
Normalize / pooling around it; biases do not enter the Jacobian) is one factor ``W_k``, held
either as a dense matrix (:func:`nnbound.bounds.spectral.block_matrix`) or structurally as its
IR layers (:class:`~nnbound.jacobian.linop.BlockOp`, applied with ``forward_linear`` and
``transpose``, so a CIFAR-size conv is never materialised). Both give the same bounds up to
rounding except in one case: the interval product ``[lo, hi] |W|`` of a structural block with
two mixing layers (e.g. an average pool then a conv) uses ``|A||B| >= |AB|``, sound but wider,
so such a block is folded densely whenever it fits (``MAX_BLOCK_ELEMENTS``). Blocks with at
most one mixing layer are folded densely only below ``DENSE_FOLD_ELEMENTS`` unless they are
MLP blocks (Dense only), where one matrix product is as fast as the layers (measured: see
:func:`choose_dense`).

The derivative of activation ``k`` at any point of the input set lies in ``[dlo_k, dhi_k]``, the
relaxation's ``derivative_interval`` of the pre-activation bounds a layer-wise method found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.spectral import block_matrix
from nnbound.errors import InputError, UnsupportedError
from nnbound.jacobian.linop import BlockOp, check_linear
from nnbound.jacobian.maxpool import WindowGather, WindowSum, maxpool_derivative_interval
from nnbound.jacobian.recurjac import Mat
from nnbound.network.layers import Activation
from nnbound.network.network import Network
from nnbound.relax.registry import relaxation_for

# A block with two or more mixing layers is folded densely up to this many elements, for its
# exact |W| (the structural one is only an upper bound there); above, it stays structural.
MAX_BLOCK_ELEMENTS = 1 << 26
# A block with at most one mixing layer is folded densely up to this many elements (speed
# only: the dense and structural forms give the same bounds there).
DENSE_FOLD_ELEMENTS = 1 << 20
# Layers a dense matrix product applies as fast as the layer itself.
_MATRIX_LAYERS = ("Dense", "Flatten", "Reshape", "Normalize")


@dataclass(frozen=True, eq=False)
class JacobianChain:
    """``J = last S_{H-1} weights[H-1] ... S_0 weights[0]`` with ``S_k in [dlo[k], dhi[k]]``.

    Attributes:
        weights: ``W_k`` ``(m_k, n_k)`` shared by every row (``n_0`` = flat input size,
            ``n_{k+1} = m_k``): dense tensors or structural block ops.
        last: ``V = C W_H`` ``(N, S, m_{H-1})`` (``(N, S, n_0)`` when there is no activation).
        dlo, dhi: derivative intervals ``(N, m_k)`` of each activation.
        piecewise_linear: every activation is piecewise linear (ReLU / leaky ReLU / bounded
            ReLU: its operator's ``traits.piecewise_linear``).
        global_range: per activation, the derivative range over the whole real line when it
            is attained by an interval (ReLU ``[0, 1]``, leaky ``[alpha, 1]``: its operator's
            ``derivative_range``), else ``None``.
    """

    weights: tuple[Mat, ...]
    last: Tensor
    dlo: tuple[Tensor, ...]
    dhi: tuple[Tensor, ...]
    piecewise_linear: bool
    global_range: tuple[tuple[float, float] | None, ...]

    @property
    def depth(self) -> int:
        """Number of activation layers H."""
        return len(self.weights)


def _is_maxpool(layer: object) -> bool:
    return type(layer).__name__ == "MaxPool2d"


def activation_indices(net: Network) -> list[int]:
    """Indices of the layers that give diagonal factors: activations and max pools."""
    return [
        i
        for i, layer in enumerate(net.layers)
        if isinstance(layer, Activation) or _is_maxpool(layer)
    ]


def choose_dense(block: BlockOp, structural: bool | None) -> bool:
    """Whether to fold ``block`` into a dense matrix.

    ``structural=True`` / ``False`` force the form (False still refuses blocks above
    ``MAX_BLOCK_ELEMENTS``); ``None`` picks dense up to ``MAX_BLOCK_ELEMENTS`` for blocks of
    Dense / Flatten / Reshape / Normalize only (MLPs keep their former, dense, chain: measured
    on a shared 2-core CPU, backward RecurJac on 784-1024-1024-10 takes 0.10 s dense and 0.14 s
    structural) and for a block whose structural ``|W|`` would be looser (two mixing layers),
    and otherwise dense only up to ``DENSE_FOLD_ELEMENTS`` (a 3x3 conv block 4x16x16 -> 4x16x16,
    2^20 elements: 0.056 s dense, 0.060 s structural; 8x16x16, 2^22: 0.26 s dense, 0.15 s
    structural, and the dense fold itself costs more on top).
    """
    size = block.in_size * block.out_size
    if structural is not None:
        if not structural and size > MAX_BLOCK_ELEMENTS:
            raise UnsupportedError(
                f"a dense fold of the {block.out_size}x{block.in_size} linear block is too "
                "large; use the structural chain"
            )
        return not structural
    if size <= DENSE_FOLD_ELEMENTS:
        return True
    dense_only = all(type(layer).__name__ in _MATRIX_LAYERS for layer in block.layers)
    return (dense_only or not block.exact_abs) and size <= MAX_BLOCK_ELEMENTS


def blocks(net: Network) -> list[tuple[int, BlockOp]]:
    """The linear blocks ``W_0, ..., W_H`` of ``net`` as structural ops (biases dropped), each
    with the index of its first layer."""
    layers, shapes = net.layers, net.shapes
    acts = activation_indices(net)
    starts = [0, *[j + 1 for j in acts]]
    ends = [*acts, len(layers)]
    out = []
    for start, end in zip(starts, ends, strict=True):
        for i in range(start, end):
            check_linear(layers[i])
        block: list[object] = list(layers[start:end])
        block_shapes = list(shapes[start : end + 1])
        # A max pool P = Sum diag(d) Gather (nnbound.jacobian.maxpool): the block before it
        # ends with its Gather, the block after it starts with its Sum.
        if start > 0 and _is_maxpool(layers[start - 1]):
            gather = WindowGather.of(layers[start - 1], shapes[start - 1])
            block.insert(0, WindowSum(tuple(shapes[start][1:])))
            block_shapes.insert(0, gather.out_shape(shapes[start - 1]))
        if end < len(layers) and _is_maxpool(layers[end]):
            gather = WindowGather.of(layers[end], shapes[end])
            block.append(gather)
            block_shapes.append(gather.out_shape(shapes[end]))
        op = BlockOp(tuple(block), tuple(block_shapes), dtype=net.dtype, device=net.device)
        out.append((start, op))
    return out


def fold_blocks(net: Network, structural: bool | None = None) -> tuple[list[Mat], BlockOp]:
    """``([W_0, ..., W_{H-1}], W_H)``: the linear blocks, each dense or structural (see
    :func:`choose_dense`); the last one always structural (it is only applied to the spec)."""
    ops = blocks(net)
    mats: list[Mat] = []
    for start, op in ops[:-1]:
        if not choose_dense(op, structural):
            mats.append(op)
        elif not op.layers:  # two activations in a row: the identity
            mats.append(torch.eye(op.in_size, dtype=net.dtype, device=net.device))
        elif any(isinstance(layer, WindowGather | WindowSum) for layer in op.layers):
            mats.append(op.dense())
        else:
            mats.append(block_matrix(net.layers, net.shapes, start, start + len(op.layers)))
    return mats, ops[-1][1]


def build_chain(
    net: Network,
    pre: dict[int, tuple[Tensor, Tensor]],
    spec: Tensor,
    *,
    structural: bool | None = None,
) -> JacobianChain:
    """The chain of ``spec @ net`` given pre-activation bounds ``pre`` (from
    ``layerwise_bounds(...).intermediate.pre``, each ``(N, *shape)``).

    Args:
        net: the network.
        pre: ``{activation layer index: (lower, upper)}``.
        spec: ``(N, S, num_outputs)``.
        structural: force every block structural (True) or dense (False); ``None`` picks per
            block (:func:`choose_dense`).
    """
    acts = activation_indices(net)
    missing = [i for i in acts if i not in pre]
    if missing:
        raise InputError(f"no pre-activation bounds for activation layers {missing}")
    weights, out = fold_blocks(net, structural)
    n = spec.shape[0]
    # V = C W_H: the spec rows pulled back through the last block's layers (exact).
    last = out.rmatmul(spec.reshape(n, spec.shape[1], -1).to(out.dtype))
    dlo: list[Tensor] = []
    dhi: list[Tensor] = []
    ranges: list[tuple[float, float] | None] = []
    piecewise = True
    for i in acts:
        act = net.layers[i]
        if _is_maxpool(act):
            g_lo, g_hi = maxpool_derivative_interval(act, net.shapes[i], *pre[i])
            dlo.append(g_lo.to(spec.dtype))
            dhi.append(g_hi.to(spec.dtype))
            ranges.append(None)  # its factor is one-hot per window, never the whole [0, 1]
            continue
        assert isinstance(act, Activation)
        relax = relaxation_for(act)
        lo, up = pre[i]
        lo = lo.reshape(n, -1)
        up = torch.maximum(up.reshape(n, -1), lo)
        g_lo, g_hi = relax.derivative_interval(lo, up)
        dlo.append(g_lo.to(spec.dtype))
        dhi.append(g_hi.to(spec.dtype))
        op = act.op
        whole = op.derivative_range(act.alpha) if op.derivative_range is not None else None
        ranges.append(whole)
        piecewise = piecewise and op.traits.piecewise_linear
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
