"""Certified robustness radius per image (the reference's ``--task robustness``)."""

from __future__ import annotations

import argparse
import time

import torch

from nnbound.bounds.methods import ALL_METHODS
from nnbound.cli.common import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    load_inputs,
    load_model_arg,
    note,
    print_json,
)
from nnbound.errors import UnsupportedError
from nnbound.report.provenance import provenance
from nnbound.sets.norms import norm_name, parse_norm
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
    g.add_argument("--jacbndalg", default="disable", help="disable (Jacobian bounds: not yet)")
    g.add_argument("--eps", type=float, default=0.005, help="binary-search start (default 0.005)")
    g.add_argument("--steps", type=int, default=15, help="binary-search evaluations (default 15)")
    g.add_argument(
        "--targettype",
        default="least",
        help="least | runnerup | random | untargeted | <class> (default least)",
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


def run(args: argparse.Namespace) -> int:
    if args.jacbndalg != "disable":
        raise UnsupportedError(
            f"--jacbndalg {args.jacbndalg}: Jacobian-based certification is not implemented yet; "
            "use --jacbndalg disable"
        )
    net = load_model_arg(args)
    p = parse_norm(args.norm)
    inputs = load_inputs(args, net, all_rows=args.input is None)
    with torch.no_grad():
        logits = net(inputs.x).cpu()
    sel = select_targets(
        logits, inputs.labels, args.targettype, num_images=args.numimage, start=0, seed=args.seed
    )
    domain = net.input_range if args.bounded_input else None
    x = inputs.x[sel.indices.to(inputs.x.device)]
    note(
        args,
        f"{len(sel.indices)} correctly classified images from {inputs.source}; "
        f"L{norm_name(p)}, {args.layerbndalg}, start eps {args.eps:g}, {args.steps} steps; "
        f"input clipping to the data range: {'on' if domain else 'off'}",
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

    if args.warmup and len(sel.indices):
        certify(0, 1)
    radii, times = [], []
    for lo in range(0, len(sel.indices), max(1, args.batch_size)):
        hi = min(lo + args.batch_size, len(sel.indices))
        t0 = time.perf_counter()
        with torch.no_grad():
            r = certify(lo, hi)
        dt = (time.perf_counter() - t0) / (hi - lo)
        radii.extend(r.tolist())
        times.extend([dt] * (hi - lo))
    margins = []
    for i in range(len(sel.indices)):
        lg, y, t = sel.logits[i], int(sel.labels[i]), int(sel.targets[i])
        other = lg.clone()
        other[y] = -float("inf")
        margins.append(float(lg[y] - (other.max() if t == UNTARGETED else lg[t])))
    records = [
        {
            "index": int(inputs.indices[sel.indices[i]]),
            "label": int(sel.labels[i]),
            "target": "untargeted" if int(sel.targets[i]) == UNTARGETED else int(sel.targets[i]),
            "radius": radii[i],
            "margin": margins[i],
            "time_s": times[i],
        }
        for i in range(len(sel.indices))
    ]
    avg = sum(radii) / len(radii) if radii else 0.0
    if args.json:
        print_json(
            {
                "model": args.model,
                "method": args.layerbndalg,
                "norm": norm_name(p),
                "targettype": args.targettype,
                "eps_start": args.eps,
                "steps": args.steps,
                "bounded_input": bool(args.bounded_input),
                "images": records,
                "avg_radius": avg,
                "numimage": len(records),
                "provenance": provenance(device=net.device, dtype=net.dtype, seed=args.seed),
            }
        )
        return 0
    for r in records:
        print(
            f"[L1] id = {r['index']}, true_label = {r['label']}, target_label = {r['target']}, "
            f"robustness_lb = {r['radius']:.5f}, margin = {r['margin']:.5f}, "
            f"time = {r['time_s']:.4f} s"
        )
    print(f"[L0] model = {args.model}, avg robustness_lb = {avg:.5f}, numimage = {len(records)}")
    return 0
