"""What streaming costs: the certified radii of N images in one batch vs in the growing spans
the CLI uses (one image, then spans at least doubling, grown to about a second of work each,
up to the batch size) so the first result shows after one image's work. Same radii either way
(checked); the table gives CPU time (process time, less disturbed by other load than wall
clock) and the time to the first result.

Usage: python bench/bench_streaming.py [--numimage 40] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch

from nnbound.cli.stream import growing_spans
from nnbound.data.registry import load_dataset
from nnbound.network.load import load_model
from nnbound.report.tables import render_table
from nnbound.tasks.radius import certified_radius


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--numimage", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="mnist-fc-3layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_model(args.model)
    ds = load_dataset("mnist100", input_range=net.input_range or (0.0, 1.0))
    n = args.numimage
    x, y = ds.images[:n], ds.labels[:n]
    t = torch.full((n,), -1, dtype=torch.long)

    def run(spans: Iterable[tuple[int, int]]) -> tuple[float, float, torch.Tensor, int]:
        t0 = time.process_time()
        first, parts = None, []
        for lo, hi in spans:  # lazily: growing_spans sizes a span by the time spent so far
            parts.append(certified_radius(net, x[lo:hi], y[lo:hi], t[lo:hi], norm="inf"))
            first = first if first is not None else time.process_time() - t0
        return time.process_time() - t0, float(first or 0.0), torch.cat(parts), len(parts)

    rows = []
    radii = {}
    for name, schedule in (
        ("one batch", lambda: iter([(0, n)])),
        ("growing spans", lambda: growing_spans(n, n)),
    ):
        best = min((run(schedule()) for _ in range(args.repeats)), key=lambda r: r[0])
        radii[name] = best[2]
        rows.append([name, best[3], best[0], best[1]])
    assert torch.equal(radii["one batch"], radii["growing spans"]), "radii differ"
    print(
        f"{args.model}, {n} images, untargeted Linf, {args.threads} thread(s), best of "
        f"{args.repeats}"
    )
    print(render_table(["schedule", "passes", "CPU s total", "CPU s to first"], rows, digits=3))


if __name__ == "__main__":
    main()
