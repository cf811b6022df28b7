#!/usr/bin/env bash
# Set up everything and run the whole test suite (the README's test command; .ci/run calls it
# inside a fresh virtual environment). For a developer with an existing environment it installs
# torch/torchvision only when missing (the pinned pair below is what this project's CPU machines
# carry on disk; a user's existing, e.g. CUDA, torch is left alone) and the project editable.
# PYTHON=... picks the interpreter; COSETTLE_SKIP_INSTALL=1 skips the installs (.ci/run did them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ -n "${CI:-}" && ! -d ../shared/data ]]; then
  echo "error: ../shared/data is missing -- CI must provide the shared data folder beside the checkout" >&2
  exit 1
fi

if [[ -z "${COSETTLE_SKIP_INSTALL:-}" ]]; then
  if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "== installing torch==2.14.1 torchvision==0.29.1 (first, together)"
    "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" </dev/null
  fi
  echo "== installing the project with test extras"
  "$PY" -m pip install --quiet -e ".[test]" </dev/null
fi

echo "== running the test suite"
export COSETTLE_OFFLINE=1  # tests never touch a model hub
export OMP_WAIT_POLICY=PASSIVE  # busy-waiting OpenMP threads crawl on a shared 2-core machine
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@" </dev/null
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests -- check the test paths / selection" >&2
  exit 1
fi
exit $rc
