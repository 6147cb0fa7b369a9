"""Train an MLP (or a small CNN) like the reference's ``train_nlayer.py``: hidden layer sizes
as positional arguments, e.g. ``nnbound train 20 20 --activation leaky --leaky-slope 0.3``."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnbound.cli.common import note, print_json

HELP = "train an MLP or CNN (train_nlayer.py's flags)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("hidden", type=int, nargs="*", default=[64], help="hidden layer sizes")
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
        default="relu",
        help="relu | leaky | tanh | sigmoid | arctan | softplus | elu",
    )
    p.add_argument("--leaky-slope", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
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
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from nnbound.data.registry import load_dataset
    from nnbound.network.load import save_model
    from nnbound.train.train import TrainConfig, network_name, train_network

    config = TrainConfig(
        hidden=tuple(args.hidden),
        arch=args.arch,
        activation=args.activation,
        leaky_slope=args.leaky_slope,
        lr=args.lr,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        batch_size=args.batch_size,
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
    net, report = train_network(train, test, config, progress=not args.quiet)
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
            }
        )
    else:
        print(f"saved {out}")
        print(
            f"train accuracy {report.train_accuracy * 100:.2f}%, "
            f"test accuracy {report.test_accuracy * 100:.2f}% ({report.seconds:.1f} s)"
        )
    return 0
