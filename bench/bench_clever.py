"""CLEVER speed: nnbound vs IBM ART (``art.metrics.clever_u``), same model and image, one run.

Model: a small CNN trained here on scikit-learn's 8x8 digits (conv 8 -> 16 channels, dense 32,
ReLU, inputs in [-0.5, 0.5] as the references). One correctly classified test image,
untargeted CLEVER (9 target classes), the three scores L1, L2, Linf.

Rows:

* ``nnbound reference``: the reference's defaults, 1024 samples x 500 batches per target, one
  L2 sampling ball (radial scale U[0, 3]) feeding all three scores: 9 x 512,000 gradients.
* ``nnbound shared``: the same, with all 9 targets sharing each batch's samples (one forward,
  nine backward passes).
* ``nnbound ball, ART budget``: uniform in the radius-R ball of each score's own norm, with
  ART's number of gradients (10 x 1024 per target and norm), capped at R: like for like with ART.
* ``ART``: ``clever_u(classifier, x, nb_batches, batch_size=1024, radius=R, norm)`` once per
  norm, ``pool_factor`` 10 (its default): 10,240 sampled gradients per target and norm, each
  from two ``class_gradient`` calls; its 500 "batches" are bootstrap draws from that pool.

R per norm = the reference's radii (L1 30, L2 3, Linf 0.1). Timing is wall clock per image
including the Weibull fits (27 for nnbound: 9 targets x 3 norms, 7 starts each; 27 for ART).

Usage: python bench/bench_clever.py [--nsamp 1024] [--niters 500] [--art-niters 500]
       [--threads 2] [--skip-shared]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings

import numpy as np
import torch
from art_peer import art_classifier

from nnbound.clever import Clever
from nnbound.data.registry import load_dataset
from nnbound.network import to_torch
from nnbound.report.tables import render_table
from nnbound.train.train import TrainConfig, train_network

RADII = {"1": 30.0, "2": 3.0, "inf": 0.1}
ART_NORM = {"1": 1, "2": 2, "inf": np.inf}


def run_art(
    model: torch.nn.Module, x: np.ndarray, nb_batches: int, batch_size: int, seed: int
) -> tuple[dict[str, float], float] | None:
    clf = art_classifier(model, x.shape, 10, (-0.5, 0.5))
    if clf is None:
        return None
    from art.metrics import clever_u

    scores = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in ("1", "2", "inf"):
            np.random.seed(seed)
            scores[key] = float(
                clever_u(
                    clf,
                    x,
                    nb_batches=nb_batches,
                    batch_size=batch_size,
                    radius=RADII[key],
                    norm=ART_NORM[key],
                    verbose=False,
                )
            )
    return scores, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nsamp", type=int, default=1024)
    ap.add_argument("--niters", type=int, default=500)
    ap.add_argument("--art-niters", type=int, default=500, help="ART nb_batches")
    ap.add_argument("--art-batch", type=int, default=1024, help="ART batch_size")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--skip-shared", action="store_true")
    ap.add_argument("--seed", type=int, default=1215)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    cfg = TrainConfig(arch="cnn", conv_channels=(8, 16), hidden=(32,), epochs=15, lr=3e-3, seed=0)
    net, rep = train_network(train, test, cfg, progress=False)
    model = to_torch(net).eval()
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    i = int(torch.nonzero(pred == test.labels)[0])
    x = test.images[i]
    print(
        f"model {net.name}: {net.num_parameters} parameters, test accuracy "
        f"{rep.test_accuracy:.3f}; image {i} (class {int(test.labels[i])}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    rows = []

    def ours(name: str, est: Clever, grads: int) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        res = est(net, x, targets="untargeted")
        dt = time.perf_counter() - t0
        rows.append(
            [name, f"{grads:,}", dt, dt / grads * 1e6, *(res.scores[k] for k in ("1", "2", "inf"))]
        )
        fb = sum(f.fallback for t in res.per_target for f in t.fits.values())
        print(f"  {name}: {dt:.1f} s, {fb}/27 fits fell back to the sample maximum", flush=True)
        return dict(res.scores), dt

    n_ref = 9 * args.nsamp * args.niters
    ours("nnbound reference", Clever(args.nsamp, args.niters, seed=args.seed), n_ref)
    if not args.skip_shared:
        ours(
            "nnbound shared",
            Clever(args.nsamp, args.niters, seed=args.seed, share_samples=True),
            n_ref,
        )
    art_grads = 3 * 9 * 10 * args.art_batch
    ours(
        "nnbound ball, ART budget",
        Clever(
            args.art_batch, 10, sampling="ball", radius=RADII, cap_at_radius=True, seed=args.seed
        ),
        art_grads,
    )
    art = run_art(model, x.numpy(), args.art_niters, args.art_batch, seed=0)
    if art is None:
        print("ART is not installed (pip install adversarial-robustness-toolbox): no ART row")
    else:
        scores, dt = art
        label = f"ART clever_u ({args.art_niters} x {args.art_batch}, pool 10)"
        rows.append(
            [
                label,
                f"{art_grads:,}",
                dt,
                dt / art_grads * 1e6,
                *(scores[k] for k in ("1", "2", "inf")),
            ]
        )
        print(f"  ART: {dt:.1f} s", flush=True)
    art_time = rows[-1][2] if art is not None else math.nan
    table = [
        [
            r[0],
            r[1],
            f"{r[2]:.1f}",
            f"{r[3]:.2f}",
            f"{r[2] / art_time:.2f}" if art is not None else "-",
            *(f"{v:.4g}" for v in r[4:]),
        ]
        for r in rows
    ]
    print()
    print(
        render_table(
            [
                "method",
                "gradients",
                "s / image",
                "us / gradient",
                "time vs ART",
                "L1",
                "L2",
                "Linf",
            ],
            table,
        )
    )


if __name__ == "__main__":
    main()
