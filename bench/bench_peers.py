"""Certified-radius speed side by side with the peers, in one run: the 2018 code
(huanzhang12/RecurJac-and-CROWN, its numpy/numba core called with weight lists, no Keras),
auto_LiRPA's CROWN inside the same binary search, and nnbound one image at a time and at the
``robustness`` command's default batch.

CROWN-adaptive, untargeted, Linf (``--norm``), the reference's binary search from eps 0.005
with 15 evaluations, on the built-in MNIST test images each network classifies as labelled.
Networks: ``mnist-fc-3layer`` (784-128-64-10, trained), random 784-1024-1024-10 and
784-[1024]x6-10 ReLU MLPs (seeded, torch's default initialisation, inputs in [-0.5, 0.5]),
and ``mnist-cnn-small`` (2 conv + 256 dense, trained; the 2018 code bounds no CNN, so that
row compares auto_LiRPA and nnbound only).

The batched column certifies ``--batch-images`` images (100 on ``mnist-fc-3layer``, fewer
on the wide nets), as the command does, so that its batch is the default batch; the other
columns the first ``--images``. Per network: seconds per image of each column (the best of
``--repeats`` runs, the columns taking turns; with repeats the range follows in brackets),
the ratios peer / nnbound from those times, and whether the radii agree: the largest
|difference| between the 2018 code's radii and nnbound's ``reference=True`` radii (the
numbers ``--reference`` reproduces; 0 when they agree), and between the 2018 code's and
auto_LiRPA's / nnbound's default radii (the default bounds are tighter, so its radii may be
larger).

nnbound's columns run in subprocesses, each a fresh interpreter with its source first on the
path: run in the bench's own process, after numba's kernels and the 2018 code, the same
searches measured slower than in a subprocess, which read as a slowdown against a "before"
tree. Each sets glibc to keep freed memory, as the ``nnbound`` command does at start
(``nnbound.allocator``; ``NNBOUND_KEEP_FREED_MEMORY=0`` measures without it, as this bench did
before 2026-12-07).
``--before-src DIR`` adds nnbound "before" columns: the same one-image-at-a-time and batched
searches with ``DIR`` (e.g. another checkout's ``src``) as the source, their time
ratios against this tree's, and the largest |difference| of their radii.

Peers are never dependencies: without ``--reference-code`` (the path of a checkout) the 2018
column is skipped, without an importable auto_LiRPA its column is. Threads: ``--threads``
(default 1) for torch, BLAS and numba alike.

Other sections print after this one when their files exist beside this one:
``peers_lipschitz.py`` and ``peers_clever.py``, each with ``section(reference_code, threads,
quick) -> (title, header, rows)``.

Usage: python bench/bench_peers.py --reference-code /path/to/RecurJac-and-CROWN
    [--images 20] [--batch-images 100] [--quick] [--repeats 1] [--threads 1]
    [--nets mnist-fc-3layer,...] [--before-src DIR] [--no-auto-lirpa]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from peers_common import BenchNet, bench_network, best_with_range, limit_threads
from peers_radius import radius_2018, radius_auto_lirpa

import nnbound
from nnbound.cli import cmd_robustness
from nnbound.cli.stream import growing_spans
from nnbound.report.tables import render_table
from nnbound.tasks.radius import certified_radius

HERE = Path(__file__).resolve().parent
SECTIONS = ("peers_lipschitz", "peers_clever")
# (network, images per --images 20): the wide nets cost seconds per image in the peers.
NETWORKS = (
    ("mnist-fc-3layer", 1.0),
    ("random:1024-1024", 0.2),
    ("random:" + "-".join(["1024"] * 6), 0.1),
    ("mnist-cnn-small", 0.25),
)

Run = Callable[[], tuple[list[float], float] | None]


def cli_default_batch() -> int:
    """``nnbound robustness``'s default ``--batch-size``, read from its parser."""
    parser = argparse.ArgumentParser()
    cmd_robustness.configure(parser)
    return int(parser.get_default("batch_size"))


DEFAULT_BATCH_SIZE = cli_default_batch()


@dataclass
class Column:
    name: str
    run: Run
    radii: list[float] | None = None
    times: list[float] | None = None

    def measure(self) -> None:
        got = self.run()
        if got is None:
            self.run = lambda: None
            return
        self.radii = got[0]
        self.times = [*(self.times or []), got[1]]

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times else None

    def cell(self) -> object:
        if not self.times:
            return "-"
        if len(self.times) == 1:
            return self.times[0]
        return best_with_range(self.times, 4)


def nnbound_one_at_a_time(bnet: BenchNet, norm: str, steps: int, eps0: float) -> list[float]:
    untargeted = torch.full((1,), -1)
    out = []
    for i in range(bnet.x.shape[0]):
        with torch.no_grad():
            r = certified_radius(
                bnet.net,
                bnet.x[i : i + 1],
                bnet.labels[i : i + 1],
                untargeted,
                norm=norm,
                method="crown-adaptive",
                eps0=eps0,
                steps=steps,
            )
        out.append(float(r[0]))
    return out


def nnbound_batched(
    bnet: BenchNet, norm: str, steps: int, eps0: float, reference: bool = False
) -> list[float]:
    """As ``nnbound robustness`` certifies: spans of 1, 2, 4, ... up to its default batch."""
    out: list[float] = []
    for lo, hi in growing_spans(bnet.x.shape[0], DEFAULT_BATCH_SIZE):
        with torch.no_grad():
            r = certified_radius(
                bnet.net,
                bnet.x[lo:hi],
                bnet.labels[lo:hi],
                torch.full((hi - lo,), -1),
                norm=norm,
                method="crown-adaptive",
                eps0=eps0,
                steps=steps,
                reference=reference,
            )
        out.extend(r.tolist())
    return out


def timed(fn: Callable[[], list[float]], warm: Callable[[], object]) -> Run:
    def run() -> tuple[list[float], float]:
        warm()
        t0 = time.perf_counter()
        radii = fn()
        return radii, (time.perf_counter() - t0) / max(len(radii), 1)

    return run


# The source tree of the nnbound this bench imported (its columns' subprocesses put it first).
THIS_SRC = str(Path(nnbound.__file__).resolve().parents[1])


def worker_run(
    src: str, name: str, count: int, args: argparse.Namespace, batched: bool = False
) -> Run:
    """The one-image-at-a-time (or ``batched``) column, in a subprocess with the nnbound
    source ``src`` first on the path."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        *(["--worker-batched"] if batched else []),
        "--images",
        str(count),
        "--norm",
        args.norm,
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE)])}

    def run() -> tuple[list[float], float]:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        return got["radii"], got["s_per_image"]

    return run


def worker(args: argparse.Namespace) -> None:
    # As the ``nnbound`` command does at start (NNBOUND_KEEP_FREED_MEMORY=0 turns both off).
    if os.environ.get("NNBOUND_KEEP_FREED_MEMORY", "1") != "0":
        from nnbound.allocator import keep_freed_memory

        keep_freed_memory()
    bnet = bench_network(args.worker, args.images)
    one = bench_network(args.worker, 1)
    search = nnbound_batched if args.worker_batched else nnbound_one_at_a_time
    radii, per = timed(
        lambda: search(bnet, args.norm, args.steps, EPS0),
        lambda: search(one, args.norm, args.steps, EPS0),
    )()
    print(json.dumps({"radii": radii, "s_per_image": per}))


EPS0 = 0.005


def max_gap(a: list[float] | None, b: list[float] | None) -> object:
    if a is None or b is None:
        return "-"
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def ratio(num: float | None, den: float | None) -> object:
    return num / den if num is not None and den else "-"


def network_row(
    name: str, count: int, batch_count: int, code: Path | None, args: argparse.Namespace
) -> list[object]:
    """One network's row: every column timed ``--repeats`` times (taking turns), the ratios
    and the radius agreement (the batched column certifies ``batch_count`` images, a full
    default batch where the network allows it; radii compared on the images all share)."""
    bnet = bench_network(name, count)
    many = bench_network(name, max(count, batch_count))
    batch_count = many.x.shape[0]  # the images the network classifies as labelled
    steps, norm = args.steps, args.norm

    def skipped() -> None:
        return None

    cols = [
        Column(
            "2018",
            # the 2018 code bounds MLPs only
            (lambda: radius_2018(code, bnet, norm, steps, EPS0))
            if code and bnet.net.is_mlp
            else skipped,
        ),
        Column(
            "auto_LiRPA",
            skipped if args.no_auto_lirpa else lambda: radius_auto_lirpa(bnet, norm, steps, EPS0),
        ),
        Column("b1", worker_run(THIS_SRC, name, count, args)),
        Column("batch", worker_run(THIS_SRC, name, batch_count, args, True)),
    ]
    if args.before_src:
        cols.append(Column("before", worker_run(args.before_src, name, count, args)))
        cols.append(
            Column("before batch", worker_run(args.before_src, name, batch_count, args, True))
        )
    for _ in range(args.repeats):
        for col in cols:
            col.measure()
    c18, cal, cb1, cbat = cols[:4]
    ref = nnbound_batched(bnet, norm, steps, EPS0, reference=True) if c18.radii else None
    row: list[object] = [bnet.name, f"{bnet.x.shape[0]}/{many.x.shape[0]}"]
    row += [c.cell() for c in cols[:4]]
    row += [
        ratio(c18.best, cb1.best),
        ratio(c18.best, cbat.best),
        ratio(cal.best, cb1.best),
        ratio(cal.best, cbat.best),
        max_gap(ref, c18.radii),
        max_gap(cal.radii, c18.radii),
        max_gap(cb1.radii, c18.radii),
        max_gap(cb1.radii, cbat.radii and cbat.radii[:count]),
    ]
    if args.before_src:
        before, before_batch = cols[4:6]
        row += [before.cell(), ratio(before.best, cb1.best), max_gap(before.radii, cb1.radii)]
        row += [
            before_batch.cell(),
            ratio(before_batch.best, cbat.best),
            max_gap(before_batch.radii, cbat.radii),
        ]
    return row


def radius_table(args: argparse.Namespace) -> tuple[list[str], list[list[object]]]:
    code = Path(args.reference_code) if args.reference_code else None
    rows = []
    wanted = args.nets.split(",") if args.nets else [name for name, _ in NETWORKS]
    for name, share in NETWORKS:
        if name not in wanted:
            continue
        count = max(1, round(args.images * share))
        batch_count = max(1, round(args.batch_images * share))
        rows.append(network_row(name, count, batch_count, code, args))
        print(f"done {rows[-1][0]}", file=sys.stderr, flush=True)
    header = [
        "network",
        "images (batch)",
        "2018 s/img",
        "auto_LiRPA s/img",
        "nnbound b1 s/img",
        f"nnbound b{DEFAULT_BATCH_SIZE} s/img",
        "2018/b1",
        "2018/batch",
        "aLiRPA/b1",
        "aLiRPA/batch",
        "|ref-2018|",
        "|aLiRPA-2018|",
        "|b1-2018|",
        "|b1-batch|",
    ]
    if args.before_src:
        header += ["before b1 s/img", "before/b1", "|b1-before|"]
        header += ["before batch s/img", "before/batch", "|batch-before|"]
    return header, rows


def load_section(name: str) -> ModuleType | None:
    """``bench/<name>.py`` loaded by path when it exists (another bench's section)."""
    path = HERE / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reference-code", help="checkout of huanzhang12/RecurJac-and-CROWN")
    ap.add_argument(
        "--images", type=int, default=20, help="images on mnist-fc-3layer (wide nets fewer)"
    )
    ap.add_argument(
        "--batch-images",
        type=int,
        default=100,
        help="images of the batched column on mnist-fc-3layer (wide nets fewer; default 100)",
    )
    ap.add_argument("--quick", action="store_true", help="5 images, one repeat")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--norm", default="inf", choices=("inf", "1", "2"))
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--before-src", help="another nnbound source tree for a 'before' column")
    ap.add_argument("--no-auto-lirpa", action="store_true", help="skip auto_LiRPA")
    ap.add_argument(
        "--nets",
        help="comma list of: " + ", ".join(name for name, _ in NETWORKS) + " (default all)",
    )
    ap.add_argument(
        "--radius-only", action="store_true", help="skip the Lipschitz and CLEVER sections"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-batched", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    limit_threads(args.threads)
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.images, args.batch_images, args.repeats = 5, 10, 1
    header, rows = radius_table(args)
    print(
        f"\ncertified radius, CROWN-adaptive, untargeted, L{args.norm}, {args.steps} steps, "
        f"{args.threads} thread(s); seconds per image (best of {args.repeats}"
        f"{' [range]' if args.repeats > 1 else ''}); ratios = peer time / nnbound time"
    )
    print(render_table(header, rows, digits=4))
    code = Path(args.reference_code) if args.reference_code else None
    for name in () if args.radius_only else SECTIONS:
        module = load_section(name)
        if module is None:
            continue
        title, sec_header, sec_rows = module.section(code, args.threads, args.quick)
        print(f"\n{title}")
        print(render_table(sec_header, sec_rows, digits=4))


if __name__ == "__main__":
    main()
