#!/usr/bin/env bash
# The project's test command: TensorFlow backend (default) for everything
# but the slow tests, then the multi-backend tests on JAX.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -m "not slow" "$@"
KERAS_BACKEND=jax python -m pytest -q -m "multi_backend and not slow" "$@"
