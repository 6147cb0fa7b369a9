"""Certified bounds of the logits (or of margins) of inputs over an Lp ball."""

from __future__ import annotations

import argparse

import torch

from nnbound.bounds.methods import ALL_METHODS
from nnbound.cli.common import (
    add_model_args,
    add_runtime_args,
    load_inputs,
    load_model_arg,
    note,
    print_json,
)
from nnbound.errors import InputError
from nnbound.report.provenance import provenance
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import norm_name, parse_norm
from nnbound.sets.spec import all_margins_spec, margin_spec, other_classes
from nnbound.tasks.batch_bounds import chunked_bounds

HELP = "certified output bounds over an Lp ball"


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--input", required=True, help=".npy/.npz with one input or a batch")
    p.add_argument("--eps", type=float, required=True, help="radius, in the model's input space")
    p.add_argument("--norm", default="i", help="1 | 2 | i (inf)")
    p.add_argument("--method", default="crown", choices=ALL_METHODS)
    p.add_argument(
        "--label",
        default=None,
        help="class (or comma list, one per input) whose margins to bound; "
        "default: the predicted class when --target is given",
    )
    p.add_argument("--target", default=None, help="target class, or 'all' (every other class)")
    p.add_argument(
        "--bounded-input",
        action="store_true",
        help="intersect the ball with the model's input range (off by default)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="reproduce the reference's layer-wise bounds exactly (looser)",
    )
    add_runtime_args(p)


def _labels(args: argparse.Namespace, n: int, predicted: torch.Tensor) -> torch.Tensor:
    if args.label is None:
        return predicted
    try:
        vals = [int(v) for v in str(args.label).split(",")]
    except ValueError:
        raise InputError(
            f"--label must be an integer or a comma list, got {args.label!r}"
        ) from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise InputError(f"--label gives {len(vals)} labels for {n} inputs")
    return torch.tensor(vals, dtype=torch.long)


def run(args: argparse.Namespace) -> int:
    net = load_model_arg(args)
    args.labels = None
    inputs = load_inputs(args, net)
    x = inputs.x
    p = parse_norm(args.norm)
    domain = net.input_range if args.bounded_input else None
    ball = LpBall.make(x, args.eps, p, domain)
    classes = net.num_outputs
    with torch.no_grad():
        predicted = net(x).argmax(1).cpu()
    # rows[i][j]: what output j of input i is (a logit, or "label - target" of a margin).
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None  # (N, outputs) target class of each margin row
    if args.target is None:
        if args.label is not None:
            raise InputError("--label needs --target (a class or 'all')")
        spec = None
    else:
        labels = _labels(args, x.shape[0], predicted)
        if args.target == "all":
            spec = all_margins_spec(labels, classes, net.dtype)
            targets = other_classes(labels, classes)
        else:
            try:
                t = int(args.target)
            except ValueError:
                raise InputError(
                    f"--target must be a class or 'all', got {args.target!r}"
                ) from None
            if not 0 <= t < classes:
                raise InputError(f"--target {t} outside the model's classes [0, {classes})")
            spec = margin_spec(labels, torch.full_like(labels, t), classes, net.dtype)
            targets = torch.full((x.shape[0], 1), t, dtype=torch.long)
        spec = spec.to(net.device)
    with torch.no_grad():
        b = chunked_bounds(net, ball, args.method, spec, reference=args.reference)
    lower, upper = b.lower.cpu(), b.upper.cpu()
    if not bool(torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        # an overflow (eps far beyond the data range): no bound to report, and JSON has no inf
        raise InputError(
            f"--eps {args.eps:g} is too large: the {args.method} bounds overflow "
            f"{str(net.dtype).removeprefix('torch.')} (inf); use a smaller eps"
        )
    if args.json:
        print_json(
            {
                "method": args.method,
                "norm": norm_name(p),
                "eps": args.eps,
                "bounded_input": bool(args.bounded_input),
                "lower": lower.tolist(),
                "upper": upper.tolist(),
                # what each number is: per input, its prediction, the label the margins are
                # taken from and the target class of each margin (or the logit's class)
                "inputs": [
                    _input_record(i, predicted, labels, targets, classes) for i in range(x.shape[0])
                ],
                "provenance": provenance(device=net.device, dtype=net.dtype, seed=args.seed),
            }
        )
        return 0
    note(
        args,
        f"{args.method} bounds, L{norm_name(p)} ball eps={args.eps:g}, "
        f"input clipping to the data range: {'on' if domain else 'off'}",
    )
    for i in range(x.shape[0]):
        rec = _input_record(i, predicted, labels, targets, classes)
        if labels is None:
            names = [f"logit {j}" for j in rec["classes"]]
            print(f"input {i} (predicted {rec['predicted']})")
        else:
            names = [f"margin {rec['label']} - {t}" for t in rec["targets"]]
            print(f"input {i} (predicted {rec['predicted']}, label {rec['label']})")
        rows = [
            [c, float(lo), float(hi)] for c, lo, hi in zip(names, lower[i], upper[i], strict=True)
        ]
        print(render_table(["output", "lower", "upper"], rows))
    return 0


def _input_record(
    i: int,
    predicted: torch.Tensor,
    labels: torch.Tensor | None,
    targets: torch.Tensor | None,
    classes: int,
) -> dict[str, object]:
    """Input ``i``'s labels: ``classes`` (logit j of row j) without a target; else the label
    and, per row, the target of the margin ``logit[label] - logit[target]``."""
    rec: dict[str, object] = {"input": i, "predicted": int(predicted[i])}
    if labels is None or targets is None:
        rec["classes"] = list(range(classes))
    else:
        rec["label"] = int(labels[i])
        rec["targets"] = [int(t) for t in targets[i]]
    return rec
