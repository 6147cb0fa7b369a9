"""Output specifications: a matrix C whose rows are the linear functions of the logits to bound.

Margins are rows ``e_y - e_t`` (logit of the label minus logit of a target), so a positive lower
bound of every row certifies that no target overtakes the label. They are propagated backward
directly (not formed by subtracting logit bounds, which would be much looser).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnbound.errors import InputError


def margin_spec(labels: Tensor, targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``C`` of shape ``(B, 1, num_classes)`` with rows ``e_label - e_target``."""
    labels = labels.reshape(-1).long()
    targets = targets.reshape(-1).long()
    if labels.shape != targets.shape:
        raise InputError("labels and targets must have the same length")
    _check_classes(labels, num_classes)
    _check_classes(targets, num_classes)
    if bool((labels == targets).any()):
        raise InputError("a target class equals its label: the margin would be identically 0")
    c = torch.zeros(labels.shape[0], 1, num_classes, dtype=dtype, device=labels.device)
    rows = torch.arange(labels.shape[0], device=labels.device)
    c[rows, 0, labels] = 1.0
    c[rows, 0, targets] = -1.0
    return c


def all_margins_spec(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``C`` of shape ``(B, num_classes - 1, num_classes)``: label minus every other class, in
    increasing class order (the untargeted specification)."""
    labels = labels.reshape(-1).long()
    _check_classes(labels, num_classes)
    b = labels.shape[0]
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)  # (B, classes, classes)
    keep = torch.ones(b, num_classes, dtype=torch.bool, device=labels.device)
    keep[torch.arange(b, device=labels.device), labels] = False
    return c[keep].reshape(b, num_classes - 1, num_classes)


def other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """``(B, num_classes - 1)`` class indices other than each label, increasing."""
    labels = labels.reshape(-1).long()
    ar = torch.arange(num_classes, device=labels.device).expand(labels.shape[0], -1)
    return ar[ar != labels.unsqueeze(1)].reshape(labels.shape[0], num_classes - 1)


def _check_classes(t: Tensor, num_classes: int) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(f"class index out of range [0, {num_classes}): {t.tolist()}")
