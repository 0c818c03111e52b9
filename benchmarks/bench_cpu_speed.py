"""Where a tiny CPU step goes, and what a setting changes: run a script's tiny preset for a few steps through
scripts/demo.sh (2 processes, the demo's environment) and print the median seconds of each phase (`time/<phase>_s`),
the step, the start-up and the whole command.

    python benchmarks/bench_cpu_speed.py                          # GRPO, 16 steps, ~1.5 min on 2 cores
    python benchmarks/bench_cpu_speed.py ppo --steps 8
    python benchmarks/bench_cpu_speed.py grpo --repeats 2 -- "" "--reshard-after-forward"   # A/B, alternating

Each variant, after `--`, is a string of extra flags ("" = the preset as it is), which may start with environment
settings (`"TCMALLOC=0"`: without tcmalloc, scripts/cpu_env.sh). Variants run alternately, `--repeats` times each,
so a machine that slows down mid-way slows every variant alike; the table shows, per variant, the median over its
runs of each run's median. Evaluation runs only at the first and last step (`--eval-every` = steps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("grpo", "ppo")  # scripts/demo.sh's names
PHASES = ("sync", "generate", "probe", "grade", "logprob", "train", "step")


def run_once(algo: str, steps: int, variant: str, out_dir: Path) -> dict[str, float]:
    """One tiny run; returns the median of each phase over its steps, the start-up and the wall time (seconds)."""
    words = shlex.split(variant)
    settings = list(itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w), words))  # NAME=value
    env = {**os.environ, **dict(w.split("=", 1) for w in settings)}
    start = time.perf_counter()
    proc = subprocess.run(["bash", "scripts/demo.sh", algo, "--num-steps", str(steps), "--eval-every", str(steps),
                           "--out-dir", str(out_dir), "--exp-name", "run", *words[len(settings):]], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"scripts/demo.sh {algo} {variant} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    rows = [json.loads(line) for line in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    out = {p: statistics.median(r.get(f"time/{p}_s", 0.0) for r in rows if r["step"] < steps) for p in PHASES}
    loop = sum(r.get("time/step_s", 0.0) for r in rows)
    out["wall"] = wall
    out["outside loop"] = wall - loop  # start-up, final evaluation, checkpoint, shutdown
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", nargs="?", default="grpo", choices=ALGOS)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # after `--`: the variants, each a string of flags
    args, variants = parser.parse_args(argv[:split]), argv[split + 1:] or [""]
    if args.steps < 2 or args.repeats < 1:
        raise SystemExit("error: --steps >= 2 and --repeats >= 1")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, flags in enumerate(variants):
                print(f"run {r + 1}/{args.repeats}, variant {i + 1}/{len(variants)}: {flags or '(preset)'}", flush=True)
                results[flags].append(run_once(args.algo, args.steps, flags, Path(tmp) / f"{r}_{i}"))
    columns = (*PHASES, "outside loop", "wall")
    print(f"\n{args.algo}, {args.steps} steps, medians in seconds ({args.repeats} run(s) per variant)")
    print(f"{'variant':<36}" + "".join(f"{c:>13}" for c in columns))
    for flags, runs in results.items():
        cells = [statistics.median(run[c] for run in runs) for c in columns]
        print(f"{(flags or '(preset)')[:35]:<36}" + "".join(f"{x:>13.3f}" for x in cells))


if __name__ == "__main__":
    main()
