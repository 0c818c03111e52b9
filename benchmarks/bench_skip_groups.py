"""What skipping zero-signal GRPO groups saves: the tiny demo with and without `--skip-zero-signal-groups`.

    python benchmarks/bench_skip_groups.py                          # 20 steps each, eval every 10; ~2 x 2 min on 2 idle cores
    python benchmarks/bench_skip_groups.py --num-steps 40 --eval-every 10   # the whole demo
    python benchmarks/bench_skip_groups.py -- --is-correction none   # extra flags after `--` go to both runs

Prints, per variant, the medians over steps of `time/train_s` (the update: forward + backward + optimizer) and
`time/step_s`, the run's CPU time (all its processes), the means of `train/zero_signal_frac` and
`train/is_weight_mean`, and held-out accuracy at each evaluation. Both runs use the same seed, so they sample the
same first rollout; their gradients are equal in exact arithmetic (the tiny preset has kl_coef 0), so accuracy
should match up to floating-point summation order. Timings on a shared machine are approximate: run it with
nothing else on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"no-skip": ["--no-skip-zero-signal-groups"], "skip": ["--skip-zero-signal-groups"]}


def run(name: str, flags: list[str], out_dir: Path, num_steps: int, eval_every: int) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "VLLM_LOGGING_LEVEL": "WARNING", "WANDB_MODE": "disabled"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "grpo_countdown.py", "--preset", "tiny",
           "--num-steps", str(num_steps), "--eval-every", str(eval_every), "--out-dir", str(out_dir), "--exp-name", name, *flags]
    start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    rows = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/train_s" in r]
    return {"train_s": statistics.median(r["time/train_s"] for r in steps),
            "step_s": statistics.median(r["time/step_s"] for r in steps),
            "zero_signal": statistics.mean(r["train/zero_signal_frac"] for r in steps),
            "is_weight": statistics.mean(r["train/is_weight_mean"] for r in steps),
            "evals": [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r],
            "wall_min": (time.perf_counter() - start) / 60,
            # CPU seconds of the whole run (both ranks, vLLM included): less swayed than wall time by other load
            "cpu_s": (cpu_end.ru_utime + cpu_end.ru_stime) - (cpu_start.ru_utime + cpu_start.ru_stime)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("extra", nargs="*", help="flags for both runs (after --)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in VARIANTS.items():
            results[name] = r = run(name, flags + args.extra, Path(tmp), args.num_steps, args.eval_every)
            print(f"{name:<8} median train_s {r['train_s']:6.2f}  median step_s {r['step_s']:6.2f}  "
                  f"zero-signal samples {100 * r['zero_signal']:5.1f}%  mean IS weight {r['is_weight']:.3f}  wall {r['wall_min']:4.1f} min  CPU {r['cpu_s']:5.0f} s  held-out accuracy: "
                  + ", ".join(f"{s}: {100 * a:.1f}%" for s, a in r["evals"]), flush=True)
    base, skip = results["no-skip"], results["skip"]
    print(f"skipping saves {100 * (1 - skip['train_s'] / base['train_s']):.0f}% of train_s, "
          f"{100 * (1 - skip['step_s'] / base['step_s']):.0f}% of step_s (medians over {args.num_steps} steps), "
          f"{100 * (1 - skip['cpu_s'] / base['cpu_s']):.0f}% of the run's CPU time")


if __name__ == "__main__":
    main()
