"""Local Lipschitz constants of the predicted logit over balls of growing radius (the
reference's ``--task lipschitz``), from RecurJac or Fast-Lip Jacobian bounds.

The eps grid is ``linspace(0, --eps, --lipsteps + 1)``, or ``[0] + logspace(--liplogstart,
--liplogend, --lipsteps)`` when those differ. The eps = 0 value is the gradient's dual norm at
the input (checked with autograd); once every ReLU is unstable the curve saturates at a global
Lipschitz constant, compared with the operator-norm product ``opnorm_global_lipschitz``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from nnbound.bounds.methods import LAYERWISE_METHODS
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
from nnbound.errors import InputError, UnsupportedError
from nnbound.jacobian.alpha_jacobian import JacobianAlpha
from nnbound.jacobian.api import JACOBIAN_METHODS, sequential_network
from nnbound.report.atomic import atomic_path
from nnbound.report.provenance import provenance
from nnbound.sets.norms import norm_name, parse_norm

if TYPE_CHECKING:
    from nnbound.bounds.spectral import SpectralFactors

HELP = "local Lipschitz constants over growing eps (RecurJac / Fast-Lip)"


def add_jacobian_args(g: argparse._ArgumentGroup, *, default: str | None = "recurjac") -> None:
    """``--jacbndalg --lipsdir --lipsshift --lipsteps`` (the reference's flags)."""
    choices = (*JACOBIAN_METHODS, "disable") if default == "disable" else JACOBIAN_METHODS
    g.add_argument(
        "--jacbndalg",
        default=default,
        choices=choices,
        help=f"Jacobian bound algorithm (default {default})",
    )
    g.add_argument(
        "--lipsdir",
        type=int,
        default=-1,
        choices=(-1, 1),
        help="RecurJac order: -1 backward (default), +1 forward",
    )
    g.add_argument(
        "--lipsshift",
        type=int,
        default=1,
        choices=(0, 1),
        help="forward RecurJac starts at the first hidden layer (default 1, as the reference; "
        "only used with --lipsdir 1)",
    )
    g.add_argument(
        "--lipsteps",
        type=int,
        default=15,
        help="eps values (lipschitz, landscape) or integration pieces (robustness); default 15",
    )


def add_common_task_args(p: argparse.ArgumentParser, *, eps_help: str) -> argparse._ArgumentGroup:
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("Jacobian bounds (reference flag names)")
    g.add_argument("--norm", default="i", help="1 | 2 | i (inf)")
    g.add_argument(
        "--layerbndalg",
        default="crown-general",
        choices=LAYERWISE_METHODS,
        help="layer-wise method of the pre-activation bounds (default crown-general)",
    )
    add_jacobian_args(g)
    g.add_argument(
        "--jacalpha",
        type=int,
        default=0,
        metavar="STEPS",
        help="crown-jacobian only: optimise its relaxations by this many projected Adam steps "
        "(alpha-CROWN style; default 0 = off)",
    )
    g.add_argument("--eps", type=float, default=0.005, help=eps_help)
    g.add_argument(
        "--targettype",
        default="least",
        help="a class number: only images of that class; anything else (least, runnerup, "
        "random, untargeted): every correctly classified image (the logit bounded is always "
        "the label's)",
    )
    g.add_argument("--batch-size", type=int, default=10, help="images bounded together")
    add_runtime_args(p)
    add_stream_args(p)
    return g


def configure(p: argparse.ArgumentParser) -> None:
    g = add_common_task_args(p, eps_help="largest eps of the linear grid (default 0.005)")
    g.add_argument("--liplogstart", type=float, default=0.0, help="log10 of the first eps")
    g.add_argument("--liplogend", type=float, default=0.0, help="log10 of the last eps")
    g.add_argument("--plot", default=None, metavar="PNG", help="plot the curve (matplotlib)")


def selected_inputs(args: argparse.Namespace, net: Any) -> tuple[torch.Tensor, Any, Any]:
    """``(x, choice, inputs)``: the images a Jacobian task runs on."""
    from nnbound.tasks.lipschitz import select_images

    inputs = load_inputs(args, net, all_rows=args.input is None)
    with torch.no_grad():
        logits = net(inputs.x).cpu()
    choice = select_images(
        logits, inputs.labels, args.targettype, num_images=args.numimage, seed=args.seed
    )
    if not len(choice.rows):
        raise InputError(
            f"no correctly classified image selected from {inputs.source} "
            f"(--targettype {args.targettype}, --startimage {args.startimage})"
        )
    return inputs.x[choice.rows.to(inputs.x.device)], choice, inputs


def check_common(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.numimage < 1:
        raise InputError(f"--numimage must be >= 1, got {args.numimage}")


def _pyplot() -> Any:
    """matplotlib's pyplot on a file backend; a clear error when matplotlib is missing (it is
    an optional dependency: the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnsupportedError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'nnbound[plot]')"
        ) from None
    return plt


def plot_curve(path: str, grid: torch.Tensor, values: torch.Tensor, title: str) -> None:
    """Save the average curve to ``path`` (log-log; eps = 0 as a dotted horizontal line)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    pos = grid > 0
    ax.plot(grid[pos].numpy(), values[pos].numpy(), marker="o", label="local (Jacobian bounds)")
    if bool((grid == 0).any()):
        ax.axhline(float(values[0]), color="gray", ls=":", label="eps = 0 (gradient norm)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eps")
    ax.set_ylabel("avg Lipschitz constant")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    except OSError as exc:
        raise InputError(f"cannot write the plot to {path}: {exc}") from None
    finally:
        plt.close(fig)


def jacobian_alpha(args: argparse.Namespace) -> JacobianAlpha:
    """``--jacalpha`` parsed (refused with any method but crown-jacobian)."""
    alpha = JacobianAlpha(args.jacalpha)
    if alpha.enabled and args.jacbndalg != "crown-jacobian":
        raise InputError("--jacalpha applies to --jacbndalg crown-jacobian only")
    return alpha


def run(args: argparse.Namespace) -> int:
    from nnbound.tasks.lipschitz import eps_grid, lipschitz_curve, opnorm_factors, saturation_index

    check_common(args)
    if args.plot:
        _pyplot()  # fail before the work, not after it
    p = parse_norm(args.norm)
    alpha = jacobian_alpha(args)
    grid = eps_grid(args.eps, args.lipsteps, args.liplogstart, args.liplogend)
    net = sequential_network(load_model_arg(args))
    x, choice, inputs = selected_inputs(args, net)
    short = shortfall(args, len(choice.rows), inputs.source)
    note(
        args,
        f"{len(choice.rows)} images from {inputs.source}; L{norm_name(p)}, {args.jacbndalg} on "
        f"{args.layerbndalg} bounds, lipsdir {args.lipsdir}, lipsshift {args.lipsshift}; "
        f"{len(grid)} eps values up to {float(grid[-1]):g}",
    )
    idx = inputs.indices[choice.rows]
    rtol = 1e-3 if net.dtype == torch.float32 else 1e-8
    stream = ResultStream(args, x.shape[0], name="lipschitz")
    images: list[dict[str, Any]] = []
    opnorm: SpectralFactors | None = None
    try:
        for lo, hi in growing_spans(x.shape[0], args.batch_size):
            t0 = time.perf_counter()
            # the operator-norm baseline's factors, once per network (in the first batch's time)
            opnorm = opnorm or opnorm_factors(net, p)
            c = lipschitz_curve(
                net,
                x[lo:hi],
                choice.classes[lo:hi],
                grid,
                norm=p,
                method=args.jacbndalg,
                layer_method=args.layerbndalg,
                direction=args.lipsdir,
                shift=args.lipsshift,
                alpha=alpha,
                opnorm=opnorm,
            )
            dt = (time.perf_counter() - t0) / (hi - lo)
            shown, matches = c.monotone(), c.eps_zero_matches(rtol)
            for k, i in enumerate(range(lo, hi)):
                rec = {
                    "index": int(idx[i]),
                    "label": int(choice.classes[i]),
                    "eps": grid.tolist(),
                    "lipschitz": shown[k].tolist(),
                    "lipschitz_raw": c.values[k].tolist(),
                    "unsure": c.unsure[k].tolist(),
                    "global_bound": c.global_bound[k].tolist(),
                    "grad_norm": float(c.grad_norm[k]),
                    "eps0_matches_gradient": bool(matches[k]),
                    "opnorm_global_lipschitz": float(c.opnorm[k]),
                    "time_s": dt,
                }
                images.append(rec)
                stream.emit(rec, _line(rec))
            stream.advance(hi - lo)
    except KeyboardInterrupt:
        stream.interrupted = True
    finally:
        stream.close()
    if not all(r["eps0_matches_gradient"] for r in images):
        note(args, "warning: the eps = 0 Lipschitz constant differs from the gradient norm")
    saturation = None
    avg = torch.zeros(len(grid), dtype=torch.float64)
    opnorm = math.nan
    if images:
        avg = torch.tensor([r["lipschitz"] for r in images], dtype=torch.float64).mean(0)
        opnorm = sum(r["opnorm_global_lipschitz"] for r in images) / len(images)
        glob = torch.tensor([r["global_bound"] for r in images])
        sat = saturation_index(avg)
        if sat is not None:
            saturation = {
                "eps": float(grid[sat]),
                "avg_lipschitz": float(avg[sat]),
                "global": bool(glob[:, sat:].all()),
            }
        if args.plot:
            plot_curve(args.plot, grid, avg, f"{args.model}: L{norm_name(p)}, {args.jacbndalg}")
    if not stream.text:
        stream.summary(
            {
                "model": args.model,
                "method": args.jacbndalg,
                "layer_method": args.layerbndalg,
                "norm": norm_name(p),
                "lipsdir": args.lipsdir,
                "lipsshift": args.lipsshift,
                "jacalpha": args.jacalpha,
                "targettype": args.targettype,
                "eps": grid.tolist(),
                "images": images,
                "avg_lipschitz": avg.tolist(),
                "saturation": saturation,
                "opnorm_global_lipschitz": opnorm,
                "numimage": len(images),
                **short,
                "interrupted": stream.interrupted,
                "provenance": provenance(device=net.device, dtype=net.dtype, seed=args.seed),
            }
        )
        return stream.exit_code
    if saturation is None:
        print(f"[L1] not saturated: avg_lipschitz still grows at eps = {float(grid[-1]):.5f}")
    else:
        why = (
            "every neuron unstable: a global Lipschitz bound"
            if saturation["global"]
            else f"constant to rel. {1e-6:g}"
        )
        print(
            f"[L1] saturated: avg_lipschitz = {saturation['avg_lipschitz']:.5f} for eps >= "
            f"{saturation['eps']:.5f} ({why})"
        )
    curve = ", ".join(
        f"avg_lipschitz[{float(e):.5f}] = {float(v):.5f}" for e, v in zip(grid, avg, strict=True)
    )
    print(
        f"[L0] model = {args.model}, numimage = {len(images)}, {curve}, "
        f"opnorm_global_lipschitz = {opnorm:.4f}" + (", interrupted" if stream.interrupted else "")
    )
    return stream.exit_code


def _line(r: dict[str, Any]) -> str:
    """The per-image ``[L1]`` line: the reported (monotone) constants."""
    curve = ", ".join(
        f"lipschitz[{float(e):.5f}] = {float(v):.5f}"
        for e, v in zip(r["eps"], r["lipschitz"], strict=True)
    )
    return (
        f"[L1] id = {r['index']}, label = {r['label']}, grad_norm = {r['grad_norm']:.5f}, "
        f"{curve}, time = {r['time_s']:.4f} s"
    )
