"""Verification benchmark: ``nnbound verify`` on real VNN-COMP 2021 instances and on instances
generated here in the competition format, with a per-instance time cap.

Real instances (``/work/shared/benchmarks/vnncomp``, answers = the competition's majority):

* ``test``: all five;
* ``acasxu``: an evenly spaced sample of the 186 instances (``--acas``) plus every instance of
  properties 5-10 (one each);
* ``mnist_fc``: an evenly spaced sample of the 256x2 network's 30 instances (``--mnist``) and
  of the 256x4 / 256x6 ones (``--mnist-deep``).

Generated instances (ONNX + VNN-LIB files written to a temporary folder, run through the same
CLI code path; no reference answers, so only sat/unsat/unknown/timeout are counted, and every
sat answer's counterexample is re-checked by the verifier itself):

* ``gen-acas``: a random 5-input ReLU network with 6 hidden layers of 50 (He-initialised,
  seeded), ACAS-Xu-like properties: a random box, counterexample "the output minimal at the
  centre is not minimal somewhere in the box";
* ``gen-mnist``: the competition's 2x256 MNIST MLP with Linf boxes (clipped to [0, 1]) around
  correctly classified MNIST test images (the copy bundled with nnbound) at a few radii,
  counterexample "some other class scores at least the label's".

Prints one row per instance (``--verbose``; ``ort``: whether onnxruntime, run on a sat
answer's counterexample, agrees it is one) and a table per group: solved (unsat / sat), wrong
answers (must be 0), unknown / timeout, total time.

Usage: python bench/bench_verify.py [--cap 15] [--acas 30] [--mnist 10] [--mnist-deep 4]
                                   [--no-generated] [--verbose]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnbound.cli.cmd_verify import summarize, verdict
from nnbound.network.layers import Activation, Dense
from nnbound.network.network import Network
from nnbound.network.to_onnx import save_onnx
from nnbound.report.tables import render_table
from nnbound.verify.verifier import verify_files

VNNCOMP = Path("/work/shared/benchmarks/vnncomp")
MNIST_NET = VNNCOMP / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"


def real_instances(acas: int, mnist: int, mnist_deep: int) -> list[dict]:
    with open(VNNCOMP / "instances.csv") as fh:
        rows = list(csv.DictReader(fh))
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in rows:
        key = (r["onnx"], r["vnnlib"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    test = [r for r in unique if r["benchmark"] == "test"]
    acas_rows = [r for r in unique if r["benchmark"] == "acasxu"]
    common = [
        r
        for r in acas_rows
        if r["vnnlib"].split("_")[-1] in {"1.vnnlib", "2.vnnlib", "3.vnnlib", "4.vnnlib"}
    ]
    special = [r for r in acas_rows if r not in common]
    picked = [common[int(i)] for i in np.linspace(0, len(common) - 1, acas)] if acas else []
    mnist_rows = [r for r in unique if r["benchmark"] == "mnist_fc" and "256x2" in r["onnx"]]
    mn = [mnist_rows[int(i)] for i in np.linspace(0, len(mnist_rows) - 1, mnist)] if mnist else []
    deep_rows = [r for r in unique if r["benchmark"] == "mnist_fc" and "256x2" not in r["onnx"]]
    if mnist_deep:
        mn += [deep_rows[int(i)] for i in np.linspace(0, len(deep_rows) - 1, mnist_deep)]
    out = []
    for group, chosen in (("test", test), ("acasxu", picked + special), ("mnist_fc", mn)):
        for r in chosen:
            out.append(
                {
                    "group": group,
                    "onnx": VNNCOMP / r["onnx"],
                    "vnnlib": VNNCOMP / r["vnnlib"],
                    "timeout": float(r["timeout_s"]),
                    "expected": r["expected"],
                }
            )
    return out


def _box_property(
    lo: np.ndarray, hi: np.ndarray, m: int, groups: list[list[tuple[int, int]]]
) -> str:
    """VNN-LIB text: a box, and an ``or`` of groups, each a conjunction of ``Y_a >= Y_b``."""
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(m)]
    for i in range(lo.size):
        lines.append(f"(assert (<= X_{i} {float(hi[i])!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo[i])!r}))")
    ands = [" ".join(f"(>= Y_{a} Y_{b})" for a, b in g) for g in groups]
    lines.append("(assert (or\n" + "\n".join(f"    (and {a})" for a in ands) + "\n))")
    return "\n".join(lines) + "\n"


def generated_instances(folder: Path, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    # A 5-input, 6x50 ReLU network (ACAS Xu's shape), He-initialised.
    layers: list = []
    sizes = [5, 50, 50, 50, 50, 50, 50, 5]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = torch.randn(b, a, generator=gen, dtype=torch.float64) * (2.0 / a) ** 0.5
        layers.append(Dense(w.float(), (torch.randn(b, generator=gen) * 0.05).float()))
        if i < len(sizes) - 2:
            layers.append(Activation("relu"))
    net = Network(tuple(layers), (5,), (-0.5, 0.5), "gen-acas-6x50")
    acas_path = save_onnx(net, folder / "gen_acas_6x50.onnx")
    out = []
    for k in range(8):
        centre = rng.uniform(-0.4, 0.4, size=5)
        half = rng.uniform(0.005, 0.06, size=5)
        lo, hi = centre - half, centre + half
        with torch.no_grad():
            y = net(torch.as_tensor(centre, dtype=torch.float32).reshape(1, 5))[0].numpy()
        best = int(np.argmin(y))
        # Counterexample: the output minimal at the centre is not minimal somewhere in the
        # box (Y_best >= Y_j for some j), ACAS-Xu style ("COC stays the advisory").
        text = _box_property(lo, hi, 5, [[(best, j)] for j in range(5) if j != best])
        path = folder / f"gen_acas_{k}.vnnlib"
        path.write_text(text)
        out.append({"group": "gen-acas", "onnx": acas_path, "vnnlib": path, "expected": ""})
    # The competition's 2x256 MNIST MLP, Linf boxes around MNIST test images.
    from importlib.resources import files

    from nnbound.network.load import load_model

    data = np.load(str(files("nnbound") / "assets" / "data" / "mnist_test_100.npz"))
    images = data["images"].reshape(100, -1).astype(np.float64) / 255.0
    labels = data["labels"].astype(int)
    mnist = load_model(MNIST_NET)
    with torch.no_grad():
        pred = mnist(torch.as_tensor(images, dtype=torch.float32)).argmax(1).numpy()
    chosen = [i for i in range(100) if pred[i] == labels[i]][:4]
    for i in chosen:
        for eps in (0.005, 0.01, 0.02, 0.03):
            lo = np.clip(images[i] - eps, 0.0, 1.0)
            hi = np.clip(images[i] + eps, 0.0, 1.0)
            lab = int(labels[i])
            text = _box_property(lo, hi, 10, [[(j, lab)] for j in range(10) if j != lab])
            path = folder / f"gen_mnist_img{i}_eps{eps}.vnnlib"
            path.write_text(text)
            out.append({"group": "gen-mnist", "onnx": MNIST_NET, "vnnlib": path, "expected": ""})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap", type=float, default=15.0, help="time cap per instance, seconds")
    ap.add_argument("--acas", type=int, default=30, help="ACAS Xu props 1-4 instances sampled")
    ap.add_argument("--mnist", type=int, default=10, help="mnist_fc 256x2 instances sampled")
    ap.add_argument(
        "--mnist-deep", type=int, default=4, help="mnist_fc 256x4 / 256x6 instances sampled"
    )
    ap.add_argument("--no-generated", action="store_true", help="skip the generated instances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--verbose", action="store_true", help="print one row per instance")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    instances = real_instances(args.acas, args.mnist, args.mnist_deep)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_generated:
            instances += generated_instances(Path(tmp), args.seed)
        records = []
        start = time.perf_counter()
        for k, inst in enumerate(instances, 1):
            timeout = min(args.cap, inst.get("timeout", args.cap))
            res = verify_files(inst["onnx"], inst["vnnlib"], timeout=timeout)
            rec = {
                "group": inst["group"],
                "network": Path(inst["onnx"]).name,
                "property": Path(inst["vnnlib"]).name,
                "expected": inst["expected"],
                "result": res.status,
                "time": res.time,
                "stage": res.stage,
                "check": verdict(res.status, inst["expected"]),
                # For sat: does onnxruntime, run on the counterexample, agree it is one?
                "ort": {True: "yes", False: "NO", None: "-"}[res.stats.get("onnxruntime_agrees")],
            }
            records.append(rec)
            print(
                f"[{k}/{len(instances)}] {rec['group']:9s} {rec['network']} {rec['property']}: "
                f"{rec['result']} ({rec['time']:.2f} s, {rec['stage']})"
                f"{'  WRONG' if rec['check'] == 'WRONG' else ''}",
                flush=True,
            )
        wall = time.perf_counter() - start
    if args.verbose:
        print()
        print(
            render_table(
                [
                    "group",
                    "network",
                    "property",
                    "expected",
                    "result",
                    "time_s",
                    "stage",
                    "check",
                    "ort",
                ],
                [
                    [
                        r["group"],
                        r["network"],
                        r["property"],
                        r["expected"] or "-",
                        r["result"],
                        float(r["time"]),
                        r["stage"],
                        r["check"],
                        r["ort"],
                    ]
                    for r in records
                ],
                digits=2,
            )
        )
    groups = list(dict.fromkeys(r["group"] for r in records))
    rows = []
    for g in [*groups, "all"]:
        sub = [r for r in records if g in ("all", r["group"])]
        s = summarize(sub)
        decided = sum(r["expected"] in ("sat", "unsat") for r in sub)
        rows.append(
            [
                g,
                s["instances"],
                s["unsat"],
                s["sat"],
                s["unknown"],
                s["timeout"],
                f"{s['correct']}/{decided}" if decided else "-",
                s["wrong"],
                s["total_time_s"],
            ]
        )
    print()
    print(f"per-instance cap {args.cap:g} s, torch threads {args.threads}, wall {wall:.1f} s")
    print(
        render_table(
            [
                "group",
                "instances",
                "unsat",
                "sat",
                "unknown",
                "timeout",
                "correct/expected",
                "wrong",
                "time_s",
            ],
            rows,
            digits=1,
        )
    )


if __name__ == "__main__":
    main()
