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

from common.dist import gather_to_main, print0

# The panels of metrics.png: (title, keys on the left y axis, keys on a right y axis: for another scale)
PLOT_PANELS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("training reward", ("reward/mean", "reward/accuracy"), ()),
    ("held-out accuracy", ("eval/accuracy",), ()),
    ("response length (tokens)", ("rollout/response_len_mean",), ()),
    ("entropy and KL", ("train/entropy",), ("train/kl",)),
    ("seconds per step", ("time/step_s",), ()),
)


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

    def finish(self, plot_panels=PLOT_PANELS) -> None:
        if not self.enabled:
            return
        self.metrics_file.close()
        self.samples_file.close()
        if plot_panels:
            plot_metrics(self.out_dir / "metrics.jsonl", self.out_dir / "metrics.png", plot_panels)
        if self.wandb is not None:
            self.wandb.finish()


def _reopen(path: Path, keep_before: int):
    """Open a JSONL log for writing, keeping only its rows with "step" < keep_before (0: start empty)."""
    lines = path.read_text().splitlines() if keep_before > 0 and path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] < keep_before]
    f = open(path, "w")
    f.writelines(line + "\n" for line in kept)
    return f


def plot_metrics(jsonl: Path, png: Path, panels=PLOT_PANELS) -> None:
    """One panel per entry of `panels` (see `PLOT_PANELS`), against step, from a metrics.jsonl file. Held-out
    (`eval/`) values exist only at evaluation steps: they are drawn as marked points joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    colors = iter(f"C{i}" for i in range(100))
    for ax, (title, left, right) in zip(axes[0], panels):
        for keys, axis in ((left, ax), (right, ax.twinx() if right else None)):
            for key in keys:
                points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
                marked = key.startswith("eval/") or len(points) < 3
                axis.plot(*zip(*points) if points else ([], []), color=next(colors), label=key + (" (right)" if axis is not ax else ""),
                          marker="o" if marked else None, markersize=4, linewidth=1.2)
                axis.tick_params(labelsize=8)
        handles = [h for a in fig.axes if a is ax or a.get_shared_x_axes().joined(a, ax) for h in a.get_lines()]
        ax.legend(handles=handles, fontsize=7, loc="best")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def write_eval_report(path: Path, model: str, stats: dict[str, float], rows: list[dict], k: int) -> None:
    """`--eval-only`'s output: every rank's samples gathered into one JSONL file on rank 0 (collective), and one
    summary line on the console: accuracy, pass@k and format rate over the held-out set."""
    rows = gather_to_main(rows)
    if not rows:
        return  # not rank 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    print0(f"{model}: held-out accuracy {100 * stats['eval/accuracy']:.1f}% | pass@{k} {100 * stats['eval/pass_at_k']:.1f}% | "
           f"format rate {100 * stats['eval/format_rate']:.1f}% ({len(rows) // k} problems x {k} samples); samples in {path}")
