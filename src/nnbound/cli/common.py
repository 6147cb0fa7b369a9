"""Options and helpers shared by the subcommands (model, data, device, output)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.network import Network

DEFAULT_RANGE_IF_UNKNOWN = (0.0, 1.0)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    g.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="computation dtype (default float32; radii are re-certified in float64)",
    )
    g.add_argument("--seed", type=int, default=1228, help="random seed (reference default 1228)")
    g.add_argument("--json", action="store_true", help="print a JSON record on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress or notes on stderr")


def add_model_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    p.add_argument(
        "model",
        nargs="?" if optional else None,
        help="model file (.onnx, .safetensors, .h5, .pt TorchScript, .pt2) "
        "or a built-in model name (see `nnbound info --list`)",
    )
    p.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="data domain of the model's inputs, if the model file does not store it",
    )


def add_data_args(p: argparse.ArgumentParser, numimage: int = 10) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument(
        "--dataset",
        default="auto",
        help="auto | digits | mnist | cifar | mnist100 | cifar100 (auto: by input size)",
    )
    g.add_argument("--data-dir", default=None, help="folder with MNIST IDX / CIFAR-10 batch files")
    g.add_argument("--numimage", type=int, default=numimage, help="number of images")
    g.add_argument("--startimage", type=int, default=0, help="first image index")
    g.add_argument(
        "--input", default=None, help="inputs from a .npy/.npz file instead of a dataset"
    )
    g.add_argument("--labels", default=None, help="labels .npy for --input (default: predictions)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def note(args: argparse.Namespace, message: str) -> None:
    """A line for the user on stderr (data stays alone on stdout)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def load_model_arg(args: argparse.Namespace) -> Network:
    from pathlib import Path

    from nnbound.catalogue import is_catalogue_name
    from nnbound.network.load import load_model

    if is_catalogue_name(args.model) and not Path(args.model).exists():
        raise UnsupportedError(
            f"{args.model} is a catalogue ImageNet architecture (residual / concatenating "
            "graph, outside the sequential IR): only `nnbound clever` and `nnbound evaluate` "
            "take it (CLEVER and attacks; see `nnbound models`)"
        )
    net = load_model(args.model)
    if args.input_range is not None:
        net = replace(net, input_range=tuple(args.input_range))
    elif net.input_range is None:
        note(
            args,
            f"note: {args.model} stores no input range; assuming {DEFAULT_RANGE_IF_UNKNOWN} "
            "(set --input-range LO HI)",
        )
        net = replace(net, input_range=DEFAULT_RANGE_IF_UNKNOWN)
    device = resolve_device(getattr(args, "device", "cpu"))
    dtype = resolve_dtype(getattr(args, "dtype", "float32"))
    return net.to(device=device, dtype=dtype)


def auto_dataset(net: Network, data_dir: str | None) -> str:
    n = net.num_inputs
    if n == 64:
        return "digits"
    if n == 784:
        return "mnist" if data_dir else "mnist100"
    if n == 3072:
        return "cifar" if data_dir else "cifar100"
    raise InputError(
        f"no dataset matches a model with {n} inputs; pass --input X.npy (and --labels Y.npy)"
    )


@dataclass(frozen=True)
class Inputs:
    """Inputs to evaluate: ``x`` ``(N, *input_shape)``, ``labels`` ``(N,)``, their indices in
    the source and the source's name."""

    x: Tensor
    labels: Tensor
    indices: Tensor
    source: str


def load_inputs(args: argparse.Namespace, net: Network, *, all_rows: bool = False) -> Inputs:
    """The inputs selected by ``--input/--labels`` or ``--dataset/--startimage/--numimage``.

    With ``all_rows`` the dataset is returned from ``--startimage`` on without truncation (the
    caller selects correctly classified images itself)."""
    if args.input:
        from nnbound.cli.validate import check_batch_not_empty
        from nnbound.data.arrays import load_array

        arr = load_array(args.input)
        warn_unusual_input(args, np.asarray(arr), net.input_range)
        x = net.check_input(torch.from_numpy(np.ascontiguousarray(arr)).to(net.dtype))
        check_batch_not_empty(x.shape[0], args.input)
        if args.labels:
            labels = torch.from_numpy(np.asarray(load_array(args.labels))).reshape(-1).long()
            if labels.shape[0] != x.shape[0]:
                raise InputError(
                    f"{args.labels} holds {labels.shape[0]} labels for {x.shape[0]} inputs"
                )
        else:
            with torch.no_grad():
                labels = net(x).argmax(1).cpu()
        idx = torch.arange(x.shape[0])
        return Inputs(x, labels.to(torch.long), idx, args.input)
    from nnbound.data.registry import load_dataset

    name = args.dataset if args.dataset != "auto" else auto_dataset(net, args.data_dir)
    assert net.input_range is not None
    ds = load_dataset(name, split="test", input_range=net.input_range, data_dir=args.data_dir)
    if math.prod(ds.images.shape[1:]) != net.num_inputs:
        raise InputError(
            f"dataset {name} has inputs of shape {tuple(ds.images.shape[1:])}, the model expects "
            f"{net.input_shape}"
        )
    if args.startimage < 0 or args.startimage >= len(ds.labels):
        raise InputError(
            f"--startimage {args.startimage} outside the {len(ds.labels)} images of {name}"
        )
    stop = len(ds.labels) if all_rows else min(len(ds.labels), args.startimage + args.numimage)
    x = net.check_input(ds.images[args.startimage : stop])
    return Inputs(x, ds.labels[args.startimage : stop], torch.arange(args.startimage, stop), name)


def warn_unusual_input(
    args: argparse.Namespace, arr: np.ndarray, input_range: tuple[float, float] | None
) -> None:
    """A warning (not an error: the user may mean it) for an integer array or values outside
    the model's data range -- typically 0..255 pixels given to a [0, 1] model, whose every
    result would silently be about a different input."""
    if arr.dtype.kind in "iub":
        note(
            args,
            f"warning: {args.input} holds integers ({arr.dtype}); they are used as floats "
            "unchanged (pixels 0..255 need scaling to the model's data range)",
        )
    if input_range is None or arr.size == 0 or arr.dtype.kind not in "iubf":
        return
    lo, hi = float(arr.min()), float(arr.max())
    r_lo, r_hi = input_range
    slack = 1e-3 * (r_hi - r_lo)
    if lo < r_lo - slack or hi > r_hi + slack:
        note(
            args,
            f"warning: {args.input} has values in [{lo:g}, {hi:g}], outside the model's data "
            f"range [{r_lo:g}, {r_hi:g}]; eps and the results refer to these values as given",
        )


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, allow_nan=True)
    sys.stdout.write("\n")
