"""``nnbound models`` and the catalogue through ``nnbound clever`` / ``nnbound evaluate``,
in-process: random weights are announced loudly, evaluate says certified bounds are not
available (and refuses them when asked), other subcommands refuse catalogue names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread)
from nnbound.catalogue import build_model
from nnbound.cli.main import main

CLEVER_FAST = ["-N", "4", "-i", "3", "--method", "maxsamp", "--targettype", "top2"]
EVAL_FAST = [
    "--clever-nsamp",
    "4",
    "--clever-niters",
    "3",
    "--pgd-steps",
    "3",
    "--pgd-search-steps",
    "2",
    "--targettype",
    "runnerup",
    "--norm",
    "2",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def test_models_lists_builtin_recipes_and_catalogue(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "mnist-kw" in out and "resnet50" in out and "25,557,032" in out
    assert "resnet50-0676ba61.pth" in out and "inception_v3" in out and "3x299x299" in out
    code, out, _ = run(capsys, "models", "--json")
    rec = json.loads(out)
    cat = {m["name"]: m for m in rec["catalogue"]}
    assert cat["vgg16"]["parameters"] == 138_357_544
    assert cat["densenet121"]["weights_file"] == "densenet121-a639ec97.pth"
    assert cat["inception_v3"]["input_shape"] == [3, 299, 299]
    assert {m["name"] for m in rec["builtin"]} >= {"mnist-kw", "cifar-2c2f"}
    assert isinstance(rec["recipes"], list)


def test_clever_on_a_catalogue_model_with_random_weights_warns(capsys, images: Path) -> None:
    code, out, err = run(
        capsys,
        "clever",
        "resnet18",
        "--image-size",
        "64",
        "--data-dir",
        str(images),
        "--numimage",
        "1",
        *CLEVER_FAST,
        "--json",
        "--quiet",
    )
    assert code == 0
    assert "WARNING: resnet18 has RANDOM weights (seed 0)" in err  # even with --quiet
    rec = json.loads(out)
    assert rec["weights"].startswith("random (seed 0)") and "meaningless" in rec["weights"]
    assert rec["settings"]["box"] == [0.0, 1.0]  # eps in [0, 1] pixel space
    assert rec["numimage"] == 1 and rec["images"][0]["scores"]["2"] > 0


def test_clever_with_weights_from_an_array_input(capsys, tmp_path: Path) -> None:
    torch.save(build_model("squeezenet1_1", seed=3).net.state_dict(), tmp_path / "w.pth")
    x = np.random.default_rng(1).random((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run(
        capsys,
        "clever",
        "squeezenet1_1",
        "--weights",
        str(tmp_path / "w.pth"),
        "--image-size",
        "32",
        "--input",
        str(tmp_path / "x.npy"),
        *CLEVER_FAST,
        "--json",
    )
    assert code == 0 and "RANDOM" not in err
    assert json.loads(out)["weights"] == str(tmp_path / "w.pth")


def test_evaluate_runs_clever_and_attacks_and_says_why_no_certified(capsys, images) -> None:
    code, out, err = run(
        capsys,
        "evaluate",
        "resnet18",
        "--image-size",
        "64",
        "--data-dir",
        str(images),
        "--numimage",
        "1",
        "--methods",
        "clever,pgd",
        *EVAL_FAST,
    )
    assert code == 0, err
    assert "RANDOM weights" in err and "certified bounds are not available for resnet18" in err
    assert "[sandwich] certified: certified bounds are not available for resnet18" in out
    assert "[sandwich] weights: random (seed 0)" in out
    code, out, err = run(
        capsys,
        "evaluate",
        "resnet18",
        "--image-size",
        "64",
        "--data-dir",
        str(images),
        "--numimage",
        "1",
        "--methods",
        "pgd",
        *EVAL_FAST,
        "--json",
        "--quiet",
    )
    rec = json.loads(out)
    assert code == 0 and rec["methods"] == ["pgd"] and "not available" in rec["certified"]
    assert rec["weights"].startswith("random")


def test_certified_methods_on_a_catalogue_model_run_on_its_graph(capsys, images) -> None:
    code, out, err = run(
        capsys,
        "evaluate",
        "resnet18",
        "--image-size",
        "32",
        "--data-dir",
        str(images),
        "--numimage",
        "1",
        "--targettype",
        "runnerup",
        "--methods",
        "ibp,pgd",
        *EVAL_FAST,
        "--json",
        "--quiet",
    )
    assert code == 0, err
    rec = json.loads(out)
    assert rec["methods"] == ["ibp", "pgd"] and rec["weights"].startswith("random")
    assert rec["certified"] is None


def test_bad_catalogue_usage_is_one_error_line(capsys, images, tmp_path: Path) -> None:
    code, _, err = run(capsys, "bounds", "resnet50", "--input", "x.npy", "--eps", "0.1")
    assert code == 2 and "only `nnbound clever` and `nnbound evaluate` take it" in err
    code, _, err = run(capsys, "clever", "resnet18", *CLEVER_FAST, "--quiet")
    assert code == 2 and "pass --data-dir FOLDER" in err
    code, _, err = run(
        capsys,
        "clever",
        "inception_v3",
        "--image-size",
        "64",
        "--data-dir",
        str(images),
        *CLEVER_FAST,
    )
    assert code == 2 and "at least 75x75" in err
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    code, _, err = run(
        capsys,
        "clever",
        "resnet18",
        "--weights",
        str(tmp_path / "bad.pth"),
        "--data-dir",
        str(images),
        *CLEVER_FAST,
    )
    assert code == 2 and "not a readable PyTorch weights file" in err
