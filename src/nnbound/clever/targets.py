"""CLEVER's image and target selection (the reference's ``utils.generate_data``, clever_spec §6).

It differs from the CROWN reference's rules in :mod:`nnbound.tasks.targets` in three ways:

* ``--numimage N`` scans N images from ``--startimage`` and **skips** misclassified ones (the
  README: "you might get less than 10 images"); CROWN's takes N correctly classified ones;
* the random target is drawn for **every** scanned image, skipped ones included (so the random
  stream, and therefore the chosen targets, do not depend on the model's mistakes earlier on);
* several target kinds per image, in the reference's order ``least, top2, random`` (its default
  ``--target_type`` is all three); ``untargeted`` = every class but the prediction.

Targets come from the clean **logits**: ``least = argmin``, ``top2 = argsort[-2]`` (the
runner-up), ``random = random.randint(0, K - 1)`` from Python's ``random`` seeded with ``seed``
(reference 1215), redrawn until it is neither least, top2 nor the prediction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from nnbound.errors import InputError
from nnbound.tasks.targets import canonical_target_word

TARGET_KINDS: tuple[str, ...] = ("least", "top2", "random", "untargeted")
DEFAULT_TARGET_KINDS = ("least", "top2", "random")
"""The reference's default ``--target_type`` (bits 0-2)."""


def parse_target_kinds(value: str | int | Sequence[str | int]) -> tuple[str | int, ...]:
    """``"least,top2,random"``, ``"untargeted"``, ``"3"``, ``3`` or a list of those -> a tuple
    of kinds (strings) and class numbers, in the reference's order for the named kinds."""
    if isinstance(value, int):
        items: list[str | int] = [value]
    elif isinstance(value, str):
        items = [v for v in (p.strip() for p in value.split(",")) if v]
    else:
        items = list(value)
    if not items:
        raise InputError("no target type given")
    kinds: list[str | int] = []
    for item in items:
        if isinstance(item, int):
            kinds.append(item)
            continue
        # the words every command accepts; CLEVER names the runner-up "top2" as its reference
        v = canonical_target_word(str(item))
        v = "top2" if v == "runnerup" else v
        if v in TARGET_KINDS:
            kinds.append(v)
        elif v.isdigit():
            kinds.append(int(v))
        else:
            raise InputError(
                f"unknown target type {item!r}; use least, top2, random, untargeted or a class "
                "number (several separated by commas)"
            )
    if "untargeted" in kinds and len(kinds) > 1:
        raise InputError("untargeted already covers every class; give it alone")
    named = [k for k in ("least", "top2", "random") if k in kinds]
    numbers = [k for k in kinds if isinstance(k, int)]
    return tuple(
        dict.fromkeys([*named, *(["untargeted"] if "untargeted" in kinds else []), *numbers])
    )


@dataclass(frozen=True)
class Job:
    """One (image, target) pair: ``row`` indexes the inputs given to :func:`select_jobs`,
    ``kind`` is ``least|top2|random|untargeted`` or ``class<j>``; ``targets`` are the classes
    CLEVER runs against (all other classes for ``untargeted``)."""

    row: int
    label: int
    kind: str
    targets: tuple[int, ...]

    @property
    def target(self) -> int | str:
        """The target class, or ``"untargeted"``."""
        return "untargeted" if self.kind == "untargeted" else self.targets[0]


def select_jobs(
    logits: Tensor, labels: Tensor, kinds: Sequence[str | int], *, seed: int = 1215
) -> tuple[list[Job], list[int]]:
    """The (image, target) jobs for every input, the reference's way.

    Args:
        logits: clean logits ``(N, K)``.
        labels: true labels ``(N,)``.
        kinds: from :func:`parse_target_kinds`.
        seed: seeds Python's ``random`` for the random targets.

    Returns:
        ``(jobs, skipped_rows)``: jobs in image order, and per image in the order of ``kinds``;
        rows whose prediction is not the label are skipped (their random draw still happens).
    """
    k = logits.shape[1]
    if k < 2:
        raise InputError("CLEVER needs a model with at least 2 classes")
    for kind in kinds:
        if isinstance(kind, int) and not 0 <= kind < k:
            raise InputError(f"target class {kind} out of range [0, {k})")
    if "random" in kinds and k < 4:
        raise InputError(
            "random targets need at least 4 classes (prediction, least, top2 excluded)"
        )
    rng = random.Random(seed)
    pred = logits.argmax(1)
    order = logits.argsort(1)
    jobs: list[Job] = []
    skipped: list[int] = []
    for i in range(logits.shape[0]):
        p, label = int(pred[i]), int(labels[i])
        least, top2 = int(order[i, 0]), int(order[i, -2])
        rand = p
        # Drawn before the label check, as the reference: skipped images advance the stream.
        if "random" in kinds:
            while rand in (least, top2, p):
                rand = rng.randint(0, k - 1)
        if p != label:
            skipped.append(i)
            continue
        for kind in kinds:
            if kind == "least":
                jobs.append(Job(i, label, "least", (least,)))
            elif kind == "top2":
                jobs.append(Job(i, label, "top2", (top2,)))
            elif kind == "random":
                jobs.append(Job(i, label, "random", (rand,)))
            elif kind == "untargeted":
                jobs.append(Job(i, label, "untargeted", tuple(c for c in range(k) if c != p)))
            elif int(kind) != label:
                jobs.append(Job(i, label, f"class{kind}", (int(kind),)))
    return jobs, skipped
