"""Print the logits of each input (``X.npy`` holds one input or a batch)."""

from __future__ import annotations

import argparse

import torch

from nnbound.cli.common import add_model_args, load_inputs, load_model_arg, print_json
from nnbound.report.provenance import provenance
from nnbound.report.tables import render_table

HELP = "logits of inputs from a .npy/.npz file"


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--input", required=True, help=".npy/.npz with one input or a batch")
    p.add_argument("--json", action="store_true", help='print {"logits": [[...], ...]}')
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    net = load_model_arg(args)
    args.labels = None
    inputs = load_inputs(args, net)
    with torch.no_grad():
        logits = net(inputs.x).cpu()
    if args.json:
        prov = provenance(device=inputs.x.device, dtype=inputs.x.dtype)
        record = {"logits": logits.tolist(), "predicted": logits.argmax(1).tolist()}
        print_json({**record, "provenance": prov})
        return 0
    rows = [[i, int(row.argmax()), *[float(v) for v in row]] for i, row in enumerate(logits)]
    headers = ["input", "predicted", *[f"logit{j}" for j in range(logits.shape[1])]]
    print(render_table(headers, rows, digits=4))
    return 0
