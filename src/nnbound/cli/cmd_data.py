"""Datasets: ``nnbound data export DATASET --count N --out X.npy`` writes images for the
commands that take ``--input`` (``predict``, ``bounds``, ``robustness``, ...).

The pixel range is the model's with ``--model M`` (so the file fits it: eps is measured in that
range), else ``--input-range LO HI`` (default 0 1). With ``--model`` the dataset may be left out
and is chosen by the model's input size, as the other commands do."""

from __future__ import annotations

import argparse

from nnbound.cli.common import auto_dataset, load_model_arg, note
from nnbound.data.registry import DATASETS
from nnbound.tasks.data_export import export_images

HELP = "export dataset images to a .npy file (for --input)"


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    e = sub.add_parser(
        "export", help="write images (and labels) to .npy files", description=__doc__
    )
    e.add_argument(
        "dataset",
        nargs="?",
        default="auto",
        help=f"{' | '.join(DATASETS)} (default: by --model's input size)",
    )
    e.add_argument("--count", type=int, default=4, help="number of images (default 4)")
    e.add_argument("--start", type=int, default=0, help="first image index (default 0)")
    e.add_argument("--out", required=True, help="the .npy file of the images")
    e.add_argument("--labels-out", default=None, help="also write the labels to this .npy")
    e.add_argument("--data-dir", default=None, help="folder with MNIST / CIFAR-10 files")
    rng = e.add_mutually_exclusive_group()
    rng.add_argument("--model", default=None, help="scale pixels to this model's data range")
    rng.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="pixel range (default 0 1)",
    )
    e.add_argument("--quiet", action="store_true", help="no note on stderr")
    e.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    input_range = tuple(args.input_range) if args.input_range else (0.0, 1.0)
    dataset = args.dataset
    if args.model is not None:
        model_args = argparse.Namespace(
            model=args.model, input_range=None, device="cpu", dtype="float32", quiet=args.quiet
        )
        net = load_model_arg(model_args)
        assert net.input_range is not None
        input_range = net.input_range
        if dataset == "auto":
            dataset = auto_dataset(net, args.data_dir)
    elif dataset == "auto":
        from nnbound.errors import InputError

        raise InputError("name a DATASET (or give --model to choose one by its input size)")
    done = export_images(
        dataset,
        args.out,
        count=args.count,
        start=args.start,
        input_range=(float(input_range[0]), float(input_range[1])),
        data_dir=args.data_dir,
        labels_out=args.labels_out,
    )
    if done.count < args.count:
        note(args, f"note: {dataset} ends at image {done.start + done.count - 1}")
    note(
        args,
        f"wrote {done.count} images {done.shape} of {dataset} (from {done.start}), pixels in "
        f"[{done.input_range[0]:g}, {done.input_range[1]:g}], to {done.path}"
        + (f"; labels to {done.labels}" if done.labels else ""),
    )
    return 0
