"""Merging the shards of a plan's finished tasks into one table: ``records.jsonl`` (every
record), ``records.csv`` (the same, flat) and a per-method summary; and the soundness check
across methods (a certified radius above an attack distance of the same image is a bug)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnbound.sweep.execute import STATUS_OK
from nnbound.sweep.grid import SweepTask
from nnbound.sweep.shards import finished_ids, read_shard, write_atomic

CSV_COLUMNS = (
    "model",
    "dataset",
    "image",
    "label",
    "method",
    "kind",
    "norm",
    "targettype",
    "target",
    "status",
    "value",
    "margin",
    "seconds",
    "device",
    "dtype",
    "seed",
    "nnbound_version",
    "torch_version",
    "python_version",
    "finished_at",
    "model_sha256",
    "model_entry",
    "settings",
    "task_id",
)

SUMMARY_HEADERS = (
    "model",
    "method",
    "norm",
    "target",
    "images",
    "evaluated",
    "finite",
    "mean",
    "median",
    "seconds",
)


@dataclass
class MergeResult:
    """What the merge wrote and found."""

    records_path: Path
    csv_path: Path
    records: list[dict[str, Any]]
    missing: list[str]
    summary: list[list[object]]
    bugs: list[str] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    report_note: str | None = None


def _sort_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["model"], r["method"], r["norm"], r["targettype"], r["image"])


def read_records(
    results: Path, tasks: Sequence[SweepTask]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of every finished task of ``tasks`` (sorted), and the ids without a shard."""
    done = finished_ids(results)
    records: list[dict[str, Any]] = []
    missing = []
    for t in tasks:
        if t.task_id in done:
            records.extend(read_shard(results, t.task_id))
        else:
            missing.append(t.task_id)
    records.sort(key=_sort_key)
    return records, missing


def _csv_text(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        row = []
        for c in CSV_COLUMNS:
            v = r.get(c)
            if c == "settings":
                v = json.dumps(v, sort_keys=True)
            elif isinstance(v, float):
                v = repr(v)
            row.append(v)
        w.writerow(row)
    return buf.getvalue()


def summary_rows(records: list[dict[str, Any]]) -> list[list[object]]:
    """Per (model, method, norm, target type): images, evaluated, finite values, their mean
    and median, and the summed seconds."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["method"], r["norm"], r["targettype"])].append(r)
    rows: list[list[object]] = []
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == STATUS_OK]
        vals = [float(r["value"]) for r in ok if math.isfinite(float(r["value"]))]
        rows.append(
            [
                *key,
                len(rs),
                len(ok),
                len(vals),
                statistics.fmean(vals) if vals else math.nan,
                statistics.median(vals) if vals else math.nan,
                float(sum(float(r["seconds"]) for r in ok)),
            ]
        )
    return rows


def sandwich_groups(
    records: list[dict[str, Any]],
) -> dict[tuple[str, str, str], dict[int, dict[str, dict[str, Any]]]]:
    """(model, norm, target type) -> image -> method -> record, evaluated records only."""
    out: dict[tuple[str, str, str], dict[int, dict[str, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in records:
        if r["status"] == STATUS_OK:
            out[(r["model"], r["norm"], r["targettype"])][int(r["image"])][r["method"]] = r
    return out


def find_bugs(records: list[dict[str, Any]]) -> list[str]:
    """One line per image whose certified radius exceeds an attack distance (see
    :func:`nnbound.tasks.evaluate.sandwich_flags`)."""
    from nnbound.tasks.evaluate import sandwich_flags

    bugs = []
    for (model, norm, target), images in sandwich_groups(records).items():
        for image, by_method in sorted(images.items()):
            cert = {m: float(r["value"]) for m, r in by_method.items() if r["kind"] == "certified"}
            att = {m: float(r["value"]) for m, r in by_method.items() if r["kind"] == "attack"}
            clever = float(by_method["clever"]["value"]) if "clever" in by_method else math.nan
            for f in sandwich_flags(cert, clever, att):
                if f.kind == "bug":
                    bugs.append(f"{model} image {image} L{norm} {target}: {f.message}")
    return bugs


def merge_results(results: Path, tasks: Sequence[SweepTask], *, report: bool) -> MergeResult:
    """Write ``records.jsonl`` and ``records.csv`` (atomically) from the finished shards of
    ``tasks``, and with ``report`` the HTML report (``report/``, needs matplotlib)."""
    records, missing = read_records(results, tasks)
    records_path = results / "records.jsonl"
    csv_path = results / "records.csv"
    write_atomic(
        records_path, "".join(json.dumps(r, sort_keys=True, allow_nan=True) + "\n" for r in records)
    )
    write_atomic(csv_path, _csv_text(records))
    out = MergeResult(
        records_path, csv_path, records, missing, summary_rows(records), find_bugs(records)
    )
    if report and records:
        from nnbound.sweep.report import write_sweep_reports

        out.reports, out.report_note = write_sweep_reports(results / "report", records)
    return out


__all__ = [
    "CSV_COLUMNS",
    "SUMMARY_HEADERS",
    "MergeResult",
    "find_bugs",
    "merge_results",
    "read_records",
    "sandwich_groups",
    "summary_rows",
]
