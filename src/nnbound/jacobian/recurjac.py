"""RecurJac (Zhang et al., AAAI 2019; spec §8.3): recursive element-wise Jacobian bounds.

A *chain* is ``J = E D_{K-1} M_{K-1} ... D_0 M_0``: matrices ``M_k`` ``(c_{k+1}, c_k)``
(shared, or ``(B, c_{k+1}, c_k)`` per row), diagonal factors ``D_k`` known to lie in
``[dlo_k, dhi_k]`` ``(B, c_{k+1})`` and an exact end ``E`` ``(B, R, c_K)``. Backward mode bounds
the partial products ``Y_K = E``, ``Y_k = Y_{k+1} D_k M_k`` from ``k = K-1`` down to
``J = Y_0``.

The bound of one linear functional ``Y_k[b, r, :] . c`` of a partial product is what everything
rests on. Since ``Y_k c = Y_{k+1} D_k (M_k c)``, with ``w = M_k c`` it is a sum over neurons m of
``Y_{k+1}[m] d_m w_m``:

* where the sign of ``Y_{k+1}[m]`` is known (from its element-wise bounds) or ``d_m`` is fixed,
  the term is monotone in ``d_m``: the end of ``[dlo, dhi]`` that maximises it is picked and
  the term is kept *linear in* ``Y_{k+1}``, i.e. folded into a new coefficient vector
  ``c'_m = d_pick w_m``; the functional ``Y_{k+1} c'`` is then bounded recursively by the same
  rule one level up, down to the exact ``E``;
* elsewhere the term is bounded by interval arithmetic on the element-wise bounds.

This is the reference's ``recurjac_bound_backward_improved`` and its ``_1x1`` recursions. The
reference runs them per Jacobian entry in numba loops; here every entry of a level is one
functional ``c = e_j`` and all of them (for all rows and spec rows) recurse together as batched
matrix products, chunked to bound memory. The rules per term are the reference's, with one
generalisation: for terms of unknown sign the reference assumes ``dlo >= 0`` and uses
``dhi * w * y``; we take the exact interval product (equal when ``dlo >= 0``, which holds for
every supported activation, and still sound otherwise).

Work the sums do not need is skipped, with the same result: a level carries only its *live*
neurons (picked nonzero in some row; an unsure term or an inactive ReLU passes nothing up) and a
level with none ends a functional's recursion (:mod:`nnbound.jacobian.level_table`); a dense
chain with few *free* neurons (derivative not fixed) recurses on those alone, its fixed
neurons' linear maps folded once per chain (:mod:`nnbound.jacobian.collapsed`).

Forward mode (``--lipsdir +1``) is the same algorithm on the transposed chain
``J^T = M_0^T D_0 ... M_{K-1}^T D_{K-1} E^T``, whose partial products are the products from
the input side: the "rows" are then input coordinates instead of spec rows.

A matrix ``M_k`` is a dense tensor or a structural :class:`~nnbound.jacobian.linop.BlockOp`
(the IR layers of a conv block, applied as layers); the helpers :func:`apply_matrix`,
:func:`interval_step`, :func:`matrix_columns` and :func:`transpose_matrix` take either, so the
algorithms below are written once. Only the end of a chain is always dense: its entries' signs
start the recursion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.work_size import work_elements
from nnbound.errors import UnsupportedError
from nnbound.jacobian.collapsed import collapse, collapsed_upper, set_level
from nnbound.jacobian.level_table import Level, interval_product, level_table
from nnbound.jacobian.linop import BlockOp
from nnbound.matvec import batched_matvec

Mat = Tensor | BlockOp
"""A chain factor: a dense ``(c_{k+1}, c_k)`` / ``(B, c_{k+1}, c_k)`` tensor or a block op."""

# A forward-mode chain starts from ``M_0^T`` as its dense end; above this many elements that is
# refused (the recursion over that many rows would not finish anyway).
MAX_DENSE_END_ELEMENTS = 1 << 26
# A recursion over structural (conv) blocks needing more element operations than this (rows x
# functionals x widths summed over levels) is refused up front: measured at ~15 ns each on a
# loaded 2-core CPU, 2^33 is about two minutes (forward mode on an image CNN, where every
# input pixel is a row, easily needs hours). Dense-only chains (MLPs) are never refused.
MAX_RECURSION_WORK = 1 << 33

# Elements of the largest (B, R, T, c) work tensor of one chunk of functionals.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class Chain:
    """``J = end D_{K-1} mats[K-1] ... D_0 mats[0]`` (see the module docstring for shapes)."""

    mats: tuple[Mat, ...]
    end: Tensor
    dlo: tuple[Tensor, ...]
    dhi: tuple[Tensor, ...]

    @property
    def rows(self) -> int:
        return self.end.shape[1]

    @property
    def batch(self) -> int:
        return self.end.shape[0]

    def transposed(self) -> Chain:
        """The chain of ``J^T`` (``(B, c_0, R)``): forward mode is backward mode on it."""
        k = len(self.mats)
        if k == 0:
            raise ValueError("a chain without diagonal factors has nothing to transpose")
        b = self.batch
        mats: list[Mat] = [self.end.transpose(1, 2)]  # (B, c_K, R)
        mats += [transpose_matrix(m) for m in self.mats[k - 1 : 0 : -1]]
        first = self.mats[0]
        if isinstance(first, BlockOp):
            # The end's entries are needed (their signs start the recursion): materialise M_0^T.
            if first.in_size * first.out_size > MAX_DENSE_END_ELEMENTS:
                raise UnsupportedError(
                    f"forward-mode RecurJac needs the first linear block as a dense "
                    f"{first.in_size}x{first.out_size} matrix, which is too large: use "
                    "direction -1 (backward mode) for this network"
                )
            end = first.columns(0, first.in_size)  # (c_0, c_1): row j is M_0 e_j
        else:
            end = first.transpose(-1, -2)  # (c_0, c_1) or (B, c_0, c_1)
        if end.dim() == 2:
            end = end.unsqueeze(0).expand(b, -1, -1)
        return Chain(tuple(mats), end, self.dlo[::-1], self.dhi[::-1])


def transpose_matrix(m: Mat) -> Mat:
    """``M^T`` (a view for a tensor, a flag for a block op)."""
    return m.t() if isinstance(m, BlockOp) else m.transpose(-1, -2)


def matrix_columns(m: Mat, start: int, stop: int) -> Tensor:
    """Columns ``start:stop`` of ``M`` as rows: ``(T, c_{k+1})`` or ``(B, T, c_{k+1})``."""
    if isinstance(m, BlockOp):
        return m.columns(start, stop)
    return m.transpose(-1, -2)[..., start:stop, :]


def apply_matrix(c: Tensor, m: Mat) -> Tensor:
    """``c @ m^T`` for functionals ``c`` ``(B, R, T, c_j)`` and ``m`` ``(c_{j+1}, c_j)`` or
    ``(B, c_{j+1}, c_j)``: the coefficient vectors ``M c`` one level up."""
    if isinstance(m, BlockOp):
        return m.matvec(c)
    if m.dim() == 2:
        return c @ m.T
    return c @ m.transpose(1, 2).unsqueeze(1)


def interval_step(
    lo: Tensor, up: Tensor, glo: Tensor, ghi: Tensor, m: Mat
) -> tuple[Tensor, Tensor]:
    """Bounds of ``Y D M`` for ``Y in [lo, up]`` ``(B, R, c_{k+1})``, ``D in [glo, ghi]``
    ``(B, c_{k+1})`` and exact ``M`` ``(c_{k+1}, c_k)`` (or batched): ``(B, R, c_k)`` each."""
    plo, phi = interval_product(lo, up, glo.unsqueeze(1), ghi.unsqueeze(1))
    if isinstance(m, BlockOp):
        # The same exact interval product in mid / radius form, ``[lo, hi] M = mid M +- rad |M|``
        # (entry-wise equal to ``lo M+ + hi M-``, ``hi M+ + lo M-``), with the layers applied
        # as layers; a block whose |M| is only bounded (two mixing layers) widens it soundly.
        mid = m.rmatmul((plo + phi) * 0.5)
        rad = m.abs_rmatmul((phi - plo) * 0.5)
        return mid - rad, mid + rad
    mp, mn = m.clamp(min=0), m.clamp(max=0)
    return plo @ mp + phi @ mn, phi @ mp + plo @ mn


def _live_columns(m: Mat, live: Tensor | None) -> Mat:
    """``M`` restricted to the columns ``live`` (a block op, or ``None``: all of it)."""
    if live is None or isinstance(m, BlockOp):
        return m
    return m.index_select(-1, live)


class Recursion:
    """Bounds of linear functionals of the partial products of a chain, given element-wise
    bounds of ``Y_{k+1}, ..., Y_K`` (computed level by level by :func:`recurjac_levels`)."""

    def __init__(self, ch: Chain) -> None:
        self.ch = ch
        k = len(ch.mats)
        self.tables: list[Level | None] = [None] * k
        dense = tuple(m for m in ch.mats if isinstance(m, Tensor))
        self.collapsed = (
            collapse(dense, ch.end, ch.dlo, ch.dhi) if len(dense) == len(ch.mats) else None
        )
        # mats_in[j]: M_j taking only the live neurons of level j - 1 (set with that level)
        self.mats_in: list[Mat] = list(ch.mats)
        # Level K is the exact end: its sign is known everywhere.
        self.set_bounds(k, ch.end, ch.end)

    def set_bounds(self, level: int, lo: Tensor, up: Tensor) -> None:
        """Register the element-wise bounds of ``Y_level`` (``level >= 1``)."""
        j = level - 1
        t = level_table(lo, up, self.ch.dlo[j], self.ch.dhi[j])
        above = self.ch.mats[j + 1] if j + 1 < len(self.ch.mats) else None
        if isinstance(above, BlockOp) and t.live is not None and not t.dead:
            # A block op cannot drop input columns: the level keeps its full width.
            full = [_spread(pick, t.live, lo.shape[-1], 0.0) for pick in (t.pick_pos, t.pick_neg)]
            t = t.widened(*full)
        self.tables[j] = t
        if self.collapsed is not None:
            set_level(self.collapsed, j, lo, up, self.ch.dlo[j], self.ch.dhi[j])
            return
        if above is not None:
            self.mats_in[j + 1] = _live_columns(above, t.live)
        else:
            self.end = self.ch.end if t.live is None else self.ch.end[..., t.live]

    def upper(self, level: int, w: Tensor) -> Tensor:
        """Upper bound of ``Y_level . c`` where ``w = M_level c`` ``(B, R, T, c_{level+1})``
        is given (so callers can start from a column of ``M_level`` without forming ``c``);
        returns ``(B, R, T)``."""
        if self.collapsed is not None:
            start = self.tables[level]
            assert start is not None, "bounds of a deeper level are missing"
            return collapsed_upper(self.collapsed, start, level, w)
        ch = self.ch
        k = len(ch.mats)
        acc = torch.zeros((ch.batch, ch.rows, w.shape[-2]), dtype=w.dtype, device=w.device)
        for j in range(level, k):
            if j > level:
                w = apply_matrix(w, self.mats_in[j])
            t = self.tables[j]
            assert t is not None, "bounds of a deeper level are missing"
            w, acc = t.step(w, acc)
            if t.dead:
                return acc  # nothing passes this level: the levels above add 0
        # The last coefficients multiply the exact end: one matrix-vector product per row.
        lead = torch.broadcast_shapes(w.shape[:-2], self.end.shape[:-1])
        t, c = w.shape[-2:]
        rows = w.expand(*lead, t, c).reshape(-1, t, c)
        ends = self.end.expand(*lead, c).reshape(-1, c)
        return acc + batched_matvec(rows, ends).reshape(*lead, t)


def _chunk(batch: int, rows: int, widths: list[int], like: Tensor) -> int:
    budget = work_elements(like.device, like.dtype, _CHUNK_ELEMENTS)
    return max(1, budget // max(1, batch * rows * max(widths)))


def _needed_columns(ch: Chain, k: int) -> Tensor | None:
    """Columns of ``Y_k`` (``k >= 1``) whose bounds the recursion reads: those of neurons
    whose derivative interval below is not a single value in some row. Where ``d`` is fixed
    the term ``y d w`` is linear in ``y`` whatever its sign, so the bounds of ``y`` are never
    used (:func:`~nnbound.jacobian.level_table.level_table`); skipping those columns (every
    stable ReLU) is exact.
    ``None``: all of them (level 0, a structural block, or no column to skip)."""
    m = ch.mats[k]
    if k == 0 or isinstance(m, BlockOp):
        return None
    free = (ch.dlo[k - 1] != ch.dhi[k - 1]).any(0)
    if bool(free.all()):
        return None
    return torch.nonzero(free).squeeze(1)


def _spread(values: Tensor, cols: Tensor, width: int, fill: float) -> Tensor:
    """``values`` ``(B, R, len(cols))`` placed at columns ``cols`` of a ``(B, R, width)``
    tensor holding ``fill`` elsewhere (an unknown bound: -inf below, +inf above)."""
    out = values.new_full((*values.shape[:-1], width), fill)
    out[..., cols] = values
    return out


def recurjac_levels(ch: Chain) -> tuple[list[tuple[Tensor, Tensor]], Recursion]:
    """RecurJac bounds ``(lower, upper)`` ``(B, R, c_k)`` of every ``Y_k``, ``k = 0..K``
    (``Y_K`` exact), and the recursion object (reused by the Linf refinement). For ``k >= 1``
    only the columns the recursion reads are bounded (:func:`_needed_columns`); the others
    are ``(-inf, inf)``."""
    k_total = len(ch.mats)
    rec = Recursion(ch)
    levels: list[tuple[Tensor, Tensor]] = [(ch.end, ch.end)] * (k_total + 1)
    b, r = ch.batch, ch.rows
    widths = [m.shape[-2] for m in ch.mats]
    work = b * r * sum(ch.mats[k].shape[-1] * sum(widths[k:]) for k in range(k_total))
    if work > MAX_RECURSION_WORK and any(isinstance(m, BlockOp) for m in ch.mats):
        raise UnsupportedError(
            f"RecurJac on this chain ({r} rows per input set, layer widths {widths}) needs about "
            f"{work:.1e} element operations, too many to finish; forward mode (direction +1) "
            "has one row per input feature: use backward mode (direction -1), Fast-Lip, or "
            "fewer input sets at a time"
        )
    for k in range(k_total - 1, -1, -1):
        m = ch.mats[k]
        need = _needed_columns(ch, k)
        if need is not None:
            m = m.transpose(-1, -2)[..., need, :].transpose(-1, -2)
        n_cols = m.shape[-1]
        step = _chunk(b, r, widths[k:], m)
        lows, ups = [], []
        for t0 in range(0, n_cols, step):
            # Row j of a chunk is M_k e_j; a block op forms only this chunk of its columns.
            part = matrix_columns(m, t0, min(t0 + step, n_cols))
            # Shared columns stay a broadcast view: the first step's products expand them.
            w = part.unsqueeze(1) if part.dim() == 3 else part
            ups.append(rec.upper(k, w))
            lows.append(-rec.upper(k, -w))
        if not ups:  # no column needed (every derivative below is fixed)
            ups = lows = [ch.end.new_zeros(b, r, 0)]
        lo, up = torch.cat(lows, -1), torch.cat(ups, -1)
        if need is not None:
            lo, up = (
                _spread(lo, need, ch.mats[k].shape[-1], -math.inf),
                _spread(up, need, ch.mats[k].shape[-1], math.inf),
            )
        levels[k] = (lo, torch.maximum(up, lo))
        if k > 0:
            rec.set_bounds(k, *levels[k])
    return levels, rec


def shifted_bounds(ch: Chain) -> tuple[Tensor, Tensor]:
    """Forward-mode bounds ``(B, R, c_1)`` of the chain without ``M_0`` and ``D_0``."""
    sub = Chain(ch.mats[1:], ch.end, ch.dlo[1:], ch.dhi[1:])
    if not sub.mats:
        return ch.end, ch.end
    lo_t, up_t = recurjac_levels(sub.transposed())[0][0]
    return lo_t.transpose(1, 2), up_t.transpose(1, 2)


def forward_levels(ch: Chain, shift: int) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Forward-mode RecurJac bounds of ``J`` ``(B, R, c_0)``. With ``shift = 1`` the recursion
    runs on the chain without ``M_0`` (from the first hidden layer on, as the reference's
    ``--lipsshift 1``: cheaper when the input is large) and ``M_0`` is applied by interval
    arithmetic; the bounds of that shorter chain are returned third (else ``None``)."""
    if shift:
        jlo, jup = shifted_bounds(ch)
        lo, up = interval_step(jlo, jup, ch.dlo[0], ch.dhi[0], ch.mats[0])
        return lo, up, (jlo, jup)
    lo_t, up_t = recurjac_levels(ch.transposed())[0][0]
    return lo_t.transpose(1, 2), up_t.transpose(1, 2), None


def abs_sum_upper(
    ch: Chain,
    lo: Tensor,
    up: Tensor,
    *,
    direction: int,
    shift: int,
    rec: Recursion | None = None,
    shifted: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The reference's ``last_layer_abs_sum``: an upper bound of ``sum_i |J[b, r, i]|`` over the
    input set, ``(B, R)``, given element-wise bounds ``lo, up`` ``(B, R, c_0)`` of J.

    Entries of known sign are merged into one functional ``J . s`` (``s = +1`` where
    ``lo > 0``, ``-1`` where ``up < 0``), bounded by the recursion (backward mode), by a fresh
    forward recursion on the chain whose first matrix is ``M_0 s`` (forward), or by interval
    arithmetic on the shifted forward bounds ``shifted`` (forward, shift 1: the bounds of
    the chain without ``M_0``, as :func:`forward_levels` computed them); the unsure entries add
    ``max(|lo|, |up|)``. Unlike the reference we also never return more than the plain sum
    ``sum_i max(|lo_i|, |up_i|)`` (both are sound), and in forward mode each spec row uses its
    own merged functional (the reference reads row 0's value for every row).
    """
    mag = torch.maximum(lo.abs(), up.abs())
    naive = mag.sum(-1)
    sign = (lo > 0).to(lo.dtype) - (up < 0).to(lo.dtype)
    sure = sign != 0
    if not bool(sure.any()) or not ch.mats:
        return naive
    unsure_sum = torch.where(sure, torch.zeros_like(mag), mag).sum(-1)
    b, r = ch.batch, ch.rows
    m0 = ch.mats[0]
    # w = M_0 s for every (b, r): (B, R, c_1)
    w = apply_matrix(sign.unsqueeze(2), m0).squeeze(2)
    if direction == -1:
        assert rec is not None
        merged = rec.upper(0, w.unsqueeze(2)).squeeze(2)
    elif shift:
        jlo, jup = shifted if shifted is not None else shifted_bounds(ch)
        plo, phi = interval_product(jlo, jup, ch.dlo[0].unsqueeze(1), ch.dhi[0].unsqueeze(1))
        merged = torch.where(w > 0, w * phi, w * plo).sum(-1)
    else:
        # One chain per (b, r) whose first matrix is the single column M_0 s.
        expand = lambda t: t.repeat_interleave(r, dim=0)  # noqa: E731
        mats = [w.reshape(b * r, -1, 1)]
        mats += [m if isinstance(m, BlockOp) or m.dim() == 2 else expand(m) for m in ch.mats[1:]]
        end = ch.end.reshape(b * r, 1, -1)
        sub = Chain(
            tuple(mats),
            end,
            tuple(expand(t) for t in ch.dlo),
            tuple(expand(t) for t in ch.dhi),
        )
        merged = forward_levels(sub, 0)[1].reshape(b, r)
    return torch.where(sure.any(-1), torch.minimum(merged + unsure_sum, naive), naive)


def dual_norm_rows(lo: Tensor, up: Tensor, q: float) -> Tensor:
    """``max over J in [lo, up]`` of ``||J_row||_q`` per row (``(..., n) -> (...)``)."""
    mag = torch.maximum(lo.abs(), up.abs())
    if q == math.inf:
        return mag.amax(-1)
    if q == 1.0:
        return mag.sum(-1)
    return torch.linalg.vector_norm(mag, 2, dim=-1)
