"""Verification benchmark: ``verify`` on every instance in ``/work/shared/benchmarks/vnncomp``
(VNN-COMP 2021 chains: test, acasxu, mnist_fc; answers = the competition's majority) and
``/work/shared/benchmarks/vnncomp_graphs`` (VNN-COMP 2022-2024 graphs; no answers shipped),
each at the competition's timeout capped by ``--cap``; optionally instances generated here
(``--generated``).

Prints one line per instance as it finishes, then a table per family: instances, solved
(unsat + sat), unsat / sat / unknown / timeout / error (an instance nnbound refuses: an
operator without a rule...), wrong answers against the expected ones (must be 0; a sat whose
counterexample onnxruntime rejects also counts as wrong), the median time of the solved
ones, and the largest overshoot of the time limit (the deadline's slack). Beside them, the
competition winner's published results for the same instances (``bench/vnncomp_published.csv``,
alpha-beta-CROWN, quoted from the VNN-COMP result repositories; see ``vnncomp_published.md``):
how many of the run instances it decided (sat or unsat) out of those it has a result for
(``winner_solved``, at the competition's full limits), how many of those it decided within
the limit this run gave nnbound (``winner_in_limit``: published time <= ``min(cap,
timeout)``; its times include its start-up), the median of its published times on those,
and ``disagree``, the instances where nnbound and the winner decided opposite answers. Its
times come from the competition's own hardware.

Generated instances (``--generated``; ONNX + VNN-LIB written to a temporary folder, no
reference answers): ``gen-acas``, a random 5-input ReLU network with 6 hidden layers of 50
and ACAS-Xu-like properties; ``gen-mnist``, the competition's 2x256 MNIST MLP with Linf boxes
around MNIST test images.

Usage: python bench/bench_verify.py [--cap 20] [--families acasxu,nn4sys] [--per-family N]
                                   [--generated] [--verbose]
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

from nnbound.cli.cmd_verify import verdict
from nnbound.errors import NnboundError
from nnbound.network.layers import Activation, Dense
from nnbound.network.network import Network
from nnbound.network.to_onnx import save_onnx
from nnbound.report.tables import render_table
from nnbound.verify.verifier import verify_files

VNNCOMP = Path("/work/shared/benchmarks/vnncomp")
GRAPHS = Path("/work/shared/benchmarks/vnncomp_graphs")
RESULT_WORDS = ("unsat", "sat", "unknown", "timeout", "error")
MNIST_NET = VNNCOMP / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
PUBLISHED = Path(__file__).with_name("vnncomp_published.csv")

Published = dict[tuple[str, str, str], tuple[str, float | None]]


def load_published(path: Path = PUBLISHED) -> Published:
    """The winner's published (result, run seconds) per (benchmark, onnx, vnnlib) as written in
    the instances.csv files; an empty result means the winner has none. {} without the file."""
    if not path.exists():
        return {}
    with open(path) as fh:
        return {
            (r["benchmark"], r["onnx"], r["vnnlib"]): (
                r["result"],
                float(r["time_s"]) if r["time_s"] else None,
            )
            for r in csv.DictReader(fh)
        }


def shared_instances(families: set[str] | None, per_family: int) -> list[dict]:
    """Every instance of both shared folders (duplicates once), optionally only some families
    and an evenly spaced sample of at most ``per_family`` of each (0: all)."""
    published = load_published()
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for folder in (VNNCOMP, GRAPHS):
        csv_path = folder / "instances.csv"
        if not csv_path.exists():
            continue
        with open(csv_path) as fh:
            rows = list(csv.DictReader(fh))
        by_family: dict[str, list[dict]] = {}
        for r in rows:
            key = (r["onnx"], r["vnnlib"])
            if key in seen or (families and r["benchmark"] not in families):
                continue
            seen.add(key)
            by_family.setdefault(r["benchmark"], []).append(r)
        for family, chosen in by_family.items():
            if per_family and len(chosen) > per_family:
                chosen = [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, per_family)]
            for r in chosen:
                out.append(
                    {
                        "group": family,
                        "onnx": folder / r["onnx"],
                        "vnnlib": folder / r["vnnlib"],
                        "timeout": float(r["timeout_s"]),
                        "expected": r.get("expected", ""),
                        "winner": published.get((family, r["onnx"], r["vnnlib"]), ("", None)),
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


def run_one(inst: dict, cap: float) -> dict:
    """Verify one instance; refusals (InputError / UnsupportedError...) become ``error``."""
    timeout = min(cap, inst.get("timeout", cap))
    start = time.perf_counter()
    stage, agrees = "-", None
    try:
        res = verify_files(inst["onnx"], inst["vnnlib"], timeout=timeout)
        result, stage = res.status, res.stage
        agrees = res.stats.get("onnxruntime_agrees")
    except NnboundError as exc:
        result, stage = "error", str(exc).splitlines()[0][:60]
    took = time.perf_counter() - start
    check = verdict(result, inst["expected"])
    if result == "sat" and agrees is False:
        check = "WRONG"  # the counterexample is not one for onnxruntime
    winner, winner_time = inst.get("winner", ("", None))
    return {
        "group": inst["group"],
        "network": Path(inst["onnx"]).name,
        "property": Path(inst["vnnlib"]).name,
        "expected": inst["expected"],
        "result": result,
        "time": took,
        "limit": timeout,
        "stage": stage,
        "check": check,
        "ort": {True: "yes", False: "NO", None: "-"}[agrees],
        "winner": winner,
        "winner_time": winner_time,
        "disagree": {result, winner} == {"sat", "unsat"},  # opposite decided answers
    }


def winner_text(rec: dict) -> str:
    """`` winner=<result> <time>s`` for the per-instance line ('' without a published one)."""
    if not rec["winner"]:
        return ""
    took = rec["winner_time"]
    return f"  winner={rec['winner']}" + ("" if took is None else f" {took:.1f}s")


def family_rows(records: list[dict]) -> list[list]:
    groups = list(dict.fromkeys(r["group"] for r in records))
    rows = []
    for g in [*groups, "all"]:
        sub = [r for r in records if g in ("all", r["group"])]
        count = {w: sum(r["result"] == w for r in sub) for w in RESULT_WORDS}
        solved = [r["time"] for r in sub if r["result"] in ("sat", "unsat")]
        decided = sum(r["expected"] in ("sat", "unsat") for r in sub)
        correct = sum(r["check"] == "ok" for r in sub)
        published = sum(bool(r["winner"]) for r in sub)
        won = [r["winner_time"] for r in sub if r["winner"] in ("sat", "unsat")]
        # The winner's decisions that came within the limit this run gave nnbound.
        in_limit = sum(
            r["winner"] in ("sat", "unsat")
            and r["winner_time"] is not None
            and r["winner_time"] <= r["limit"]
            for r in sub
        )
        rows.append(
            [
                g,
                len(sub),
                len(solved),
                *(count[w] for w in RESULT_WORDS),
                f"{correct}/{decided}" if decided else "-",
                sum(r["check"] == "WRONG" for r in sub),
                float(np.median(solved)) if solved else "-",
                max(r["time"] - r["limit"] for r in sub),
                f"{len(won)}/{published}" if published else "-",
                f"{in_limit}/{published}" if published else "-",
                float(np.median(won)) if won else "-",
                sum(r["disagree"] for r in sub),
            ]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap", type=float, default=20.0, help="time cap per instance, seconds")
    ap.add_argument("--families", default="", help="comma-separated families (default: all)")
    ap.add_argument("--per-family", type=int, default=0, help="sample at most N per family")
    ap.add_argument("--generated", action="store_true", help="add the generated instances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--verbose", action="store_true", help="print one row per instance")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    families = {f.strip() for f in args.families.split(",") if f.strip()} or None
    instances = shared_instances(families, args.per_family)
    with tempfile.TemporaryDirectory() as tmp:
        if args.generated:
            instances += generated_instances(Path(tmp), args.seed)
        if not instances:
            raise SystemExit("no instances (is /work/shared/benchmarks there?)")
        records = []
        start = time.perf_counter()
        for k, inst in enumerate(instances, 1):
            rec = run_one(inst, args.cap)
            records.append(rec)
            print(
                f"[{k}/{len(instances)}] {rec['group']:9s} {rec['network']} {rec['property']}: "
                f"{rec['result']} ({rec['time']:.2f} s, {rec['stage']})"
                f"{'  WRONG' if rec['check'] == 'WRONG' else ''}{winner_text(rec)}"
                f"{'  DISAGREE' if rec['disagree'] else ''}",
                flush=True,
            )
        wall = time.perf_counter() - start
    if args.verbose:
        print()
        keys = ["group", "network", "property", "expected", "result", "time", "stage", "check"]
        keys += ["ort", "winner"]
        print(render_table(keys, [[r[k] for k in keys] for r in records]))
    print()
    print(f"per-instance cap {args.cap:g} s, torch threads {args.threads}, wall {wall:.1f} s")
    print(
        render_table(
            [
                "family",
                "instances",
                "solved",
                *RESULT_WORDS,
                "correct/expected",
                "wrong",
                "median_solved_s",
                "max_over_limit_s",
                "winner_solved",
                "winner_in_limit",
                "winner_median_s",
                "disagree",
            ],
            family_rows(records),
            digits=2,
        )
    )


if __name__ == "__main__":
    main()
