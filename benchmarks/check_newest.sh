#!/usr/bin/env bash
# `adamax check` on the newest versions pip picks today, in a fresh environment beside the pinned one.
#
#   bash benchmarks/check_newest.sh [VENV_DIR]      (default: /tmp/adamax-newest)
#
# The development environment pins torch==2.13.0 (its CPU wheel); this one asks for nothing but the
# extras' lower bounds, as a new user's `pip install 'adamax[...]'` does, so pip takes the newest torch,
# triton, numba, jax and optax it may (on Linux that torch is a CUDA build: several GB).  It prints the
# versions it got, then runs every backend against the reference; exit status 0 means every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/adamax-newest}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet ".[torch,jax,fast,gpu,plot,data]"
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|triton|numba|numpy|jax|jaxlib|optax) '
cd "$venv"  # import the installed package, not the source tree
"$venv/bin/adamax" check --no-plot
