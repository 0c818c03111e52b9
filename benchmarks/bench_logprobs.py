"""Benchmark the memory-light token log-probs (`common.model.chunked_token_logprobs`) against the naive version.

Run on one core:  OMP_NUM_THREADS=1 python benchmarks/bench_logprobs.py          # V=151936, T=1024, B=4, H=128
                  OMP_NUM_THREADS=1 python benchmarks/bench_logprobs.py --chunks 1024 256 128

The question: at a Qwen2.5 vocabulary (V = 151,936), how much memory does computing log p(target) per token
cost? The naive version materialises the float32 logits of the whole batch:

    logits = hidden @ W.T                 # (B, T, V)  4 x 1024 x 151936 x 4 bytes = 2.5 GB
    logp = log_softmax(logits, -1)        # (B, T, V)  another 2.5 GB
    lp = logp.gather(-1, targets)         # (B, T)

ours runs the output head on `chunk` tokens at a time, in forward and in backward (which recomputes each
chunk's logits), on the flattened (B*T, H) hidden states. Ours also returns the entropy (a no-grad
diagnostic); the naive version does not, so ours does strictly more work.

Four cases, each with both implementations:
  forward            under torch.no_grad(), as for old / reference log-probs;
  forward+backward   hidden and W require grad, loss = sum of log-probs, loss.backward().

How peak memory is measured (CPU has no torch.cuda.max_memory_allocated):
  * every (implementation, case) runs in a fresh subprocess, so allocations of earlier runs (and the
    allocator's cached pages) cannot hide or inflate its peak;
  * in that subprocess, once the inputs exist, the call is warmed up on 8 tokens (code pages, kernel setup);
    then, before each of the `repeats` calls and after gc, we read the current RSS (VmRSS), reset the kernel's
    peak-RSS counter by writing "5" to /proc/self/clear_refs (Linux >= 4.0; it resets VmHWM, which is also what
    `resource.getrusage(...).ru_maxrss` reports), make the call, and read the peak (ru_maxrss).
    "peak extra MB" = peak - RSS before, the largest over the repeats: every page the call touched on top of
    its inputs, including temporaries that lived only inside an op (no allocator hook sees those reliably on
    CPU). Where clear_refs is not writable the peak is the fresh process's ru_maxrss, start-up included,
    and the table says so.
  * Large tensors are mmap'ed by glibc and returned to the OS when freed, so the repetitions do not pile up;
    gradients are reset to None before each repetition so that one set of them counts, as in training.
  * Warns when file-backed RSS (shared libraries) grew during the calls: pages of code evicted under memory
    pressure and faulted back in would count as "extra".
Seconds are the best of `repeats` calls in that same subprocess (2 shared cores: best-of, not mean).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from common.model import LOGPROB_CHUNK_TOKENS, chunked_token_logprobs  # noqa: E402

MB = 1 << 20
TARGET_MEMORY_RATIO = 4.0   # naive peak / ours peak must be at least this
TARGET_TIME_RATIO = 1.5     # ours seconds / naive seconds must be at most this


@dataclass
class Args:
    vocab: int = 151_936
    """V: vocabulary size (Qwen2.5's)"""
    tokens: int = 1024
    """T: tokens per sequence"""
    batch: int = 4
    """B: sequences"""
    hidden: int = 128
    """H: hidden size (small keeps the matmul cheap on CPU; the logits' size does not depend on it)"""
    chunks: tuple[int, ...] = (LOGPROB_CHUNK_TOKENS,)
    """chunk sizes (tokens per output-head chunk) to run `chunked_token_logprobs` with"""
    repeats: int = 3
    """timed calls per subprocess; seconds = best of these"""
    seed: int = 0
    worker: str = ""
    """internal: 'naive' or 'ours:<chunk>', plus ':fwd' or ':fwdbwd' (runs one measurement and prints JSON)"""
    cases: tuple[str, ...] = field(default_factory=lambda: ("fwd", "fwdbwd"))
    """which cases to run: fwd (no grad) and/or fwdbwd"""


# ---------------------------------------------------------------------------------------------------
# The two implementations
# ---------------------------------------------------------------------------------------------------
def naive_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H), weight (V, H), targets (B, T) -> log p(targets) (B, T), via a full (B, T, V) tensor."""
    logits = (hidden @ weight.T).float()                            # (B, T, V)
    logp = torch.log_softmax(logits, dim=-1)                        # (B, T, V)
    return logp.gather(-1, targets[..., None]).squeeze(-1)          # (B, T)


def ours_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Same contract as `naive_logprobs`, through `chunked_token_logprobs` on the flattened (B*T, H) states."""
    B, T, H = hidden.shape
    lp, _entropy = chunked_token_logprobs(hidden.reshape(B * T, H), weight, targets.reshape(B * T), chunk=chunk)
    return lp.view(B, T)                                            # (B, T)


# ---------------------------------------------------------------------------------------------------
# Memory counters (Linux /proc)
# ---------------------------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM / ru_maxrss) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# ---------------------------------------------------------------------------------------------------
# One measurement, in its own process
# ---------------------------------------------------------------------------------------------------
def worker(args: Args) -> dict:
    impl, *rest = args.worker.split(":")
    case = rest[-1]
    chunk = int(rest[0]) if impl == "ours" else 0
    backward = case == "fwdbwd"
    torch.manual_seed(args.seed)
    hidden = torch.randn(args.batch, args.tokens, args.hidden)                      # (B, T, H)
    weight = torch.randn(args.vocab, args.hidden) / args.hidden ** 0.5              # (V, H)
    targets = torch.randint(0, args.vocab, (args.batch, args.tokens))              # (B, T)
    hidden.requires_grad_(backward)
    weight.requires_grad_(backward)
    fn = naive_logprobs if impl == "naive" else (lambda h, w, t: ours_logprobs(h, w, t, chunk))

    def call(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if backward:
            lp = fn(h, weight, t)                                                   # (B, T)
            lp.sum().backward()
            return lp
        with torch.no_grad():
            return fn(h, weight, t)                                                 # (B, T)

    call(hidden[:1, :8], targets[:1, :8])  # warm-up on 8 tokens
    file_before = _status_mb("RssFile")
    seconds, peaks = [], []
    for _ in range(args.repeats):
        hidden.grad = weight.grad = None
        gc.collect()
        rss_before = _status_mb("VmRSS")
        exact = reset_peak_rss()
        start = time.perf_counter()
        lp = call(hidden, targets)                                                  # (B, T)
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_rss_mb() - rss_before)
        checksum = [lp.double().sum().item()]
        if backward:
            checksum += [hidden.grad.double().norm().item(), weight.grad.double().norm().item()]
        del lp
    return {"seconds": min(seconds), "all_seconds": seconds, "peak_extra_mb": max(peaks), "all_peaks_mb": peaks,
            "file_rss_growth_mb": _status_mb("RssFile") - file_before, "exact_peak": exact, "checksum": checksum}


def run_worker(args: Args, spec: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", spec, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
           "--batch", str(args.batch), "--hidden", str(args.hidden), "--repeats", str(args.repeats),
           "--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"worker {spec} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return {"spec": spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    args = tyro.cli(Args)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    N = args.batch * args.tokens
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    chunk_mb = ", ".join(f"({c}, V) = {c * args.vocab * 4 / MB:,.0f} MB" for c in args.chunks)
    print(f"# V={args.vocab:,} T={args.tokens} B={args.batch} H={args.hidden}: one float32 (B, T, V) tensor = "
          f"{N * args.vocab * 4 / MB:,.0f} MB; one chunk's logits {chunk_mb}")
    print(f"# each row: a fresh subprocess; seconds = best of {args.repeats}; "
          f"peak extra = peak RSS - RSS before the call, largest of the {args.repeats}")
    print()
    results = []
    print(f"{'case':<8} {'variant':<16} {'seconds':>8} {'peak extra MB':>14} {'mem naive/ours':>15} "
          f"{'time ours/naive':>16}  verdict")
    for case in args.cases:
        naive = run_worker(args, f"naive:{case}")
        results.append(naive)
        print(f"{case:<8} {'naive':<16} {naive['seconds']:>8.2f} {naive['peak_extra_mb']:>14,.0f}")
        for chunk in args.chunks:
            ours = run_worker(args, f"ours:{chunk}:{case}")
            results.append(ours)
            # same inputs (same seed), so the log-prob sum and gradient norms must agree
            for a, b in zip(naive["checksum"], ours["checksum"]):
                assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), f"ours (chunk {chunk}) disagrees with naive: {a} vs {b}"
            mem_ratio = naive["peak_extra_mb"] / max(ours["peak_extra_mb"], 1e-9)
            time_ratio = ours["seconds"] / naive["seconds"]
            ok = mem_ratio >= TARGET_MEMORY_RATIO and time_ratio <= TARGET_TIME_RATIO
            print(f"{case:<8} {f'ours chunk={chunk}':<16} {ours['seconds']:>8.2f} {ours['peak_extra_mb']:>14,.0f} "
                  f"{mem_ratio:>14.2f}x {time_ratio:>15.2f}x  {'OK' if ok else 'MISSED'}")
    for r in results:
        if not r["exact_peak"]:
            print("# warning: /proc/self/clear_refs not writable: peaks include process start-up")
        if r["file_rss_growth_mb"] > 20:
            print(f"# warning: {r['spec']}: file-backed RSS grew {r['file_rss_growth_mb']:.0f} MB during the calls "
                  "(code paged back in): its peak is overstated by up to that much")
        spread = max(r["all_peaks_mb"]) - min(r["all_peaks_mb"])
        if spread > 0.05 * max(r["all_peaks_mb"]):
            peaks = ", ".join(f"{p:,.0f}" for p in r["all_peaks_mb"])
            print(f"# note: {r['spec']}: peaks differ between repeats: {peaks} MB")
    print()
    print(f"# targets: mem naive/ours >= {TARGET_MEMORY_RATIO:g}x at time ours/naive <= {TARGET_TIME_RATIO:g}x "
          f"(ours also computes the entropy, which naive skips); outputs and gradients of ours match naive")


if __name__ == "__main__":
    main()
