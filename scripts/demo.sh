#!/usr/bin/env bash
# The first command of the README: set up the CPU stack if needed, then train a shipped tiny model on 2 CPU
# processes and watch held-out accuracy rise.
#   scripts/demo.sh [grpo|ppo|calculator] [extra flags for the script]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_cpu.sh
algo=${1:-grpo}; shift || true
case "$algo" in
  grpo) script=grpo_countdown.py ;;
  ppo) script=ppo_gsm8k.py ;;
  calculator) script=grpo_calculator.py ;;  # GRPO with a tool: multi-turn rollouts calling a calculator
  *) echo "usage: scripts/demo.sh [grpo|ppo|calculator] [flags]" >&2; exit 2 ;;
esac
source scripts/cpu_env.sh
exec .venv/bin/torchrun --standalone --nproc_per_node 2 "$script" --preset tiny "$@"
