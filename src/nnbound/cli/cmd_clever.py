"""CLEVER: estimated robustness by extreme value theory (the reference's collect_gradients.py
followed by clever.py). Not a certificate: an estimate of the minimal adversarial distortion.

For each correctly classified image among --numimage from --startimage (misclassified ones are
skipped, as the reference) and each target (--targettype, default least,top2,random as the
reference), --niters batches of --nsamp gradient samples are drawn around the image; the
batch maxima of ||grad g||_q are fitted by a reverse Weibull and the score is g(x0) / L.
The human output ends with the reference's [STATS][L0] lines (mean over images per target
type). Two-step flow: --save-samples FILE.npz, then `nnbound clever --from-samples FILE.npz`.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

from nnbound.cli.catalogue_args import (
    add_catalogue_args,
    load_catalogue_inputs,
    load_catalogue_model,
    wants_catalogue,
)
from nnbound.cli.common import (
    add_data_args,
    add_runtime_args,
    load_inputs,
    load_model_arg,
    note,
)
from nnbound.cli.memory_args import first_input, gradient_batch
from nnbound.cli.shortfall import shortfall
from nnbound.cli.stream import ResultStream, add_stream_args
from nnbound.errors import InputError

HELP = "CLEVER robustness estimate (extreme value theory on sampled gradient norms)"

_LABEL = {"1": "L1", "2": "L2", "inf": "Li"}


def configure(p: argparse.ArgumentParser) -> None:
    # The model is optional here: --from-samples needs none.
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="model file (.onnx, .safetensors, .h5, .pt TorchScript, .pt2), a built-in model "
        "name (see `nnbound info --list`) or a catalogue architecture such as resnet50 (see "
        "`nnbound models`); not needed with --from-samples",
    )
    p.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="data domain of the model's inputs, if the model file does not store it",
    )
    add_data_args(p)
    add_catalogue_args(p)
    g = p.add_argument_group("CLEVER (reference defaults)")
    g.add_argument(
        "--targettype",
        default="least,top2,random",
        help="least | top2 | random | untargeted | <class>, several separated by commas "
        "(default least,top2,random as the reference)",
    )
    g.add_argument("-N", "--nsamp", type=int, default=1024, help="samples per batch (1024)")
    g.add_argument("-i", "--niters", type=int, default=500, help="batches = maxima fitted (500)")
    g.add_argument(
        "--sample-norm",
        default="2",
        help="1 | 2 | inf: the sampling ball of --sampling reference (default 2, for all scores)",
    )
    g.add_argument(
        "--sampling",
        default="reference",
        choices=("reference", "ball"),
        help="reference: the reference's ball with a random radial scale, one for all three "
        "scores; ball: uniform in the radius-R ball of each score's norm (paper / ART)",
    )
    g.add_argument(
        "--radius",
        type=float,
        default=None,
        help="R for every norm (default: the reference's L2 3, L1 30, Linf 0.1 times the "
        "width of the input range)",
    )
    g.add_argument(
        "--norms",
        default="1,2,inf",
        help="scores to compute, comma separated (default 1,2,inf; fewer saves fits, and "
        "samples with --sampling ball)",
    )
    g.add_argument("--cap", action="store_true", help="report min(score, R) (the paper's cap)")
    g.add_argument("--order", type=int, default=1, choices=(1, 2), help="1 or 2 (2nd-order, L2)")
    g.add_argument(
        "--transform",
        default="none",
        help="none | reduce | jpeg | png: preprocessing evaluated with BPDA",
    )
    g.add_argument(
        "--method",
        default="mle_reg",
        choices=("mle_reg", "mle", "maxsamp"),
        help="Weibull fit (default mle_reg, as the reference)",
    )
    g.add_argument("--shape-reg", type=float, default=0.01, help="fit penalty (0.01)")
    g.add_argument(
        "--share-samples",
        action="store_true",
        help="all targets of an image share each batch's samples (faster; not the reference)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per forward/backward pass (default 1024, or fewer: what fits in half the "
        "free memory)",
    )
    g.add_argument("--save-samples", default=None, metavar="FILE.npz", help="write the maxima")
    g.add_argument(
        "--from-samples",
        default=None,
        metavar="FILE.npz",
        help="fit the maxima of a --save-samples file instead of sampling",
    )
    add_runtime_args(p)
    add_stream_args(p)
    for action in p._actions:
        if action.dest == "seed":
            action.default = 1215
            action.help = "random seed (reference default 1215); image i samples with seed + i"


def _progress_bar(args: argparse.Namespace, total: int) -> Any:
    from tqdm import tqdm

    show = not args.quiet and sys.stderr.isatty()
    return tqdm(
        total=total, desc="clever", unit="batch", file=sys.stderr, disable=not show, leave=False
    )


def run(args: argparse.Namespace) -> int:
    from nnbound.clever.estimator import Clever
    from nnbound.clever.io import SampleRecord, load_samples, save_samples

    fit_settings = {
        "method": args.method,
        "shape_reg": args.shape_reg,
        "cap_at_radius": bool(args.cap),
        "norms": [v.strip() for v in args.norms.split(",") if v.strip()],
    }
    if args.from_samples:
        records, model_name = load_samples(args.from_samples)
        # --cap uses the radii recorded in the file (those the samples were drawn with)
        est = Clever(**fit_settings)
        note(args, f"{len(records)} records from {args.from_samples} ({model_name})")
        stream = ResultStream(args, len(records), name="clever", unit="jobs")
        images = []
        for r in records:
            res = est.evaluate(r.samples)
            rec = _image_record(r.index, r.kind, res)
            images.append(rec)
            stream.emit(rec, "\n".join(_debug_lines(r.index, r.kind, res, rec)))
        settings = dict(records[0].samples.settings)
        args.targettype = ",".join(dict.fromkeys(r.kind for r in records))
        _summary(args, stream, images, model_name or str(args.from_samples), settings, skipped=[])
        return 0
    if args.model is None:
        raise InputError("give a MODEL (or --from-samples FILE.npz)")
    from nnbound.clever.targets import parse_target_kinds, select_jobs

    kinds = parse_target_kinds(args.targettype)
    catalogue = wants_catalogue(args)
    if catalogue:
        # an ImageNet architecture (nn.Module on [0, 1] pixels); rows already selected
        net = load_catalogue_model(args)
        inputs = load_catalogue_inputs(args, net)
    else:
        net = load_model_arg(args)
        inputs = load_inputs(args, net)
    if args.input and not catalogue:
        # load_inputs returns every row of a --input file; CLEVER scans --numimage rows from
        # --startimage there too, as for a dataset.
        n = len(inputs.labels)
        if not 0 <= args.startimage < n:
            raise InputError(f"--startimage {args.startimage} outside the {n} inputs")
        rows = slice(args.startimage, min(n, args.startimage + args.numimage))
        inputs = type(inputs)(
            inputs.x[rows], inputs.labels[rows], inputs.indices[rows], inputs.source
        )
    import torch

    with torch.no_grad():
        logits = net(inputs.x).cpu()
    jobs, skipped = select_jobs(logits, inputs.labels, kinds, seed=args.seed)
    # The reference's 1024 rows of a 224 px ResNet-50 need ~100 GB: the default must fit.
    args.batch_size = gradient_batch(
        args,
        net,
        first_input(inputs.x),
        requested=args.batch_size,
        default=1024,
        option="--batch-size",
        factor=3.0 if args.order == 2 else 1.0,
    )
    est = Clever(
        args.nsamp,
        args.niters,
        sample_norm=args.sample_norm,
        sampling=args.sampling,
        radius=args.radius,
        order=args.order,
        transform=args.transform,
        seed=args.seed,
        batch_size=args.batch_size,
        share_samples=bool(args.share_samples),
        input_range=net.input_range,
        **fit_settings,
    )
    est.validate()  # bad settings fail before any sampling
    streams = len(est.norm_keys()) if args.sampling == "ball" and args.order == 1 else 1
    total = sum(len(j.targets) for j in jobs) * args.niters * streams
    note(
        args,
        f"{len({j.row for j in jobs})} correctly classified of {len(inputs.labels)} images from "
        f"{inputs.source} ({len(skipped)} skipped); {len(jobs)} (image, target) jobs, "
        f"{args.nsamp} samples x {args.niters} batches, sampling {args.sampling} "
        f"L{args.sample_norm}, order {args.order}, transform {args.transform}",
    )
    records: list[SampleRecord] = []
    images: list[dict[str, Any]] = []
    stream = ResultStream(args, len(jobs), name="clever", unit="jobs")
    bar = _progress_bar(args, total)
    if not bar.disable:
        stream.show_progress = False  # the terminal has tqdm's finer bar already
    try:
        for job in jobs:
            index = int(inputs.indices[job.row])
            est.set_params(seed=args.seed + index)
            samples = est.collect(
                net, inputs.x[job.row], job.label, list(job.targets), progress=bar.update
            )
            records.append(SampleRecord(index, job.kind, samples))
            res = est.evaluate(samples)
            rec = _image_record(index, job.kind, res)
            images.append(rec)
            bar.clear()
            stream.emit(rec, "\n".join(_debug_lines(index, job.kind, res, rec)))
            stream.advance()
    except KeyboardInterrupt:
        stream.interrupted = True
    finally:
        bar.close()
        stream.close()
    if args.save_samples and records:
        save_samples(args.save_samples, records, model=str(args.model))
        note(args, f"samples written to {args.save_samples}")
    settings = dict(records[0].samples.settings) if records else {}
    extra: dict[str, Any] = {"weights": net.weights} if catalogue else {}
    extra.update(shortfall(args, len({j.row for j in jobs}) + len(skipped), inputs.source))
    if catalogue and net.random_weights:
        extra["random_weights"] = True
    _summary(
        args,
        stream,
        images,
        str(args.model),
        settings,
        skipped=[int(inputs.indices[r]) for r in skipped],
        extra=extra,
    )
    return stream.exit_code


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _image_record(index: int, kind: str, res: Any) -> dict[str, Any]:
    """One (image, target kind) result as its JSON record."""
    from nnbound.clever.sampling import NORM_KEYS

    untargeted = kind == "untargeted"
    rec: dict[str, Any] = {
        "index": index,
        "label": res.label,
        "target": "untargeted" if untargeted else res.per_target[0].target,
        "kind": kind,
        "scores": {k: _num(res.scores[k]) for k in NORM_KEYS},
        "fits": {
            k: res.target(res.argmin[k]).fits[k].as_dict()
            for k in NORM_KEYS
            if res.argmin[k] >= 0 and k in res.target(res.argmin[k]).fits
        },
        "g_x0": (min(t.g_x0 for t in res.per_target) if untargeted else res.per_target[0].g_x0),
        "time_s": res.seconds,
    }
    if untargeted:
        rec["argmin"] = dict(res.argmin)
        rec["per_target"] = [
            {
                "target": t.target,
                "g_x0": t.g_x0,
                "scores": {k: _num(t.scores[k]) for k in NORM_KEYS},
                "fits": {k: f.as_dict() for k, f in t.fits.items()},
            }
            for t in res.per_target
        ]
    return rec


def _debug_lines(index: int, kind: str, res: Any, rec: dict[str, Any]) -> list[str]:
    """The reference's ``[DEBUG][L1]`` lines of one result: one per target and norm, then
    the scores."""
    from nnbound.clever.sampling import NORM_KEYS

    lines = []
    for t in res.per_target:
        for k in NORM_KEYS:
            if k not in t.fits:
                continue
            f = t.fits[k]
            lines.append(
                f"[DEBUG][L1] id = {index}, true_label = {res.label}, "
                f"target_label = {t.target}, info = {kind}, norm = {_LABEL[k]}, "
                f"bnd = {t.scores[k]:.5g}, ks = {f.ks:.4f}, pVal = {f.p_value:.4g}, "
                f"shape = {f.shape:.4g}, loc = {f.loc:.5g}, scale = {f.scale:.4g}, "
                f"fallback = {f.fallback}, g_x0 = {t.g_x0:.5g}"
            )
    lines.append(
        f"[DEBUG][L1] id = {index}, true_label = {res.label}, target_label = "
        f"{rec['target']}, info = {kind}, "
        + ", ".join(f"clever_{_LABEL[k]} = {res.scores[k]:.5g}" for k in NORM_KEYS)
        + f", time = {res.seconds:.2f} s"
    )
    return lines


def _summary(
    args: argparse.Namespace,
    stream: ResultStream,
    images: list[dict[str, Any]],
    model: str,
    settings: Any,
    *,
    skipped: list[int],
    extra: dict[str, Any] | None = None,
) -> None:
    """The averages per target kind: the ``[STATS][L0]`` lines or the final record."""
    from nnbound.clever.sampling import NORM_KEYS

    kinds = list(dict.fromkeys(r["kind"] for r in images))
    avg = {
        kind: {
            k: _num(
                float(
                    np.mean(
                        [
                            r["scores"][k] if r["scores"][k] is not None else math.nan
                            for r in images
                            if r["kind"] == kind
                        ]
                    )
                )
            )
            for k in NORM_KEYS
        }
        for kind in kinds
    }
    extra = extra or {}
    if not stream.text:
        from nnbound.report.provenance import provenance

        stream.summary(
            {
                "model": model,
                "targettype": args.targettype,
                "settings": dict(settings),
                "fit": {"method": args.method, "shape_reg": args.shape_reg, "cap": bool(args.cap)},
                "images": images,
                "avg": avg,
                "numimage": len({r["index"] for r in images}),
                "skipped": skipped,
                "interrupted": stream.interrupted,
                **extra,
                "provenance": provenance(
                    device=settings.get("device", "cpu"),
                    dtype=_dtype_of(settings.get("dtype", "float32")),
                    seed=settings.get("seed"),
                ),
            }
        )
        return
    # Random catalogue weights make every score meaningless: say so on the lines people copy.
    random_note = ", weights = RANDOM (scores meaningless)" if extra.get("random_weights") else ""
    for kind in kinds:
        a = avg[kind]
        print(
            f"[STATS][L0] info = {kind}, "
            + ", ".join(
                f"{kind}_clever_{_LABEL[k]} = {(a[k] if a[k] is not None else math.nan):.5g}"
                for k in NORM_KEYS
            )
            + random_note
            + (", interrupted" if stream.interrupted else "")
        )
    if not images:
        print("[STATS][L0] no correctly classified image: nothing to report")


def _dtype_of(name: str) -> Any:
    import torch

    return getattr(torch, str(name), torch.float32)
