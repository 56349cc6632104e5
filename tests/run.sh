#!/usr/bin/env bash
# The project's test command: TensorFlow backend (default) for everything
# but the slow tests, then the backend-sensitive tests again on JAX: the
# Distiller's training step, state, sequences, distribution, export and
# data (the terms' own tests run on JAX and PyTorch in .ci/run). Two
# pytest-xdist workers, each test module on one worker (module fixtures
# run once).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -n 2 --dist loadfile --durations=15 -m "not slow" "$@"
# RandAugment's per-operation PIL comparisons run on JAX in .ci/run's
# terms step instead (minutes of tracing on JAX).
KERAS_BACKEND=jax python -m pytest -q -n 2 --dist loadfile --durations=15 \
    -m "multi_backend and not slow" tests/test_*.py tests/data tests/offline \
    --ignore=tests/data/test_rand_augment.py "$@"
