"""Batch sizes from free memory (mocked here): defaults shrink to fit, an explicit size that
cannot fit and a sample that cannot fit at all are refused before any work, with advice."""

from __future__ import annotations

import json

import pytest
import torch

from nnbound.cli.main import main
from nnbound.errors import InputError
from nnbound.network.load import load_model
from nnbound.tasks.memory_budget import MEMORY_FRACTION, bytes_per_row, fit_batch

MIB = 2**20


def test_default_shrinks_explicit_is_kept_or_refused() -> None:
    free = 100 * MIB
    fits = int(free * MEMORY_FRACTION) // MIB
    assert fit_batch(None, 1024, MIB, free).batch == fits
    assert "not 1024" in (fit_batch(None, 1024, MIB, free).note or "")
    assert fit_batch(None, 16, MIB, free) == fit_batch(16, 16, MIB, free)
    assert fit_batch(16, 1024, MIB, free).note is None
    with pytest.raises(InputError, match=f"--batch-size {fits} or less"):
        fit_batch(1024, 1024, MIB, free)
    with pytest.raises(InputError, match="one sample needs"):
        fit_batch(None, 1024, free, free)
    assert fit_batch(None, 1024, MIB, None).batch == 1024  # unknown memory: defaults stand


def test_measured_bytes_grow_with_the_input() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU())
    small = bytes_per_row(net, torch.rand(1, 28, 28))
    # the 512 hidden values per row are saved for the backward pass; the weights are not
    # per-row memory and are left out
    assert 512 * 4 < small < 784 * 512 * 4
    mnist = bytes_per_row(load_model("mnist-fc-3layer"), torch.rand(1, 28, 28))
    assert mnist > 784 * 4


def test_clever_default_batch_fits_a_small_machine(capsys, monkeypatch) -> None:
    per_row = bytes_per_row(load_model("mnist-fc-3layer"), torch.rand(1, 28, 28))
    monkeypatch.setattr("nnbound.cli.memory_args.available_bytes", lambda device: 40 * per_row)
    argv = ["clever", "mnist-fc-3layer", "--numimage", "1", "--targettype", "top2"]
    argv += ["--nsamp", "32", "--niters", "5", "--norms", "2"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["settings"]["batch_size"] == 20
    assert "memory: --batch-size 20 (not 1024)" in captured.err
    assert main([*argv, "--batch-size", "1024"]) == 2
    assert "use --batch-size 20 or less" in capsys.readouterr().err


def test_evaluate_lowers_its_gradient_batches_too(capsys, monkeypatch) -> None:
    per_row = bytes_per_row(load_model("mnist-fc-3layer"), torch.rand(1, 28, 28))
    monkeypatch.setattr("nnbound.cli.memory_args.available_bytes", lambda device: 16 * per_row)
    argv = ["evaluate", "mnist-fc-3layer", "--numimage", "1", "--methods", "clever"]
    argv += ["--clever-nsamp", "16", "--clever-niters", "5", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    settings = json.loads(captured.out)["settings"]
    assert settings["clever_batch"] == 8 and settings["batch_size"] == 8
    assert "--clever-batch 8 (not 1024)" in captured.err
