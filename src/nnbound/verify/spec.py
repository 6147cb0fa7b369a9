"""One disjunct of a property as tensors: the input box and the stacked output rows.

A :class:`Disjunct` holds several output groups (a union); each group is a conjunction of rows
``C y <= d``. For bounding, all rows are stacked into one ``(S, m)`` matrix with ``group[s]``
naming the group of row ``s``: a group is refuted on a domain as soon as one of its rows has a
certified ``lower(C_s y) - d_s > 0`` there, and an input is a counterexample when every row of
some group holds at its output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.verify.vnnlib import Disjunct


@dataclass(frozen=True, eq=False)
class StackedSpec:
    """A disjunct as tensors.

    Attributes:
        lower, upper: ``(n,)`` the input box (flattened input).
        C: ``(S, m)`` every group's rows, stacked.
        d: ``(S,)`` right-hand sides.
        strict: ``(S,)`` rows that must hold strictly in a counterexample.
        group: ``(S,)`` long, the group of each row.
        num_groups: ``G``.
        source: the disjunct it came from.
    """

    lower: Tensor
    upper: Tensor
    C: Tensor
    d: Tensor
    strict: Tensor
    group: Tensor
    num_groups: int
    source: Disjunct

    @staticmethod
    def make(disjunct: Disjunct, dtype: torch.dtype, device: torch.device) -> StackedSpec:
        m = disjunct.groups[0].C.shape[1] if disjunct.groups else 0
        rows = [g.C for g in disjunct.groups]
        c = np.concatenate(rows, 0) if rows else np.zeros((0, m))
        d = np.concatenate([g.d for g in disjunct.groups]) if rows else np.zeros(0)
        strict = np.concatenate([g.strict for g in disjunct.groups]) if rows else np.zeros(0, bool)
        group = (
            np.concatenate(
                [np.full(g.C.shape[0], i, dtype=np.int64) for i, g in enumerate(disjunct.groups)]
            )
            if rows
            else np.zeros(0, np.int64)
        )

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        return StackedSpec(
            t(disjunct.lower),
            t(disjunct.upper),
            t(c),
            t(d),
            torch.as_tensor(strict, device=device),
            torch.as_tensor(group, device=device),
            len(disjunct.groups),
            disjunct,
        )

    @property
    def num_rows(self) -> int:
        return int(self.C.shape[0])

    @property
    def free_dims(self) -> int:
        """Input coordinates the box lets vary (``lower < upper``): what input splitting
        searches over. Fixed coordinates (masks, one-hot fields) cost a bisection nothing."""
        return int((self.upper > self.lower).sum())

    def group_max(self, values: Tensor) -> Tensor:
        """Per group, the largest of ``values`` ``(P, S)`` over its rows: ``(P, G)`` (``-inf``
        for a group without rows)."""
        p = values.shape[0]
        out = torch.full((p, self.num_groups), -torch.inf, dtype=values.dtype, device=values.device)
        if self.num_rows == 0:
            return out
        index = self.group.unsqueeze(0).expand(p, -1)
        return out.scatter_reduce(1, index, values, "amax", include_self=True)

    def violation(self, y: Tensor) -> Tensor:
        """``(P, G)``: per output ``y`` ``(P, m)`` and group, ``max_s (C_s y - d_s)`` -- at most 0
        exactly when the output lies in the group's counterexample region (up to strictness)."""
        return self.group_max(y @ self.C.T - self.d)

    def satisfied(self, y: Tensor) -> Tensor:
        """``(P, G)`` exact check: every row of the group holds at ``y`` (strict rows
        strictly)."""
        lhs = y @ self.C.T
        ok = torch.where(self.strict, lhs < self.d, lhs <= self.d)
        bad = (~ok).to(y.dtype)
        return self.group_max(bad) <= 0

    def in_box(self, x: Tensor) -> Tensor:
        """``(P,)`` whether each flat input ``x`` ``(P, n)`` lies in the box (exactly)."""
        return ((x >= self.lower) & (x <= self.upper)).all(1)


# Activation entries one forward chunk may hold (256 MB in float32): a pool of thousands of
# candidate inputs through a U-Net holds every skip tensor for every candidate at once.
_EVAL_ELEMENTS = 1 << 26


def evaluate(net: Network | Graph, x: Tensor) -> Tensor:
    """Outputs ``(P, m)`` of flat inputs ``x`` ``(P, n)`` (no gradient), in chunks of
    candidates sized by the network's activations."""
    shapes = net.shapes.values() if isinstance(net, Graph) else net.shapes
    per_input = max(1, sum(math.prod(s) for s in shapes))
    chunk = max(1, _EVAL_ELEMENTS // per_input)
    with torch.no_grad():
        parts = [
            net(part.reshape(part.shape[0], *net.input_shape)).reshape(part.shape[0], -1)
            for part in x.split(chunk)
        ]
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def find_counterexample(net: Network, spec: StackedSpec, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """The first of the candidate inputs ``x`` ``(P, n)`` (clipped into the box) whose output
    satisfies some group, re-checked by running the network: ``(x, y)`` flat, or None."""
    if x.shape[0] == 0:
        return None
    x = torch.maximum(torch.minimum(x, spec.upper), spec.lower)
    y = evaluate(net, x)
    hit = spec.satisfied(y).any(1) & spec.in_box(x) & torch.isfinite(y).all(1)
    # Re-run each hit alone: a batched product may round differently from a single one, and
    # the reported output must be the one the network gives for this input by itself.
    for i in torch.nonzero(hit).squeeze(1)[:16].tolist():
        xi = x[i : i + 1].clone()
        yi = evaluate(net, xi)
        if bool(spec.satisfied(yi).any()) and bool(torch.isfinite(yi).all()):
            return xi[0], yi[0]
    return None


__all__ = ["StackedSpec", "evaluate", "find_counterexample"]
