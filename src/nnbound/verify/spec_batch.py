"""Several disjuncts of a property as one batch of rows, so that one bound pass or one PGD
run serves all of them (VNN-COMP properties carry up to thousands of disjuncts).

Row ``k`` of the batch is disjunct ``k``: its own input box and its own stacked output rows.
Disjuncts with fewer rows than the widest are padded with the neutral row ``0 . y <= 1``
in group 0: its bound ``-1`` never refutes and it always holds in a counterexample check;
the attack's objective leaves it out (``real``) -- so padding changes no answer and no
number. Groups a disjunct does not have are masked out (``exists``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.network.network import Network
from nnbound.verify.spec import StackedSpec, evaluate


@dataclass(frozen=True, eq=False)
class SpecBatch:
    """``D`` disjuncts as tensors.

    Attributes:
        specs: the disjuncts, in row order.
        lower, upper: ``(D, n)`` input boxes.
        C: ``(D, S, m)`` output rows (padded).
        d: ``(D, S)`` right-hand sides.
        strict: ``(D, S)`` rows that must hold strictly.
        group: ``(D, S)`` long, the group of each row.
        exists: ``(D, G)`` groups each disjunct has.
        real: ``(D, S)`` rows that are not padding.
    """

    specs: tuple[StackedSpec, ...]
    lower: Tensor
    upper: Tensor
    C: Tensor
    d: Tensor
    strict: Tensor
    group: Tensor
    exists: Tensor
    real: Tensor

    @staticmethod
    def make(specs: list[StackedSpec] | tuple[StackedSpec, ...]) -> SpecBatch:
        if not specs:
            raise ValueError("a batch needs at least one disjunct")
        first = specs[0]
        kw = {"dtype": first.C.dtype, "device": first.C.device}
        m = first.C.shape[1]
        s = max(1, max(sp.num_rows for sp in specs))
        g = max(1, max(sp.num_groups for sp in specs))
        n_d = len(specs)
        c = torch.zeros(n_d, s, m, **kw)
        d = torch.ones(n_d, s, **kw)
        strict = torch.zeros(n_d, s, dtype=torch.bool, device=first.C.device)
        group = torch.zeros(n_d, s, dtype=torch.long, device=first.C.device)
        exists = torch.zeros(n_d, g, dtype=torch.bool, device=first.C.device)
        real = torch.zeros(n_d, s, dtype=torch.bool, device=first.C.device)
        for k, sp in enumerate(specs):
            r = sp.num_rows
            c[k, :r], d[k, :r] = sp.C, sp.d
            strict[k, :r], group[k, :r] = sp.strict, sp.group
            exists[k, : sp.num_groups] = True
            real[k, :r] = True
        return SpecBatch(
            tuple(specs),
            torch.stack([sp.lower for sp in specs]),
            torch.stack([sp.upper for sp in specs]),
            c,
            d,
            strict,
            group,
            exists,
            real,
        )

    @property
    def size(self) -> int:
        return len(self.specs)

    @property
    def num_rows(self) -> int:
        return int(self.C.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.exists.shape[1])

    def select(self, keep: Tensor) -> SpecBatch:
        """The disjuncts at indices (or mask) ``keep``."""
        idx = torch.nonzero(keep).squeeze(1) if keep.dtype == torch.bool else keep
        picked = [self.specs[i] for i in idx.tolist()]
        return SpecBatch(
            tuple(picked),
            self.lower[idx],
            self.upper[idx],
            self.C[idx],
            self.d[idx],
            self.strict[idx],
            self.group[idx],
            self.exists[idx],
            self.real[idx],
        )

    def group_max(self, values: Tensor) -> Tensor:
        """Per disjunct and group, the largest of ``values`` ``(D, ..., S)`` over the group's
        rows: ``(D, ..., G)`` (``-inf`` for a group without rows)."""
        lead = values.shape[:-1]
        out = torch.full((*lead, self.num_groups), -torch.inf, dtype=values.dtype)
        out = out.to(values.device)
        shape = (self.size,) + (1,) * (len(lead) - 1) + (self.num_rows,)
        index = self.group.reshape(shape).expand(*lead, self.num_rows)
        return out.scatter_reduce(-1, index, values, "amax", include_self=True)

    def refuted(self, lower: Tensor) -> Tensor:
        """``(D,)`` disjuncts whose every group has a row with a certified ``lower > 0``
        (``lower`` ``(D, S)``, bounds of ``C_s y - d_s``)."""
        return ((self.group_max(lower) > 0) | ~self.exists).all(-1)

    def violation(self, y: Tensor) -> Tensor:
        """``(D, P, G)`` for outputs ``y`` ``(D, P, m)``: per group ``max_s (C_s y - d_s)``,
        ``+inf`` for groups a disjunct lacks (they can never be met)."""
        vals = torch.einsum("dpm,dsm->dps", y, self.C) - self.d.unsqueeze(1)
        vals = torch.where(self.real.unsqueeze(1), vals, torch.full_like(vals, -torch.inf))
        v = self.group_max(vals)
        return torch.where(self.exists.unsqueeze(1), v, torch.full_like(v, torch.inf))

    def satisfied(self, y: Tensor) -> Tensor:
        """``(D, P)`` exact check: some existing group of the disjunct has every row holding
        at ``y`` ``(D, P, m)`` (strict rows strictly)."""
        lhs = torch.einsum("dpm,dsm->dps", y, self.C)
        rhs = self.d.unsqueeze(1)
        ok = torch.where(self.strict.unsqueeze(1), lhs < rhs, lhs <= rhs)
        bad = self.group_max((~ok).to(y.dtype))
        return ((bad <= 0) & self.exists.unsqueeze(1)).any(-1)

    def clip(self, x: Tensor) -> Tensor:
        """``x`` ``(D, P, n)`` clipped into each disjunct's box."""
        return torch.maximum(torch.minimum(x, self.upper.unsqueeze(1)), self.lower.unsqueeze(1))


def find_counterexample_batch(
    net: Network, batch: SpecBatch, x: Tensor, y: Tensor | None = None
) -> tuple[int, Tensor, Tensor] | None:
    """The first candidate ``x`` ``(D, P, n)`` (clipped into its disjunct's box) whose output
    meets its disjunct: ``(disjunct index, x, y)``, re-checked by running the network on it
    alone (as :func:`nnbound.verify.spec.find_counterexample` does), or None. ``y``: the
    outputs ``(D, P, m)`` at ``x`` when the caller has them (``x`` must then already lie in
    the boxes; a point outside is never reported)."""
    n_d, p, n = x.shape
    if p == 0:
        return None
    if y is None:
        x = batch.clip(x)
        y = evaluate(net, x.reshape(n_d * p, n)).reshape(n_d, p, -1)
    hit = batch.satisfied(y) & torch.isfinite(y).all(-1)
    for k, i in torch.nonzero(hit)[:16].tolist():
        xi = x[k, i : i + 1].clone()
        yi = evaluate(net, xi)
        spec = batch.specs[k]
        if bool(spec.in_box(xi).all() and spec.satisfied(yi).any() and torch.isfinite(yi).all()):
            return k, xi[0], yi[0]
    return None


__all__ = ["SpecBatch", "find_counterexample_batch"]
