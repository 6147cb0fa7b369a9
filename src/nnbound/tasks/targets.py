"""Image and target selection, as the reference's ``utils.generate_data`` (spec §9.4)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError

TARGET_TYPES = ("least", "runnerup", "random", "untargeted")
UNTARGETED = -1
TARGET_ALIASES: dict[str, str] = {
    "top2": "runnerup",  # CLEVER's (and its reference's) name for the runner-up
    "top-2": "runnerup",
    "rand": "random",
    "all": "untargeted",
}
"""Other words for the target types, accepted by every command (robustness, evaluate,
lipschitz, landscape and clever read target words through :func:`canonical_target_word`)."""


def canonical_target_word(word: str) -> str:
    """``word`` lower-cased with its alias resolved (``top2`` -> ``runnerup``)."""
    v = word.strip().lower()
    return TARGET_ALIASES.get(v, v)


@dataclass(frozen=True)
class Selection:
    """Chosen inputs: dataset ``indices``, ``labels`` and ``targets`` (-1 = untargeted), all
    ``(M,)`` long tensors, plus the logits at each input ``(M, classes)``."""

    indices: Tensor
    labels: Tensor
    targets: Tensor
    logits: Tensor


def parse_target_type(value: str | int) -> str | int:
    """``least|runnerup|random|untargeted`` (or an alias: ``top2``...) or a class number."""
    if isinstance(value, int):
        return value
    v = canonical_target_word(value)
    if v in TARGET_TYPES:
        return v
    if v.lstrip("-").isdigit():
        return int(v)
    raise InputError(
        f"unknown target type {value!r}; use {', '.join(TARGET_TYPES)} (or top2 for "
        "runnerup) or a class number"
    )


def select_targets(
    logits: Tensor,
    labels: Tensor,
    target_type: str | int,
    *,
    num_images: int,
    start: int = 0,
    seed: int = 1228,
) -> Selection:
    """Pick up to ``num_images`` correctly classified inputs from ``start`` on and a target each.

    ``least`` = smallest logit; ``runnerup`` = second largest; ``random`` = Python's
    ``random.randint(0, classes - 1)`` (seeded with ``seed``) redrawn until it is neither the
    prediction, the least likely nor the runner-up, as in the reference; ``untargeted`` = every
    other class; a number N = that target class, for images whose label is not N.
    """
    target_type = parse_target_type(target_type)
    classes = logits.shape[1]
    if isinstance(target_type, int) and not 0 <= target_type < classes:
        raise InputError(f"target class {target_type} out of range [0, {classes})")
    if target_type == "random" and classes < 4:
        raise InputError(
            "random targets need at least 4 classes (prediction, least, runner-up excluded)"
        )
    rng = random.Random(seed)
    pred = logits.argmax(1)
    order = logits.argsort(1)
    idx, labs, tars = [], [], []
    for i in range(start, logits.shape[0]):
        if len(idx) >= num_images:
            break
        label = int(labels[i])
        if int(pred[i]) != label:
            continue
        least, runner = int(order[i, 0]), int(order[i, -2])
        if target_type == "least":
            t = least
        elif target_type == "runnerup":
            t = runner
        elif target_type == "random":
            t = rng.randint(0, classes - 1)
            while t in (label, least, runner):
                t = rng.randint(0, classes - 1)
        elif target_type == "untargeted":
            t = UNTARGETED
        else:
            if label == target_type:
                continue
            t = int(target_type)
        idx.append(i)
        labs.append(label)
        tars.append(t)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    sel = torch.tensor(idx, dtype=torch.long)
    return Selection(as_long(idx), as_long(labs), as_long(tars), logits[sel] if idx else logits[:0])
