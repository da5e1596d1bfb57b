#!/usr/bin/env bash
# The GPU suite (benchmarks/gpu_suite.py) on one accelerator, in <= 8 min on
# one H100 (a 480 s limit; every finished part is in the JSON even if cut).
#   benchmarks/gpu_suite.sh [--out=runs/benchmarks/gpu_suite.json] [--parts=...]
# Runs with $PYTHON (default python3, the device image's, which has jax with
# CUDA, flax, optax and orbax). ml_collections is not in that image: put its
# wheel in .whl/ first (pip download --no-deps ml_collections==1.1.0 -d .whl;
# it needs absl-py and PyYAML, which the image has).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if ! "$py" -c 'import ml_collections' 2>/dev/null; then
  if ! ls .whl/ml_collections-*.whl >/dev/null 2>&1; then
    echo 'gpu_suite.sh: ml_collections is missing; put its wheel in .whl/' \
      '(pip download --no-deps ml_collections==1.1.0 -d .whl)' >&2
    exit 1
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile \
    --target /tmp/gpu_suite_site .whl/ml_collections-*.whl
  export PYTHONPATH=/tmp/gpu_suite_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec timeout 480 "$py" benchmarks/gpu_suite.py "$@"
