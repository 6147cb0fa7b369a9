"""Axis-aligned boxes with per-coordinate radii: the input sets of VNN-LIB properties.

A :class:`Box` offers the interface the bound code uses on an :class:`~nnbound.sets.LpBall`
(``center``, ``concretize``, ``box``, ``sample``, ``vertices``, ``project``, ``contains``,
``rows``, ``input_dims``, ``batch_shape``, ``p = inf``, ``domain = None``), so every layer-wise
method (and alpha-CROWN) bounds a network over a box unchanged. It has no scalar ``eps``: the
radius differs per coordinate (``radius``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.matvec import batched_matvec
from nnbound.sets.lp_ball import LpBall


@dataclass(frozen=True, eq=False)
class Box:
    """``{x : lower <= x <= upper}`` for each of ``N`` rows.

    ``lower`` and ``upper`` are ``(N, *input_shape)``; ``batch_shape`` is ``(N,)`` (the shape
    results are reshaped to). Use :meth:`make` to build one with validation.
    """

    lower: Tensor
    upper: Tensor
    batch_shape: tuple[int, ...] = ()

    # A box is the unit ball of the inf-norm scaled per coordinate; the bound code reads ``p``
    # to pick its exact box arithmetic, and ``domain`` to know there is no extra clipping.
    p: float = math.inf
    domain: None = None

    @staticmethod
    def make(lower: Tensor, upper: Tensor) -> Box:
        """Validate a batch of boxes ``(B, *input_shape)`` each (finite, ``lower <= upper``)."""
        if not isinstance(lower, Tensor) or not isinstance(upper, Tensor):
            raise InputError("box bounds must be tensors of shape (batch, *input_shape)")
        if lower.shape != upper.shape or lower.dim() < 2:
            raise InputError(
                f"box lower {tuple(lower.shape)} and upper {tuple(upper.shape)} must share a "
                "shape (batch, *input_shape)"
            )
        if lower.dtype != upper.dtype:
            raise InputError(f"box bounds have dtypes {lower.dtype} and {upper.dtype}")
        if not bool(torch.isfinite(lower).all() and torch.isfinite(upper).all()):
            raise InputError("box bounds contain NaN or inf values")
        if bool((lower > upper).any()):
            raise InputError("box has lower > upper in some coordinate")
        return Box(lower.contiguous(), upper.contiguous(), (int(lower.shape[0]),))

    # -- geometry -------------------------------------------------------------------------
    @property
    def center(self) -> Tensor:
        """``(N, *input_shape)`` midpoints."""
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> Tensor:
        """``(N, *input_shape)`` half-widths."""
        return (self.upper - self.lower) / 2

    @property
    def q(self) -> float:
        return 1.0

    @property
    def input_dims(self) -> int:
        return self.lower.dim() - 1

    def rows(self, index: Tensor) -> Box:
        """The boxes of rows ``index`` (a 1-D index tensor), as a flat batch."""
        return Box(self.lower[index], self.upper[index], ())

    def box(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)``, each ``(N, *input_shape)`` (the set itself)."""
        return self.lower, self.upper

    def concretize(self, a: Tensor, const: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact min and max of ``a . x + const`` over each box, for ``a`` ``(N, S, *shape)``
        and ``const`` ``(N, S)``; returns two ``(N, S)`` tensors (``a.c -/+ |a|.r``)."""
        flat = a.reshape(*a.shape[:2], -1)
        n = self.lower.shape[0]
        mid = batched_matvec(flat, self.center.reshape(n, -1))
        dev = batched_matvec(flat.abs(), self.radius.reshape(n, -1))
        lower, upper = mid - dev, mid + dev
        if const is not None:
            lower, upper = lower + const, upper + const
        return lower, upper

    def contains(self, x: Tensor, tol: float = 0.0) -> Tensor:
        """Whether each of ``x`` (``(N, M, *shape)`` or ``(N, *shape)``) lies in its row's box
        (``tol`` widens every side)."""
        extra = x.dim() - self.lower.dim()
        view = (self.lower.shape[0], *([1] * extra), *self.lower.shape[1:])
        inside = (x >= self.lower.view(view) - tol) & (x <= self.upper.view(view) + tol)
        return inside.reshape(*inside.shape[: extra + 1], -1).all(-1)

    def project(self, x: Tensor) -> Tensor:
        """Clip ``x`` (``(N, *shape)`` or ``(N, M, *shape)``) into the boxes (exact projection)."""
        extra = x.dim() - self.lower.dim()
        view = (self.lower.shape[0], *([1] * extra), *self.lower.shape[1:])
        return torch.maximum(torch.minimum(x, self.upper.view(view)), self.lower.view(view))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points per row uniform in the box: ``(N, n, *shape)``."""
        rows = self.lower.shape[0]
        shape = self.lower.shape[1:]
        u = torch.rand(
            rows, n, *shape, generator=generator, dtype=self.lower.dtype, device=self.lower.device
        )
        return self.lower.unsqueeze(1) + u * (self.upper - self.lower).unsqueeze(1)

    def vertices(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random corners per row: ``(N, n, *shape)``."""
        rows = self.lower.shape[0]
        shape = self.lower.shape[1:]
        pick = torch.randint(0, 2, (rows, n, *shape), generator=generator, device=self.lower.device)
        return torch.where(pick.bool(), self.upper.unsqueeze(1), self.lower.unsqueeze(1))


InputSet = LpBall | Box
"""Every input set the bound methods accept."""

__all__ = ["Box", "InputSet"]
