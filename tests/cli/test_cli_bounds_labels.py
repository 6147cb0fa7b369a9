"""`bounds --target all|N` says what each number is: per input its prediction, label and the
target class of every margin row, in the text rows and the JSON record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.cli.main import main
from nnbound.data.registry import load_dataset
from nnbound.network.load import load_model

MODEL = "mnist-fc-3layer"


@pytest.fixture(scope="module")
def three_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # inputs with different predictions, so a shared column label would be wrong for some
    ds = load_dataset("mnist100", input_range=(0.0, 1.0))
    path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(path, ds.images[:3].numpy())
    return path


def test_json_record_names_label_and_target_of_every_margin(capsys, three_inputs: Path) -> None:
    argv = ["bounds", MODEL, "--input", str(three_inputs), "--eps", "0.001", "--target", "all"]
    assert main([*argv, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    x = torch.from_numpy(np.load(three_inputs))
    logits = load_model(MODEL)(x).detach().to(torch.float64)
    predicted = logits.argmax(1).tolist()
    assert len(set(predicted)) > 1
    for i, info in enumerate(rec["inputs"]):
        assert info["predicted"] == predicted[i] == info["label"]
        assert sorted(info["targets"]) == [c for c in range(10) if c != info["label"]]
        for j, t in enumerate(info["targets"]):
            centre = float(logits[i, info["label"]] - logits[i, t])
            assert rec["lower"][i][j] <= centre + 1e-5 <= rec["upper"][i][j] + 2e-5
    assert main(argv) == 0
    out = capsys.readouterr().out
    for i, info in enumerate(rec["inputs"]):
        assert f"input {i} (predicted {info['predicted']}, label {info['label']})" in out
        for t in info["targets"]:
            assert f"margin {info['label']} - {t} " in out


def test_single_target_and_plain_logits_are_labelled(capsys, three_inputs: Path) -> None:
    argv = ["bounds", MODEL, "--input", str(three_inputs), "--eps", "0.001", "--json"]
    assert main([*argv, "--target", "3"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert [info["targets"] for info in rec["inputs"]] == [[3]] * 3
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["inputs"][0]["classes"] == list(range(10))
    assert main([*argv, "--target", "10"]) == 2
    assert "--target 10 outside" in capsys.readouterr().err
