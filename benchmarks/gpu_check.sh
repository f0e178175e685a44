#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it runs, in what order, under which deadline):
#
#   bash benchmarks/gpu_check.sh OUT        (default OUT: gpu_check_out/)
#
# PYTHON=... picks the interpreter (default: .venv/bin/python when it exists, else python3: on a device machine,
# the one that holds its CUDA torch). Wheels in .whl/ (`make gpu-wheels`) are installed one at a time into
# /tmp/site. OUT always receives summary.md, gpu_check.log and preflight.json, and each step's JSON as soon as
# the step ends; copy them to benchmarks/results/gpu/.
set -u
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON
exec "$PYTHON" "$(dirname "$0")/gpu_check.py" "$@"
