"""Batched matrix-vector products on the CPU: ``torch.bmm`` with a one-column right side
against a BLAS matrix-vector call per row, an element-wise product and sum, and
``nnbound.matvec.batched_matvec`` (which picks one of the last two by the row matrix's size),
side by side at the shapes nnbound's passes produce, float32 and float64.

Shapes ``(N, S, k)``: N rows of S linear forms over k inputs --

* concretisation at a ball's centre: ``mnist-fc-3layer``'s 9 margins and its 64 second-layer
  neurons over 99 images (a radius search's batch), one image, a CIFAR input (3072);
* RecurJac's exact end on ``mnist-fc-3layer`` (14 distinct radii x 784 functionals x 64);
* a wide layer: 20 images x 1024 neurons x 784 inputs.

Columns: milliseconds (best of ``--repeats``), and the ratio ``bmm / batched_matvec``; every
method's result is checked against ``bmm`` (relative 1e-5 in float32, 1e-12 in float64).

Usage: python bench/bench_matvec.py [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from nnbound.matvec import batched_matvec
from nnbound.report.tables import render_table

SHAPES = (
    (99, 9, 784),
    (99, 64, 784),
    (1, 64, 784),
    (100, 10, 3072),
    (14, 784, 64),
    (20, 1024, 784),
)


def _bmm(a: Tensor, v: Tensor) -> Tensor:
    return torch.bmm(a, v.unsqueeze(-1)).squeeze(-1)


def _per_row(a: Tensor, v: Tensor) -> Tensor:
    return torch.stack([torch.mv(a[i], v[i]) for i in range(a.shape[0])])


def _product_sum(a: Tensor, v: Tensor) -> Tensor:
    return (a * v.unsqueeze(1)).sum(-1)


METHODS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bmm": _bmm,
    "mv per row": _per_row,
    "product-sum": _product_sum,
    "batched_matvec": batched_matvec,
}


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.float64):
        rtol = 1e-5 if dtype == torch.float32 else 1e-12
        for n, s, k in SHAPES:
            a = torch.randn(n, s, k, generator=gen).to(dtype)
            v = torch.randn(n, k, generator=gen).to(dtype)
            want = _bmm(a, v)
            scale = a.abs().sum(-1) * v.abs().amax(-1, keepdim=True)
            ms = {}
            for name, fn in METHODS.items():
                got = fn(a, v)
                if not bool(((got - want).abs() <= rtol * scale).all()):
                    raise SystemExit(f"{name} disagrees with bmm at {(n, s, k)} {dtype}")
                ms[name] = best_ms(partial(fn, a, v), args.repeats)
            ratio = ms["bmm"] / ms["batched_matvec"]
            rows.append([str(dtype)[6:], f"{n}x{s}x{k}", *ms.values(), f"{ratio:.1f}x"])
    print(
        f"batched matrix-vector products, CPU, {args.threads} thread(s), ms (best of "
        f"{args.repeats}); ratio = bmm / batched_matvec"
    )
    header = ["dtype", "N x S x k", *METHODS, "ratio"]
    print(render_table(header, rows, digits=3))


if __name__ == "__main__":
    main()
