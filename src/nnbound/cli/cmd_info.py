"""Describe a model: layers, shapes, activations, parameters, data range, accuracy."""

from __future__ import annotations

import argparse

import torch

from nnbound.cli.common import add_model_args, auto_dataset, load_model_arg, note, print_json
from nnbound.errors import InputError, NnboundError
from nnbound.network.network import Network
from nnbound.report.tables import render_table

HELP = "describe a model (layers, shapes, parameters, data range, accuracy)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list the built-in models and exit")
    add_model_args(p, optional=True)
    p.add_argument("--data-dir", default=None, help="folder with MNIST / CIFAR-10 files")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(dtype="float32", device="cpu")


def default_accuracy(net: Network, data_dir: str | None) -> tuple[str, float] | None:
    """Accuracy on the dataset matching the model's input size, if one is available."""
    from nnbound.data.registry import load_dataset

    try:
        name = auto_dataset(net, data_dir)
        assert net.input_range is not None
        ds = load_dataset(name, split="test", input_range=net.input_range, data_dir=data_dir)
    except NnboundError:
        return None
    if net.num_outputs != len(ds.class_names):
        return None
    with torch.no_grad():
        pred = net(net.check_input(ds.images)).argmax(1).cpu()
    return name, float((pred == ds.labels).double().mean())


def run(args: argparse.Namespace) -> int:
    if args.list:
        from nnbound.network.builtin import BUILTIN_MODELS

        for name, desc in BUILTIN_MODELS.items():
            print(f"{name:18s} {desc}")
        return 0
    if args.model is None:
        raise InputError("give a model file or built-in name (or --list)")
    net = load_model_arg(args)
    acc = default_accuracy(net, args.data_dir)
    acts = sorted({a.name for a in net.activations})
    if args.json:
        print_json(
            {
                "name": net.name,
                "input_shape": list(net.input_shape),
                "output_shape": list(net.output_shape),
                "input_range": list(net.input_range) if net.input_range else None,
                "parameters": net.num_parameters,
                "activations": acts,
                "layers": [
                    {"layer": d, "output_shape": list(s), "parameters": n}
                    for d, s, n in net.describe()
                ],
                "meta": dict(net.meta),
                "accuracy": {"dataset": acc[0], "value": acc[1]} if acc else None,
            }
        )
        return 0
    print(f"model       {net.name}")
    print(f"input       shape {net.input_shape}, range {net.input_range}")
    print(f"output      {net.num_outputs} logits")
    print(f"parameters  {net.num_parameters:,}")
    print(f"activations {', '.join(acts) or 'none'}")
    for key, value in net.meta.items():
        print(f"meta        {key} = {value}")
    print()
    print(
        render_table(
            ["#", "layer", "output shape", "parameters"],
            [[i, d, str(s), n] for i, (d, s, n) in enumerate(net.describe())],
        )
    )
    if acc:
        print(f"\naccuracy on {acc[0]} (test): {acc[1] * 100:.2f}%")
    else:
        note(args, "no bundled dataset matches this model's input; accuracy not measured")
    return 0
