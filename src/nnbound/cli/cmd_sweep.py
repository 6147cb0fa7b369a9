"""Run a models x images x methods grid from a TOML plan, resumably.

The plan (see ``nnbound.sweep.plan``) names models, a dataset and image range, methods with
their settings, norms, target types and the device. The grid is split into tasks (model x image
chunk x method x norm x target); each finished task is written to
``RESULTS/shards/<task-id>.jsonl`` (atomically), so rerunning the same command skips finished
tasks and runs the rest. Tasks run in local worker processes by default, in this process with
``--workers 0``, or on Ray with ``--ray auto|local|HOST:PORT`` (``pip install
'nnbound[cluster]'``); the records are the same. At the end the shards are merged into
``RESULTS/records.jsonl`` and ``RESULTS/records.csv`` and the HTML sandwich report.

Progress goes to stderr, the summary table to stdout (``--json``: one JSON object). Exit code
1 when a task failed (listed with its error; rerun to retry it) or a certified radius exceeds
an attack distance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nnbound.errors import InputError

HELP = "run a models x images x methods grid from a TOML plan (local or Ray), resumable"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="the TOML plan file")
    g = p.add_argument_group("where tasks run")
    g.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: auto (the cluster this machine is in), local (a private instance) "
        "or HOST:PORT of a head node (default: local worker processes)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: CPU count, at most 8; 0 = in this process); "
        "with --ray local, the CPUs Ray may use",
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="re-runs of a task whose worker process or node died (default 3)",
    )
    g.add_argument(
        "--gpus-per-task", type=float, default=0.0, help="Ray: GPUs each task reserves (0)"
    )
    o = p.add_argument_group("what to do")
    o.add_argument("--results", default=None, help="results folder (overrides the plan's)")
    o.add_argument(
        "--max-tasks", type=int, default=None, help="run at most this many unfinished tasks"
    )
    o.add_argument(
        "--dry-run", action="store_true", help="list the tasks and which are finished; run none"
    )
    o.add_argument(
        "--merge-only", action="store_true", help="merge the finished shards; run no task"
    )
    o.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nnbound.sweep.executors import parse_executor
    from nnbound.sweep.plan import load_plan

    if args.dry_run and args.merge_only:
        raise InputError("choose one of --dry-run and --merge-only")
    plan = load_plan(args.plan)
    if args.results:
        plan = replace(plan, results=Path(args.results).resolve())
    choice = parse_executor(
        args.ray, args.workers, max_retries=args.max_retries, gpus_per_task=args.gpus_per_task
    )
    if args.dry_run:
        return _dry_run(plan, args)
    if args.merge_only:
        return _merge_only(plan, args)
    from nnbound.sweep.run import run_sweep

    if not args.quiet:
        print(f"[sweep] {args.plan}: running on {choice.describe()}", file=sys.stderr)
    summary = run_sweep(plan, choice, max_tasks=args.max_tasks, quiet=args.quiet)
    merged = summary.merge
    assert merged is not None
    if args.json:
        from nnbound.cli.common import print_json

        print_json(
            {
                "tasks": summary.tasks,
                "skipped": summary.skipped,
                "executed": len(summary.executed),
                "failed": summary.failed,
                "retries": summary.retries,
                "missing": len(merged.missing),
                "records": len(merged.records),
                "seconds": summary.seconds,
                "images_per_second": summary.images_per_second,
                "executor": summary.executor,
                "bugs": merged.bugs,
                "records_path": str(merged.records_path),
                "csv_path": str(merged.csv_path),
                "reports": [str(p) for p in merged.reports],
                "summary": [dict(zip(_headers(), row, strict=True)) for row in merged.summary],
            }
        )
    else:
        _print_table(merged.summary)
        print()
        print(
            f"[sweep] tasks = {summary.tasks}, finished before = {summary.skipped}, run now = "
            f"{len(summary.executed)}, failed = {len(summary.failed)}, still missing = "
            f"{len(merged.missing)}, retries = {summary.retries}, records = "
            f"{len(merged.records)}, {summary.images_per_second:.2f} images/s, "
            f"time = {summary.seconds:.1f} s"
        )
        print(f"[sweep] table: {merged.records_path} and {merged.csv_path}")
        for path in merged.reports:
            print(f"[sweep] report: {path}")
        for tid, err in summary.failed.items():
            print(f"[sweep] FAILED {tid}: {err}")
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    return _bug_exit(merged.bugs) or (1 if summary.failed else 0)


def _headers() -> tuple[str, ...]:
    from nnbound.sweep.merge import SUMMARY_HEADERS

    return SUMMARY_HEADERS


def _print_table(rows: list[list[Any]]) -> None:
    from nnbound.report.tables import render_table

    print(render_table(_headers(), rows, digits=4))


def _bug_exit(bugs: list[str]) -> int:
    if not bugs:
        return 0
    for line in bugs:
        print(f"[flag] bug: {line}", file=sys.stderr)
    print(
        f"nnbound: error: {len(bugs)} record(s) have a certified radius above an attack "
        "distance: a soundness bug, please report it",
        file=sys.stderr,
    )
    return 1


def _dry_run(plan: Any, args: argparse.Namespace) -> int:
    from nnbound.sweep.run import plan_tasks
    from nnbound.sweep.shards import finished_ids, read_failures

    _, tasks = plan_tasks(plan)
    done = finished_ids(plan.results)
    failed = read_failures(plan.results)
    rows = []
    for t in tasks:
        state = "finished" if t.task_id in done else ("failed" if t.task_id in failed else "to run")
        rows.append({"task_id": t.task_id, "images": t.num_images, "state": state})
    if args.json:
        from nnbound.cli.common import print_json

        print_json({"results": str(plan.results), "tasks": rows})
    else:
        for r in rows:
            print(f"{r['state']:>8}  {r['task_id']}")
        n_done = sum(r["state"] == "finished" for r in rows)
        print(f"[sweep] {len(rows)} tasks, {n_done} finished, {len(rows) - n_done} to run")
    return 0


def _merge_only(plan: Any, args: argparse.Namespace) -> int:
    from nnbound.sweep.merge import merge_results
    from nnbound.sweep.run import plan_tasks

    _, tasks = plan_tasks(plan)
    merged = merge_results(plan.results, tasks, report=plan.report)
    if args.json:
        from nnbound.cli.common import print_json

        print_json(
            {
                "records": len(merged.records),
                "missing": len(merged.missing),
                "bugs": merged.bugs,
                "summary": [dict(zip(_headers(), row, strict=True)) for row in merged.summary],
            }
        )
    else:
        _print_table(merged.summary)
        print(f"[sweep] records = {len(merged.records)}, tasks missing = {len(merged.missing)}")
    if merged.report_note:
        print(f"note: {merged.report_note}", file=sys.stderr)
    return _bug_exit(merged.bugs)


__all__ = ["HELP", "configure", "run"]
