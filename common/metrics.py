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
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from common.dist import gather_to_main, global_means, print0

# The panels of metrics.png: (title, keys on the left y axis, keys on a right y axis: for another scale)
PLOT_PANELS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("training reward", ("reward/mean", "reward/accuracy"), ()),
    ("held-out accuracy", ("eval/accuracy",), ()),
    ("response length (tokens)", ("rollout/response_len_mean",), ()),
    ("entropy and KL", ("train/entropy",), ("train/kl",)),
    ("seconds per step", ("time/step_s",), ()),
)

# What the console line of a step shows (every metric goes to metrics.jsonl)
CONSOLE_KEYS = ("reward/mean", "reward/accuracy", "eval/accuracy", "rollout/response_len_mean", "train/kl",
                "train/vllm_logprob_gap", "time/step_s")


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
                 project: str = "", run_name: str = "", console_keys: tuple[str, ...] = CONSOLE_KEYS, resume: bool = False,
                 start_step: int = 0):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.console_keys = console_keys
        self.wandb = None
        self.evals: list[tuple[int, float]] = []  # (step, held-out accuracy) of the evaluations this process logged
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
        if "eval/accuracy" in row:  # for the run's last line (`summary`)
            self.evals.append((step, row["eval/accuracy"]))
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        shown = [f"{k} {metrics[k]:.4g}" for k in self.console_keys if k in metrics]
        tqdm.write(f"step {step:>5} | " + " | ".join(shown))  # keeps a progress bar intact

    def summary(self, started: float) -> str:
        """The last line of a run (rank 0; "" elsewhere): held-out accuracy at the first and the last evaluation this
        process logged, and the minutes since `started` (a `time.time()`)."""
        if not self.evals:
            return ""
        (first_step, first), (last_step, last) = self.evals[0], self.evals[-1]
        return (f"held-out accuracy {100 * first:.1f}% (step {first_step}) -> {100 * last:.1f}% (step {last_step}) in "
                f"{(time.time() - started) / 60:.1f} min; outputs in {self.out_dir}")

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


def evaluate_saved_policy(args, dist_info, held_out, run_dir: Path) -> None:
    """`--eval-only`: an engine on the saved policy (`args.model`: vLLM reads it from disk), `held_out(engine, 0)` on
    the held-out set, every sample to <run_dir>/eval_samples.jsonl and one summary line (`write_eval_report`), the
    engine released. Collective."""
    from common.vllm_engine import ColocatedVLLM

    engine = ColocatedVLLM.from_args(args, dist_info)
    write_eval_report(run_dir / "eval_samples.jsonl", args.model, *held_out(engine, 0), args.eval_samples_per_prompt)
    engine.shutdown()


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


# ---------------------------------------------------------------------------------------------------------------
# The bookkeeping of a step's metrics: {key: [sum, count]} on each rank, reduced over ranks by `global_means`
# ---------------------------------------------------------------------------------------------------------------
def rollout_totals(grades: list[list[tuple[float, str]]], groups: list[list], reason_names: tuple[str, ...],
                   world: int) -> dict[str, list[float]]:
    """The `reward/` and `rollout/` metrics of this rank's samples (see docs/metrics.md): `grades[i][j]` is the grader's
    (reward, reason) of completion `groups[i][j]` (a `Completion`) of prompt i; reward 1.0 counts as correct."""
    rewards = [r for g in grades for r, _ in g]
    counts = Counter(why for g in grades for _, why in g)
    completions = [c for g in groups for c in g]
    n, tokens = float(len(rewards)), float(sum(len(c.token_ids) for c in completions))
    return {
        "reward/mean": [sum(rewards), n],
        "reward/accuracy": [float(sum(r == 1.0 for r in rewards)), n],
        "reward/format_rate": [n - counts["no_answer"], n],
        **{f"reward/reason_{r}": [float(counts[r]), n] for r in reason_names},
        "reward/solved_prompt_frac": [float(sum(any(r == 1.0 for r, _ in g) for g in grades)), float(len(grades))],
        "rollout/response_len_mean": [tokens, n],
        "rollout/truncated": [float(sum(c.finish_reason == "length" for c in completions)), n],
        "rollout/tokens": [tokens, 1.0 / world],
    }


def mismatch_totals(vllm_logprobs: torch.Tensor, old_logprobs: torch.Tensor, scored: torch.Tensor,
                    correction: tuple[torch.Tensor, ...], rows: torch.Tensor) -> dict[str, list[float]]:
    """The sampler-mismatch metrics (`train/vllm_logprob_gap`, `mismatch_kl`, `is_*`) over the `scored` (B, L) tokens
    of the `rows` (B,) that went through the update; `correction`: what `sampler_correction` returned."""
    weights, over_cap, outside, k3 = correction
    tokens = float(scored.sum())
    return {
        "train/vllm_logprob_gap": [float((vllm_logprobs - old_logprobs)[scored].abs().sum()), tokens],
        "train/mismatch_kl": [float(k3.sum()), tokens],
        "train/is_weight_mean": [float(weights.sum()), tokens],
        "train/is_truncated_frac": [float(over_cap.sum()), tokens],
        "train/is_masked_frac": [float((outside & rows).sum()), float(rows.sum())],
    }


def add_totals(totals: dict[str, list[float]], values: dict[str, torch.Tensor], weight: torch.Tensor) -> None:
    """Accumulate weighted sums of per-token values (b, l) into `totals` ({key: [sum, count]}); weight (b, l)."""
    count = float(weight.sum())
    for key, value in values.items():
        totals[key][0] += float((value.detach().float() * weight).sum())
        totals[key][1] += count


def end_of_step_metrics(timer: "PhaseTimer", step_start: float, rollout_tokens: float, device: torch.device) -> dict[str, float]:
    """`time/` (each phase, and the whole step since `step_start`) and `perf/` metrics; resets the timer."""
    times = timer.pop()
    return {**times, "time/step_s": time.perf_counter() - step_start,
            "perf/generate_tokens_per_s": rollout_tokens / max(times.get("time/generate_s", 0.0), 1e-9),
            "perf/peak_mem_gb": peak_memory_gb(device)}


# ---------------------------------------------------------------------------------------------------------------
# Held-out evaluation (the same for every single-turn task: the script passes its grader)
# ---------------------------------------------------------------------------------------------------------------
def evaluate_held_out(engine, problems: list[dict], prompt_ids: list[list[int]], grade, stop: list[str], args, step: int,
                      device: torch.device) -> tuple[dict[str, float], list[dict]]:
    """Sample `args.eval_samples_per_prompt` completions (at `eval_temperature`, `eval_top_p`, up to
    `max_response_tokens`) for each of this rank's held-out problems and `grade` them. Returns the `eval/` metrics over
    all ranks (a collective) and this rank's samples, k rows per problem, in order (`held_out_results`)."""
    k = args.eval_samples_per_prompt
    groups = engine.generate(prompt_ids, n=k, temperature=args.eval_temperature, top_p=args.eval_top_p,
                             max_tokens=args.max_response_tokens, stop=stop, seed=args.seed, step=step, stream="eval")
    grades = [[grade(c.text, p) for c in g] for p, g in zip(problems, groups)]
    return held_out_results(problems, grades, [[len(c.token_ids) for c in g] for g in groups],
                            [[c.text for c in g] for g in groups], device)


def held_out_results(problems: list[dict], grades: list[list[tuple[float, str]]], lengths: list[list[int]],
                     texts: list[list[str]], device: torch.device,
                     extra: dict[str, tuple[float, float]] | None = None) -> tuple[dict[str, float], list[dict]]:
    """The `eval/` metrics over all ranks (a collective) and this rank's rows, from graded samples: `grades`, `lengths`
    (sampled tokens) and `texts` (what the log shows) hold k per problem, in order; `extra`: more (sum, count)
    metrics. A reason `no_answer` counts as unreadable in `eval/format_rate`."""
    flat = [r for gr in grades for r in gr]
    stats = global_means({"eval/accuracy": (sum(r == 1.0 for r, _ in flat), len(flat)),
                          "eval/pass_at_k": (sum(any(r == 1.0 for r, _ in gr) for gr in grades), len(grades)),
                          "eval/format_rate": (sum(why != "no_answer" for _, why in flat), len(flat)),
                          "eval/response_len": (sum(map(sum, lengths)), len(flat)), **(extra or {})}, device)
    rows = [{"problem": json.dumps(p), "completion": t, "reward": r, "reason": why}
            for p, ts, gr in zip(problems, texts, grades) for t, (r, why) in zip(ts, gr)]
    return stats, rows
