"""Dual norms of the rows of a network's first linear block, without a dense matrix.

The pre-activations of the first activation are an affine map ``A x + b`` of the input, so over
an Lp ball their exact bounds are ``A x0 + b -/+ eps ||A_row||_q``. Building ``A`` row by row
from an identity (what :func:`eye_row_norms` does) costs one transpose per output neuron and
``outputs x inputs`` memory: for a CIFAR conv that is 8192 x 3072 numbers, recomputed at every
search step. When the block holds one mixing layer (a Dense or a Conv2d) between element-wise
scalings (Normalize) and reshapes, the norms follow directly from the weights:

* Dense: ``||W diag(s)||_q`` per row, ``s`` the input scaling;
* Conv2d: the row of output ``(o, y, x)`` holds ``w[o, c, i, j] * s[c, y', x']`` at the input
  positions its receptive field covers inside the image, each tap at a distinct position, so
  ``||row||_q^q = conv2d(|s|^q, |w|^q)`` (zero padding drops the taps outside the image) and
  ``||row||_inf`` is the largest ``|w| |s|`` over the unfolded patch.

A Normalize after the mixing layer scales whole rows by ``1 / |std|``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nnbound.network.layers import Conv2d, Dense, Flatten, Layer, Normalize, Reshape, Shape

_ELEMENTWISE = (Flatten, Reshape, Normalize)
# Largest (out channels x patch x positions) tensor the q = inf conv path builds.
_MAX_PATCH_ELEMENTS = 1 << 26


def first_block_row_norms(
    layers: tuple[Layer, ...], shapes: list[Shape], end: int, q: float, dtype, device
) -> Tensor:
    """``||A_row||_q`` for every output of ``layers[:end]`` (a purely linear block), shaped like
    ``shapes[end]``: analytically when the block has one Dense or Conv2d, else from
    :func:`eye_row_norms`."""
    norms = _analytic_row_norms(layers, shapes, end, q, dtype, device)
    if norms is None:
        norms = eye_row_norms(layers, shapes, end, q, dtype, device)
    return norms


def eye_row_norms(
    layers: tuple[Layer, ...],
    shapes: list[Shape],
    end: int,
    q: float,
    dtype,
    device,
    chunk_elements: int = 1 << 24,
) -> Tensor:
    """Row norms by carrying identity rows back through the block, a chunk of rows at a time
    so memory stays bounded whatever the block's size."""
    size = math.prod(shapes[end])
    widest = max(math.prod(s) for s in shapes[: end + 1])
    step = max(1, chunk_elements // widest)
    out = []
    for start in range(0, size, step):
        rows = torch.arange(start, min(size, start + step), device=device)
        a = torch.zeros(rows.numel(), size, dtype=dtype, device=device)
        a[torch.arange(rows.numel(), device=device), rows] = 1.0
        a = a.reshape(1, rows.numel(), *shapes[end])
        for i in range(end - 1, -1, -1):
            a = layers[i].transpose(a, shapes[i])
        out.append(torch.linalg.vector_norm(a.reshape(rows.numel(), -1), q, dim=-1))
    return torch.cat(out).reshape(shapes[end])


def _analytic_row_norms(
    layers: tuple[Layer, ...], shapes: list[Shape], end: int, q: float, dtype, device
) -> Tensor | None:
    mixing = [i for i in range(end) if not isinstance(layers[i], _ELEMENTWISE)]
    if len(mixing) != 1 or not isinstance(layers[mixing[0]], (Dense, Conv2d)):
        return None
    k = mixing[0]
    # |input scaling| seen by the mixing layer, one entry per input element of layer k.
    scale = torch.ones(1, *shapes[0], dtype=dtype, device=device)
    for layer in layers[:k]:
        scale = layer.forward_abs(scale) if isinstance(layer, Normalize) else layer.forward(scale)
    mix = layers[k]
    if isinstance(mix, Dense):
        norms = torch.linalg.vector_norm(mix.weight.abs() * scale.reshape(1, -1), q, dim=1)
        norms = norms.unsqueeze(0)
    else:
        assert isinstance(mix, Conv2d)
        norms = _conv_row_norms(mix, scale, q)
        if norms is None:
            return None
    for layer in layers[k + 1 : end]:
        norms = layer.forward_abs(norms) if isinstance(layer, Normalize) else layer.forward(norms)
    return norms.reshape(shapes[end])


def _conv_row_norms(conv: Conv2d, scale: Tensor, q: float) -> Tensor | None:
    w = conv.weight.abs()
    if math.isfinite(q):
        summed = F.conv2d(
            scale.pow(q), w.pow(q), None, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        return summed.pow(1.0 / q)
    out_c, per_group, kh, kw = w.shape
    patches = F.unfold(scale, (kh, kw), conv.dilation, conv.padding, conv.stride)
    positions = patches.shape[-1]
    if out_c * per_group * kh * kw * positions > _MAX_PATCH_ELEMENTS:
        return None
    # (groups, per-group patch, positions) against (groups, out per group, per-group patch).
    patches = patches.reshape(conv.groups, per_group * kh * kw, positions)
    w = w.reshape(conv.groups, out_c // conv.groups, per_group * kh * kw)
    best = (w.unsqueeze(-1) * patches.unsqueeze(1)).amax(2)  # (groups, out/g, positions)
    return best.reshape(1, *conv.out_shape(tuple(scale.shape[1:])))
