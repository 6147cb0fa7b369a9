"""A first look, offline: certify a few real MNIST test images on a real trained network.

By default it loads the built-in ``mnist-fc-3layer`` network (784-128-64-10 ReLU, from the
auto_LiRPA repository) and the first real MNIST test images shipped with nnbound; ``--train``
instead trains a small MLP on scikit-learn's bundled digits in a few seconds. Then it prints,
per image, the certified untargeted radius of every bound method in Linf and L2.
"""

from __future__ import annotations

import argparse
import time

import torch

from nnbound.cli.common import note, print_json, resolve_device
from nnbound.report.provenance import provenance
from nnbound.report.tables import render_table
from nnbound.tasks.radius import certified_radius
from nnbound.tasks.targets import select_targets

HELP = "certify a few real images on a bundled model (no download)"
DEMO_METHODS = ("ibp", "spectral", "fastlin", "crown", "crown-general")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mnist-fc-3layer", help="built-in model name or file")
    p.add_argument(
        "--train",
        action="store_true",
        help="train a digits MLP (64-64-10, ReLU) instead of loading a model",
    )
    p.add_argument("--numimage", type=int, default=5)
    p.add_argument("--norms", default="i,2", help="comma list of norms (default i,2)")
    p.add_argument("--methods", default=",".join(DEMO_METHODS))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")


def _model_and_data(args: argparse.Namespace):
    from nnbound.data.registry import load_dataset

    if args.train:
        from nnbound.train.train import TrainConfig, train_network

        train = load_dataset("digits", split="train")
        test = load_dataset("digits", split="test")
        t0 = time.perf_counter()
        net, report = train_network(
            train, test, TrainConfig(hidden=(64,), epochs=30, seed=0), progress=not args.quiet
        )
        note(
            args,
            f"trained a 64-64-10 ReLU MLP on digits in {time.perf_counter() - t0:.1f} s, "
            f"test accuracy {report.test_accuracy * 100:.1f}%",
        )
        return net, test, "digits MLP (trained now)"
    from nnbound.network.load import load_model

    net = load_model(args.model)
    assert net.input_range is not None
    name = "mnist100" if net.num_inputs == 784 else "cifar100"
    return net, load_dataset(name, input_range=net.input_range), args.model


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    net, data, label = _model_and_data(args)
    net = net.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        logits = net(net.check_input(data.images.to(device))).cpu()
    acc = float((logits.argmax(1) == data.labels).double().mean())
    sel = select_targets(logits, data.labels, "untargeted", num_images=args.numimage)
    x = net.check_input(data.images[sel.indices].to(device))
    labels, targets = sel.labels.to(device), sel.targets.to(device)
    note(
        args,
        f"model {label}: accuracy {acc * 100:.1f}% on {len(data.labels)} {data.name} test "
        f"images; certifying {len(sel.indices)} of them (untargeted, inputs in "
        f"{net.input_range}, no clipping to the data range)",
    )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    results: dict[str, dict[str, list[float]]] = {}
    timing: dict[str, dict[str, float]] = {}
    for norm in norms:
        results[norm], timing[norm] = {}, {}
        for m in methods:
            t0 = time.perf_counter()
            with torch.no_grad():
                r = certified_radius(net, x, labels, targets, norm=norm, method=m, steps=args.steps)
            timing[norm][m] = (time.perf_counter() - t0) / max(1, len(sel.indices))
            results[norm][m] = r.tolist()
    if args.json:
        print_json(
            {
                "model": label,
                "accuracy": acc,
                "images": sel.indices.tolist(),
                "labels": sel.labels.tolist(),
                "radius": results,
                "time_s_per_image": timing,
                "provenance": provenance(device=device, dtype=torch.float32),
            }
        )
        return 0
    for norm in norms:
        print(
            f"\nCertified untargeted radius, L{'inf' if norm in ('i', 'inf') else norm} "
            f"(lower bound on the smallest adversarial perturbation)"
        )
        rows = [
            [int(sel.indices[i]), int(sel.labels[i]), *[results[norm][m][i] for m in methods]]
            for i in range(len(sel.indices))
        ]
        rows.append(["mean", "", *[sum(results[norm][m]) / max(1, len(rows)) for m in methods]])
        rows.append(["s/image", "", *[timing[norm][m] for m in methods]])
        print(render_table(["image", "label", *methods], rows))
    return 0
