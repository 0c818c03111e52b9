#!/usr/bin/env bash
# The project's test command: set up the CPU stack if needed, then run the whole test suite.
#   scripts/test.sh                 # extra arguments go to pytest, e.g. scripts/test.sh -k rewards
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_cpu.sh
source scripts/cpu_env.sh
export WANDB_MODE=disabled
# pytest exits 5 when it collected no test: `set -e` turns that into a failure too.
exec .venv/bin/python -m pytest tests "$@"
