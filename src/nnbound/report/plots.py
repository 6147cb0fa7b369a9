"""PNG plots of an :class:`~nnbound.tasks.evaluate.Evaluation` (matplotlib, optional extra).

* :func:`sandwich_figure`: per record a bar from the best certified radius to the smallest
  attack distance, a marker per certified method, per attack, and the CLEVER score;
* :func:`distribution_figure`: the distribution of radii / scores / distances per method;
* :func:`thumbnail_png`: one input (or perturbation) as a small PNG.

matplotlib is only needed here (``pip install 'nnbound[report]'``); figures are drawn with the
object-oriented API on an Agg canvas, so no GUI backend and no pyplot global state are involved.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.sets.norms import norm_name

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from nnbound.tasks.evaluate import Evaluation

KIND_COLORS = {"certified": "#1f77b4", "estimate": "#222222", "attack": "#d62728"}
CERTIFIED_MARKERS = ("<", "^", "v", "p", "h", "8")
ATTACK_MARKERS = ("x", "+", "1", "2", "3", "4")
METHOD_COLORS = (
    "#1f77b4",
    "#17becf",
    "#9467bd",
    "#2ca02c",
    "#d62728",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
)


def require_matplotlib() -> None:
    """Raise a clear :class:`UnsupportedError` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UnsupportedError(
            "reports need matplotlib: pip install 'nnbound[report]' (or matplotlib>=3.7)"
        ) from None


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _method_color(i: int) -> str:
    return METHOD_COLORS[i % len(METHOD_COLORS)]


def sandwich_figure(ev: Evaluation) -> Figure:
    """One row per record: the grey bar spans best certified radius -> smallest attack distance
    (the gap the truth lies in); markers show each method. Rows flagged as bugs are labelled in
    red, rows where CLEVER exceeds an attack distance in orange."""
    records = ev.records
    n = max(1, len(records))
    fig = _figure(9.0, 1.2 + 0.38 * n)
    ax = fig.add_subplot(1, 1, 1)
    cert = ev.certified_methods
    atts = ev.attack_methods
    finite_max = 0.0
    for r in records:
        vals = [*r.certified.values(), *r.attacks.values(), r.clever]
        finite_max = max([finite_max, *[v for v in vals if math.isfinite(v)]])
    right = finite_max * 1.08 if finite_max > 0 else 1.0
    labels = []
    for row, r in enumerate(records):
        y = n - 1 - row
        lo = r.best_certified if math.isfinite(r.best_certified) else 0.0
        hi = r.best_attack if math.isfinite(r.best_attack) else right
        ax.barh(y, max(hi - lo, 0.0), left=lo, height=0.5, color="#dddddd", edgecolor="#999999")
        if not math.isfinite(r.best_attack) and r.attacks:
            ax.text(right, y, " no attack", va="center", fontsize=7, color="#d62728")
        target = "untargeted" if r.target < 0 else f"-> {r.target}"
        labels.append(f"#{r.index} ({r.label} {target})")
    seen: set[str] = set()

    def mark(x: float, y: float, marker: str, color: str, label: str) -> None:
        if not math.isfinite(x):
            return
        ax.plot(
            [x],
            [y],
            linestyle="none",
            marker=marker,
            markersize=8,
            markeredgewidth=1.6,
            color=color,
            label=None if label in seen else label,
        )
        seen.add(label)

    for row, r in enumerate(records):
        y = n - 1 - row
        for i, m in enumerate(cert):
            mark(r.certified[m], y, CERTIFIED_MARKERS[i % 6], _method_color(i), f"{m} (certified)")
        if ev.has_clever:
            mark(r.clever, y, "D", "#222222", "CLEVER (estimate)")
        for i, m in enumerate(atts):
            mark(r.attacks[m], y, ATTACK_MARKERS[i % 6], _method_color(i + 4), f"{m} (attack)")
    ax.set_yticks(range(n - 1, n - 1 - len(records), -1))
    ax.set_yticklabels(labels, fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), records, strict=False):
        kinds = {f.kind for f in r.flags}
        if "bug" in kinds:
            tick.set_color("#d62728")
            tick.set_fontweight("bold")
        elif "clever_above_attack" in kinds:
            tick.set_color("#ff7f0e")
    ax.set_xlim(0, right * 1.1)
    ax.set_ylim(-0.8, n - 0.2)
    ax.set_xlabel(f"L{norm_name(ev.norm)} distance")
    ax.set_title(f"{ev.model}: certified <= CLEVER <= attack, per input", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if seen:
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.5 / n - 0.08),
            ncol=4,
            fontsize=8,
            frameon=False,
        )
    return fig


def distribution_figure(ev: Evaluation) -> Figure:
    """Box plot plus the individual values of every method (finite values only), coloured by
    kind: certified (blue), CLEVER (black), attacks (red)."""
    from nnbound.tasks.evaluate import method_kind

    methods = list(ev.methods)
    fig = _figure(max(5.0, 1.1 * len(methods) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    data = [[v for v in ev.values(m) if math.isfinite(v)] for m in methods]
    positions = list(range(1, len(methods) + 1))
    nonempty = [(p, d) for p, d in zip(positions, data, strict=True) if d]
    if nonempty:
        ax.boxplot(
            [d for _, d in nonempty],
            positions=[p for p, _ in nonempty],
            widths=0.5,
            showfliers=False,
        )
    gen = torch.Generator().manual_seed(0)
    for p, m, d in zip(positions, methods, data, strict=True):
        if not d:
            continue
        jitter = (torch.rand(len(d), generator=gen) - 0.5) * 0.25
        ax.scatter(
            [p + float(j) for j in jitter],
            d,
            s=14,
            alpha=0.75,
            color=KIND_COLORS[method_kind(m)],
            zorder=3,
        )
    ax.set_xticks(positions)
    ax.set_xticklabels(methods, fontsize=9)
    ax.set_ylabel(f"L{norm_name(ev.norm)} radius / score / distance")
    ax.set_title("distribution per method (blue certified, black CLEVER, red attacks)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(bottom=0)
    return fig


THUMBNAIL_MAX_PX = 96
"""Longest side of a thumbnail: three per row (input, example, perturbation) must fit a page;
full-size 224 px ImageNet inputs made 700 px rows."""


def _fit_thumbnail(a: Tensor, signed: bool, scale: int) -> tuple[Tensor, int]:
    """``(image, upscale)``: small inputs are enlarged ``scale`` times (pixels stay sharp),
    large ones shrunk to :data:`THUMBNAIL_MAX_PX`. A perturbation keeps, per block, its
    value of largest magnitude: an average of a +-eps sign pattern would read as none."""
    h, w = a.shape[1:]
    if max(h, w) * scale <= THUMBNAIL_MAX_PX:
        return a, scale
    if max(h, w) <= THUMBNAIL_MAX_PX:
        return a, 1
    f = THUMBNAIL_MAX_PX / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    if not signed:
        return torch.nn.functional.adaptive_avg_pool2d(a.unsqueeze(0), size)[0], 1
    _, idx = torch.nn.functional.adaptive_max_pool2d(
        a.abs().unsqueeze(0), size, return_indices=True
    )
    flat = a.flatten(1)
    return flat.gather(1, idx[0].flatten(1)).reshape(a.shape[0], *size), 1


def thumbnail_png(
    img: Tensor, domain: tuple[float, float] | None, *, signed: bool = False, scale: int = 2
) -> bytes | None:
    """A small PNG of one input ``(C, H, W)`` with C in {1, 3} (None for other shapes), at
    most :data:`THUMBNAIL_MAX_PX` pixels on its longest side.

    ``signed`` draws a perturbation: grey = 0, white/black = +-max |value|.
    """
    require_matplotlib()
    import numpy as np
    from matplotlib import image as mpimg

    if img.dim() == 2:
        img = img.unsqueeze(0)
    if img.dim() != 3 or img.shape[0] not in (1, 3) or min(img.shape[1:]) < 4:
        return None
    a, scale = _fit_thumbnail(img.detach().to(torch.float64).cpu(), signed, scale)
    if signed:
        m = float(a.abs().max())
        a = a / (2 * m) + 0.5 if m > 0 else torch.full_like(a, 0.5)
    else:
        lo, hi = domain if domain is not None else (float(a.min()), float(a.max()))
        a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
    arr = a.clamp(0, 1).permute(1, 2, 0).numpy()
    arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    if arr.shape[2] == 1:
        mpimg.imsave(buf, arr[:, :, 0], cmap="gray", vmin=0, vmax=1, format="png")
    else:
        mpimg.imsave(buf, arr, format="png")
    return buf.getvalue()


def render_plots(ev: Evaluation) -> dict[str, bytes]:
    """``{"sandwich": PNG bytes, "radii": PNG bytes}``."""
    return {
        "sandwich": png_bytes(sandwich_figure(ev)),
        "radii": png_bytes(distribution_figure(ev)),
    }


def write_plots(
    ev: Evaluation, directory: str | Path, rendered: dict[str, bytes] | None = None
) -> dict[str, Path]:
    """Write ``sandwich.png`` and ``radii.png`` into ``directory`` (``rendered`` reuses
    :func:`render_plots` output); returns name -> path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, data in (rendered or render_plots(ev)).items():
        path = d / f"{name}.png"
        path.write_bytes(data)
        out[name] = path
    return out
