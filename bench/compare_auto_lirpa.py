"""CROWN on general graphs, nnbound beside auto_LiRPA: the same torch modules, inputs, Linf
balls and margin specs; bounds compared entry by entry, and the time of each.

auto_LiRPA is never a dependency: run this with an interpreter where both import, e.g. a
scratch venv holding torch 2.13, auto_LiRPA's source installed with its torch/torchvision pins
relaxed (``pip install -e <checkout>`` after editing ``setup.py``) and nnbound
(``pip install -e .``). Without auto_LiRPA the script says so and exits.

Nets (random weights, seeded; eval mode; batch norm with calibrated statistics):
residual MLP (ReLU and tanh), branch-and-concatenate MLP, the catalogue's CIFAR ResNet
with one and two basic blocks per stage at 16x16 and 32x32 pixels (width 8 / 16), and two
plain CNN chains (``cifar-2c2f``'s layout and ``bench_cnn``'s strided 4-conv one), which
nnbound bounds with the graph engine's patches too.

For each: ``lower`` / ``upper`` of nnbound's ``crown`` (``crown-general`` for tanh; default:
intermediate bounds intersected with IBP, only unstable ReLUs back-propagated) and auto_LiRPA's
``compute_bounds(method="CROWN")``; the largest entry-wise difference, the mean width ratio
(nnbound / auto_LiRPA; < 1 is tighter), and whether one bound contains the other.

Times (best of ``--repeat`` runs, after the model is built) and peak memory (the rise of the
process's peak resident set over the runs, Linux ``/proc/self/status``) come from one fresh
worker process per tool and net, so one tool's allocations never count against another's:
nnbound's default (``f64``: computed in float64 and rounded outward, the sound result for the
float32 net), nnbound in the net's float32 (``outward=False``: the same arithmetic as
auto_LiRPA), auto_LiRPA, and with ``--before SRC`` the same two nnbound columns from another
checkout's ``src`` (e.g. ``/work/main/src``: the code before a change), all in one run; the
ratio columns divide times taken in that run.

Usage: python bench/compare_auto_lirpa.py [--eps 0.002] [--images 2] [--threads 1]
    [--repeat 2] [--before /path/to/other/src] [--nets 0,3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nnbound.bounds.api import bounds
from nnbound.catalogue.cifar import cifar_resnet
from nnbound.network.from_torch_graph import from_torch_graph
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.radius import margin_specs


class ResidualMLP(nn.Module):
    def __init__(self, act: Callable[[Tensor], Tensor], d: int = 64, h: int = 128) -> None:
        super().__init__()
        self.act = act
        self.inp, self.body1, self.body2 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, h)
        self.out = nn.Linear(h, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.inp(x.flatten(1)))
        h = self.act(h + self.body2(self.act(self.body1(h))))
        return self.out(h)


class BranchConcat(nn.Module):
    def __init__(self, d: int = 64, h: int = 64) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, h), nn.Linear(d, h)
        self.mix, self.out = nn.Linear(2 * h, h), nn.Linear(h, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.out(torch.relu(self.mix(y)))


def cnn_chain(channels: tuple[int, int], strided: bool) -> nn.Module:
    """A plain CIFAR CNN (a chain): ``cifar-2c2f``'s layout (two unpadded 3x3 convs, dense 32)
    or, ``strided``, ``bench_cnn``'s (3x3 and 4x4/2 convs per channel count, dense 100)."""
    c1, c2 = channels
    if not strided:
        convs = [nn.Conv2d(3, c1, 3), nn.ReLU(), nn.Conv2d(c1, c2, 3), nn.ReLU()]
        dense = [nn.Linear(c2 * 28 * 28, 32), nn.ReLU(), nn.Linear(32, 10)]
    else:
        convs = [
            nn.Conv2d(3, c1, 3, 1, 1), nn.ReLU(), nn.Conv2d(c1, c1, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, 1, 1), nn.ReLU(), nn.Conv2d(c2, c2, 4, 2, 1), nn.ReLU(),
        ]  # fmt: skip
        dense = [nn.Linear(c2 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10)]
    return nn.Sequential(*convs, nn.Flatten(), *dense).eval()


@dataclass
class Case:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]


def cases() -> list[Case]:
    torch.manual_seed(0)
    flat = (1, 8, 8)
    return [
        Case("residual MLP relu", ResidualMLP(torch.relu).eval(), flat),
        Case("residual MLP tanh", ResidualMLP(torch.tanh).eval(), flat),
        Case("branch + concat", BranchConcat().eval(), flat),
        Case(
            "cifar resnet (1,1) w8 16px", cifar_resnet((1, 1), width=8, image_size=16), (3, 16, 16)
        ),
        Case(
            "cifar resnet (2,2) w8 32px", cifar_resnet((2, 2), width=8, image_size=32), (3, 32, 32)
        ),
        Case(
            "cifar resnet (1,1,1) w16 32px",
            cifar_resnet((1, 1, 1), width=16, image_size=32),
            (3, 32, 32),
        ),
        Case("cnn chain 2c2f (4,4) 32px", cnn_chain((4, 4), strided=False), (3, 32, 32)),
        Case("cnn chain 4c2f (8,16) 32px", cnn_chain((8, 16), strided=True), (3, 32, 32)),
    ]


def nnbound_crown(
    case: Case, x: Tensor, eps: float, spec: Tensor, outward: bool = True
) -> tuple[Tensor, Tensor, float]:
    graph = from_torch_graph(case.module, case.input_shape, name=case.name, input_range=(0.0, 1.0))
    ball = LpBall.make(x, eps, "inf")
    t = time.perf_counter()
    method = "crown-general" if "tanh" in case.name else "crown"  # CROWN's lines for tanh
    b = bounds(graph, ball, method, C=spec, outward=outward)
    return b.lower, b.upper, time.perf_counter() - t


def lirpa_crown(case: Case, x: Tensor, eps: float, spec: Tensor) -> tuple[Tensor, Tensor, float]:
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    model = BoundedModule(case.module, torch.zeros_like(x), device="cpu", verbose=False)
    bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=eps))
    t = time.perf_counter()
    lo, up = model.compute_bounds(x=(bx,), C=spec, method="CROWN")
    return lo.detach(), up.detach(), time.perf_counter() - t


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        found = re.search(rf"{key}:\s+(\d+)", f.read())
    return int(found.group(1)) if found else 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def inputs(case: Case, images: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(images, *case.input_shape, generator=gen)
    with torch.no_grad():
        labels = case.module(x).argmax(1)
    return x, margin_specs(labels, torch.full_like(labels, -1), 10, x.dtype)


def worker(tool: str, index: int, args: argparse.Namespace) -> None:
    """One tool on one net in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    case = cases()[index]
    x, spec = inputs(case, args.images)
    times, peak = [], None
    for _ in range(args.repeat):
        base = _status_kib("VmRSS")
        tracked = _reset_peak()
        if tool == "lirpa":
            lo, up, t = lirpa_crown(case, x, args.eps, spec)
        else:
            lo, up, t = nnbound_crown(case, x, args.eps, spec, outward=tool == "f64")
        times.append(t)
        if tracked:
            rise = (_status_kib("VmHWM") - base) / 1024
            peak = rise if peak is None else max(peak, rise)
    out = {"times": times, "peak_mib": peak, "lower": lo.tolist(), "upper": up.tolist()}
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(tool: str, index: int, args: argparse.Namespace, src: str | None) -> dict | None:
    """:func:`worker` in a fresh interpreter (``src`` first on its path), or ``None`` if it
    failed."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", tool, "--net", str(index)]
    for key in ("eps", "images", "threads", "repeat"):
        cmd += [f"--{key}", str(getattr(args, key))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(f"{tool} on net {index} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    return None


def _fmt_mib(r: dict | None) -> str:
    return "-" if r is None or r["peak_mib"] is None else f"{r['peak_mib']:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, default=0.002)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per tool (best kept)")
    ap.add_argument("--before", help="another checkout's src directory, timed beside this one")
    ap.add_argument("--nets", help="comma-separated net indices (default: all)")
    ap.add_argument("--worker", choices=("f64", "f32", "lirpa"), help=argparse.SUPPRESS)
    ap.add_argument("--net", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.worker, args.net, args)
        return
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        print("auto_LiRPA is not importable here: nothing to compare (see the docstring)")
        return
    here = str(Path(__file__).resolve().parents[1] / "src")
    all_cases = cases()
    chosen = range(len(all_cases)) if not args.nets else [int(i) for i in args.nets.split(",")]
    rows, mem_rows = [], []
    mem_keys = ["lirpa", "f64", "before f64", "f32", "before f32"]
    mem_keys = [k for k in mem_keys if args.before or not k.startswith("before")]
    for index in chosen:
        case = all_cases[index]
        res = {"lirpa": run_worker("lirpa", index, args, None)}
        for tool in ("f64", "f32"):
            res[tool] = run_worker(tool, index, args, here)
            if args.before:
                res["before " + tool] = run_worker(tool, index, args, args.before)
        a, n = res["lirpa"], res["f64"]
        if a is None or n is None:
            continue
        a_lo, a_up = torch.tensor(a["lower"]), torch.tensor(a["upper"])
        n_lo, n_up = torch.tensor(n["lower"]), torch.tensor(n["upper"])
        diff = float(torch.maximum((n_lo - a_lo).abs(), (n_up - a_up).abs()).max())
        ratio = float((n_up - n_lo).mean() / (a_up - a_lo).mean())
        inside = bool((n_lo >= a_lo - 1e-5).all() and (n_up <= a_up + 1e-5).all())
        best = {k: min(r["times"]) if r is not None else math.nan for k, r in res.items()}
        row = [case.name, diff, ratio, "yes" if inside else "no", best["lirpa"]]
        for tool in ("f64", "f32"):
            row += [best[tool], best["lirpa"] / best[tool]]
            if args.before:
                row += [best["before " + tool], best["before " + tool] / best[tool]]
        rows.append(row)
        mem_rows.append([case.name, *(_fmt_mib(res.get(k)) for k in mem_keys)])
        print("row", row, flush=True)
    headers = ["net", "max |diff|", "width ratio", "nnbound inside", "auto_LiRPA s"]
    for tool in ("f64", "f32"):
        headers += [f"nnbound {tool} s", f"LiRPA/{tool}"]
        if args.before:
            headers += [f"before {tool} s", f"before/{tool}"]
    print(
        f"\nCROWN, {args.images} images, {args.threads} thread(s), best of {args.repeat}; "
        "ratios > 1: nnbound (this tree) faster"
    )
    print(render_table(headers, rows, digits=4))
    print("\npeak memory (MiB above the worker's resident set before the run)")
    names = {"lirpa": "auto_LiRPA"}
    print(render_table(["net", *[names.get(k, k) for k in mem_keys]], mem_rows))


if __name__ == "__main__":
    main()
