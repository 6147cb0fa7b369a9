"""Verify a VNN-LIB property on an ONNX network (VNN-COMP style): attack, CROWN,
alpha-CROWN, then branch and bound within a timeout.

Prints ``unsat`` (the property holds), ``sat`` followed by a re-checked counterexample
``((X_0 v) ... (Y_0 v) ...)``, ``unknown`` or ``timeout``. With ``--batch instances.csv``
(columns ``onnx``/``network``, ``vnnlib``/``property``, ``timeout_s``/``timeout`` and an optional
``expected``; a header-less competition CSV ``onnx,vnnlib,timeout`` also works; paths relative
to the CSV) every instance is run and a table and a summary are printed. Exit code 1 when a
batch answer contradicts a decided ``expected`` one.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import torch

from nnbound.cli.common import note, print_json, resolve_device
from nnbound.errors import InputError, NnboundError
from nnbound.report.atomic import write_text_atomic
from nnbound.report.provenance import provenance
from nnbound.report.tables import render_table

HELP = "verify a VNN-LIB property on an ONNX network (or a batch of instances)"

_DECIDED = ("sat", "unsat")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="the network (.onnx or any supported model file)")
    p.add_argument("property", nargs="?", help="the .vnnlib property")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per instance (default 60; with --batch, a cap on the CSV's timeouts)",
    )
    p.add_argument(
        "--result",
        default=None,
        help="write the result file (competition format; with --batch, a CSV of results)",
    )
    p.add_argument("--batch", default=None, metavar="CSV", help="run every instance of a CSV")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks (default 0)")
    p.add_argument("--no-bab", action="store_true", help="attack and bounds only, no branching")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: branch and bound runs many small tensor ops, "
        "which extra threads slow down on a busy machine; 0 keeps torch's default)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu | cuda[:N] | auto (cuda when available); default cpu",
    )
    p.add_argument("--json", action="store_true", help="print a JSON record on stdout")
    p.add_argument("--quiet", action="store_true", help="no notes on stderr")


def _options(args: argparse.Namespace):
    from nnbound.verify.verifier import VerifyOptions

    return VerifyOptions(seed=args.seed, bab=not args.no_bab)


def _record(res, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {**extra, "result": res.status, "time": round(res.time, 4)}
    rec["stage"] = res.stage
    if res.counterexample is not None:
        x, y = res.counterexample
        rec["counterexample"] = {"x": [float(v) for v in x], "y": [float(v) for v in y]}
    rec["stats"] = dict(res.stats)
    return rec


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        # Measured on a shared 2-core machine: ACAS Xu branch and bound ran 11x slower with 2
        # threads than with 1 (thread-pool spinning on small ops while other jobs hold the
        # cores).
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.batch:
        if args.model or args.property:
            raise InputError("give either MODEL PROPERTY or --batch CSV, not both")
        return _run_batch(args, device)
    if not args.model or not args.property:
        raise InputError("verify needs MODEL and PROPERTY (or --batch CSV)")
    from nnbound.verify.verifier import verify_files

    timeout = 60.0 if args.timeout is None else _timeout(args.timeout)
    if args.result:
        # a previous run's answer must not outlive this run: if it is interrupted, no file
        discard_stale(args.result)
    res = verify_files(
        args.model, args.property, timeout=timeout, options=_options(args), device=device
    )
    if args.result:
        _write(args.result, res.result_text())
    if args.json:
        rec = _record(res, model=str(args.model), property=str(args.property), timeout=timeout)
        rec["provenance"] = provenance(device=device, dtype=torch.float64, seed=args.seed)
        print_json(rec)
    else:
        sys.stdout.write(res.result_text())
    agrees = res.stats.get("onnxruntime_agrees")
    extra = "" if agrees is None else f", onnxruntime agrees: {'yes' if agrees else 'NO'}"
    note(args, f"{res.status} in {res.time:.2f} s (decided by: {res.stage}{extra})")
    return 0


def _timeout(value: float, what: str = "--timeout") -> float:
    """A finite number of seconds > 0 (0, negative, NaN and inf are refused: the verifier
    must answer within it)."""
    from nnbound.verify.deadline import checked_timeout

    return checked_timeout(value, what)


def _write(path: str, text: str) -> None:
    write_text_atomic(path, text)  # concurrent writers: one whole file wins, never a mix


def discard_stale(path: str | Path) -> None:
    """Remove a previous run's result file before the work starts."""
    try:
        Path(path).unlink(missing_ok=True)
    except IsADirectoryError:
        raise InputError(f"--result {path} is a folder; give a file path") from None
    except OSError as exc:
        raise InputError(f"cannot replace {path}: {exc}") from None


def _error_record(inst: dict[str, Any], timeout: float, exc: NnboundError) -> dict[str, Any]:
    """The row of an instance that could not be run (a bad file, an unsupported operator):
    the batch goes on and the message stays in the row."""
    return {
        "benchmark": inst["benchmark"],
        "network": str(inst["onnx"]),
        "property": str(inst["vnnlib"]),
        "timeout": timeout,
        "expected": inst["expected"],
        "result": "error",
        "time": 0.0,
        "stage": "-",
        "error": str(exc),
        "stats": {},
        "check": "-",
    }


def read_instances(path: str | Path) -> list[dict[str, Any]]:
    """Instances of a CSV (see the module docstring): dicts with ``benchmark``, ``onnx``,
    ``vnnlib`` (resolved paths), ``timeout`` (float) and ``expected`` (str or '')."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc}") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{p} holds no instances")
    first = [c.strip().lower() for c in rows[0]]
    if any(c.endswith(".onnx") for c in first):
        header = ["onnx", "vnnlib", "timeout"][: len(first)]
        body = rows
    else:
        header, body = first, rows[1:]
    aliases = {
        "onnx": ("onnx", "network", "model"),
        "vnnlib": ("vnnlib", "property", "spec"),
        "timeout": ("timeout_s", "timeout"),
    }
    col = {}
    for key, names in aliases.items():
        found = [header.index(n) for n in names if n in header]
        if key != "timeout" and not found:
            raise InputError(f"{p}: no {'/'.join(names)} column in header {rows[0]}")
        col[key] = found[0] if found else None
    expected = header.index("expected") if "expected" in header else None
    bench = header.index("benchmark") if "benchmark" in header else None
    out = []
    for lineno, r in enumerate(body, start=2 if body is not rows else 1):
        try:
            t = float(r[col["timeout"]]) if col["timeout"] is not None else 60.0
        except (ValueError, IndexError):
            raise InputError(f"{p}:{lineno}: bad timeout in {r}") from None
        t = _timeout(t, f"{p}:{lineno}: the timeout")
        try:
            onnx_path, prop = r[col["onnx"]].strip(), r[col["vnnlib"]].strip()
        except IndexError:
            raise InputError(f"{p}:{lineno}: missing columns in {r}") from None
        out.append(
            {
                "benchmark": r[bench].strip() if bench is not None and bench < len(r) else "",
                "onnx": p.parent / onnx_path,
                "vnnlib": p.parent / prop,
                "timeout": t,
                "expected": r[expected].strip().lower()
                if expected is not None and expected < len(r)
                else "",
            }
        )
    return out


def verdict(result: str, expected: str) -> str:
    """``ok``/``WRONG`` when both answers are decided (sat/unsat), else ``-``."""
    if result in _DECIDED and expected in _DECIDED:
        return "ok" if result == expected else "WRONG"
    return "-"


def _run_batch(args: argparse.Namespace, device: torch.device) -> int:
    from nnbound.verify.verifier import verify_files

    cap = None if args.timeout is None else _timeout(args.timeout)
    instances = read_instances(args.batch)
    records: list[dict[str, Any]] = []
    # Rows go to RESULT.partial as each instance finishes (an interrupted batch keeps them,
    # under a name that says the batch did not finish); RESULT appears when all are done.
    partial = f"{args.result}.partial" if args.result else None
    if args.result:
        discard_stale(args.result)
    for k, inst in enumerate(instances, start=1):
        timeout = inst["timeout"] if cap is None else min(inst["timeout"], cap)
        try:
            res = verify_files(
                inst["onnx"],
                inst["vnnlib"],
                timeout=timeout,
                options=_options(args),
                device=device,
            )
        except NnboundError as exc:
            records.append(_error_record(inst, timeout, exc))
            note(args, f"[{k}/{len(instances)}] {Path(inst['onnx']).name}: error: {exc}")
            if partial:
                _write_csv(partial, records)
            continue
        rec = _record(
            res,
            benchmark=inst["benchmark"],
            network=str(inst["onnx"]),
            property=str(inst["vnnlib"]),
            timeout=timeout,
            expected=inst["expected"],
        )
        rec["check"] = verdict(res.status, inst["expected"])
        records.append(rec)
        note(
            args,
            f"[{k}/{len(instances)}] {Path(inst['onnx']).name} {Path(inst['vnnlib']).name}: "
            f"{res.status} ({res.time:.2f} s){'  WRONG' if rec['check'] == 'WRONG' else ''}",
        )
        if partial:
            _write_csv(partial, records)
    summary = summarize(records)
    if args.result and partial:
        _write_csv(args.result, records)
        Path(partial).unlink(missing_ok=True)
    if args.json:
        prov = provenance(device=device, dtype=torch.float64, seed=args.seed)
        print_json({"instances": records, "summary": summary, "provenance": prov})
    else:
        rows = [
            [
                r["benchmark"] or "-",
                Path(r["network"]).name,
                Path(r["property"]).name,
                r["expected"] or "-",
                r["result"],
                float(r["time"]),
                r["check"],
            ]
            for r in records
        ]
        print(
            render_table(
                ["benchmark", "network", "property", "expected", "result", "time_s", "check"],
                rows,
                digits=2,
            )
        )
        for r in records:
            if r["result"] == "error":
                print(f"error: {Path(r['network']).name} {Path(r['property']).name}: {r['error']}")
        print()
        print(render_summary(summary))
    if summary["wrong"]:
        return 1
    return 2 if summary["error"] else 0


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over batch records: per result word, correct / wrong against ``expected``,
    and total time."""
    out: dict[str, Any] = {"instances": len(records)}
    for word in ("unsat", "sat", "unknown", "timeout", "error"):
        out[word] = sum(r["result"] == word for r in records)
    out["correct"] = sum(r["check"] == "ok" for r in records)
    out["wrong"] = sum(r["check"] == "WRONG" for r in records)
    out["total_time_s"] = round(sum(float(r["time"]) for r in records), 2)
    return out


def render_summary(summary: dict[str, Any]) -> str:
    keys = ["instances", "unsat", "sat", "unknown", "timeout", "correct", "wrong", "error"]
    keys.append("total_time_s")
    return render_table(keys, [[summary[k] for k in keys]], digits=2)


def _write_csv(path: str, records: list[dict[str, Any]]) -> None:
    fields = [
        "benchmark",
        "network",
        "property",
        "timeout",
        "expected",
        "result",
        "time",
        "stage",
        "check",
        "error",
    ]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow(r)
    write_text_atomic(path, out.getvalue())


__all__ = ["HELP", "configure", "read_instances", "run", "summarize", "verdict"]
