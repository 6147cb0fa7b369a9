"""Certified robustness radius per image (the reference's ``--task robustness``).

With ``--jacbndalg recurjac|fastlip`` the radius is also certified from Jacobian bounds (the
reference's ``compute_bounds_integral``: eps is certified iff ``g(x0) - sum_k L(k eps / n)
eps / n >= 0`` with n = ``--lipsteps``); it is reported beside the layer-bound radius and the
summary line gives its average, as the reference does.
"""

from __future__ import annotations

import argparse
import time

import torch

from nnbound.bounds.methods import ALL_METHODS, LAYERWISE_METHODS
from nnbound.cli.cmd_lipschitz import add_jacobian_args
from nnbound.cli.common import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    load_inputs,
    load_model_arg,
    note,
)
from nnbound.cli.shortfall import shortfall
from nnbound.cli.stream import ResultStream, add_stream_args, growing_spans
from nnbound.errors import InputError
from nnbound.jacobian.api import sequential_network
from nnbound.report.provenance import provenance
from nnbound.sets.norms import norm_name, parse_norm
from nnbound.tasks.jacobian_radius import jacobian_certified_radius
from nnbound.tasks.radius import certified_radius
from nnbound.tasks.targets import UNTARGETED, select_targets

HELP = "certified robustness radius (binary search over eps)"


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("certification (reference flag names)")
    g.add_argument("--norm", default="i", help="1 | 2 | i (inf)")
    g.add_argument(
        "--layerbndalg",
        default="crown-general",
        choices=ALL_METHODS,
        help="bound method (default crown-general, as the reference)",
    )
    add_jacobian_args(g, default="disable")
    g.add_argument("--eps", type=float, default=0.005, help="binary-search start (default 0.005)")
    g.add_argument("--steps", type=int, default=15, help="binary-search evaluations (default 15)")
    g.add_argument(
        "--targettype",
        default="least",
        help="least | runnerup (= top2) | random | untargeted | <class> (default least)",
    )
    g.add_argument(
        "--bounded-input",
        action="store_true",
        help="intersect the ball with the data range (off by default, as the reference)",
    )
    g.add_argument(
        "--reference",
        action="store_true",
        help="the reference's layer-wise bounds exactly (no interval intersection)",
    )
    g.add_argument("--warmup", action="store_true", help="one untimed run first")
    g.add_argument("--batch-size", type=int, default=100, help="images certified together")
    add_runtime_args(p)
    add_stream_args(p)


def run(args: argparse.Namespace) -> int:
    jac = args.jacbndalg != "disable"
    if jac and args.layerbndalg not in LAYERWISE_METHODS:
        raise InputError(
            f"--jacbndalg {args.jacbndalg} needs a layer-wise --layerbndalg for its "
            f"pre-activation bounds, not {args.layerbndalg}"
        )
    if jac and args.lipsteps < 1:
        raise InputError(f"--lipsteps must be >= 1, got {args.lipsteps}")
    net = load_model_arg(args)
    if jac:
        sequential_network(net)  # refuse a graph before any work
    p = parse_norm(args.norm)
    inputs = load_inputs(args, net, all_rows=args.input is None)
    with torch.no_grad():
        logits = net(inputs.x).cpu()
    sel = select_targets(
        logits, inputs.labels, args.targettype, num_images=args.numimage, start=0, seed=args.seed
    )
    short = shortfall(args, len(sel.indices), inputs.source)
    domain = net.input_range if args.bounded_input else None
    x = inputs.x[sel.indices.to(inputs.x.device)]
    note(
        args,
        f"{len(sel.indices)} correctly classified images from {inputs.source}; "
        f"L{norm_name(p)}, {args.layerbndalg}, start eps {args.eps:g}, {args.steps} steps; "
        f"input clipping to the data range: {'on' if domain else 'off'}"
        + (
            f"; Jacobian radius: {args.jacbndalg}, lipsdir {args.lipsdir}, lipsshift "
            f"{args.lipsshift}, {args.lipsteps} integration steps"
            if jac
            else ""
        ),
    )

    def certify(lo: int, hi: int) -> torch.Tensor:
        return certified_radius(
            net,
            x[lo:hi],
            sel.labels[lo:hi],
            sel.targets[lo:hi],
            norm=p,
            method=args.layerbndalg,
            eps0=args.eps,
            steps=args.steps,
            domain=domain,
            reference=args.reference,
        )

    def certify_jacobian(lo: int, hi: int) -> torch.Tensor:
        return jacobian_certified_radius(
            net,
            x[lo:hi],
            sel.labels[lo:hi],
            sel.targets[lo:hi],
            norm=p,
            method=args.jacbndalg,
            layer_method=args.layerbndalg,
            direction=args.lipsdir,
            shift=args.lipsshift,
            lipsteps=args.lipsteps,
            eps0=args.eps,
            steps=args.steps,
            domain=domain,
        )

    if args.warmup and len(sel.indices):
        certify(0, 1)
        if jac:
            certify_jacobian(0, 1)

    def margin_of(i: int) -> float:
        lg, y, t = sel.logits[i], int(sel.labels[i]), int(sel.targets[i])
        other = lg.clone()
        other[y] = -float("inf")
        return float(lg[y] - (other.max() if t == UNTARGETED else lg[t]))

    stream = ResultStream(args, len(sel.indices), name="robustness")
    records: list[dict] = []
    try:
        for lo, hi in growing_spans(len(sel.indices), args.batch_size):
            t0 = time.perf_counter()
            with torch.no_grad():
                radii = certify(lo, hi).tolist()
            dt = (time.perf_counter() - t0) / (hi - lo)
            if jac:
                t0 = time.perf_counter()
                jradii = certify_jacobian(lo, hi).tolist()
                jdt = (time.perf_counter() - t0) / (hi - lo)
            for k, i in enumerate(range(lo, hi)):
                rec = {
                    "index": int(inputs.indices[sel.indices[i]]),
                    "label": int(sel.labels[i]),
                    "target": "untargeted"
                    if int(sel.targets[i]) == UNTARGETED
                    else int(sel.targets[i]),
                    "radius": radii[k],
                    "margin": margin_of(i),
                    "time_s": dt,
                    **({"radius_jacobian": jradii[k], "time_jacobian_s": jdt} if jac else {}),
                }
                records.append(rec)
                stream.emit(rec, _line(rec, args))
            stream.advance(hi - lo)
    except KeyboardInterrupt:
        stream.interrupted = True
    finally:
        stream.close()
    radii_all = [r["radius"] for r in records]
    jradii_all = [r["radius_jacobian"] for r in records] if jac else []
    avg = sum(radii_all) / len(radii_all) if radii_all else 0.0
    avg_jac = sum(jradii_all) / len(jradii_all) if jradii_all else 0.0
    if stream.text:
        if jac:
            print(f"[L1] {args.layerbndalg} avg robustness_lb = {avg:.5f}")
        shown = avg_jac if jac else avg
        print(
            f"[L0] model = {args.model}, avg robustness_lb = {shown:.5f}, numimage = "
            f"{len(records)}" + (", interrupted" if stream.interrupted else ""),
            flush=True,
        )
        return stream.exit_code
    stream.summary(
        {
            "model": args.model,
            "method": args.layerbndalg,
            "jacbndalg": args.jacbndalg,
            **(
                {
                    "lipsdir": args.lipsdir,
                    "lipsshift": args.lipsshift,
                    "lipsteps": args.lipsteps,
                    "avg_radius_jacobian": avg_jac,
                }
                if jac
                else {}
            ),
            "norm": norm_name(p),
            "targettype": args.targettype,
            "eps_start": args.eps,
            "steps": args.steps,
            "bounded_input": bool(args.bounded_input),
            "images": records,
            "avg_radius": avg,
            "numimage": len(records),
            **short,
            "interrupted": stream.interrupted,
            "provenance": provenance(device=net.device, dtype=net.dtype, seed=args.seed),
        }
    )
    return stream.exit_code


def _line(r: dict, args: argparse.Namespace) -> str:
    """The reference's per-image ``[L1]`` line."""
    if "radius_jacobian" in r:
        return (
            f"[L1] id = {r['index']}, true_label = {r['label']}, target_label = "
            f"{r['target']}, robustness_lb = {r['radius_jacobian']:.5f} ({args.jacbndalg}), "
            f"{args.layerbndalg} robustness_lb = {r['radius']:.5f}, margin = "
            f"{r['margin']:.5f}, time = {r['time_jacobian_s']:.4f} s"
        )
    return (
        f"[L1] id = {r['index']}, true_label = {r['label']}, target_label = {r['target']}, "
        f"robustness_lb = {r['radius']:.5f}, margin = {r['margin']:.5f}, "
        f"time = {r['time_s']:.4f} s"
    )
