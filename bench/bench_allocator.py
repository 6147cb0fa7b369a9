"""What keeping freed memory in the process (``nnbound.allocator.keep_freed_memory``, which the
``nnbound`` command calls at start) does to nnbound's workloads: each runs in fresh processes
with glibc's default allocator settings and with the raised thresholds, alternately, and the
table gives the best wall time of each, their ratio, the same results (checked) and the peak
resident memory.

Usage: python bench/bench_allocator.py [--repeats 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nnbound.report.tables import render_table


def _radius(model: str, count: int, batch: int) -> Callable[[], list[float]]:
    from nnbound.data.registry import load_dataset
    from nnbound.network.load import load_model
    from nnbound.tasks.radius import certified_radius

    net = load_model(model)
    ds = load_dataset("mnist100", input_range=net.input_range or (0.0, 1.0))
    x, y = ds.images[:count], ds.labels[:count]

    def run() -> list[float]:
        out: list[float] = []
        for lo in range(0, count, batch):
            hi = min(lo + batch, count)
            with torch.no_grad():
                r = certified_radius(
                    net, x[lo:hi], y[lo:hi], torch.full((hi - lo,), -1), method="crown-adaptive"
                )
            out.extend(r.tolist())
        return out

    return run


def _lipschitz(hidden: int, depth: int) -> Callable[[], list[float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers_common import random_mlp

    from nnbound.tasks.lipschitz import eps_grid, lipschitz_curve

    net = random_mlp((hidden,) * depth)
    x = torch.rand(1, 784, generator=torch.Generator().manual_seed(0))
    grid = eps_grid(0.02, 12)

    def run() -> list[float]:
        curve = lipschitz_curve(net, x, torch.tensor([0]), grid, method="recurjac")
        return [float(v) for v in curve.values.reshape(-1)]

    return run


WORKLOADS: dict[str, Callable[[], Callable[[], list[float]]]] = {
    "radius mnist-fc-3layer, 99 images, batch 99": lambda: _radius("mnist-fc-3layer", 99, 99),
    "radius mnist-fc-3layer, 20 images, batch 1": lambda: _radius("mnist-fc-3layer", 20, 1),
    "radius mnist-cnn-small, 10 images, batch 10": lambda: _radius("mnist-cnn-small", 10, 10),
    "recurjac sweep 784-[1024]x4-10, 12 radii": lambda: _lipschitz(1024, 4),
}


def child(name: str, keep: bool, threads: int) -> None:
    """One timed run of workload ``name`` in this (fresh) process; prints a JSON line."""
    if keep:
        from nnbound.allocator import keep_freed_memory

        assert keep_freed_memory(), "mallopt refused the thresholds"
    torch.set_num_threads(threads)
    run = WORKLOADS[name]()
    run()  # warm: first-call costs (imports, numba) out of the timing
    t0 = time.perf_counter()
    values = run()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(json.dumps({"seconds": seconds, "values": values, "peak_mib": peak}))


def measure(name: str, keep: bool, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(threads)]
    if keep:
        cmd.append("--keep")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the first workload, one repeat")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.keep, args.threads)
        return
    names = list(WORKLOADS)[:1] if args.quick else list(WORKLOADS)
    repeats = 1 if args.quick else args.repeats
    rows = []
    for name in names:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(repeats):  # alternating, so drifting load hits both alike
            for keep in (False, True):
                runs[keep].append(measure(name, keep, args.threads))
                print(f"  {name} keep={keep}: {runs[keep][-1]['seconds']:.3f} s", file=sys.stderr)
        base, kept = (min(r["seconds"] for r in runs[k]) for k in (False, True))
        same = runs[False][0]["values"] == runs[True][0]["values"]
        peaks = [max(r["peak_mib"] for r in runs[k]) for k in (False, True)]
        rows.append([name, base, kept, base / kept, "yes" if same else "NO", *peaks])
    print(
        f"\nglibc default vs keep_freed_memory(), best of {repeats}, {args.threads} thread(s);"
        " ratio = default / kept"
    )
    header = ["workload", "default s", "kept s", "ratio", "same results", "peak MiB", "kept MiB"]
    print(render_table(header, rows))


if __name__ == "__main__":
    main()
