"""CLI glue for the catalogue's ImageNet architectures (``nnbound clever`` / ``evaluate``
given a catalogue name such as ``resnet50``): the ``--weights`` / ``--image-size`` options,
building the model, and inputs from an image folder or an array file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from nnbound.catalogue import ImageClassifier, build_model, get_architecture, is_catalogue_name
from nnbound.catalogue.registry import WEIGHTS_URL
from nnbound.cli.common import Inputs, note, resolve_device, resolve_dtype
from nnbound.errors import InputError

CERTIFIED_UNAVAILABLE = (
    "certified bounds are not available for {name}: its residual / concatenating graph is "
    "outside nnbound's sequential network IR (CLEVER and the attacks run on any torch model)"
)


def add_catalogue_args(p: argparse.ArgumentParser) -> None:
    """``--weights``, ``--image-size``, ``--init-seed`` (used with a catalogue model name)."""
    g = p.add_argument_group("catalogue models (ImageNet architectures; see `nnbound models`)")
    g.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="state dict for a catalogue model: .safetensors, or .pth/.pt read with "
        "torch.load(weights_only=True), e.g. torchvision's resnet50-0676ba61.pth "
        "(default: random weights, which make every score meaningless)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="input side N x N (default the architecture's: 224, inception_v3 299); images "
        "are resized to N * 256/224 then center-cropped",
    )
    g.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="seed of the random weights when no --weights is given (0)",
    )


def wants_catalogue(args: argparse.Namespace) -> bool:
    """True when ``args.model`` names a catalogue architecture (and no such file exists)."""
    spec = getattr(args, "model", None)
    return is_catalogue_name(spec) and not Path(str(spec)).exists()


def load_catalogue_model(args: argparse.Namespace) -> ImageClassifier:
    """The catalogue model named by ``args.model`` on ``--device`` in ``--dtype``; with random
    weights a warning goes to stderr (also under ``--quiet``)."""
    if getattr(args, "input_range", None) is not None:
        raise InputError(
            "--input-range does not apply to catalogue models: they take [0, 1] pixels and "
            "normalise them inside"
        )
    model = build_model(
        args.model,
        weights=args.weights,
        seed=args.init_seed,
        image_size=args.image_size,
        device=resolve_device(getattr(args, "device", "cpu")),
        dtype=resolve_dtype(getattr(args, "dtype", "float32")),
    )
    if model.random_weights:
        arch = model.arch
        print(
            f"nnbound: WARNING: {arch.name} has RANDOM weights (seed {args.init_seed}): scores "
            f"are meaningless for a trained model; pass --weights PATH (torchvision's "
            f"{arch.weights_file} from {WEIGHTS_URL}, or a .safetensors of it)",
            file=sys.stderr,
        )
    else:
        note(args, f"{model.name}: weights from {model.weights}")
    return model


def load_catalogue_inputs(args: argparse.Namespace, model: ImageClassifier) -> Inputs:
    """Images ``--startimage .. + --numimage`` from ``--data-dir`` (an image folder, labels
    from ``--labels`` or the folder's ``labels.csv``) or from ``--input`` (an array
    ``(N, 3, H, W)`` in [0, 1], labels ``--labels`` .npy). Without labels the model's
    predictions are used."""
    c, h, w = model.input_shape
    if args.input:
        from nnbound.data.arrays import load_array

        arr = np.asarray(load_array(args.input), dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.shape[1:] != (c, h, w):
            raise InputError(
                f"{args.input}: inputs of shape {arr.shape[1:]}, {model.name} expects "
                f"{(c, h, w)} (set --image-size)"
            )
        x = torch.from_numpy(arr)
        labels = None
        if args.labels:
            labels = torch.from_numpy(np.asarray(load_array(args.labels))).reshape(-1).long()
            if labels.shape[0] != x.shape[0]:
                raise InputError(
                    f"{args.labels} holds {labels.shape[0]} labels for {x.shape[0]} inputs"
                )
        n = x.shape[0]
        if not 0 <= args.startimage < n:
            raise InputError(f"--startimage {args.startimage} outside the {n} inputs")
        rows = slice(args.startimage, min(n, args.startimage + args.numimage))
        x = x[rows]
        labels = None if labels is None else labels[rows]
        indices = torch.arange(n)[rows]
        source = str(args.input)
    elif args.data_dir:
        from nnbound.data.imagenet import load_image_folder

        arch = get_architecture(model.name)
        resize = max(h, round(h * arch.resize / arch.crop))
        folder = load_image_folder(
            args.data_dir,
            crop=h,
            resize=resize,
            labels=args.labels,
            start=args.startimage,
            count=args.numimage,
        )
        x, labels, source = folder.images, folder.labels, folder.source
        indices = torch.arange(args.startimage, args.startimage + x.shape[0])
    else:
        raise InputError(
            f"{model.name} takes ImageNet-style images: pass --data-dir FOLDER (jpg/png files, "
            "labels in FOLDER/labels.csv as 'filename,label') or --input X.npy (N, 3, H, W) "
            "in [0, 1]"
        )
    lo, hi = model.input_range
    if not bool(torch.isfinite(x).all()) or float(x.min()) < lo or float(x.max()) > hi:
        raise InputError(f"{source}: pixels must be finite and lie in [{lo}, {hi}]")
    p = next(iter(model.parameters()))
    x = x.to(device=p.device, dtype=p.dtype)
    if labels is None:
        with torch.no_grad():
            labels = model(x).argmax(1).cpu()
        note(args, f"note: no labels given; using {model.name}'s predictions as labels")
    return Inputs(x, labels.long(), indices, source)


__all__ = [
    "CERTIFIED_UNAVAILABLE",
    "add_catalogue_args",
    "load_catalogue_inputs",
    "load_catalogue_model",
    "wants_catalogue",
]
