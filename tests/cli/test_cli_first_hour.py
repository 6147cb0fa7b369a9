"""What a new user trips over: fewer images than asked for, target words that differ between
commands, inputs in the wrong range. Each is said, not silently accepted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnbound.cli.main import main
from nnbound.tasks.targets import parse_target_type

MODEL = "mnist-fc-3layer"
QUICK = ("--steps", "3", "--quiet")


def test_a_shortfall_is_noted_on_stderr_and_in_the_record(capsys) -> None:
    # mnist100 ends at image 99: from 98 on at most 2 of the 5 asked for exist
    argv = ["robustness", MODEL, "--startimage", "98", "--numimage", "5", "--steps", "3"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    rec = json.loads(captured.out)
    assert rec["numimage"] <= 2 and rec["numimage_requested"] == 5
    assert f"only {rec['numimage']} of the 5 requested images" in rec["shortfall"]
    assert "only" in captured.err
    assert main([*argv, "--numimage", "1", "--startimage", "0", "--json"]) == 0
    assert "shortfall" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("word", ["top2", "TOP-2", "runnerup"])
def test_top2_is_the_runner_up_everywhere(word: str) -> None:
    from nnbound.clever.targets import parse_target_kinds

    assert parse_target_type(word) == "runnerup"
    assert parse_target_kinds(word) == ("top2",)


def test_robustness_accepts_top2_like_clever(capsys) -> None:
    argv = ["robustness", MODEL, "--numimage", "1", *QUICK, "--json", "--targettype"]
    assert main([*argv, "top2"]) == 0
    top2 = json.loads(capsys.readouterr().out)["images"]
    assert main([*argv, "runnerup"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["target"] == top2[0]["target"]


def test_integer_pixels_for_a_unit_range_model_are_warned_about(capsys, tmp_path: Path) -> None:
    from nnbound.data.registry import load_dataset

    x = load_dataset("mnist100", input_range=(0.0, 1.0)).images[:1].numpy()
    path = tmp_path / "pixels.npy"
    np.save(path, np.round(x * 255).astype(np.int64))
    assert main(["predict", MODEL, "--input", str(path)]) == 0
    err = capsys.readouterr().err
    assert "holds integers (int64)" in err
    assert "outside the model's data range [0, 1]" in err
    np.save(path, x)
    assert main(["predict", MODEL, "--input", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_data_export_writes_inputs_that_fit_the_model(capsys, tmp_path: Path) -> None:
    out, labels = tmp_path / "x.npy", tmp_path / "y.npy"
    argv = ["data", "export", "mnist100", "--count", "3", "--start", "98", "--out", str(out)]
    assert main([*argv, "--labels-out", str(labels)]) == 0
    assert "mnist100 ends at image 99" in capsys.readouterr().err
    x, y = np.load(out), np.load(labels)
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    # --model: the dataset by input size, the pixels in the model's range
    model = tmp_path / "m.safetensors"
    assert main(["train", "8", "--epochs", "1", "--out", str(model), "--quiet"]) == 0
    assert main(["data", "export", "--model", str(model), "--out", str(out), "--quiet"]) == 0
    x = np.load(out)
    assert x.shape == (4, 1, 8, 8) and x.min() >= -0.5 and x.max() <= 0.5 and x.min() < 0
    assert main(["data", "export", "--out", str(out)]) == 2
    assert main(["data", "export", "mnist100", "--out", str(tmp_path / "x.txt")]) == 2
    assert "--out must name a .npy file" in capsys.readouterr().err
