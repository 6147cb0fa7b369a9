"""R_max: the largest radius within which some entry of the Jacobian of the predicted logit
has a certain sign, so the ball holds no stationary point (the reference's ``--task
landscape``), found by binary search from ``--eps``; then the local Lipschitz constants at
``linspace(0, R_max, --lipsteps + 1)``."""

from __future__ import annotations

import argparse
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from nnbound.cli.cmd_lipschitz import (
    add_common_task_args,
    check_common,
    jacobian_alpha,
    selected_inputs,
)
from nnbound.cli.common import load_model_arg, note
from nnbound.cli.shortfall import shortfall
from nnbound.cli.stream import ResultStream, growing_spans
from nnbound.errors import InputError
from nnbound.jacobian.api import sequential_network
from nnbound.report.provenance import provenance
from nnbound.sets.norms import norm_name, parse_norm

if TYPE_CHECKING:
    from nnbound.bounds.spectral import SpectralFactors

HELP = "largest radius without stationary points (R_max) and its Lipschitz constant"


def configure(p: argparse.ArgumentParser) -> None:
    add_common_task_args(p, eps_help="binary-search start (default 0.005)")


def run(args: argparse.Namespace) -> int:
    from nnbound.tasks.landscape import UPPER_LIMITS, landscape
    from nnbound.tasks.lipschitz import opnorm_factors

    check_common(args)
    alpha = jacobian_alpha(args)
    if not args.eps > 0:
        raise InputError(f"the initial eps must be > 0, got {args.eps}")
    if args.lipsteps < 1:
        raise InputError(f"--lipsteps must be >= 1, got {args.lipsteps}")
    p = parse_norm(args.norm)
    net = sequential_network(load_model_arg(args))
    x, choice, inputs = selected_inputs(args, net)
    short = shortfall(args, len(choice.rows), inputs.source)
    note(
        args,
        f"{len(choice.rows)} images from {inputs.source}; L{norm_name(p)}, {args.jacbndalg} on "
        f"{args.layerbndalg} bounds; binary search from {args.eps:g}, upper limit "
        f"{UPPER_LIMITS[p]:g}",
    )
    idx = inputs.indices[choice.rows]
    rtol = 1e-3 if net.dtype == torch.float32 else 1e-8
    stream = ResultStream(args, x.shape[0], name="landscape")
    images: list[dict[str, Any]] = []
    opnorm: SpectralFactors | None = None
    try:
        for lo, hi in growing_spans(x.shape[0], args.batch_size):
            t0 = time.perf_counter()
            # the operator-norm baseline's factors, once per network (in the first batch's time)
            opnorm = opnorm or opnorm_factors(net, p)
            r_max, c = landscape(
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
                alpha=alpha,
                opnorm=opnorm,
            )
            dt = (time.perf_counter() - t0) / (hi - lo)
            shown, matches = c.monotone(), c.eps_zero_matches(rtol)
            for k, i in enumerate(range(lo, hi)):
                rec = {
                    "index": int(idx[i]),
                    "label": int(choice.classes[i]),
                    "max_eps": float(r_max[k]),
                    "eps": c.eps[k].tolist(),
                    "lipschitz": shown[k].tolist(),
                    "lipschitz_raw": c.values[k].tolist(),
                    "unsure": c.unsure[k].tolist(),
                    # a global bound holds on the R_max ball too: the smaller is reported
                    "lipschitz_max": float(shown[k, -1]),
                    "lipschitz_max_local": float(c.values[k, -1]),
                    "grad_norm": float(c.grad_norm[k]),
                    "eps0_matches_gradient": bool(matches[k]),
                    "opnorm_global_lipschitz": float(c.opnorm[k]),
                    "time_s": dt,
                }
                images.append(rec)
                stream.emit(rec, _line(rec, net.num_inputs))
            stream.advance(hi - lo)
    except KeyboardInterrupt:
        stream.interrupted = True
    finally:
        stream.close()
    if not all(r["eps0_matches_gradient"] for r in images):
        note(args, "warning: the eps = 0 Lipschitz constant differs from the gradient norm")
    mean = lambda key: (  # noqa: E731
        sum(r[key] for r in images) / len(images) if images else math.nan
    )
    avg_r, avg_l, avg_o = mean("max_eps"), mean("lipschitz_max"), mean("opnorm_global_lipschitz")
    if not stream.text:
        stream.summary(
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
                **short,
                "interrupted": stream.interrupted,
                "provenance": provenance(device=net.device, dtype=net.dtype, seed=args.seed),
            }
        )
        return stream.exit_code
    print(
        f"[L0] model = {args.model}, numimage = {len(images)}, avg_max_eps = {avg_r:.5f}, "
        f"avg_lipschitz_max = {avg_l:.4f}, opnorm_global_lipschitz = {avg_o:.4f}"
        + (", interrupted" if stream.interrupted else "")
    )
    return stream.exit_code


def _line(r: dict[str, Any], num_inputs: int) -> str:
    return (
        f"[L1] id = {r['index']}, label = {r['label']}, max_eps = {r['max_eps']:.5f}, "
        f"lipschitz_max = {r['lipschitz_max']:.5f}, unsure = {int(r['unsure'][-1])}/"
        f"{num_inputs}, grad_norm = {r['grad_norm']:.5f}, time = {r['time_s']:.4f} s"
    )
