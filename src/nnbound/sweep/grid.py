"""Splitting a plan into tasks: model x image chunk x method x norm x target.

A task's id is readable (model, method, norm, target, image range) and ends in a digest of
everything that determines its numbers (model hash, dataset, images, the method's settings,
dtype, seed), so a finished shard is reused exactly when rerunning would reproduce it.
The device is not part of the id: a CPU and a GPU run of the same task are the same result up
to rounding, and the record says which device produced it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from nnbound.sets.norms import norm_name
from nnbound.sweep.models import SweepModel
from nnbound.sweep.plan import MethodSpec, SweepPlan, relevant_settings


@dataclass(frozen=True)
class SweepTask:
    """One unit of work: ``method`` on images ``start .. stop - 1`` of the plan's dataset for
    one model, norm and target type."""

    task_id: str
    model_label: str
    model_sha256: str
    method: MethodSpec
    norm: float
    target: str
    start: int
    stop: int

    @property
    def num_images(self) -> int:
        return self.stop - self.start


def _digest(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def task_id_for(
    plan: SweepPlan,
    model: SweepModel,
    method: MethodSpec,
    norm: float,
    target: str,
    start: int,
    stop: int,
) -> str:
    parts = {
        "model_sha256": model.sha256,
        "dataset": plan.data.dataset,
        "data_dir": str(plan.data.data_dir) if plan.data.data_dir else None,
        "images": [start, stop],
        "method": method.name,
        "settings": relevant_settings(method.name, method.settings),
        "norm": norm_name(norm),
        "target": target,
        "dtype": plan.dtype,
        "seed": plan.seed,
    }
    target_slug = re.sub(r"[^A-Za-z0-9]+", "", target)
    return (
        f"{model.label}__{method.name}__L{norm_name(norm)}__{target_slug}__"
        f"{start:06d}-{stop:06d}__{_digest(parts)}"
    )


def split_plan(plan: SweepPlan, models: list[SweepModel]) -> list[SweepTask]:
    """Every task of ``plan`` in a fixed order (model, method, norm, target, chunk): cheap
    methods of a model come out together, so partial results fill the table evenly."""
    d = plan.data
    chunks = [
        (lo, min(lo + d.chunk, d.start + d.count))
        for lo in range(d.start, d.start + d.count, d.chunk)
    ]
    tasks = []
    for model in models:
        for method in plan.methods:
            for norm in plan.norms:
                for target in plan.targets:
                    for lo, hi in chunks:
                        tasks.append(
                            SweepTask(
                                task_id=task_id_for(plan, model, method, norm, target, lo, hi),
                                model_label=model.label,
                                model_sha256=model.sha256,
                                method=method,
                                norm=norm,
                                target=target,
                                start=lo,
                                stop=hi,
                            )
                        )
    return tasks


__all__ = ["SweepTask", "split_plan", "task_id_for"]
