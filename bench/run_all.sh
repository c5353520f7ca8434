#!/usr/bin/env bash
# Run every benchmark, one after the other (they must not share the 2 cores).
#   bench/run_all.sh            full sizes (~22 min)
#   bench/run_all.sh --smoke    tiny sizes, for a CI smoke step (~3 min)
# Extra arguments (e.g. --strict) go to every script. Uses $PYTHON, else python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
status=0
for name in overhead latency scale barrier footprint soak batch gates; do
    "$PY" "bench/$name.py" "$@" || status=$?
done
exit "$status"
