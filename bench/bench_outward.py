"""Cost of sound float32 bounds: ``bounds()`` of a float32 network computed in float64 and
rounded outward (the default since issue 19) against the float32 pass it replaced, and the
batch-chunked final pass of ``nnbound bounds`` against one call on the whole batch.

Built-in trained models, the first MNIST test images, Linf eps 0.01, all margins of the label.
Peak memory is the process's peak RSS growth during the call (``resource``; Linux reports KiB).

``--memory`` instead runs one CROWN call per batch size in a fresh process (whole batch vs
chunked) and prints each process's peak RSS.

Usage: python bench/bench_outward.py [--images 100] [--methods crown,ibp,alpha-crown]
       python bench/bench_outward.py --memory [--sizes 250,1000,4000]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from nnbound.bounds.api import bounds
from nnbound.data.registry import load_dataset
from nnbound.network.load import load_model
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.spec import all_margins_spec
from nnbound.tasks.batch_bounds import chunked_bounds


def _timed(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


_CHILD = """
import sys, resource, torch
from nnbound.bounds.api import bounds
from nnbound.network.load import load_model
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.batch_bounds import chunked_bounds
torch.set_num_threads(1)
net = load_model("mnist-cnn-small")
n, chunked = int(sys.argv[1]), sys.argv[2] == "chunked"
x = torch.rand(n, *net.input_shape, generator=torch.Generator().manual_seed(0))
ball = LpBall.make(x, 0.01, "inf")
with torch.no_grad():
    b = chunked_bounds(net, ball, "crown") if chunked else bounds(net, ball, "crown")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def memory_table(sizes: list[int]) -> None:
    """Peak RSS (MiB) of one CROWN call on mnist-cnn-small per batch size, each in a fresh
    process: one call on the whole batch against the chunked pass."""
    rows = []
    for n in sizes:
        row: list[object] = [n]
        for mode in ("whole", "chunked"):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(n), mode],
                capture_output=True,
                text=True,
                check=True,
            )
            row += [float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0]
        rows.append(row)
    headers = ["images", "whole MiB", "whole s", "chunked MiB", "chunked s"]
    print(render_table(headers, rows, digits=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--models", default="mnist-fc-3layer,mnist-cnn-small")
    ap.add_argument("--methods", default="crown,ibp,alpha-crown")
    ap.add_argument("--chunk", type=int, default=16, help="rows per chunk of the chunked pass")
    ap.add_argument("--memory", action="store_true", help="peak memory per batch size instead")
    ap.add_argument("--sizes", default="250,1000,4000", help="batch sizes of --memory")
    args = ap.parse_args()
    if args.memory:
        memory_table([int(v) for v in args.sizes.split(",")])
        return
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        net = load_model(name)
        ds = load_dataset("mnist100", input_range=net.input_range)
        x = net.check_input(ds.images[: args.images])
        with torch.no_grad():
            labels = net(x).argmax(1)
        spec = all_margins_spec(labels, net.num_outputs, net.dtype)
        ball = LpBall.make(x, 0.01, "inf")
        for method in args.methods.split(","):
            with torch.no_grad():
                t32, raw = _timed(bounds, net, ball, method, spec, outward=False)
                t64, sound = _timed(bounds, net, ball, method, spec)
                tch, chunked = _timed(
                    chunked_bounds, net, ball, method, spec, rows_per_chunk=args.chunk
                )
            widen = float((raw.lower - sound.lower).max())
            rows.append(
                [
                    name,
                    method,
                    len(labels),
                    t32,
                    t64,
                    t64 / t32,
                    tch,
                    widen,
                    bool(torch.equal(chunked.lower, sound.lower)),
                ]
            )
    print(
        render_table(
            [
                "model",
                "method",
                "images",
                "float32 s",
                "float64+outward s",
                "ratio",
                f"chunked ({args.chunk}) s",
                "max(raw - sound) lower",
                "chunked == whole",
            ],
            rows,
            digits=4,
        )
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
