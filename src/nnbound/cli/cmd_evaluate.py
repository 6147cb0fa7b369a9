"""The robustness sandwich per image: certified lower bounds <= CLEVER <= attack distances.

For each correctly classified image (and target, --targettype) the certified radius of every
bound method (crown, fastlin, ibp, recurjac, ...), the CLEVER estimate and the distance of the
closest adversarial example each attack finds (pgd in the evaluation norm, cw = Carlini-Wagner
L2, ead = elastic-net L1; every example re-checked on the model), side by side with a verdict:
``ok`` when certified <= clever <= attack, ``clever_above_attack`` where CLEVER overstates
robustness (the gradient-masking critique), ``BUG`` where a certified radius exceeds an attack
distance (impossible for a sound bound: the command then exits 1).

Data (the table, --json or --csv) goes to stdout; progress bars and notes to stderr.
``--report DIR`` writes a self-contained HTML page and PNG plots (needs matplotlib:
``pip install 'nnbound[report]'``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

import torch

from nnbound.cli.catalogue_args import (
    add_catalogue_args,
    load_catalogue_inputs,
    load_catalogue_model,
    wants_catalogue,
)
from nnbound.cli.common import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    load_inputs,
    load_model_arg,
    note,
)
from nnbound.cli.memory_args import first_input, gradient_batch, measured_row_bytes
from nnbound.cli.shortfall import shortfall
from nnbound.cli.stream import ResultStream, add_stream_args, growing_spans
from nnbound.errors import InputError
from nnbound.network.graph import Graph
from nnbound.report.atomic import mark_run_started, replacing_folder
from nnbound.report.provenance import provenance
from nnbound.report.tables import render_table
from nnbound.sets.norms import norm_name, parse_norm
from nnbound.tasks.evaluate import (
    ATTACK_NORM,
    EVALUATE_METHODS,
    EvaluateSettings,
    Evaluation,
    available_methods,
    certified_unavailable,
    evaluate,
    method_kind,
    parse_methods,
)
from nnbound.tasks.evaluate_merge import merge_evaluations
from nnbound.tasks.targets import select_targets

HELP = "the robustness sandwich per image: certified <= CLEVER <= attack, with reports"


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    add_catalogue_args(p)
    d = EvaluateSettings()
    g = p.add_argument_group("sandwich")
    g.add_argument("--norm", default="i", help="1 | 2 | i (inf) (default i)")
    g.add_argument(
        "--targettype",
        default="untargeted",
        help="untargeted | least | runnerup (= top2) | random | <class> (default untargeted)",
    )
    g.add_argument(
        "--methods",
        default="auto",
        help=f"comma list of {','.join(EVALUATE_METHODS)} (or any bound method); "
        "default auto = every one available for the model",
    )
    g.add_argument("--eps", type=float, default=d.eps0, help="certified search start (0.005)")
    g.add_argument("--steps", type=int, default=d.steps, help="certified search steps (15)")
    g.add_argument(
        "--bounded-input",
        action="store_true",
        help="certify over the ball intersected with the data range (off, as the reference)",
    )
    g.add_argument(
        "--no-attack-clip",
        action="store_true",
        help="let attacks leave the data range (default: examples are clipped to it)",
    )
    g.add_argument(
        "--lipsteps",
        type=int,
        default=d.jacobian_lipsteps,
        help=f"recurjac/fastlip Lipschitz integral pieces ({d.jacobian_lipsteps})",
    )
    c = p.add_argument_group("CLEVER (modest defaults; reference 1024 x 500)")
    c.add_argument(
        "--clever-nsamp",
        type=int,
        default=d.clever_nsamp,
        help=f"samples per batch ({d.clever_nsamp})",
    )
    c.add_argument(
        "--clever-niters",
        type=int,
        default=d.clever_niters,
        help=f"batches = maxima fitted ({d.clever_niters})",
    )
    c.add_argument(
        "--clever-batch",
        type=int,
        default=None,
        help=f"rows per pass ({d.clever_batch}, or fewer: what fits in half the free memory)",
    )
    a = p.add_argument_group("attacks")
    a.add_argument("--pgd-steps", type=int, default=d.pgd_steps, help=f"({d.pgd_steps})")
    a.add_argument("--pgd-restarts", type=int, default=d.pgd_restarts, help=f"({d.pgd_restarts})")
    a.add_argument(
        "--pgd-search-steps",
        type=int,
        default=d.pgd_search_steps,
        help=f"PGD runs of the eps search ({d.pgd_search_steps})",
    )
    a.add_argument("--cw-steps", type=int, default=d.cw_steps, help=f"({d.cw_steps})")
    a.add_argument(
        "--cw-binary-steps", type=int, default=d.cw_binary_steps, help=f"({d.cw_binary_steps})"
    )
    a.add_argument("--cw-lr", type=float, default=d.cw_lr, help=f"({d.cw_lr})")
    a.add_argument("--ead-steps", type=int, default=d.ead_steps, help=f"({d.ead_steps})")
    a.add_argument(
        "--ead-binary-steps", type=int, default=d.ead_binary_steps, help=f"({d.ead_binary_steps})"
    )
    a.add_argument("--ead-beta", type=float, default=d.ead_beta, help=f"({d.ead_beta})")
    o = p.add_argument_group("output")
    o.add_argument("--csv", action="store_true", help="print CSV rows on stdout")
    o.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write DIR/index.html (self-contained) and PNG plots",
    )
    o.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images certified / attacked together ({d.batch_size}, or fewer: what fits in "
        "half the free memory)",
    )
    o.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these small batched passes gain little from more, "
        "and are many times slower with more when the cores are shared)",
    )
    add_runtime_args(p)
    add_stream_args(p)


def _settings(args: argparse.Namespace) -> EvaluateSettings:
    d = EvaluateSettings()
    return EvaluateSettings(
        eps0=args.eps,
        steps=args.steps,
        bounded_input=bool(args.bounded_input),
        attack_clip=not args.no_attack_clip,
        jacobian_lipsteps=args.lipsteps,
        clever_nsamp=args.clever_nsamp,
        clever_niters=args.clever_niters,
        clever_batch=d.clever_batch if args.clever_batch is None else args.clever_batch,
        pgd_steps=args.pgd_steps,
        pgd_restarts=args.pgd_restarts,
        pgd_search_steps=args.pgd_search_steps,
        cw_binary_steps=args.cw_binary_steps,
        cw_steps=args.cw_steps,
        cw_lr=args.cw_lr,
        ead_binary_steps=args.ead_binary_steps,
        ead_steps=args.ead_steps,
        ead_beta=args.ead_beta,
        seed=args.seed,
        batch_size=d.batch_size if args.batch_size is None else args.batch_size,
    )


class _Progress:
    """One tqdm bar over (method, image) units on stderr; silent when not a TTY or --quiet."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        from tqdm import tqdm

        show = not args.quiet and sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            desc="evaluate",
            unit="step",
            file=sys.stderr,
            disable=not show,
            leave=False,
        )

    def __call__(self, method: str, n: int) -> None:
        self.bar.set_postfix_str(method)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _asks_certified(methods: str) -> bool:
    """True if the ``--methods`` list names a certified method."""
    return any(method_kind(m.strip()) == "certified" for m in methods.split(",") if m.strip())


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.check()
    if sum(map(bool, (args.json, args.csv, args.jsonl))) > 1:
        raise InputError("choose one of --json and --csv (or --jsonl alone)")
    if args.report:
        from nnbound.report.plots import require_matplotlib

        require_matplotlib()  # fail before the work, not after it
        mark_run_started(args.report)  # the old report says it is old until this run ends
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.numimage < 1:
        raise InputError(f"--numimage must be >= 1, got {args.numimage}")
    p = parse_norm(args.norm)
    catalogue = wants_catalogue(args)
    net = load_catalogue_model(args) if catalogue else load_model_arg(args)
    weights = getattr(net, "weights", None)
    if catalogue and args.methods != "auto" and _asks_certified(args.methods):
        # Certified bounds run on the architecture as a graph; by default a catalogue model
        # gets CLEVER and the attacks only (CROWN at ImageNet size is hours on a CPU).
        from nnbound.catalogue.graph import as_graph

        module, net = net, as_graph(net)
    no_certified = certified_unavailable(net)
    if no_certified:
        note(args, f"note: {no_certified}")
    methods = parse_methods(None if args.methods == "auto" else args.methods, net)
    if args.methods == "auto":
        missing = available_methods(net)[1]
        for m, why in missing.items():
            if why != no_certified:
                note(args, f"note: {m} left out: {why}")
    if catalogue:
        inputs = load_catalogue_inputs(args, module if isinstance(net, Graph) else net)
        if "clever" in methods and args.targettype == "untargeted":
            note(
                args,
                "note: untargeted CLEVER on an ImageNet model fits one estimate per class "
                "(999 per image); --targettype runnerup is the usual, much cheaper, proxy",
            )
    else:
        inputs = load_inputs(args, net, all_rows=args.input is None)
    with torch.no_grad():
        logits = net(inputs.x).cpu()
    sel = select_targets(
        logits, inputs.labels, args.targettype, num_images=args.numimage, start=0, seed=args.seed
    )
    if len(sel.indices) == 0:
        raise InputError(f"no correctly classified image among those selected from {inputs.source}")
    x = inputs.x[sel.indices.to(inputs.x.device)]
    indices = inputs.indices[sel.indices]
    settings = _fit_memory(args, net, x, settings, methods)
    note(
        args,
        f"{len(sel.indices)} correctly classified images from {inputs.source}; L{norm_name(p)}; "
        f"methods {','.join(methods)}; certified ball clipped to the data range: "
        f"{'on' if settings.bounded_input else 'off'}; attacks clipped: "
        f"{'on' if settings.attack_clip else 'off'}",
    )
    short = shortfall(args, len(sel.indices), inputs.source)
    prov = provenance(device=net.device, dtype=net.dtype, seed=args.seed)
    bar = _Progress(args, len(sel.indices) * len(methods))
    stream = ResultStream(args, len(sel.indices), name="evaluate")
    if not bar.bar.disable:
        stream.show_progress = False  # the terminal has tqdm's finer bar already
    parts: list[Evaluation] = []
    if args.csv:
        _csv_header(ev_methods=methods)
    try:
        # One input, then growing chunks up to --batch-size (growing_spans): the first sandwich
        # shows after one input's work, later chunks keep the batched passes' speed.
        for lo, hi in growing_spans(len(sel.indices), settings.batch_size):
            part = evaluate(
                net,
                x[lo:hi],
                sel.labels[lo:hi],
                sel.targets[lo:hi],
                norm=p,
                methods=methods,
                indices=indices[lo:hi],
                settings=settings,
                progress=bar,
            )
            parts.append(part)
            bar.bar.clear()
            for r in part.records:
                if args.csv:
                    _csv_row(part, r, args, prov)
                    sys.stdout.flush()
                else:
                    stream.emit(r.to_dict(), _record_line(part, r))
            stream.advance(hi - lo)
    except KeyboardInterrupt:
        stream.interrupted = True
    finally:
        bar.close()
        stream.close()
    if not parts:
        return stream.exit_code
    ev = merge_evaluations(parts)
    extra: dict[str, Any] = {"weights": weights, "certified": no_certified} if catalogue else {}
    if catalogue and str(weights).startswith("random"):
        extra["random_weights"] = True
    if args.csv:
        pass  # every row is out already
    elif not stream.text:
        stream.summary(
            {
                **ev.to_dict(),
                "model": args.model,
                "targettype": args.targettype,
                **short,
                "interrupted": stream.interrupted,
                **extra,
                "provenance": prov,
            }
        )
    else:
        _print_text(ev, args)
        for key, value in extra.items():
            print(f"[sandwich] {key}: {value}")
        if stream.interrupted:
            print(f"[sandwich] interrupted: {len(ev.records)} of {len(sel.indices)} inputs")
    if args.report:
        from nnbound.report.html import write_report

        # built in a staging folder that replaces the old report whole (issue 19)
        with replacing_folder(args.report) as staging:
            write_report(
                ev,
                staging,
                provenance={"model": args.model, "targettype": args.targettype, **extra, **prov},
            )
        note(args, f"report: {Path(args.report) / 'index.html'}")
    bugs = ev.count("bug")
    if bugs:
        # Printed even with --quiet: an unsound certificate must never pass unnoticed.
        print(
            f"nnbound: error: {bugs} record(s) have a certified radius above an attack "
            "distance: a soundness bug, please report it",
            file=sys.stderr,
        )
        return 1
    return stream.exit_code


def _record_line(ev: Evaluation, r: Any) -> str:
    """One input's sandwich as it finishes (the table at the end has them all)."""
    vals = ", ".join(f"{m} = {ev.values_of(r, m):.4g}" for m in ev.methods)
    target = "untargeted" if r.target < 0 else r.target
    return f"[image] #{r.index}: label = {r.label}, target = {target}, {vals}, {r.verdict}"


def _fit_memory(
    args: argparse.Namespace,
    net: Any,
    x: torch.Tensor,
    settings: EvaluateSettings,
    methods: list[str],
) -> EvaluateSettings:
    """Batch sizes that fit: CLEVER's rows per pass and the attacks' images per batch are
    gradient passes; at ImageNet size their defaults would need tens of GB."""
    from dataclasses import replace

    x0 = first_input(x)
    per_row = measured_row_bytes(net, x0)
    if per_row is None:
        return settings
    batch = gradient_batch(
        args,
        net,
        x0,
        requested=args.batch_size,
        default=settings.batch_size,
        option="--batch-size",
        per_row=per_row,
    )
    clever_batch = settings.clever_batch
    if "clever" in methods:
        clever_batch = gradient_batch(
            args,
            net,
            x0,
            requested=args.clever_batch,
            default=settings.clever_batch,
            option="--clever-batch",
            per_row=per_row,
        )
    return replace(settings, batch_size=batch, clever_batch=clever_batch)


def _print_text(ev: Evaluation, args: argparse.Namespace) -> None:
    headers, rows = ev.table()
    print(render_table(headers, rows, digits=4))
    print()
    s = ev.summary()
    kinds = {
        "certified": "certified (lower bound)",
        "estimate": "estimate",
        "attack": "attack (upper bound)",
    }
    srows = []
    for m, row in s["methods"].items():
        what = kinds[row["kind"]]
        if row["kind"] == "attack" and m in ATTACK_NORM and ATTACK_NORM[m] != ev.norm:
            what += f", an L{norm_name(ATTACK_NORM[m])} attack"
        srows.append(
            [m, what, row["mean"], row["median"], f"{row['finite']}/{s['records']}", row["seconds"]]
        )
    print(render_table(["method", "kind", "mean", "median", "finite", "seconds"], srows, digits=4))
    print()
    print(
        f"[sandwich] model = {args.model}, norm = L{norm_name(ev.norm)}, images = "
        f"{s['records']}, ok = {s['ok']}, clever>attack = {s['clever_above_attack']}, "
        f"clever<certified = {s['clever_below_certified']}, no attack = {s['no_attack']}, "
        f"BUG certified>attack = {s['bugs']}, time = {s['total_seconds']:.1f} s"
    )
    for r in ev.records:
        for f in r.flags:
            if f.kind in ("bug", "clever_above_attack"):
                print(f"[flag] #{r.index}: {f.kind}: {f.message}")


_CSV_TAIL = ["model", "norm", "nnbound_version", "torch_version", "device", "dtype", "seed"]


def _csv_header(ev_methods: list[str]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(
        [
            "index",
            "label",
            "target",
            "margin",
            *ev_methods,
            *(f"{m}_seconds" for m in ev_methods),
            "best_certified",
            "best_attack",
            "verdict",
            *_CSV_TAIL,
        ]
    )
    sys.stdout.flush()


def _csv_row(ev: Evaluation, r: Any, args: argparse.Namespace, prov: dict[str, Any]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    vals = [ev.values_of(r, m) for m in ev.methods]
    w.writerow(
        [
            r.index,
            r.label,
            "untargeted" if r.target < 0 else r.target,
            _num(r.margin),
            *(_num(v) for v in vals),
            *(_num(r.seconds.get(m, math.nan)) for m in ev.methods),
            _num(r.best_certified),
            _num(r.best_attack),
            r.verdict,
            args.model,
            norm_name(ev.norm),
            prov["nnbound_version"],
            prov["torch_version"],
            prov["device"],
            prov["dtype"],
            prov["seed"],
        ]
    )


def _num(v: float) -> str:
    return repr(float(v))


__all__ = ["HELP", "configure", "run"]
