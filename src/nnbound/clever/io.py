"""Sample files for the reference's two-step flow: collect gradients, then fit.

The reference writes one ``.mat`` file per (image, target) whose *file name* encodes the
metadata; here one ``.npz`` (``np.savez``, no pickled objects: it loads with
``allow_pickle=False``) holds every record of a run:

=================  ===================  ======================================================
array              shape                meaning
=================  ===================  ======================================================
``format``         ()                   ``"nnbound-clever-samples/1"``
``settings``       ()                   JSON of the sampling settings (shared by the records)
``model``          ()                   the model's name or path
``rec_index``      (J,) int64           dataset index of each record's image
``rec_label``      (J,) int64           its class
``rec_kind``       (J,) str             ``least``, ``top2``, ``random``, ``untargeted``,
                                        ``class<j>``
``rec_seconds``    (J,) float64         sampling time of the record
``logits``         (J, K) float64       clean logits
``pair_record``    (P,) int64           the record each (image, target) pair belongs to
``pair_target``    (P,) int64           target class j
``g_x0``           (P,) float64         ``f_c(x0) - f_j(x0)``
``grad_norm_x0``   (P, 3) float64       ``||grad g(x0)||_q`` for p = 1, 2, inf
``maxima``         (P, 3, niters)       the batch maxima (see ``CleverSamples.maxima``)
``order``          ()                   1 or 2
=================  ===================  ======================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnbound.clever.estimator import CleverSamples
from nnbound.errors import InputError
from nnbound.report.atomic import atomic_path

FORMAT = "nnbound-clever-samples/1"


@dataclass(frozen=True)
class SampleRecord:
    """One (image, target kind) of a run: where the image came from and its samples."""

    index: int
    kind: str
    samples: CleverSamples


def save_samples(path: str | Path, records: Sequence[SampleRecord], model: str = "") -> None:
    """Write ``records`` (all with the same sampling settings and ``niters``) to ``path``."""
    if not records:
        raise InputError("no samples to save (no correctly classified image?)")
    first = records[0].samples
    niters = first.niters
    for r in records:
        if r.samples.niters != niters or r.samples.order != first.order:
            raise InputError("all records of a sample file need the same niters and order")
    pair_record = np.concatenate(
        [np.full(len(r.samples.targets), i, dtype=np.int64) for i, r in enumerate(records)]
    )
    target = Path(path)
    if target.suffix != ".npz":  # np.savez's own rule, applied before the temporary name
        target = target.with_name(target.name + ".npz")
    with atomic_path(target) as tmp:
        _savez(tmp, records, model, first, pair_record)


def _savez(
    path: Path,
    records: Sequence[SampleRecord],
    model: str,
    first: CleverSamples,
    pair_record: np.ndarray,
) -> None:
    np.savez(
        path,
        format=np.array(FORMAT),
        settings=np.array(json.dumps(dict(first.settings))),
        model=np.array(str(model)),
        rec_index=np.array([r.index for r in records], dtype=np.int64),
        rec_label=np.array([r.samples.label for r in records], dtype=np.int64),
        rec_kind=np.array([r.kind for r in records], dtype=str),
        rec_seconds=np.array([r.samples.seconds for r in records], dtype=np.float64),
        logits=np.stack([r.samples.logits for r in records]),
        pair_record=pair_record,
        pair_target=np.concatenate(
            [np.asarray(r.samples.targets, dtype=np.int64) for r in records]
        ),
        g_x0=np.concatenate([r.samples.g_x0 for r in records]),
        grad_norm_x0=np.concatenate([r.samples.grad_norm_x0 for r in records]),
        maxima=np.concatenate([r.samples.maxima for r in records]),
        order=np.array(first.order, dtype=np.int64),
    )


def load_samples(path: str | Path) -> tuple[list[SampleRecord], str]:
    """The records and the model name of a file written by :func:`save_samples`.

    Raises:
        InputError: missing file, not such a file, inconsistent arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"sample file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{p} is not a readable .npz sample file ({exc})") from None
    if str(data.get("format", "")) != FORMAT:
        raise InputError(f"{p} is not an nnbound CLEVER sample file (no format {FORMAT!r})")
    try:
        settings = json.loads(str(data["settings"]))
        order = int(data["order"])
        pair_record = data["pair_record"]
        records = []
        for i, (index, label, kind, secs) in enumerate(
            zip(
                data["rec_index"],
                data["rec_label"],
                data["rec_kind"],
                data["rec_seconds"],
                strict=True,
            )
        ):
            sel = pair_record == i
            samples = CleverSamples(
                label=int(label),
                targets=tuple(int(t) for t in data["pair_target"][sel]),
                g_x0=data["g_x0"][sel],
                grad_norm_x0=data["grad_norm_x0"][sel],
                maxima=data["maxima"][sel],
                logits=data["logits"][i],
                order=order,
                settings=settings,
                seconds=float(secs),
            )
            records.append(SampleRecord(int(index), str(kind), samples))
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{p}: inconsistent CLEVER sample file ({exc})") from None
    return records, str(data.get("model", ""))
