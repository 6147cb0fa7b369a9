"""Evaluations of consecutive chunks of inputs joined into one: ``evaluate`` runs per chunk so
that each input's sandwich can be shown as soon as its chunk finishes (and kept when a run is
interrupted), and the report and summary still see one evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from nnbound.errors import InputError
from nnbound.tasks.evaluate import Evaluation


def merge_evaluations(parts: Sequence[Evaluation]) -> Evaluation:
    """The evaluation of all ``parts``' inputs in order: records and inputs concatenated, each
    attack's examples concatenated, stage times summed."""
    if not parts:
        raise InputError("no evaluation to merge")
    first = parts[0]
    if any(p.methods != first.methods or p.norm != first.norm for p in parts):
        raise InputError("evaluations with different methods or norms cannot be merged")
    stage: dict[str, float] = {}
    for p in parts:
        for k, v in p.stage_seconds.items():
            stage[k] = stage.get(k, 0.0) + v
    examples = {a: torch.cat([p.examples[a] for p in parts]) for a in first.examples}
    return replace(
        first,
        records=tuple(r for p in parts for r in p.records),
        stage_seconds=stage,
        inputs=torch.cat([p.inputs for p in parts]),
        examples=examples,
    )
