"""A self-contained HTML page for an :class:`~nnbound.tasks.evaluate.Evaluation`.

One file, no network access: styles inline, plots and image thumbnails embedded as base64 PNG
``data:`` URIs. :func:`render_html` only formats (it takes the PNG bytes); :func:`write_report`
draws the plots with matplotlib (:mod:`nnbound.report.plots`) and writes ``index.html`` plus the
PNG files into a folder.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnbound.sets.norms import norm_name

if TYPE_CHECKING:  # pragma: no cover
    from nnbound.tasks.evaluate import Evaluation

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
       color: #222; background: #fff; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
tr.bug td { background: #ffd6d6; } tr.warn td { background: #fff0d0; }
td.cert { color: #1f4e8c; } td.att { color: #a01818; } td.est { color: #222; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card .n { font-size: 24px; font-weight: bold; } .card.bad .n { color: #c00; }
.card.warn .n { color: #c77800; } .card.good .n { color: #2a7a2a; }
img.plot { max-width: 100%; border: 1px solid #ddd; }
img.thumb { image-rendering: pixelated; vertical-align: middle; }
code { background: #f4f4f4; padding: 1px 4px; }
ul.flags { font-size: 13px; }
"""


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "none" if v > 0 else "-inf"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return html.escape(str(v))


def _img(data: bytes | None, alt: str, cls: str = "plot") -> str:
    if not data:
        return ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render_html(
    ev: Evaluation,
    plots: Mapping[str, bytes],
    *,
    thumbnails: Sequence[tuple[bytes | None, bytes | None, bytes | None]] | None = None,
    best_attacks: Sequence[str | None] | None = None,
    provenance: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The report page as a string.

    Args:
        ev: the evaluation.
        plots: name -> PNG bytes (``sandwich``, ``radii``), embedded in that order.
        thumbnails: per record (input, closest adversarial example, perturbation) PNG bytes
            (None entries are skipped).
        best_attacks: per record the attack that gave the closest example.
        provenance: versions, device, dtype, seed.
        title: page title (default: the model and norm).
    """
    from nnbound.tasks.evaluate import method_kind

    norm = f"L{norm_name(ev.norm)}"
    title = title or f"nnbound evaluate: {ev.model}, {norm}"
    s = ev.summary()
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *_random_weights_banner(provenance),
        '<p class="sub">The robustness sandwich per input: certified lower bounds '
        "&le; CLEVER estimate &le; smallest adversarial perturbation found by an attack. "
        f"All numbers are {norm} distances in the model's input space"
        + (
            f" (data range {ev.input_range[0]:g} to {ev.input_range[1]:g})"
            if ev.input_range
            else ""
        )
        + ".</p>",
        '<div class="cards">',
        _card("inputs", s["records"], ""),
        _card("sandwich holds", s["ok"], "good"),
        _card("BUG: certified &gt; attack", s["bugs"], "bad" if s["bugs"] else "good"),
        _card(
            "CLEVER &gt; attack",
            s["clever_above_attack"],
            "warn" if s["clever_above_attack"] else "good",
        ),
        _card("CLEVER &lt; certified", s["clever_below_certified"], ""),
        _card("no attack succeeded", s["no_attack"], "warn" if s["no_attack"] else ""),
        "</div>",
    ]
    if s["bugs"]:
        out.append(
            '<p style="color:#c00;font-weight:bold">A certified radius exceeds the distance of '
            "a re-checked adversarial example: the certificate is unsound. This is a bug; "
            "please report it with this page.</p>"
        )
    for name, data in plots.items():
        caption = {
            "sandwich": "Per input: grey bar from the best certified radius to the closest "
            "attack; markers per method.",
            "radii": "Distribution of radii / scores / distances per method.",
        }.get(name, name)
        out += [f"<h2>{html.escape(name)}</h2>", f"<p class='sub'>{caption}</p>", _img(data, name)]
    # Per-method summary.
    out += [
        "<h2>methods</h2>",
        "<table><tr><th class='l'>method</th><th class='l'>kind</th>"
        "<th>mean</th><th>median</th><th>finite</th><th>seconds</th></tr>",
    ]
    for m, row in s["methods"].items():
        out.append(
            f"<tr><td class='l'>{html.escape(m)}</td><td class='l'>{row['kind']}</td>"
            f"<td>{_fmt(row['mean'])}</td><td>{_fmt(row['median'])}</td>"
            f"<td>{row['finite']}</td><td>{row['seconds']:.2f}</td></tr>"
        )
    out.append("</table>")
    # Per-record table.
    heads = ["index", "label", "target", "margin"]
    out += ["<h2>per input</h2>", "<table><tr>"]
    out += [f"<th>{h}</th>" for h in heads]
    out += [f"<th>{html.escape(m)}</th>" for m in ev.methods]
    if thumbnails:
        out.append("<th class='l'>input / closest example / perturbation</th>")
    out.append("<th class='l'>verdict</th></tr>")
    for i, r in enumerate(ev.records):
        kinds = {f.kind for f in r.flags}
        cls = "bug" if "bug" in kinds else ("warn" if "clever_above_attack" in kinds else "")
        out.append(f"<tr class='{cls}'>")
        target = "untargeted" if r.target < 0 else str(r.target)
        out += [
            f"<td>{r.index}</td>",
            f"<td>{r.label}</td>",
            f"<td>{target}</td>",
            f"<td>{_fmt(r.margin)}</td>",
        ]
        for m in ev.methods:
            kind = method_kind(m)
            css = {"certified": "cert", "attack": "att"}.get(kind, "est")
            out.append(f"<td class='{css}'>{_fmt(ev.values_of(r, m))}</td>")
        if thumbnails:
            clean, adv, pert = thumbnails[i]
            via = best_attacks[i] if best_attacks else None
            out.append(
                "<td class='l'>"
                + _img(clean, "input", "thumb")
                + " "
                + _img(adv, "example", "thumb")
                + " "
                + _img(pert, "perturbation", "thumb")
                + (f" <small>{html.escape(via)}</small>" if via else "")
                + "</td>"
            )
        out.append(f"<td class='l'>{html.escape(r.verdict)}</td></tr>")
    out.append("</table>")
    flagged = [(r, f) for r in ev.records for f in r.flags]
    if flagged:
        out += ["<h2>flags</h2>", "<ul class='flags'>"]
        out += [
            f"<li>#{r.index}: <b>{html.escape(f.kind)}</b> {html.escape(f.message)}</li>"
            for r, f in flagged
        ]
        out.append("</ul>")
    # Settings and provenance.
    from dataclasses import asdict

    out += ["<h2>settings</h2>", "<table>"]
    items = {"methods": ", ".join(ev.methods), **asdict(ev.settings)}
    if provenance:
        items.update(provenance)
    out += [
        f"<tr><td class='l'>{html.escape(str(k))}</td><td class='l'>{_fmt(v)}</td></tr>"
        for k, v in items.items()
    ]
    out += [
        "</table>",
        "<p class='sub'>Certified radii are sound lower bounds; CLEVER is an "
        "estimate (extreme value theory), not a bound; attack distances are distances of "
        "adversarial examples re-checked on the model in its dtype and in float64, so they "
        "are upper bounds. <code>cw</code> minimises L2 and <code>ead</code> L1; their "
        f"examples are measured in {norm} here.</p>",
        "</body></html>",
    ]
    return "\n".join(out)


def _random_weights_banner(provenance: Mapping[str, Any] | None) -> list[str]:
    """A warning at the top when the model ran with random weights (a catalogue architecture
    without --weights): every score below describes an untrained network."""
    if not provenance or not provenance.get("random_weights"):
        return []
    weights = html.escape(str(provenance.get("weights", "random")))
    return [
        '<p class="warnbox" style="background:#fff3cd;border:1px solid #e0b000;padding:8px;'
        'font-weight:bold">WARNING: this model has RANDOM weights '
        f"({weights}): the scores are meaningless for a trained model; pass --weights PATH."
        "</p>"
    ]


def _card(label: str, n: int, cls: str) -> str:
    return f'<div class="card {cls}"><div class="n">{n}</div><div>{label}</div></div>'


def write_report(
    ev: Evaluation,
    directory: str | Path,
    *,
    provenance: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Write ``index.html`` (self-contained), ``sandwich.png`` and ``radii.png`` into
    ``directory`` (created); returns the HTML path. Needs matplotlib."""
    from nnbound.report.plots import render_plots, require_matplotlib, thumbnail_png, write_plots
    from nnbound.tasks.evaluate import best_examples

    require_matplotlib()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    plots = render_plots(ev)
    write_plots(ev, d, plots)
    names, adv = best_examples(ev)
    thumbs: list[tuple[bytes | None, bytes | None, bytes | None]] = []
    for i in range(len(ev.records)):
        x = ev.inputs[i]
        thumbs.append(
            (
                thumbnail_png(x, ev.input_range),
                thumbnail_png(adv[i], ev.input_range) if names[i] else None,
                thumbnail_png(adv[i] - x, None, signed=True) if names[i] else None,
            )
        )
    if not any(any(t) for t in thumbs):
        thumbs = []
    page = render_html(
        ev,
        plots,
        thumbnails=thumbs or None,
        best_attacks=names,
        provenance=provenance,
        title=title,
    )
    path = d / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
