"""Lp balls (optionally intersected with the data box): the input sets bounds are taken over."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.matvec import batched_matvec
from nnbound.sets.norms import dual_norm, lp_norm, parse_norm


@dataclass(frozen=True, eq=False)
class LpBall:
    """``{x : ||x - center||_p <= eps}`` for each of a batch of centers, optionally intersected
    with the box ``domain = (low, high)`` (off by default, as in the reference).

    Use :meth:`make` to build one: ``center`` is ``(B, *input_shape)`` and ``eps`` a scalar,
    ``(B,)`` or ``(B, K)`` (K radii per center). Internally every (center, radius) pair is one
    row: ``center`` here is ``(N, *input_shape)`` and ``eps`` is ``(N,)`` with ``N = B * K``;
    ``batch_shape`` is ``(B,)`` or ``(B, K)`` so results can be reshaped back.
    """

    center: Tensor
    eps: Tensor
    p: float
    domain: tuple[float, float] | None = None
    batch_shape: tuple[int, ...] = ()

    @staticmethod
    def make(
        center: Tensor,
        eps: float | Tensor,
        p: float | str = math.inf,
        domain: tuple[float, float] | None = None,
    ) -> LpBall:
        """Validate and flatten a batch of balls (see the class docstring for shapes)."""
        p = parse_norm(p)
        if not isinstance(center, Tensor) or center.dim() < 2:
            raise InputError("center must be a tensor of shape (batch, *input_shape)")
        if not torch.is_floating_point(center):
            center = center.to(torch.get_default_dtype())
        if not bool(torch.isfinite(center).all()):
            raise InputError("center contains NaN or inf values")
        eps_t = torch.as_tensor(eps, dtype=center.dtype, device=center.device)
        if not bool(torch.isfinite(eps_t).all()):
            raise InputError("eps contains NaN or inf values")
        if bool((eps_t < 0).any()):
            raise InputError(f"eps must be >= 0, got {eps_t.min().item():g}")
        b = center.shape[0]
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(b)
        if eps_t.shape[0] != b or eps_t.dim() > 2:
            raise InputError(
                f"eps must be a scalar, (batch,) or (batch, K); got {tuple(eps_t.shape)} for "
                f"batch {b}"
            )
        batch_shape = tuple(eps_t.shape)
        if eps_t.dim() == 2:
            k = eps_t.shape[1]
            center = (
                center.unsqueeze(1)
                .expand(b, k, *center.shape[1:])
                .reshape(b * k, *center.shape[1:])
            )
            eps_t = eps_t.reshape(-1)
        if domain is not None:
            lo, hi = float(domain[0]), float(domain[1])
            if not lo < hi:
                raise InputError(f"domain must have low < high, got {domain}")
            domain = (lo, hi)
        return LpBall(center.contiguous(), eps_t.contiguous(), p, domain, batch_shape)

    # -- geometry -------------------------------------------------------------------------
    @property
    def q(self) -> float:
        return dual_norm(self.p)

    @property
    def input_dims(self) -> int:
        return self.center.dim() - 1

    def rows(self, index: Tensor) -> LpBall:
        """The balls of rows ``index`` (a 1-D index tensor), as a flat batch."""
        return LpBall(self.center[index], self.eps[index], self.p, self.domain, ())

    def _eps_view(self, like: Tensor) -> Tensor:
        return self.eps.view(-1, *([1] * (like.dim() - 1)))

    def box(self) -> tuple[Tensor, Tensor]:
        """An axis-aligned box containing the set (exact for p = inf)."""
        e = self._eps_view(self.center)
        lower, upper = self.center - e, self.center + e
        if self.domain is not None:
            lower = lower.clamp(min=self.domain[0])
            upper = upper.clamp(max=self.domain[1])
        return lower, upper

    def concretize(self, a: Tensor, const: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Min and max of ``a . x + const`` over the set, for linear forms ``a`` of shape
        ``(N, S, *input_shape)`` (``const`` ``(N, S)``); returns two ``(N, S)`` tensors.

        Over the ball: ``a . center -/+ eps ||a||_q``. With a domain box the max/min over the box
        is also exact, and the intersection is bounded by the tighter of the two (both sound).
        """
        dims = self.input_dims
        flat_a = a.reshape(*a.shape[:2], -1)
        mid = batched_matvec(flat_a, self.center.reshape(self.center.shape[0], -1))
        if self.p == math.inf and self.domain is None:
            dev = flat_a.abs().sum(-1) * self.eps.unsqueeze(1)
            lower, upper = mid - dev, mid + dev
        else:
            dev = lp_norm(a, self.q, dims) * self.eps.unsqueeze(1)
            lower, upper = mid - dev, mid + dev
            if self.domain is not None:
                lo_box, hi_box = self.box()
                c = ((lo_box + hi_box) / 2).reshape(lo_box.shape[0], -1)
                r = ((hi_box - lo_box) / 2).reshape(lo_box.shape[0], -1)
                bmid = batched_matvec(flat_a, c)
                bdev = batched_matvec(flat_a.abs(), r)
                lower = torch.maximum(lower, bmid - bdev)
                upper = torch.minimum(upper, bmid + bdev)
        if const is not None:
            lower, upper = lower + const, upper + const
        return lower, upper

    def contains(self, x: Tensor, tol: float = 0.0) -> Tensor:
        """Whether each of ``x`` (``(N, M, *shape)`` or ``(N, *shape)``) is in the set."""
        extra = x.dim() - self.center.dim()
        c = self.center.view(self.center.shape[0], *([1] * extra), *self.center.shape[1:])
        d = lp_norm(x - c, self.p, self.input_dims)
        e = self.eps.view(-1, *([1] * extra))
        ok = d <= e * (1 + tol) + tol
        if self.domain is not None:
            inside = (x >= self.domain[0] - tol) & (x <= self.domain[1] + tol)
            ok &= inside.reshape(*inside.shape[: extra + 1], -1).all(-1)
        return ok

    def project(self, x: Tensor) -> Tensor:
        """Project ``x`` (``(N, *input_shape)`` or ``(N, M, *input_shape)``) onto the ball, then
        clip to the domain (exact for p = inf; for p = 1, 2 a point in the set, not always the
        closest one)."""
        extra = x.dim() - self.center.dim()
        c = self.center.view(self.center.shape[0], *([1] * extra), *self.center.shape[1:])
        delta = x - c
        e = self.eps.view(-1, *([1] * (extra + self.input_dims)))
        if self.p == math.inf:
            delta = torch.maximum(torch.minimum(delta, e), -e)
        elif self.p == 2.0:
            n = lp_norm(delta, 2.0, self.input_dims).view(
                *delta.shape[: extra + 1], *([1] * self.input_dims)
            )
            delta = delta * torch.clamp(e / n.clamp_min(1e-30), max=1.0)
        else:
            delta = _project_l1(delta, e, self.input_dims)
        out = c + delta
        if self.domain is not None:
            out = out.clamp(self.domain[0], self.domain[1])
        return out

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points per row uniform in the ball, clipped to the domain: ``(N, n, *shape)``."""
        shape = self.center.shape[1:]
        d = math.prod(shape)
        rows = self.center.shape[0]
        kw = {"generator": generator, "device": self.center.device, "dtype": self.center.dtype}
        if self.p == math.inf:
            delta = torch.rand(rows, n, d, **kw) * 2 - 1
        else:
            # Direction uniform on the unit sphere of the norm, radius ~ U^(1/d): uniform volume.
            if self.p == 2.0:
                g = torch.randn(rows, n, d, **kw)
            else:
                g = -torch.log(torch.rand(rows, n, d, **kw).clamp_min(1e-30))
                g = g * (
                    torch.randint(
                        0, 2, (rows, n, d), generator=generator, device=self.center.device
                    )
                    * 2
                    - 1
                ).to(g.dtype)
            g = g / lp_norm(g, self.p, 1).unsqueeze(-1)
            r = torch.rand(rows, n, 1, **kw) ** (1.0 / d)
            delta = g * r
        delta = delta * self.eps.view(-1, 1, 1)
        x = self.center.reshape(rows, 1, d) + delta
        x = x.reshape(rows, n, *shape)
        if self.domain is not None:
            x = x.clamp(self.domain[0], self.domain[1])
        return x

    def vertices(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` extreme points per row: random corners of the box (p = inf), random points of
        the sphere (p = 2), or ``±eps e_i`` (p = 1). Shape ``(N, n, *shape)``."""
        shape = self.center.shape[1:]
        d = math.prod(shape)
        rows = self.center.shape[0]
        dev, dt = self.center.device, self.center.dtype
        if self.p == math.inf:
            delta = (torch.randint(0, 2, (rows, n, d), generator=generator, device=dev) * 2 - 1).to(
                dt
            )
        elif self.p == 2.0:
            g = torch.randn(rows, n, d, generator=generator, device=dev, dtype=dt)
            delta = g / g.norm(dim=-1, keepdim=True)
        else:
            idx = torch.randint(0, d, (rows, n), generator=generator, device=dev)
            sign = (torch.randint(0, 2, (rows, n), generator=generator, device=dev) * 2 - 1).to(dt)
            delta = torch.zeros(rows, n, d, device=dev, dtype=dt)
            delta.scatter_(2, idx.unsqueeze(-1), sign.unsqueeze(-1))
        x = self.center.reshape(rows, 1, d) + delta * self.eps.view(-1, 1, 1)
        x = x.reshape(rows, n, *shape)
        if self.domain is not None:
            x = x.clamp(self.domain[0], self.domain[1])
        return x


def _project_l1(delta: Tensor, eps: Tensor, dims: int) -> Tensor:
    """Euclidean projection onto the L1 ball of radius ``eps`` (Duchi et al. 2008, sort-based)."""
    shape = delta.shape
    flat = delta.reshape(-1, math.prod(shape[delta.dim() - dims :]))
    e = eps.expand(*shape[: delta.dim() - dims], *([1] * dims)).reshape(-1, 1)
    a = flat.abs()
    inside = a.sum(-1, keepdim=True) <= e
    mu, _ = torch.sort(a, dim=-1, descending=True)
    cums = mu.cumsum(-1) - e
    ks = torch.arange(1, a.shape[-1] + 1, device=a.device, dtype=a.dtype)
    cond = mu - cums / ks > 0
    rho = cond.to(a.dtype).cumsum(-1).argmax(-1, keepdim=True)
    theta = cums.gather(-1, rho) / (rho + 1).to(a.dtype)
    proj = torch.sign(flat) * (a - theta).clamp_min(0)
    out = torch.where(inside, flat, proj)
    return out.reshape(shape)
