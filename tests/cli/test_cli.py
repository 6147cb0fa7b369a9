"""The CLI, run in-process as a user would: data on stdout, one error line and exit 2 on bad
input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.cli.main import main
from nnbound.network.load import load_model


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.safetensors"
    assert (
        main(["train", "16", "--epochs", "10", "--lr", "0.01", "--out", str(path), "--quiet"]) == 0
    )
    return path


@pytest.fixture(scope="module")
def mnist_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nnbound.data.registry import load_dataset

    ds = load_dataset("mnist100", input_range=(0.0, 1.0))
    path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(path, ds.images[:3].numpy())
    return path


def test_version_via_python_m() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "nnbound", "--version"], capture_output=True, text=True, check=True
    )
    assert res.stdout.startswith("nnbound ")


def test_train_writes_a_model_that_info_describes(capsys, trained: Path) -> None:
    code, out, _ = run(capsys, "info", str(trained))
    assert code == 0
    assert "Dense(64 -> 16)" in out and "relu" in out
    assert "accuracy on digits" in out
    code, out, _ = run(capsys, "info", str(trained), "--json")
    info = json.loads(out)
    assert info["input_shape"] == [1, 8, 8] and info["input_range"] == [-0.5, 0.5]
    assert info["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    assert 0.5 < info["accuracy"]["value"] <= 1.0


def test_train_onnx_output_round_trips(capsys, tmp_path: Path) -> None:
    out_path = tmp_path / "m.onnx"
    code, _out, _ = run(
        capsys,
        "train",
        "8",
        "--epochs",
        "1",
        "--out",
        str(out_path),
        "--quiet",
        "--activation",
        "tanh",
    )
    assert code == 0 and out_path.is_file()
    assert load_model(out_path).activations[0].name == "tanh"


def test_train_records_its_device_and_refuses_an_unusable_one(capsys, tmp_path: Path) -> None:
    """``--device`` (the training device; the saved model is the same wherever it trained):
    named in the JSON record; an unknown device or a missing GPU is one line, exit 2."""
    argv = [
        "train",
        "8",
        "--epochs",
        "2",
        "--quiet",
        "--json",
        "--out",
        str(tmp_path / "a.safetensors"),
    ]
    code, out, _ = run(capsys, *argv)
    default = json.loads(out)
    assert code == 0 and default["provenance"]["device"] == "cpu"
    argv[-1] = str(tmp_path / "b.safetensors")
    code, out, _ = run(capsys, *argv, "--device", "cpu")
    assert code == 0 and json.loads(out)["epoch_losses"] == default["epoch_losses"]
    bad = ["bogus"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        code, out, err = run(capsys, *argv, "--device", device)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "device" in err and "Traceback" not in err
    argv = ["train", "--recipe", "2-layer", "4", "--epochs", "1", "--train-limit", "64"]
    code, out, _ = run(capsys, *argv, "--quiet", "--json", "--out", str(tmp_path / "r.safetensors"))
    assert code == 0 and json.loads(out)["provenance"]["device"] == "cpu"


def test_predict_json_matches_forward(capsys, mnist_inputs: Path) -> None:
    code, out, _ = run(capsys, "predict", "mnist-fc-3layer", "--input", str(mnist_inputs), "--json")
    assert code == 0
    logits = torch.tensor(json.loads(out)["logits"], dtype=torch.float64)
    net = load_model("mnist-fc-3layer").to(dtype=torch.float64)
    x = torch.from_numpy(np.load(mnist_inputs)).double()
    assert torch.allclose(logits, net(x), rtol=1e-12, atol=1e-12)
    assert logits.argmax(1).tolist() == [7, 2, 1]


def test_predict_single_input_without_batch_axis(
    capsys, tmp_path: Path, mnist_inputs: Path
) -> None:
    one = tmp_path / "one.npy"
    np.save(one, np.load(mnist_inputs)[0, 0])  # (28, 28)
    code, out, _ = run(capsys, "predict", "mnist-fc-3layer", "--input", str(one), "--json")
    assert code == 0 and len(json.loads(out)["logits"]) == 1


def test_bounds_json_contain_the_logits(capsys, mnist_inputs: Path) -> None:
    code, out, _ = run(
        capsys,
        "bounds",
        "mnist-fc-3layer",
        "--input",
        str(mnist_inputs),
        "--eps",
        "0.01",
        "--norm",
        "i",
        "--method",
        "crown",
        "--json",
    )
    assert code == 0
    rec = json.loads(out)
    assert rec["method"] == "crown" and rec["norm"] == "inf" and rec["eps"] == 0.01
    lower, upper = torch.tensor(rec["lower"]), torch.tensor(rec["upper"])
    assert lower.shape == (3, 10)
    net = load_model("mnist-fc-3layer")
    logits = net(torch.from_numpy(np.load(mnist_inputs)))
    assert torch.all(lower <= logits + 1e-5) and torch.all(logits <= upper + 1e-5)


def test_bounds_margins_all_targets(capsys, mnist_inputs: Path) -> None:
    code, out, _ = run(
        capsys,
        "bounds",
        "mnist-fc-3layer",
        "--input",
        str(mnist_inputs),
        "--eps",
        "0.005",
        "--method",
        "crown-general",
        "--label",
        "7,2,1",
        "--target",
        "all",
        "--json",
    )
    assert code == 0
    rec = json.loads(out)
    lower = torch.tensor(rec["lower"])
    assert lower.shape == (3, 9)
    assert bool((lower > 0).all())  # these three images are robust at 0.005 (radius ~0.012+)
    code, out, _ = run(
        capsys,
        "bounds",
        "mnist-fc-3layer",
        "--input",
        str(mnist_inputs),
        "--eps",
        "0.005",
        "--label",
        "7",
        "--target",
        "3",
        "--json",
    )
    single = torch.tensor(json.loads(out)["lower"])
    assert single.shape == (3, 1)


def test_robustness_summary_line_and_json(capsys) -> None:
    args = [
        "robustness",
        "mnist-fc-3layer",
        "--numimage",
        "3",
        "--targettype",
        "runnerup",
        "--norm",
        "2",
        "--layerbndalg",
        "crown-adaptive",
        "--eps",
        "0.1",
        "--steps",
        "8",
    ]
    code, out, _ = run(capsys, *args)
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("[L0] model = mnist-fc-3layer, avg robustness_lb = ")
    assert last.endswith("numimage = 3")
    code, out, _ = run(capsys, *args, "--json")
    rec = json.loads(out)
    assert [im["index"] for im in rec["images"]] == [0, 1, 2]
    assert all(im["radius"] > 0 for im in rec["images"])
    assert rec["avg_radius"] == pytest.approx(sum(im["radius"] for im in rec["images"]) / 3)
    assert rec["provenance"]["torch_version"] == torch.__version__


def test_robustness_untargeted_from_files(capsys, tmp_path: Path, mnist_inputs: Path) -> None:
    labels = tmp_path / "y.npy"
    np.save(labels, np.array([7, 2, 1]))
    code, out, _ = run(
        capsys,
        "robustness",
        "mnist-fc-3layer",
        "--input",
        str(mnist_inputs),
        "--labels",
        str(labels),
        "--targettype",
        "untargeted",
        "--steps",
        "5",
        "--layerbndalg",
        "ibp",
        "--json",
    )
    assert code == 0
    rec = json.loads(out)
    assert [im["target"] for im in rec["images"]] == ["untargeted"] * 3


def test_demo_prints_a_table(capsys) -> None:
    code, out, _ = run(
        capsys, "demo", "--numimage", "2", "--methods", "ibp,crown", "--norms", "i", "--steps", "4"
    )
    assert code == 0
    assert "Certified untargeted radius, Linf" in out and "crown" in out


def test_demo_json_names_its_device(capsys) -> None:
    argv = ["demo", "--numimage", "1", "--methods", "crown", "--norms", "i", "--steps", "3"]
    code, out, _ = run(capsys, *argv, "--device", "cpu", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["provenance"]["device"] == "cpu"
    assert rec["radius"]["i"]["crown"][0] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "no/such/model.onnx"], "not found"),
        (["bounds", "mnist-fc-3layer", "--input", "X", "--eps", "-1"], "eps"),
        (["bounds", "mnist-fc-3layer", "--input", "X", "--eps", "0.1", "--norm", "7"], "norm"),
        (["robustness", "mnist-fc-3layer", "--jacbndalg", "recurjac", "--lipsteps=0"], "lipsteps"),
        (["robustness", "mnist-fc-3layer", "--targettype", "sideways"], "target type"),
        (["robustness", "mnist-fc-3layer", "--dataset", "digits"], "shape"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys, tmp_path: Path, mnist_inputs: Path, argv: list[str], message: str
) -> None:
    argv = [str(mnist_inputs) if a == "X" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_corrupt_model_and_bad_inputs(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    code, _, err = run(capsys, "info", str(bad))
    assert code == 2 and "error" in err and "Traceback" not in err
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 5)))
    code, _, err = run(capsys, "predict", "mnist-fc-3layer", "--input", str(wrong))
    assert code == 2 and "shape" in err
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((1, 784), np.nan))
    code, _, err = run(capsys, "predict", "mnist-fc-3layer", "--input", str(nan))
    assert code == 2 and "NaN" in err


def test_argparse_usage_error_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bounds"])
    assert exc.value.code == 2


def test_info_list_needs_no_model(capsys) -> None:
    code, out, _ = run(capsys, "info", "--list")
    assert code == 0 and "mnist-fc-3layer" in out and "cifar-2c2f" in out
    code, _, err = run(capsys, "info")
    assert code == 2 and "--list" in err
