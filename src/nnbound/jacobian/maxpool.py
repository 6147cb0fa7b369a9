"""Max pooling in a Jacobian chain: ``P(x) = Sum diag(d(x)) Gather``.

Where the maximum of a window is unique, the Jacobian of a max pool is a selection matrix: row
``o`` is ``e_i`` for the window's argmax ``i``. Writing the windows out as their own axis,

    P(x) = Sum . diag(d(x)) . Gather,

``Gather`` copies every kernel tap of every window into a ``(C, kh*kw, H_out*W_out)`` tensor
(padding taps are 0), ``d`` is one-hot per window at the argmax, and ``Sum`` adds each window's
taps. ``Gather`` and ``Sum`` are fixed nonnegative linear maps (pseudo-layers with
``forward_linear`` / ``transpose``), ``diag(d)`` is a diagonal factor like an activation's
derivative: the chain algorithms need nothing else. The derivative interval of a tap, given
the bounds ``[lo, up]`` of the pool's input over the input set, is

* ``[1, 1]`` where the tap is the only possible maximum (``lo_t > up_s`` for every other tap);
* ``[0, 0]`` where it can never be the maximum (``up_t < lo_s`` for some other tap) and for
  padding taps (``-inf`` never wins);
* ``[0, 1]`` otherwise.

Sound: at any x of the set the argmax ``t`` has ``up_t >= x_t >= x_s >= lo_s`` (so its interval
contains 1) and any other tap is not the only possible maximum (so its interval contains 0);
at ties autograd's pick is one of the tied taps, which all satisfy the same. What is lost is
only that the d of a window sum to 1 (each is bounded on its own).

``Gather`` has one nonzero per row and ``Sum`` one per column, so ``|Gather L| = Gather |L|``
and ``|L Sum| = |L| Sum``: in a block they never loosen the structural ``|W|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.network.layers import Shape


@dataclass(frozen=True, eq=False)
class WindowGather:
    """``(C, H, W) -> (C, K, P)``: every tap (K = kh*kw) of every window (P) of ``pool``."""

    index: Tensor  # (K, P) flat position in an H*W plane
    valid: Tensor  # (K, P) bool: tap inside the input
    in_shape: Shape

    jacobian_selector = True  # one nonzero per row: never loosens |W| (see module docstring)

    @classmethod
    def of(cls, pool: object, in_shape: Shape) -> WindowGather:
        index, valid = pool.windows(in_shape)  # type: ignore[attr-defined]
        return cls(index, valid, tuple(in_shape))

    def out_shape(self, in_shape: Shape) -> Shape:
        return (int(in_shape[0]), *self.index.shape)

    def forward_linear(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        idx, valid = self.index.to(x.device), self.valid.to(x.device)
        return flat[:, :, idx] * valid.to(x.dtype)

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        c, h, w = in_shape
        idx, valid = self.index.to(a.device), self.valid.to(a.device)
        lead = a.shape[:-3]
        src = (a.reshape(-1, c, *idx.shape) * valid.to(a.dtype)).reshape(-1, c, idx.numel())
        out = torch.zeros(src.shape[0], c, h * w, dtype=a.dtype, device=a.device)
        out.index_add_(2, idx.reshape(-1), src)
        return out.reshape(*lead, c, h, w)

    def tensors(self) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True, eq=False)
class WindowSum:
    """``(C, K, P) -> (C, H_out, W_out)``: the sum of each window's taps."""

    out_hw: tuple[int, int]

    jacobian_selector = True  # one nonzero per column: never loosens |W|

    def out_shape(self, in_shape: Shape) -> Shape:
        return (int(in_shape[0]), *self.out_hw)

    def forward_linear(self, x: Tensor) -> Tensor:
        return x.sum(2).reshape(x.shape[0], x.shape[1], *self.out_hw)

    def transpose(self, a: Tensor, in_shape: Shape) -> Tensor:
        c, k, p = in_shape
        lead = a.shape[:-3]
        flat = a.reshape(*lead, c, 1, p)
        return flat.expand(*lead, c, k, p).contiguous()

    def tensors(self) -> dict[str, Tensor]:
        return {}


def maxpool_derivative_interval(
    pool: object, in_shape: Shape, lower: Tensor, upper: Tensor
) -> tuple[Tensor, Tensor]:
    """``(dlo, dhi)`` ``(N, C*K*P)`` of the window-tap diagonal given the pool's input bounds
    ``lower``, ``upper`` ``(N, C, H, W)`` (see the module docstring)."""
    index, valid = pool.windows(in_shape)  # type: ignore[attr-defined]
    idx, ok = index.to(lower.device), valid.to(lower.device)
    n, c = lower.shape[:2]
    neg_inf = torch.tensor(-torch.inf, dtype=lower.dtype, device=lower.device)
    lo = torch.where(ok, lower.reshape(n, c, -1)[:, :, idx], neg_inf)  # (N, C, K, P)
    up = torch.where(ok, upper.reshape(n, c, -1)[:, :, idx], neg_inf)

    def max_of_others(v: Tensor) -> Tensor:
        # For each tap, the max over the window's other taps: the top value, or the second
        # one at the top's own position.
        if v.shape[2] == 1:
            return torch.full_like(v, -torch.inf)
        top, arg = v.topk(2, dim=2)
        first = top[:, :, :1].expand_as(v)
        second = top[:, :, 1:].expand_as(v)
        taps = torch.arange(v.shape[2], device=v.device).view(1, 1, -1, 1)
        return torch.where(taps == arg[:, :, :1], second, first)

    can_be_max = ok & (up >= max_of_others(lo))
    only_max = ok & (lo > max_of_others(up))
    dhi = can_be_max.to(lower.dtype).reshape(n, -1)
    dlo = (only_max & can_be_max).to(lower.dtype).reshape(n, -1)
    return dlo, dhi
