"""R_max: the largest radius within which some entry of the Jacobian of the predicted logit
has a certain sign, so the ball holds no stationary point (the reference's ``--task
landscape``), found by binary search from ``--eps``; then the local Lipschitz constants at
``linspace(0, R_max, --lipsteps + 1)``."""

from __future__ import annotations

import argparse
import time

import torch

from nnbound.cli.cmd_lipschitz import add_common_task_args, check_common, selected_inputs
from nnbound.cli.common import load_model_arg, note, print_json
from nnbound.errors import InputError
from nnbound.jacobian.api import sequential_network
from nnbound.report.provenance import provenance
from nnbound.sets.norms import norm_name, parse_norm

HELP = "largest radius without stationary points (R_max) and its Lipschitz constant"


def configure(p: argparse.ArgumentParser) -> None:
    add_common_task_args(p, eps_help="binary-search start (default 0.005)")


def run(args: argparse.Namespace) -> int:
    from nnbound.tasks.landscape import UPPER_LIMITS, landscape

    check_common(args)
    if not args.eps > 0:
        raise InputError(f"the initial eps must be > 0, got {args.eps}")
    if args.lipsteps < 1:
        raise InputError(f"--lipsteps must be >= 1, got {args.lipsteps}")
    p = parse_norm(args.norm)
    net = sequential_network(load_model_arg(args))
    x, choice, inputs = selected_inputs(args, net)
    note(
        args,
        f"{len(choice.rows)} images from {inputs.source}; L{norm_name(p)}, {args.jacbndalg} on "
        f"{args.layerbndalg} bounds; binary search from {args.eps:g}, upper limit "
        f"{UPPER_LIMITS[p]:g}",
    )
    radii, curves, times = [], [], []
    for lo in range(0, x.shape[0], args.batch_size):
        hi = min(lo + args.batch_size, x.shape[0])
        t0 = time.perf_counter()
        r, c = landscape(
            net,
            x[lo:hi],
            choice.classes[lo:hi],
            norm=p,
            method=args.jacbndalg,
            layer_method=args.layerbndalg,
            direction=args.lipsdir,
            shift=args.lipsshift,
            eps0=args.eps,
            lipsteps=args.lipsteps,
        )
        radii.append(r)
        curves.append(c)
        times += [(time.perf_counter() - t0) / (hi - lo)] * (hi - lo)
    r_max = torch.cat(radii)
    cat = lambda name: torch.cat([getattr(c, name) for c in curves])  # noqa: E731
    eps, values, unsure, grad, opnorm = (
        cat("eps"),
        cat("values"),
        cat("unsure"),
        cat("grad_norm"),
        cat("opnorm"),
    )
    rtol = 1e-3 if net.dtype == torch.float32 else 1e-8
    if not all(bool(c.eps_zero_matches(rtol).all()) for c in curves):
        note(args, "warning: the eps = 0 Lipschitz constant differs from the gradient norm")
    idx = inputs.indices[choice.rows]
    avg_r, avg_l, avg_o = float(r_max.mean()), float(values[:, -1].mean()), float(opnorm.mean())
    if args.json:
        images = [
            {
                "index": int(idx[i]),
                "label": int(choice.classes[i]),
                "max_eps": float(r_max[i]),
                "eps": eps[i].tolist(),
                "lipschitz": values[i].tolist(),
                "unsure": unsure[i].tolist(),
                "lipschitz_max": float(values[i, -1]),
                "grad_norm": float(grad[i]),
                "opnorm_global_lipschitz": float(opnorm[i]),
                "time_s": times[i],
            }
            for i in range(len(idx))
        ]
        print_json(
            {
                "model": args.model,
                "method": args.jacbndalg,
                "layer_method": args.layerbndalg,
                "norm": norm_name(p),
                "lipsdir": args.lipsdir,
                "lipsshift": args.lipsshift,
                "targettype": args.targettype,
                "eps_start": args.eps,
                "upper_limit": UPPER_LIMITS[p],
                "images": images,
                "avg_max_eps": avg_r,
                "avg_lipschitz_max": avg_l,
                "opnorm_global_lipschitz": avg_o,
                "numimage": len(images),
                "provenance": provenance(device=net.device, dtype=net.dtype, seed=args.seed),
            }
        )
        return 0
    for i in range(len(idx)):
        print(
            f"[L1] id = {int(idx[i])}, label = {int(choice.classes[i])}, max_eps = "
            f"{float(r_max[i]):.5f}, lipschitz_max = {float(values[i, -1]):.5f}, unsure = "
            f"{int(unsure[i, -1])}/{net.num_inputs}, grad_norm = {float(grad[i]):.5f}, "
            f"time = {times[i]:.4f} s"
        )
    print(
        f"[L0] model = {args.model}, numimage = {len(idx)}, avg_max_eps = {avg_r:.5f}, "
        f"avg_lipschitz_max = {avg_l:.4f}, opnorm_global_lipschitz = {avg_o:.4f}"
    )
    return 0
