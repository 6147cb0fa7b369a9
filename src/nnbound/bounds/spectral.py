"""The spectral (operator-norm product) baseline of the reference (spec §7).

``|c . f(x) - c . f(x0)| <= ||c^T W_last||_q * prod_i lip(act_i) ||W_i||_p * ||x - x0||_p``: each
linear block's induced p-norm times each activation's Lipschitz constant (its operator's,
:meth:`nnbound.ops.activation.ActivationOp.lipschitz_at`: 1 for ReLU, bounded ReLU, tanh,
arctan, softplus; 0.25 for sigmoid; max(1, |alpha|) for leaky ReLU / ELU). Unlike the
reference, which caches the product in a process global (spec §12.3), the network's part of it
is a value (:class:`SpectralFactors`) that a task bounding many specs of one network keeps; any
linear layers are handled by materialising each block once as a matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import NONLINEAR_TYPES, Activation, Dense, Layer, MaxPool2d, Shape
from nnbound.network.network import Network
from nnbound.relax.maxpool import maxpool_lipschitz
from nnbound.sets.norms import norm_name

_MAX_DENSE_ELEMENTS = 1 << 27


def activation_lipschitz(act: Activation) -> float:
    """The Lipschitz constant of ``act`` (its registered operator's, :mod:`nnbound.ops`)."""
    k = act.op.lipschitz_at(act.alpha)
    if k is None:
        raise UnsupportedError(
            f"activation {act.name} has no Lipschitz constant; the spectral bound needs one"
        )
    return k


def block_matrix(
    layers: tuple[Layer, ...],
    shapes: list[Shape],
    start: int,
    end: int,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The matrix (out, in) of the purely linear layers ``layers[start:end]`` (biases dropped).

    ``dtype`` is the matrix's dtype when no layer has a tensor to take it from (the network's
    :attr:`~nnbound.network.network.Network.dtype`); otherwise the weights' dtype.

    Average pools fold like any linear layer; a max pool (or an activation) in the range is
    refused with UnsupportedError, since it has no matrix.
    """
    for i in range(start, end):
        if isinstance(layers[i], NONLINEAR_TYPES):
            what = "max pooling" if isinstance(layers[i], MaxPool2d) else "an activation"
            raise UnsupportedError(
                f"layer {i} ({type(layers[i]).__name__}) is {what}, not linear: it cannot be "
                "folded into a matrix (methods that fold linear blocks, such as the Jacobian "
                "bounds and quad, do not support it)"
            )
    if end == start + 1 and isinstance(layers[start], Dense):
        return layers[start].weight  # already the matrix (the product below would be I W)
    n_out = math.prod(shapes[end])
    n_in = math.prod(shapes[start])
    if n_out * n_in > _MAX_DENSE_ELEMENTS:
        raise InputError(f"linear block {n_out}x{n_in} too large for the spectral bound")
    # dtype/device of the weights (a network of pools and reshapes only has none)
    ref = next(
        (t for layer in layers for t in layer.tensors().values()), torch.empty(0, dtype=dtype)
    )
    a = torch.eye(n_out, dtype=ref.dtype, device=ref.device).reshape(1, n_out, *shapes[end])
    for i in range(end - 1, start - 1, -1):
        a = layers[i].transpose(a, shapes[i])
    return a.reshape(n_out, n_in)


def induced_norm(m: Tensor, p: float) -> Tensor:
    """The operator norm of ``m`` from (R^in, ||.||_p) to (R^out, ||.||_p) (for p = 2 an
    upper bound of it, :func:`spectral_norm_upper`)."""
    if p == math.inf:
        return m.abs().sum(1).max()
    if p == 1.0:
        return m.abs().sum(0).max()
    return spectral_norm_upper(m)


def spectral_norm_upper(m: Tensor) -> Tensor:
    """An upper bound of ``||m||_2`` (the largest singular value), in ``m``'s dtype.

    The largest eigenvalue of the smaller Gram matrix ``G`` (``m m^T`` or ``m^T m``, ``n x n``
    over ``k`` products each) in float64, plus what rounding can hide: the computed ``G``
    differs from the exact one by at most ``gamma_k |m|^T |m|`` entry-wise, whose 2-norm is at
    most ``gamma_k ||m||_F^2``, and the symmetric eigensolver returns an exact eigenvalue of a
    matrix within ``c n eps ||G||_2 <= c n eps ||m||_F^2`` of the computed one (backward
    stability). Both are covered by ``4 (k + 2 n) eps ||m||_F^2``, which moves a 3072-wide
    conv block's norm by ~1e-8 of itself. An SVD (what this replaced) gave no such margin and
    took 2.5x (float64) to 4x (float32) longer on ``cifar-2c2f``'s conv blocks.
    """
    m64 = m.to(torch.float64)
    rows, cols = m64.shape
    gram = m64 @ m64.T if rows <= cols else m64.T @ m64
    n, k = gram.shape[0], max(rows, cols)
    top = torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0)
    margin = 4.0 * (k + 2 * n) * torch.finfo(torch.float64).eps * m64.square().sum()
    bound = (top + margin).sqrt() * (1.0 + 4.0 * torch.finfo(torch.float64).eps)
    rounded = bound.to(m.dtype)
    # rounding to m's dtype may go down: take the next value up there
    up = torch.nextafter(rounded, torch.full_like(rounded, math.inf))
    return torch.where(rounded.to(torch.float64) < bound, up, rounded)


@dataclass(frozen=True)
class SpectralFactors:
    """A network's operator-norm product split where the spec enters: ``scale`` (``()``), the
    product of every block's induced p-norm but the last one's and of the non-linear layers'
    constants, and ``last`` ``(outputs, n)``, the matrix of the linear block after the last
    non-linear layer. They depend on the network and the norm alone, and building them (dense
    block matrices, their 2-norms) can take seconds on a CNN, so a task that bounds many specs
    of one network builds them once (:func:`spectral_factors`)."""

    scale: Tensor
    last: Tensor
    p: float

    def lipschitz(self, C: Tensor) -> Tensor:
        """Lipschitz constants ``(N, S)`` of the spec rows ``C`` ``(N, S, outputs)``."""
        rows = C.reshape(C.shape[0], C.shape[1], -1).to(self.last.dtype) @ self.last
        q = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[self.p]
        return torch.linalg.vector_norm(rows, q, dim=-1) * self.scale


def spectral_factors(net: Network, p: float) -> SpectralFactors:
    """The :class:`SpectralFactors` of ``net`` w.r.t. ``||.||_p``.

    Max pools count as non-linear layers with the constant of
    :func:`nnbound.relax.maxpool.maxpool_lipschitz` (1 for p = inf or without overlapping
    windows; ``c`` for p = 1 and ``sqrt(c)`` for p = 2 when an input lies in ``c`` windows).
    """
    layers, shapes = net.layers, net.shapes
    acts = [i for i, layer in enumerate(layers) if isinstance(layer, NONLINEAR_TYPES)]
    k = torch.ones((), dtype=net.dtype, device=net.device)
    start = 0
    for j in acts:
        if start < j:  # an empty block (two non-linear layers in a row) is the identity
            k = k * induced_norm(block_matrix(layers, shapes, start, j, dtype=net.dtype), p)
        layer = layers[j]
        if isinstance(layer, MaxPool2d):
            k = k * maxpool_lipschitz(layer, shapes[j], p)
        else:
            k = k * activation_lipschitz(layer)
        start = j + 1
    last = block_matrix(layers, shapes, start, len(layers), dtype=net.dtype)  # (outputs, n)
    return SpectralFactors(k, last, p)


def spectral_lipschitz(
    net: Network, C: Tensor, p: float, factors: SpectralFactors | None = None
) -> Tensor:
    """Lipschitz constants ``(N, S)`` of the spec rows ``C`` ``(N, S, outputs)`` w.r.t.
    ||.||_p (``factors``: ``net``'s, when the caller has them already)."""
    if factors is None:
        factors = spectral_factors(net, p)
    elif factors.p != p:
        have, want = norm_name(factors.p), norm_name(p)
        raise InputError(f"spectral factors of the L{have} norm used for the L{want} norm")
    return factors.lipschitz(C)


def spectral_bounds(
    net: Network, center: Tensor, eps: Tensor, C: Tensor, p: float
) -> tuple[Tensor, Tensor]:
    """Bounds ``(N, S)`` of ``C f(x)`` over the p-ball: ``C f(x0) -/+ eps * Lipschitz``."""
    value = (
        C.reshape(C.shape[0], C.shape[1], -1) @ net.forward(center).reshape(center.shape[0], -1, 1)
    ).squeeze(-1)
    dev = spectral_lipschitz(net, C, p) * eps.unsqueeze(1)
    return value - dev, value + dev
