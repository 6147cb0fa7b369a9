"""One level of RecurJac's functional recursion: which coefficient each neuron's term picks,
and which terms are bounded by interval arithmetic instead (:mod:`nnbound.jacobian.recurjac`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.matvec import batched_matvec


def interval_product(lo: Tensor, up: Tensor, glo: Tensor, ghi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of ``y * d`` for ``y in [lo, up]``, ``d in [glo, ghi]`` (element-wise)."""
    corners = torch.stack([lo * glo, lo * ghi, up * glo, up * ghi])
    return corners.amin(0), corners.amax(0)


def columns(mask: Tensor) -> Tensor | None:
    """Indices of the neurons ``mask`` ``(..., c)`` marks in some row (``None``: all)."""
    if mask.shape[-1] == 0:
        return None
    hit = mask.reshape(-1, mask.shape[-1]).any(0)
    return None if bool(hit.all()) else torch.nonzero(hit).squeeze(1)


def at(t: Tensor, cols: Tensor | None) -> Tensor:
    """The columns ``cols`` (last axis) of ``t``; ``None``: all of them, no copy."""
    return t if cols is None else t.index_select(-1, cols)


def _times_columns(w: Tensor, col: Tensor) -> Tensor:
    """``w @ col`` ``(B, R, T)`` for coefficients ``w`` ``(B, R, T, u)``, or ``(T, u)`` shared
    by every ``(B, R)`` (one matrix product then: a broadcast ``matmul`` would copy ``w`` once
    per ``(B, R)``), and columns ``col`` ``(B, R, u, 1)``."""
    if w.dim() == 2:
        b, r, u, _ = col.shape
        return (w @ col.reshape(b * r, u).T).T.reshape(b, r, -1)
    u = col.shape[-2]
    lead = torch.broadcast_shapes(w.shape[:-2], col.shape[:-2])
    t = w.shape[-2]
    rows = w.expand(*lead, t, u).reshape(-1, t, u)
    return batched_matvec(rows, col.expand(*lead, u, 1).reshape(-1, u)).reshape(*lead, t)


@dataclass(frozen=True, eq=False)
class Level:
    """Per-neuron tables of one level for the functional recursion.

    ``pick_pos`` / ``pick_neg`` ``(B, R, 1, len(live))``: the coefficient picked for ``w > 0``
    / ``w <= 0`` on sure terms (0 on unsure ones), at the ``live`` neurons alone (``None``:
    all): a neuron picked 0 in every row (each unsure term, each inactive ReLU) passes nothing
    up, so the next matrix product needs only the live columns, and a level without a live
    neuron ends the recursion (the reference's ``cu + cl + ce > 0`` test, for a whole level).
    ``unsure_max`` / ``unsure_min`` ``(B, R, len(unsure), 1)``: the max / min of ``y d`` on
    unsure terms (0 on sure ones), at the ``unsure`` neurons alone (``None``: all), as columns
    for a matrix-vector product."""

    pick_pos: Tensor
    pick_neg: Tensor
    live: Tensor | None
    unsure_max: Tensor
    unsure_min: Tensor
    unsure: Tensor | None
    has_unsure: bool
    fixed: bool  # one coefficient whatever the sign of w (every derivative is known)

    @property
    def dead(self) -> bool:
        return self.live is not None and self.live.numel() == 0

    def step(self, w: Tensor, acc: Tensor) -> tuple[Tensor, Tensor]:
        """This level's terms for coefficients ``w`` ``(..., c)``: the picked coefficients of
        its live neurons ``(..., len(live))``, and ``acc`` plus the interval terms (the sum
        over unsure neurons of ``w`` times the max of ``y d`` where ``w > 0``, else the min)."""
        if self.has_unsure:
            wu = at(w, self.unsure)
            gain = _times_columns(wu.clamp(min=0), self.unsure_max)
            acc = acc + gain + _times_columns(wu.clamp(max=0), self.unsure_min)
        w = at(w, self.live)
        if self.fixed:
            return w * self.pick_pos, acc
        # w * where(w > 0, pick_pos, pick_neg), bit for bit (one of the two products is 0), as
        # two broadcast products: a broadcast ``where`` is several times slower on a CPU.
        terms = w.clamp(min=0) * self.pick_pos
        return terms.addcmul_(w.clamp(max=0), self.pick_neg), acc

    def widened(self, pick_pos: Tensor, pick_neg: Tensor) -> Level:
        """This level with every neuron live, given its picks over all of them."""
        return dataclasses.replace(self, pick_pos=pick_pos, pick_neg=pick_neg, live=None)


def level_table(lo: Tensor, up: Tensor, glo: Tensor, ghi: Tensor) -> Level:
    """The table of a level from the bounds ``lo``, ``up`` ``(B, R, c)`` of the partial product
    above it and its derivative intervals ``glo``, ``ghi`` ``(B, c)``."""
    lo, up = lo.unsqueeze(2), up.unsqueeze(2)
    gl, gh = glo[:, None, None, :], ghi[:, None, None, :]
    neg = up <= 0
    pos = lo >= 0
    sure = neg | pos | (gl == gh)
    zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
    # Upper bound of y * d * w with the sign of y known: y <= 0 wants the smallest d when
    # w > 0, y >= 0 the largest (the reference checks y <= 0 first; a fixed d is either end).
    pick_pos = torch.where(sure, torch.where(neg, gl, gh), zero)
    pick_neg = torch.where(sure, torch.where(neg, gh, gl), zero)
    ylo, yhi = interval_product(lo, up, gl, gh)
    live = columns((pick_pos != 0) | (pick_neg != 0))
    unsure = columns(~sure)
    as_column = lambda t: at(t, unsure).transpose(-1, -2)  # noqa: E731
    return Level(
        at(pick_pos, live),
        at(pick_neg, live),
        live,
        as_column(torch.where(sure, zero, yhi)),
        as_column(torch.where(sure, zero, ylo)),
        unsure,
        has_unsure=not bool(sure.all()),
        fixed=bool((pick_pos == pick_neg).all()),
    )
