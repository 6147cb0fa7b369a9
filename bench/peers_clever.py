"""CLEVER speed against IBM ART's ``clever_t``, at the same number of sampled gradients.

For each model (``mnist-cnn-small``, ``mnist-fc-3layer``) and each of the first correctly
classified built-in MNIST test images, one targeted estimate against the runner-up class, L2,
radius R = 2 (pixels in [0, 1]), samples clipped to the data range, score capped at R:

* ART: ``clever_t(classifier, x, target, nb_batches, batch_size, radius=R, norm=2,
  pool_factor=P)`` computes ``P * batch_size`` sampled gradients (each with two
  ``class_gradient`` calls, in chunks of P samples) and bootstraps its ``nb_batches`` maxima
  from that pool;
* nnbound: ``Clever(nsamp=batch_size, niters=P, sampling="ball", cap_at_radius=True)``: the
  same ``P * batch_size`` sampled gradients, uniform in the same ball, one batch maximum per
  ``batch_size`` samples, fitted by the reference's regularised Weibull fit.

Both columns are wall-clock seconds per (image, target) including the fit, with the same
thread count; the ratio is ART / nnbound (above 1: nnbound is faster). The estimates are
printed side by side: they agree in distribution, not to the digit (different samples, and
ART's fit returns about the pool maximum where the reference's extrapolates past it).

Usage: python bench/peers_clever.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from art_peer import art_classifier

from nnbound.clever import Clever
from nnbound.data.registry import load_dataset
from nnbound.network import to_torch
from nnbound.network.load import load_model
from nnbound.report.tables import render_table

MODELS = ("mnist-cnn-small", "mnist-fc-3layer")
RADIUS = 2.0
HEADER = [
    "model",
    "gradients (pool x batch)",
    "images",
    "ART s/(img,tgt)",
    "nnbound s/(img,tgt)",
    "ART / nnbound",
    "ART score",
    "nnbound score",
]


def _images(net: object, count: int) -> list[tuple[torch.Tensor, int, int]]:
    """``(x, class, runner-up)`` of the first ``count`` correctly classified test images."""
    data = load_dataset("mnist100", split="test", input_range=net.input_range)
    with torch.no_grad():
        logits = net(data.images)
    out = []
    for i in range(data.images.shape[0]):
        order = logits[i].argsort(descending=True)
        if int(order[0]) == int(data.labels[i]):
            out.append((data.images[i], int(order[0]), int(order[1])))
        if len(out) == count:
            break
    return out


def _time_art(clf: object, x: np.ndarray, target: int, n_b: int, n_s: int, pool: int) -> tuple:
    from art.metrics import clever_t

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(0)
        t0 = time.perf_counter()
        score = clever_t(clf, x, target, n_b, n_s, RADIUS, norm=2, pool_factor=pool)
        return time.perf_counter() - t0, float(score)


def _time_nnbound(net: object, x: torch.Tensor, target: int, n_s: int, pool: int) -> tuple:
    est = Clever(
        nsamp=n_s,
        niters=pool,
        sampling="ball",
        radius=RADIUS,
        cap_at_radius=True,
        norms=[2],
        batch_size=n_s,
        seed=0,
    )
    t0 = time.perf_counter()
    res = est(net, x, targets=[target])
    return time.perf_counter() - t0, float(res.scores["2"])


def section(
    reference_code: Path | None, threads: int, quick: bool
) -> tuple[str, list[str], list[list[object]]]:
    """The bench's table: ``(title, header, rows)`` (``reference_code`` is unused: ART is
    imported from the running interpreter, its column skipped without it)."""
    del reference_code
    torch.set_num_threads(threads)
    # (ART nb_batches, batch size, pool factor, images): ART's default pool factor, and a
    # pool as large as the reference's sample count per target (100 x 256)
    configs = [(50, 128, 10, 1)] if quick else [(100, 256, 10, 3), (100, 256, 100, 1)]
    rows: list[list[object]] = []
    for name in MODELS:
        net = load_model(name)
        model = to_torch(net).eval()
        clf = art_classifier(model, tuple(net.input_shape), net.num_outputs, net.input_range)
        images = _images(net, max(c[3] for c in configs))
        # warm-up: first calls pay one-off costs (allocator, scipy imports)
        _time_nnbound(net, images[0][0], images[0][2], 64, 2)
        for n_b, n_s, pool, count in configs:
            art_s, ours_s, art_sc, ours_sc = [], [], [], []
            for x, _, target in images[:count]:
                dt, sc = _time_nnbound(net, x, target, n_s, pool)
                ours_s.append(dt)
                ours_sc.append(sc)
                if clf is not None:
                    dt, sc = _time_art(clf, x.numpy(), target, n_b, n_s, pool)
                    art_s.append(dt)
                    art_sc.append(sc)
            ours = float(np.mean(ours_s))
            art = float(np.mean(art_s)) if art_s else float("nan")
            rows.append(
                [
                    name,
                    f"{pool} x {n_s}",
                    count,
                    f"{art:.3f}" if art_s else "-",
                    f"{ours:.3f}",
                    f"{art / ours:.1f}x" if art_s else "-",
                    " ".join(f"{s:.4f}" for s in art_sc) or "-",
                    " ".join(f"{s:.4f}" for s in ours_sc),
                ]
            )
    title = (
        f"CLEVER vs ART clever_t, same sampled gradients per (image, target) (L2, R = "
        f"{RADIUS}, runner-up target; ART bootstraps nb_batches = 100 (50 --quick) maxima "
        f"from its pool, nnbound fits one maximum per batch; {threads} thread(s))"
    )
    return title, HEADER, rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one image, fewer samples")
    args = ap.parse_args()
    title, header, rows = section(None, args.threads, args.quick)
    print(title)
    print(render_table(header, rows))


if __name__ == "__main__":
    main()
