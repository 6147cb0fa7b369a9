"""CROWN, then alpha-CROWN, over the whole box of every disjunct, many disjuncts per pass.

Each disjunct is one row of the bound engine's input set (its own box, its own output rows;
:class:`~nnbound.verify.spec_batch.SpecBatch`), so a property with thousands of disjuncts
costs a few batched passes instead of thousands of small ones. Disjuncts refuted by CROWN are
dropped before alpha-CROWN. The deadline's checkpoint runs inside every engine pass and
optimisation step (it raises :class:`~nnbound.verify.deadline.DeadlineReached`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.alpha_crown import Pre, linear_bounds
from nnbound.bounds.forward_linear import forward_bounds
from nnbound.network.graph import Graph
from nnbound.sets.box import Box
from nnbound.verify.deadline import Deadline
from nnbound.verify.spec import StackedSpec
from nnbound.verify.spec_batch import SpecBatch

# Coefficients one root pass may hold (rows x spec rows x widest tensor): bounds the number
# of disjuncts per pass.
_ELEMENT_BUDGET = 1 << 24


@dataclass
class RootOutcome:
    """What the root bounds left open.

    Attributes:
        open: the disjuncts no bound refuted, each with the bounds of every tensor valid on
            its box (``(1, *shape)`` each; the prior of its branch and bound).
        refuted_by: how many disjuncts each stage refuted (``crown``, ``alpha-crown``).
    """

    open: list[tuple[StackedSpec, Pre]]
    refuted_by: dict[str, int]


def disjuncts_per_pass(graph: Graph, batch: SpecBatch, limit: int) -> int:
    """How many disjuncts one root pass takes: at most ``limit``, and within
    :data:`_ELEMENT_BUDGET` coefficients."""
    per_row = max(1, batch.num_rows) * graph.widest
    return max(1, min(limit, _ELEMENT_BUDGET // per_row))


def root_bounds(
    graph: Graph,
    batch: SpecBatch,
    deadline: Deadline,
    *,
    alpha_steps: int,
    optimize_intermediate: bool | None,
    per_pass: int,
    forward: bool = False,
) -> RootOutcome:
    """Bound every disjunct of ``batch`` over its whole box: CROWN, then ``alpha_steps``
    alpha-CROWN steps on those CROWN leaves open (``optimize_intermediate`` as in
    :func:`~nnbound.bounds.alpha_crown.linear_bounds`); ``per_pass`` disjuncts at a time.
    With ``forward``, intermediate tensors take forward-mode bounds
    (:mod:`nnbound.bounds.forward_linear`: boxes with few free coordinates) where those
    never fell back to interval arithmetic, instead of backward passes."""
    refuted_by = {"crown": 0, "alpha-crown": 0}
    left: list[tuple[StackedSpec, Pre]] = []
    for k0 in range(0, batch.size, per_pass):
        chunk = batch.select(torch.arange(k0, min(batch.size, k0 + per_pass)))
        known = _forward_pre(graph, chunk, deadline) if forward else None
        closed, pre = _pass(graph, chunk, 0, None, deadline, known)
        refuted_by["crown"] += int(closed.sum())
        if bool(closed.all()):
            continue
        pre = {k: (lo[~closed], up[~closed]) for k, (lo, up) in pre.items()}
        chunk = chunk.select(~closed)
        closed = torch.zeros(chunk.size, dtype=torch.bool, device=closed.device)
        if alpha_steps > 0:
            closed, pre = _pass(graph, chunk, alpha_steps, optimize_intermediate, deadline, pre)
            refuted_by["alpha-crown"] += int(closed.sum())
        for i in torch.nonzero(~closed.cpu()).squeeze(1).tolist():
            left.append(
                (chunk.specs[i], {k: (lo[i : i + 1], up[i : i + 1]) for k, (lo, up) in pre.items()})
            )
    return RootOutcome(left, refuted_by)


def _chunk_box(graph: Graph, batch: SpecBatch) -> Box:
    """The batch's boxes as the graph's input set (a row per disjunct)."""
    d = batch.size
    shape = graph.input_shape
    return Box(batch.lower.reshape(d, *shape), batch.upper.reshape(d, *shape), (d,))


def _forward_pre(graph: Graph, batch: SpecBatch, deadline: Deadline) -> Pre:
    return forward_bounds(graph, _chunk_box(graph, batch), deadline.checkpoint).exact_pre(graph)


def _pass(
    graph: Graph,
    batch: SpecBatch,
    steps: int,
    optimize_intermediate: bool | None,
    deadline: Deadline,
    crown_pre: Pre | None = None,
) -> tuple[Tensor, Pre]:
    """One bound run over the batch's boxes: ``(D,)`` disjuncts refuted (or proven empty)
    and the tensors' bounds (``crown_pre``: a CROWN run's, reused by an alpha-CROWN run)."""
    d = batch.size
    box = _chunk_box(graph, batch)
    rows = batch.C.reshape(d, batch.num_rows, *graph.output_shape)

    def proven(lower: Tensor, empty: Tensor) -> bool:
        return bool((batch.refuted(lower) | empty).all())

    res = linear_bounds(
        graph,
        box,
        rows,
        -batch.d,
        steps=steps,
        stop=proven,
        optimize_intermediate=optimize_intermediate,
        checkpoint=deadline.checkpoint,
        crown_pre=crown_pre,
    )
    return batch.refuted(res.lower) | res.empty, res.pre


__all__ = ["RootOutcome", "disjuncts_per_pass", "root_bounds"]
