#!/usr/bin/env bash
# The project's test command: set up the CPU stack if needed, then run the whole test suite.
#   scripts/test.sh                 # extra arguments go to pytest, e.g. scripts/test.sh -k rewards
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_cpu.sh
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=disabled
# pytest exits 5 when it collected no test: `set -e` turns that into a failure too.
exec .venv/bin/python -m pytest tests "$@"
