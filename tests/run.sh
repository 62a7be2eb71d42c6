#!/usr/bin/env bash
# Set up (idempotently) and run the test suite. `.ci/run` calls exactly this.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: 2.13.0 is the CPU wheel on this machine's disk (never a CUDA build).
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "is ignored" || true
.venv/bin/pip install -q --disable-pip-version-check -c deploy/requirements.lock -e ".[test]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, monai, pydicom, nibabel, transformers, prefect, mlflow"
export CLINFUSE_PSEUDONYM_KEY="${CLINFUSE_PSEUDONYM_KEY:-ci-test-key-not-a-secret-0123456789}"
.venv/bin/ruff check .
.venv/bin/lint-imports  # the package layers (pyproject.toml [tool.importlinter], docs/layers.md)
# --durations: the slowest tests in every log, so CI time is visible where it goes.
exec .venv/bin/python -m pytest -q -m "not gpu" -p no:cacheprovider --durations=30 "$@"
