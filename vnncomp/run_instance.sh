#!/usr/bin/env bash
# VNN-COMP tool interface: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTFILE TIMEOUT
# Writes RESULTFILE: one word -- sat (followed by the counterexample
# "((X_0 v)\n (X_1 v)\n ...\n (Y_0 v) ...)", re-checked in float64 and with onnxruntime when
# installed), unsat, timeout, unknown -- or "error" when the instance cannot be handled (an
# operator without a rule, a malformed file). nnbound keeps TIMEOUT itself (within about a
# second); a hard stop at TIMEOUT + 30 s guards against anything that does not, and writes
# "timeout". NNBOUND_DEVICE (cpu by default; cuda, cuda:N, auto) picks the device.
set -u
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTFILE TIMEOUT" >&2
    exit 1
fi
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
RESULT="$5"
TIMEOUT="$6"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
rm -f "$RESULT"
ONNX="$(plain_file "$3" "$TMP")" || { echo "error" > "$RESULT"; exit 0; }
VNNLIB="$(plain_file "$4" "$TMP")" || { echo "error" > "$RESULT"; exit 0; }
HARD="$("$PY" -c "import math,sys; t=float(sys.argv[1]); print(int(math.ceil(t)) + 30 if math.isfinite(t) and t > 0 else 0)" "$TIMEOUT" 2>/dev/null || echo 0)"
if [ "$HARD" = "0" ]; then
    echo "nnbound: error: TIMEOUT must be a number of seconds > 0, got '$TIMEOUT'" >&2
    echo "error" > "$RESULT"
    exit 0
fi
# The result goes to a temporary file first: the harness never reads a half-written one.
timeout --signal=KILL "$HARD" "$PY" -m nnbound verify "$ONNX" "$VNNLIB" \
    --timeout "$TIMEOUT" --result "$TMP/result.txt" --device "${NNBOUND_DEVICE:-cpu}" \
    --quiet > /dev/null
RC=$?
if [ -s "$TMP/result.txt" ]; then
    cp "$TMP/result.txt" "$RESULT.part" && mv "$RESULT.part" "$RESULT"
elif [ "$RC" -eq 137 ] || [ "$RC" -eq 124 ]; then
    echo "timeout" > "$RESULT"
else
    echo "error" > "$RESULT"
fi
exit 0
