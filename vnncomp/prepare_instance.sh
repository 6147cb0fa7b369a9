#!/usr/bin/env bash
# VNN-COMP tool interface: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that the instance can be read (the network imports, the property parses and fits the
# network) before the timed run; exit 0 when it can, 1 otherwise. Nothing is cached between
# the two scripts: the timed run re-reads both files (a second or less on competition sizes).
set -u
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
CATEGORY="$2"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
ONNX="$(plain_file "$3" "$TMP")" || { echo "cannot read $3" >&2; exit 1; }
VNNLIB="$(plain_file "$4" "$TMP")" || { echo "cannot read $4" >&2; exit 1; }
echo "nnbound: preparing $CATEGORY instance $(basename "$ONNX") $(basename "$VNNLIB")"
"$PY" - "$ONNX" "$VNNLIB" <<'PYEOF'
import sys

from nnbound.errors import NnboundError
from nnbound.network.load import load_model
from nnbound.verify.vnnlib import read_vnnlib

try:
    net = load_model(sys.argv[1])
    prop = read_vnnlib(sys.argv[2])
except NnboundError as exc:
    sys.exit(f"nnbound: error: {exc}")
if (net.num_inputs, net.num_outputs) != (prop.num_inputs, prop.num_outputs):
    sys.exit(
        f"nnbound: error: the property has {prop.num_inputs} inputs / {prop.num_outputs} "
        f"outputs, the network {net.num_inputs} / {net.num_outputs}"
    )
PYEOF
