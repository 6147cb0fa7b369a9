"""Train an MLP (or a small CNN) like the reference's ``train_nlayer.py``: hidden layer sizes
as positional arguments, e.g. ``nnbound train 20 20 --activation leaky --leaky-slope 0.3``.

``--recipe NAME`` trains one of the CLEVER reference's models instead (``2-layer``, ``normal``,
``distilled``, ``brelu``, ``nlayer``; see ``nnbound.train.recipes``); the positional numbers
are then the recipe's widths, e.g. ``nnbound train --recipe nlayer --activation tanh 32 32 64
64 200 200``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from nnbound.cli.common import note, print_json, resolve_device

if TYPE_CHECKING:
    import torch

HELP = "train an MLP or CNN (train_nlayer.py's flags)"


def configure(p: argparse.ArgumentParser) -> None:
    from nnbound.network.layers import activation_names

    p.add_argument(
        "hidden",
        type=int,
        nargs="*",
        help="hidden layer sizes (default 64); with --recipe, the recipe's widths",
    )
    p.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="train a model of the CLEVER reference's catalogue: 2-layer | normal | distilled "
        "| brelu | nlayer",
    )
    p.add_argument("--arch", choices=("mlp", "cnn"), default="mlp")
    p.add_argument(
        "--conv-channels",
        type=int,
        nargs="+",
        default=[16, 32],
        help="channels of each conv stage (--arch cnn)",
    )
    p.add_argument(
        "--activation",
        default=None,
        help=f"{' | '.join(activation_names())} (also leaky, atan; default relu)",
    )
    p.add_argument("--leaky-slope", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (0.01 for --optimizer sgd)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=None, help="default 30 (recipes: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (recipes: 64)")
    recipe = p.add_argument_group("recipe options (with --recipe)")
    recipe.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="adam, or the reference's sgd (momentum 0.9, Nesterov)",
    )
    recipe.add_argument(
        "--temperature", type=float, default=100.0, help="distillation temperature (distilled)"
    )
    recipe.add_argument("--dropout", type=float, default=0.5, help="after the first dense layer")
    recipe.add_argument(
        "--padding",
        choices=("auto", "valid", "same"),
        default="auto",
        help="conv padding: the reference's valid convs where they fit (>= 16x16), else same",
    )
    recipe.add_argument(
        "--train-limit", type=int, default=None, help="train on the first N images only"
    )
    p.add_argument("--dataset", default="digits", help="digits | mnist | cifar (default digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        default=(-0.5, 0.5),
        metavar=("LO", "HI"),
        help="pixel range the model is trained on (default -0.5 0.5, the references')",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help="output file: .safetensors (nnbound format) or .onnx (default: "
        "<dataset>_<arch>_<activation>_<sizes>.safetensors)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu | cuda[:N] | auto (default cpu; the model is saved the same)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from nnbound.data.registry import load_dataset
    from nnbound.network.load import save_model
    from nnbound.report.provenance import provenance
    from nnbound.train.train import TrainConfig, network_name, train_network

    device = resolve_device(args.device)
    if args.recipe is not None:
        return _run_recipe(args, device)
    config = TrainConfig(
        hidden=tuple(args.hidden) if args.hidden else (64,),
        arch=args.arch,
        activation=args.activation or "relu",
        leaky_slope=args.leaky_slope,
        lr=args.lr if args.lr is not None else 1e-3,
        weight_decay=args.weight_decay,
        epochs=args.epochs if args.epochs is not None else 30,
        batch_size=args.batch_size if args.batch_size is not None else 128,
        seed=args.seed,
        conv_channels=tuple(args.conv_channels),
    )
    rng = tuple(args.input_range)
    train = load_dataset(args.dataset, split="train", input_range=rng, data_dir=args.data_dir)
    test = load_dataset(args.dataset, split="test", input_range=rng, data_dir=args.data_dir)
    note(
        args,
        f"training {config.arch} {list(config.hidden)} ({config.activation}) on "
        f"{train.name}: {len(train.labels)} train / {len(test.labels)} test images",
    )
    net, report = train_network(train, test, config, progress=not args.quiet, device=device)
    out = Path(args.out) if args.out else Path(f"{network_name(train.name, config)}.safetensors")
    save_model(net, out)
    if args.json:
        print_json(
            {
                "model": str(out),
                "test_accuracy": report.test_accuracy,
                "train_accuracy": report.train_accuracy,
                "seconds": report.seconds,
                "epoch_losses": list(report.epoch_losses),
                "provenance": provenance(device=device, dtype=net.dtype, seed=args.seed),
            }
        )
    else:
        print(f"saved {out}")
        print(
            f"train accuracy {report.train_accuracy * 100:.2f}%, "
            f"test accuracy {report.test_accuracy * 100:.2f}% ({report.seconds:.1f} s on {device})"
        )
    return 0


def _run_recipe(args: argparse.Namespace, device: torch.device) -> int:
    """``--recipe NAME``: train one of the reference's models and save it."""
    from nnbound.data.registry import load_dataset
    from nnbound.errors import InputError
    from nnbound.network.load import save_model
    from nnbound.report.provenance import provenance
    from nnbound.train.recipes import RecipeOptions, get_recipe, train_recipe

    recipe = get_recipe(args.recipe)  # unknown names: a clear error listing the recipes
    if args.arch != "mlp" or args.weight_decay != 0.0:
        raise InputError("--arch and --weight-decay do not apply to --recipe")
    defaults = RecipeOptions()
    options = RecipeOptions(
        epochs=args.epochs if args.epochs is not None else defaults.epochs,
        batch_size=args.batch_size if args.batch_size is not None else defaults.batch_size,
        lr=args.lr,
        seed=args.seed,
        optimizer=args.optimizer,
        widths=tuple(args.hidden) if args.hidden else None,
        activation=args.activation,
        leaky_slope=args.leaky_slope,
        temperature=args.temperature,
        dropout=args.dropout,
        padding=args.padding,
        train_limit=args.train_limit,
        device=device,
    )
    rng = tuple(args.input_range)
    train = load_dataset(args.dataset, split="train", input_range=rng, data_dir=args.data_dir)
    test = load_dataset(args.dataset, split="test", input_range=rng, data_dir=args.data_dir)
    note(
        args,
        f"training recipe {recipe.name} ({recipe.description}) on {train.name}: "
        f"{len(train.labels)} train / {len(test.labels)} test images",
    )
    result = train_recipe(recipe.name, train, test, options)
    out = Path(args.out) if args.out else Path(f"{result.network.name}.safetensors")
    save_model(result.network, out)
    builtin = {"mnist": "mnist100", "cifar": "cifar100"}.get(train.name)
    if builtin is not None:  # the 100 built-in test images, as the other commands use them
        from nnbound.train.recipes import accuracy

        images = load_dataset(builtin, input_range=rng)
        result.extra[f"{builtin}_accuracy"] = accuracy(
            result.network, images.images.to(result.network.dtype), images.labels
        )
    if args.json:
        print_json(
            {
                "model": str(out),
                "recipe": recipe.name,
                "test_accuracy": result.test_accuracy,
                "train_accuracy": result.train_accuracy,
                "seconds": result.seconds,
                **result.extra,
                "provenance": provenance(device=device, dtype=result.network.dtype, seed=args.seed),
            }
        )
    else:
        print(f"saved {out}")
        print(
            f"train accuracy {result.train_accuracy * 100:.2f}%, "
            f"test accuracy {result.test_accuracy * 100:.2f}% ({result.seconds:.1f} s on {device})"
        )
        for key, value in result.extra.items():
            print(f"{key.replace('_', ' ')} {value:.4g}")
    return 0
