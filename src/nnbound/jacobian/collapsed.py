"""RecurJac's functional recursion on a chain collapsed onto its free neurons.

The recursion (:class:`nnbound.jacobian.recurjac.Recursion`) carries each functional's
coefficients ``w_j`` up through every level: ``w_{j+1} = M_{j+1} pick_j(w_j)``. A neuron whose
derivative is fixed (``dlo = dhi = d``: every stable ReLU) is linear there, ``pick = d w``,
whatever the signs; only the *free* neurons ``N_j`` (``dlo < dhi`` in some row) make a level
nonlinear. So write the picked vector of level l as its linear part plus ``phi_l``, the picks
at ``N_l``, and unroll:

    w_i = G_{i<-s} pick_s(w_s) + sum_{s < l < i} G_{i<-l} phi_l,
    G_{i<-l} = M_i L_{i-1} M_{i-1} ... L_{l+1} M_{l+1},   G_{i<-i-1} = M_i,

``L_j = diag(d_j)`` with 0 at the free neurons. A level only needs ``w_i`` at ``N_i`` (its
signs pick the coefficients there; the fixed neurons are already in ``G``), and the end only
the functional ``E L_{K-1} ...``: so with the rows ``G_{i<-l}[N_i]`` and ``G_{K<-l}`` computed
once per chain, a functional costs ``|N_i|``-wide products instead of full-width ones. That pays
where few neurons are free (small balls: a 7x1024 MLP's small radii have 2-200 free neurons per
layer of ~500 live ones), and is the same sum, reassociated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.jacobian.level_table import Level, at, level_table

# Collapse a chain when its free neurons are at most this fraction of its neurons (rows of
# the G operators cost what that many backward rows would).
COLLAPSE_BELOW = 0.25


@dataclass(eq=False)
class CollapsedChain:
    """The operators of a chain collapsed onto its free neurons (see the module docstring).

    ``free[j]``: the free neurons of level j (indices into its ``c_{j+1}`` neurons);
    ``g[(i, l)]``: ``G_{i<-l}`` at the rows ``free[i]`` ``(B, |N_i|, c_{l+1})`` for ``i < K``,
    and the end's ``(B, R, c_{l+1})`` for ``i = K``. ``tables[j]``: level j's picks at its free
    neurons alone (set with the level's bounds)."""

    free: list[Tensor]
    g: dict[tuple[int, int], Tensor]
    tables: list[Level | None]

    @property
    def depth(self) -> int:
        return len(self.free)


def collapse(
    mats: tuple[Tensor, ...], end: Tensor, dlo: tuple[Tensor, ...], dhi: tuple[Tensor, ...]
) -> CollapsedChain | None:
    """The collapsed operators of the dense chain ``end D_{K-1} M_{K-1} ... D_0 M_0``, or
    ``None`` when too many neurons are free for it to pay (:data:`COLLAPSE_BELOW`)."""
    k = len(mats)
    free = [torch.nonzero((lo != hi).any(0)).squeeze(1) for lo, hi in zip(dlo, dhi, strict=True)]
    if k == 0 or sum(f.numel() for f in free) > COLLAPSE_BELOW * sum(lo.shape[-1] for lo in dlo):
        return None
    # the linear factor of each level: d where fixed in every row, 0 at the free neurons
    linear = [lo.index_fill(1, f, 0.0) for lo, f in zip(dlo, free, strict=True)]
    batch = end.shape[0]
    g: dict[tuple[int, int], Tensor] = {}
    for i in range(1, k + 1):
        if i < k:
            top = mats[i].index_select(-2, free[i])
            cur = top.expand(batch, *top.shape) if top.dim() == 2 else top
        else:
            cur = end
        g[(i, i - 1)] = cur
        for lvl in range(i - 2, -1, -1):
            m = mats[lvl + 1]
            cur = (cur * linear[lvl + 1].unsqueeze(1)) @ m
            g[(i, lvl)] = cur
    return CollapsedChain(free, g, [None] * k)


def set_level(cc: CollapsedChain, j: int, lo: Tensor, up: Tensor, dlo: Tensor, dhi: Tensor) -> None:
    """Level j's picks at its free neurons, from the bounds ``lo``, ``up`` ``(B, R, c_{j+1})`` of
    ``Y_{j+1}`` and the derivative intervals ``dlo``, ``dhi`` ``(B, c_{j+1})``."""
    f = cc.free[j]
    cc.tables[j] = level_table(
        lo.index_select(-1, f),
        up.index_select(-1, f),
        dlo.index_select(-1, f),
        dhi.index_select(-1, f),
    )


def _through(picked: Tensor, g: Tensor, cols: Tensor | None) -> Tensor:
    """``G[:, :, cols] picked`` per functional, ``(B, R, T, rows)``, for ``picked``
    ``(B, R, T, len(cols))`` and ``g`` ``(B, rows, c)``."""
    return picked @ at(g, cols).transpose(-1, -2).unsqueeze(1)


def collapsed_upper(cc: CollapsedChain, start: Level, level: int, w: Tensor) -> Tensor:
    """:meth:`~nnbound.jacobian.recurjac.Recursion.upper` on the collapsed chain: ``w`` is
    ``M_level c`` ``(B, R, T, c_{level+1})`` (or a shared ``(T, c_{level+1})``) in full and
    ``start`` level ``level``'s table."""
    k = cc.depth
    pending: dict[int, Tensor] = {}  # w_i at the free neurons of level i, for i > level

    def pass_up(picked: Tensor, lvl: int, live: Tensor | None) -> Tensor:
        """Add level ``lvl``'s picks (at its neurons ``live``) to every level above; returns
        their term in the end's functional."""
        for i in range(lvl + 1, k):
            part = _through(picked, cc.g[(i, lvl)], live)
            pending[i] = pending[i] + part if i in pending else part
        return (picked * at(cc.g[(k, lvl)], live).unsqueeze(2)).sum(-1)

    end = cc.g[(k, level)]  # (B, R, c_{level+1}); w may be a shared (T, c) broadcast over it
    acc = torch.zeros((*end.shape[:2], w.shape[-2]), dtype=w.dtype, device=w.device)
    picked, total = start.step(w, acc)
    if start.dead:
        return total
    total = total + pass_up(picked, level, start.live)
    for lvl in range(level + 1, k):
        t = cc.tables[lvl]
        assert t is not None, "bounds of a deeper level are missing"
        picked, total = t.step(pending.pop(lvl), total)
        if not t.dead:
            live = cc.free[lvl] if t.live is None else cc.free[lvl][t.live]
            total = total + pass_up(picked, lvl, live)
    return total
