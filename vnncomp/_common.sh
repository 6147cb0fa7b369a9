# Shared by prepare_instance.sh and run_instance.sh: the Python that runs nnbound.
# NNBOUND_PYTHON overrides it; otherwise the repository's .venv if there is one, else python3.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [ -n "${NNBOUND_PYTHON:-}" ]; then
    PY="$NNBOUND_PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="python3"
fi

# A .gz file (the competition's repositories ship some compressed) is decompressed next to a
# temporary copy; prints the path to read.
plain_file() {
    local path="$1" tmpdir="$2"
    case "$path" in
        *.gz)
            local out="$tmpdir/$(basename "${path%.gz}")"
            gzip -dc "$path" > "$out" || return 1
            echo "$out"
            ;;
        *) echo "$path" ;;
    esac
}
