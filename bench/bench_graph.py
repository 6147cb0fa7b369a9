"""General computation graphs: cost of IBP / CROWN / alpha-CROWN per image, with peak memory.

Rows:
(a) ``sri_resnet_a`` (VNN-COMP 2022: a CIFAR ResNet with 3 residual blocks, ONNX) on the
    input boxes of its VNN-LIB properties, untargeted margins of its prediction at the box
    centre; skipped when the file is missing;
(b) the catalogue's CIFAR ResNet-18 (widths 64, 128, 256, 512; 2 basic blocks per stage;
    3x32x32; batch norm as ``scale`` nodes; global average pool) imported as a graph
    (``nnbound.catalogue.graph.cifar_resnet_graph``), Linf ball of ``--eps`` around real
    CIFAR-10 test images, untargeted margins of the net's own prediction;
(c) how the cost grows: the same layout with one stage of 2 / 4 / 8 residual blocks at
    ``--sweep-width`` channels, and 4 blocks at 8 / 16 / 32 channels (``--sweep-size``
    pixels);
(d) MLP radius search, chain ``Network`` path vs the same net as a :class:`Graph` through
    ``graph_bounds`` (a chain graph given to ``bounds`` would take the chain path): the
    built-in ``mnist-fc-3layer`` (trained) and a random 784-1024-1024-10 ReLU MLP on MNIST test
    images; one bisection of ``--steps`` CROWN calls per image (batched, per-row eps), the
    same eps sequence for both paths when their bounds agree; printed as graph / chain time
    ratios. The production search (``certified_radius``, fewer calls) on the chain is
    printed for scale.

Weights of (b)-(d)'s synthetic nets are RANDOM (He-normal, seeded): the cost of a bound does
not depend on training beyond how many ReLUs are unstable, which the eps controls. Each
measurement runs in a fresh spawned subprocess so its peak memory is its own: on CPU the rise
of the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``; ``ru_maxrss``
elsewhere) over the resident set after building the net and inputs and a warm-up call
(tracemalloc does not see torch's allocator), on CUDA ``torch.cuda.max_memory_allocated``
over the baseline. Times are wall clock with ``--threads`` torch threads (1 by default: per
core, comparable on a shared machine). A measurement past ``--timeout`` seconds is killed and
reported as such.

Never run by CI. Usage: python bench/bench_graph.py [--device cpu|cuda] [--quick]
[--images 2] [--steps 8] [--eps 0.001] [--timeout 600] [--threads 1] [--only a,b,c,d]
``--quick``: 1 image, 4 steps, the (b) row with IBP only, sweeps at 16x16 pixels and to 4
blocks / 16 channels.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnbound.report.tables import render_table

ROOT = Path(__file__).resolve().parents[1]
SRI = ROOT.parent / "shared" / "benchmarks" / "vnncomp_graphs" / "sri_resnet_a"
SRI_DIRS = (SRI, Path("/work/shared/benchmarks/vnncomp_graphs/sri_resnet_a"))


def sri_files(where: str | None = None) -> tuple[Path, list[Path]] | None:
    """sri_resnet_a's ONNX file and VNN-LIB files, or ``None`` when missing."""
    for d in [Path(where)] if where else SRI_DIRS:
        onnx_files = sorted((d / "onnx").glob("*.onnx"))
        if onnx_files:
            return onnx_files[0], sorted((d / "vnnlib").glob("*.vnnlib"))
    return None


def resnet(job: dict[str, Any]) -> Any:
    """The catalogue's CIFAR ResNet (basic blocks, batch norm calibrated) as a graph."""
    from nnbound.catalogue.graph import cifar_resnet_graph

    return cifar_resnet_graph(job["blocks"], width=job["width"], image_size=job["size"], seed=0)


def random_mlp(sizes: tuple[int, ...], seed: int = 0) -> Any:
    """A ReLU MLP with He-normal weights on 1x28x28 inputs in [0, 1]."""
    from nnbound.network.layers import Activation, Dense, Flatten
    from nnbound.network.network import Network

    gen = torch.Generator().manual_seed(seed)
    layers: list[Any] = [Flatten()]
    for i in range(len(sizes) - 1):
        w = torch.randn(sizes[i + 1], sizes[i], generator=gen) * math.sqrt(2.0 / sizes[i])
        layers.append(Dense(w, torch.randn(sizes[i + 1], generator=gen) * 0.05))
        if i < len(sizes) - 2:
            layers.append(Activation("relu"))
    return Network(tuple(layers), (1, 28, 28), input_range=(0.0, 1.0), name="random-mlp")


def _status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_start(device: str) -> int:
    """The baseline (bytes) the measured call's peak is taken over."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        # Reset the peak RSS (VmHWM) to the current RSS, so that the peak of the call shows
        # even when the set-up (data loading) peaked higher.
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return rss * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_end(device: str, start: int) -> float:
    """Peak memory of the measured call in MiB (over the baseline)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    hwm = _status_kib("VmHWM")
    peak = (
        hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return (peak - start) / 2**20


def _images(dataset: str, n: int, size: int, input_range: tuple[float, float], dev: str) -> Any:
    from nnbound.data.registry import load_dataset

    x = load_dataset(dataset, split="test", input_range=input_range).images[:n]
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    return x.clamp(*input_range).to(torch.device(dev))


def _bound_problem(job: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(graph, input set, spec) of a bound row."""
    from nnbound.sets.box import Box
    from nnbound.sets.lp_ball import LpBall
    from nnbound.tasks.radius import margin_specs

    dev = job["device"]
    if job["net"] == "sri":
        from nnbound.network.from_onnx_graph import from_onnx_graph
        from nnbound.verify.vnnlib import read_vnnlib

        graph = from_onnx_graph(job["onnx"]).to(device=torch.device(dev))
        lows, ups = [], []
        for path in job["vnnlib"]:
            d = read_vnnlib(path).disjuncts[0]
            lows.append(torch.as_tensor(d.lower, dtype=graph.dtype).reshape(graph.input_shape))
            ups.append(torch.as_tensor(d.upper, dtype=graph.dtype).reshape(graph.input_shape))
        box = Box.make(torch.stack(lows).to(dev), torch.stack(ups).to(dev))
        with torch.no_grad():
            logits = graph(box.center)
        labels = logits.argmax(1)
        spec = margin_specs(labels, torch.full_like(labels, -1), logits.shape[1], logits.dtype)
        return graph, box, spec
    graph = resnet(job).to(device=torch.device(dev))
    x = _images("cifar100", job["images"], job["size"], (0.0, 1.0), dev)
    with torch.no_grad():
        logits = graph(x)
    labels = logits.argmax(1)
    spec = margin_specs(labels, torch.full_like(labels, -1), logits.shape[1], logits.dtype)
    return graph, LpBall.make(x, job["eps"], math.inf), spec


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement, run in a fresh subprocess."""
    torch.set_num_threads(job["threads"])
    from nnbound.bounds.api import bounds

    dev = job["device"]
    out: dict[str, Any] = {}
    if job["kind"] == "radius":
        return _measure_radius(job)
    graph, input_set, spec = _bound_problem(job)
    out["neurons"] = sum(math.prod(graph.shapes[n.output]) for n in graph.nodes if n.op == "relu")
    with torch.no_grad():
        bounds(graph, input_set.rows(torch.arange(1, device=spec.device)), "ibp", spec[:1])
    start = _peak_start(dev)
    t0 = time.perf_counter()
    with torch.no_grad() if job["method"] != "alpha-crown" else torch.enable_grad():
        b = bounds(graph, input_set, job["method"], spec)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    out["peak_mib"] = _peak_end(dev, start)
    out["value"] = float(b.lower.min(-1).values.mean())
    out["images"] = input_set.center.shape[0]
    return out


def _bisect(bound_fn: Any, x: Any, spec: Any, steps: int, hi: float) -> tuple[Any, int]:
    """Batched bisection on per-row eps in ``[0, hi]``: ``steps`` bound calls."""
    from nnbound.sets.lp_ball import LpBall

    lo_e = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    hi_e = torch.full_like(lo_e, hi)
    for _ in range(steps):
        mid = (lo_e + hi_e) / 2
        ball = LpBall.make(x, mid.to(x.dtype), math.inf)
        ok = bound_fn(ball, spec).lower.min(-1).values > 0
        lo_e = torch.where(ok, mid, lo_e)
        hi_e = torch.where(ok, hi_e, mid)
    return lo_e, steps


def _measure_radius(job: dict[str, Any]) -> dict[str, Any]:
    from nnbound.bounds.api import bounds
    from nnbound.bounds.graph_bounds import graph_bounds
    from nnbound.network.chain_graph import network_to_graph
    from nnbound.network.load import load_model
    from nnbound.tasks.radius import certified_radius, margin_specs

    dev = job["device"]
    if job["net"] == "mnist-fc-3layer":
        net = load_model("mnist-fc-3layer")
    else:
        net = random_mlp(tuple(job["sizes"]))
    net = net.to(device=torch.device(dev))
    x = _images("mnist100", job["images"], 28, (0.0, 1.0), dev)
    with torch.no_grad():
        labels = net(x).argmax(1)
    untargeted = torch.full_like(labels, -1)
    spec = margin_specs(labels, untargeted, net.num_outputs, net.dtype)
    graph = network_to_graph(net)
    if job["path"] == "chain":
        fn = lambda ball, c: bounds(net, ball, "crown", c)  # noqa: E731
    elif job["path"] == "graph":
        fn = lambda ball, c: graph_bounds(graph, ball, "crown", c)  # noqa: E731
    with torch.no_grad():
        if job["path"] == "search":
            certified_radius(net, x[:1], labels[:1], untargeted[:1], method="ibp", steps=1)
        else:
            _bisect(fn, x[:1], spec[:1], 1, job["hi"])
    start = _peak_start(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        if job["path"] == "search":
            r = certified_radius(net, x, labels, untargeted, norm="inf", steps=job["steps"])
        else:
            r, _ = _bisect(fn, x, spec, job["steps"], job["hi"])
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - t0,
        "peak_mib": _peak_end(dev, start),
        "value": float(r.double().mean()),
        "images": x.shape[0],
    }


def run(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``_measure(job)`` in a fresh process; ``{"error": ...}`` past ``timeout`` or on error."""
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(1)
    try:
        return pool.apply_async(_measure, (job,)).get(timeout)
    except mp.TimeoutError:
        return {"error": f"timeout > {timeout:g} s"}
    except Exception as exc:  # a row that fails is reported, the rest go on
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:70]}"}
    finally:
        pool.terminate()
        pool.join()


def _row(part: str, net: str, method: str, res: dict[str, Any]) -> list[Any]:
    if "error" in res:
        return [part, net, method, "-", "-", "-", "-", res["error"]]
    n = res.get("images", 1)
    return [
        part,
        net,
        method,
        n,
        res["seconds"] / n,
        res["peak_mib"],
        res.get("neurons", "-"),
        f"{res['value']:.4g}",
    ]


@dataclass
class Bench:
    """The run's options and the rows measured so far."""

    args: argparse.Namespace
    rows: list[list[Any]] = field(default_factory=list)
    ratios: list[list[Any]] = field(default_factory=list)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def base(self) -> dict[str, Any]:
        a = self.args
        return {"device": a.device, "threads": a.threads, "images": a.images, "eps": a.eps}

    def measure(self, job: dict[str, Any]) -> dict[str, Any]:
        key = repr(sorted(job.items()))  # the depth and width sweeps share a point
        if key not in self.done:
            self.done[key] = run(job, self.args.timeout)
        return self.done[key]

    def add(self, part: str, net: str, method: str, job: dict[str, Any]) -> None:
        self.rows.append(_row(part, net, method, self.measure({**self.base, **job})))
        print("row", self.rows[-1], flush=True)

    def part_a(self) -> None:
        files = sri_files(self.args.sri_dir)
        if files is None:
            self.rows.append(
                ["(a)", "sri_resnet_a", "-", "-", "-", "-", "-", "skipped: file missing"]
            )
            return
        onnx_file, vnnlibs = files
        for method in self.args.methods:
            job = {"kind": "bound", "net": "sri", "method": method, "onnx": str(onnx_file)}
            job["vnnlib"] = [str(v) for v in vnnlibs[: self.args.images]]
            self.add("(a)", "sri_resnet_a", method, job)

    def part_b(self) -> None:
        for method in self.args.big_methods:
            job = {"kind": "bound", "net": "resnet", "method": method, "size": 32}
            job |= {"width": 64, "blocks": 18}
            self.add("(b)", "resnet18-widths 32x32", method, job)

    def part_c(self) -> None:
        a, size = self.args, self.args.sweep_size
        points = [(d, a.sweep_width, "(c) depth") for d in a.depths]
        points += [(4, w, "(c) width") for w in a.widths]
        for depth, width, part in points:
            for method in ("ibp", "crown"):
                job = {"kind": "bound", "net": "resnet", "method": method, "size": size}
                job |= {"width": width, "blocks": (depth,)}
                self.add(part, f"{depth} blocks x {width} ch, {size}x{size}", method, job)

    def part_d(self) -> None:
        nets = [
            ("mnist-fc-3layer", {"net": "mnist-fc-3layer"}, 0.1),
            ("784-1024-1024-10", {"net": "random", "sizes": (784, 1024, 1024, 10)}, 0.004),
        ]
        names = {
            "chain": "crown bisect, Network",
            "graph": "crown bisect, graph_bounds",
            "search": "crown certified_radius (Network)",
        }
        for label, net, hi in nets:
            res = {}
            for path, name in names.items():
                job = {**self.base, **net, "kind": "radius", "path": path, "hi": hi}
                res[path] = self.measure({**job, "steps": self.args.steps})
                self.rows.append(_row("(d) radius", label, name, res[path]))
                print("row", self.rows[-1], flush=True)
            c, g = res["chain"], res["graph"]
            if "error" not in c and "error" not in g:
                ratio = g["seconds"] / c["seconds"]
                self.ratios.append(
                    [label, ratio, c["peak_mib"], g["peak_mib"], g["value"] - c["value"]]
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--eps", type=float, default=1e-3, help="Linf radius of the bound rows")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="a,b,c,d", help="parts to run, in this order")
    ap.add_argument("--sweep-width", type=int, default=16)
    ap.add_argument("--sweep-size", type=int, default=32)
    ap.add_argument("--sri-dir", default=None, help="folder with sri_resnet_a's onnx/, vnnlib/")
    args = ap.parse_args()
    args.methods = ["ibp", "crown", "alpha-crown"]
    args.depths, args.widths, args.big_methods = [2, 4, 8], [8, 16, 32], args.methods
    if args.quick:
        args.images, args.steps, args.sweep_size = 1, 4, 16
        args.depths, args.widths, args.big_methods = [2, 4], [8, 16], ["ibp"]
    print(
        f"device {args.device}, torch threads {args.threads}, Linf eps {args.eps:g} "
        f"(synthetic nets), timeout {args.timeout:g} s per measurement",
        flush=True,
    )
    bench = Bench(args)
    for part in args.only.split(","):
        getattr(bench, f"part_{part.strip()}")()
    headers = ["part", "network", "method", "images", "s / image", "peak MiB", "ReLUs"]
    print()
    print(render_table([*headers, "mean margin lb / radius"], bench.rows, digits=4))
    if bench.ratios:
        print()
        print("(d) graph_bounds vs the chain path, the same bisection:")
        headers = ["network", "time graph / chain", "chain peak MiB", "graph peak MiB"]
        print(render_table([*headers, "radius diff"], bench.ratios, digits=4))


if __name__ == "__main__":
    main()
