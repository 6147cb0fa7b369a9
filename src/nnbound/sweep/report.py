"""The merged sweep as the existing HTML sandwich report: one page per model, norm and target
type (``report/<model>__L<norm>__<target>/index.html``), built by
:func:`nnbound.report.html.render_html` from an :class:`~nnbound.tasks.evaluate.Evaluation`
rebuilt from the records. Images enter a page once every method of the plan has evaluated
them, so a partial sweep shows complete rows only. No thumbnails: the workers do not send
adversarial examples back."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from nnbound.sets.norms import parse_norm
from nnbound.sweep.merge import sandwich_groups
from nnbound.sweep.shards import write_atomic


def _evaluation(model: str, norm: str, images: dict[int, dict[str, dict[str, Any]]]) -> Any:
    from nnbound.tasks.evaluate import EvaluateSettings, Evaluation, SandwichRecord, sandwich_flags

    methods: list[str] = []
    for by_method in images.values():
        methods += [m for m in by_method if m not in methods]
    # The page's settings table: each method's own settings (they share only seed and
    # batch size, which one plan sets for all); the exact values per method are in the
    # provenance rows as well.
    changes: dict[str, Any] = {}
    for by_method in images.values():
        for r in by_method.values():
            changes.update(r["settings"])
    records = []
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    for image, by_method in sorted(images.items()):
        if len(by_method) != len(methods):
            continue
        first = next(iter(by_method.values()))
        cert = {m: float(r["value"]) for m, r in by_method.items() if r["kind"] == "certified"}
        att = {m: float(r["value"]) for m, r in by_method.items() if r["kind"] == "attack"}
        clever = float(by_method["clever"]["value"]) if "clever" in by_method else math.nan
        for m, r in by_method.items():
            seconds[m] += float(r["seconds"])
        records.append(
            SandwichRecord(
                index=image,
                label=int(first["label"]),
                target=int(first["target"]),
                margin=float(first["margin"]),
                certified=cert,
                clever=clever,
                attacks=att,
                seconds={m: float(r["seconds"]) for m, r in by_method.items()},
                flags=sandwich_flags(cert, clever, att),
            )
        )
    return Evaluation(
        model=model,
        norm=parse_norm(norm),
        methods=tuple(methods),
        records=tuple(records),
        stage_seconds=seconds,
        settings=EvaluateSettings(**changes),
        inputs=torch.zeros(len(records), 0),
    )


def write_sweep_reports(
    directory: Path, records: list[dict[str, Any]]
) -> tuple[list[Path], str | None]:
    """Write the pages; returns their paths and a note when none could be drawn (matplotlib
    missing: the sweep's table is written regardless)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], "report skipped: it needs matplotlib (pip install 'nnbound[report]')"
    from nnbound.report.html import render_html
    from nnbound.report.plots import render_plots

    paths = []
    for (model, norm, target), images in sandwich_groups(records).items():
        ev = _evaluation(model, norm, images)
        if not ev.records:
            continue
        settings = {}
        for by_method in images.values():
            for m, r in by_method.items():
                settings.setdefault(f"settings of {m}", r["settings"])
        first = next(iter(next(iter(images.values())).values()))
        provenance = {
            "model_sha256": first["model_sha256"],
            "dataset": first["dataset"],
            "target type": target,
            "nnbound_version": first["nnbound_version"],
            "device": first["device"],
            "dtype": first["dtype"],
            "seed": first["seed"],
            **settings,
        }
        page = render_html(
            ev,
            render_plots(ev),
            provenance=provenance,
            title=f"nnbound sweep: {model}, L{norm}, {target}",
        )
        slug = re.sub(r"[^A-Za-z0-9._-]+", "", f"{model}__L{norm}__{target}")
        path = directory / slug / "index.html"
        write_atomic(path, page)
        paths.append(path)
    return paths, None


__all__ = ["write_sweep_reports"]
