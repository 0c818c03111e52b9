"""Timing, memory and logging: one logger object, a no-op on every rank but 0.

    timer = PhaseTimer(dist.device)
    with timer("generate"): ...
    logger = RunLogger(out_dir, vars(args), enabled=dist.is_main, track=args.track, ...)
    logger.log({"reward/mean": 0.4, **timer.pop(), "perf/peak_mem_gb": peak_memory_gb(dev)}, step)

Everything goes to <out_dir>/metrics.jsonl (one JSON object per step) and, with `track`, to wandb
(WANDB_MODE=offline works without an account). `finish()` also draws <out_dir>/metrics.png.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm


class PhaseTimer:
    """Wall-clock seconds per phase, accumulated until `pop()`. Synchronises CUDA so GPU work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}_s": v for k, v in self.seconds.items()}
        self.seconds.clear()
        return out


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on this rank, or on CPU the process's peak resident memory (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class RunLogger:
    """Console line + JSONL + optional wandb, on rank 0 only (every method is a no-op when `enabled` is False)."""

    def __init__(self, out_dir: str | Path, config: dict, *, enabled: bool, track: bool = False,
                 project: str = "", run_name: str = "", console_keys: tuple[str, ...] = (), resume: bool = False,
                 start_step: int = 0):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.console_keys = console_keys
        self.wandb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "args.json").write_text(json.dumps(config, indent=2, default=str))
        # a resumed run keeps the rows of the steps before `start_step` and redoes the rest (a crashed run may have
        # logged steps after its last checkpoint)
        self.metrics_file = _reopen(self.out_dir / "metrics.jsonl", start_step if resume else 0)
        self.samples_file = _reopen(self.out_dir / "samples.jsonl", start_step if resume else 0)
        if track:
            import wandb

            self.wandb = wandb.init(project=project, name=run_name, config=config, dir=str(self.out_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        shown = [f"{k} {metrics[k]:.4g}" for k in self.console_keys if k in metrics]
        tqdm.write(f"step {step:>5} | " + " | ".join(shown))  # keeps a progress bar intact

    def log_samples(self, rows: list[dict], step: int) -> None:
        """A table of sample completions (prompt, completion, reward, ...)."""
        if not self.enabled:
            return
        for r in rows:
            self.samples_file.write(json.dumps({"step": step, **r}, default=str) + "\n")
        self.samples_file.flush()
        if self.wandb is not None and rows:
            import wandb

            cols = list(rows[0])
            self.wandb.log({"samples": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])}, step=step)

    def finish(self, plot_keys: tuple[str, ...] = ()) -> None:
        if not self.enabled:
            return
        self.metrics_file.close()
        self.samples_file.close()
        if plot_keys:
            plot_metrics(self.out_dir / "metrics.jsonl", self.out_dir / "metrics.png", plot_keys)
        if self.wandb is not None:
            self.wandb.finish()


def _reopen(path: Path, keep_before: int):
    """Open a JSONL log for writing, keeping only its rows with "step" < keep_before (0: start empty)."""
    lines = path.read_text().splitlines() if keep_before > 0 and path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] < keep_before]
    f = open(path, "w")
    f.writelines(line + "\n" for line in kept)
    return f


def plot_metrics(jsonl: Path, png: Path, keys: tuple[str, ...]) -> None:
    """One panel per key against step, from a metrics.jsonl file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
