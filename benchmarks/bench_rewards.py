"""Benchmark the rule-based graders: throughput on realistic responses, worst-case time on adversarial ones.

Run on one core:  OMP_NUM_THREADS=1 python benchmarks/bench_rewards.py

1. Throughput: graded responses per second over a few thousand synthetic ~1 KB responses (a <think> block of
   reasoning text, then the answer), single process, best of REPEATS passes.
2. Worst case: per-call time on adversarial inputs (1 MB responses of digits, of tags, of parens, 9**9**9, ...),
   median of CALLS_PER_INPUT calls per input; the table lists every input, the last line the slowest.
"""

from __future__ import annotations

import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from rewards.countdown import countdown_reward, grade_countdown  # noqa: E402
from rewards.gsm8k import gsm8k_reward  # noqa: E402

N_RESPONSES = 4000
REPEATS = 3
CALLS_PER_INPUT = 5
RESPONSE_CHARS = 1000
MB = 1 << 20
TARGET_COUNTDOWN_PER_S = 20_000
TARGET_GSM8K_PER_S = 50_000
TARGET_WORST_MS = 5.0
SEED = 0


def filler(rng: random.Random, chars: int) -> str:
    """Reasoning-like text with numbers and arithmetic, about `chars` long."""
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        parts.append(rng.choice([
            f"Let me try {a} + {b} = {a + b}. ",
            f"That gives {a} * {b} = {a * b}, which is too big. ",
            f"So {a * b} - {b} = {a * b - b}; not quite. ",
            f"If each costs ${a}.50 and she buys {b}, she pays ${a * b:,}. ",
            "Hmm, let me reconsider the problem from the start. ",
        ]))
    return "".join(parts)[:chars]


def countdown_responses(rng: random.Random) -> list[tuple[str, list[int], int]]:
    """(response, numbers, target): a third correct, a third wrong, a third with malformed or missing answers."""
    out = []
    for i in range(N_RESPONSES):
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 9)
        target, answer = (a + b) * c, rng.choice([f"({a} + {b}) * {c}", f"{c} * ({b} + {a})"])
        if i % 3 == 1:
            answer = f"{a} + {b} * {c}"
        elif i % 3 == 2:
            answer = rng.choice([f"({a} + {b}) * {c} = {target}", f"({a}+{b})x{c}", ""])
        body = filler(rng, RESPONSE_CHARS - 60)
        tail = "" if i % 9 == 8 else f"<answer>{answer}</answer>"
        out.append((f"<think>\n{body}\n</think>\n{tail}", [a, b, c], target))
    return out


def gsm8k_responses(rng: random.Random) -> list[tuple[str, str]]:
    """(response, reference): half end with "#### N", half with "The answer is $N.", a quarter wrong."""
    out = []
    for i in range(N_RESPONSES):
        n = rng.randint(1, 5000)
        pred = n if i % 4 else n + 1
        tail = f"#### {pred:,}" if i % 2 else f"The answer is ${pred:,}."
        out.append((f"<think>\n{filler(rng, RESPONSE_CHARS - 40)}\n</think>\n{tail}", str(n)))
    return out


def throughput(grade: Callable[..., object], cases: list[tuple]) -> float:
    """Graded responses per second, best of REPEATS passes over `cases`."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for case in cases:
            grade(*case)
        best = min(best, time.perf_counter() - start)
    return len(cases) / best


def countdown_adversarial() -> dict[str, tuple]:
    nested = "(" * 120 + "1" + ")" * 120
    primes = [p for p in range(2, 220) if all(p % d for d in range(2, p))]  # 47 primes: a 252-char answer
    fractions = "+".join(f"1/{p}" for p in primes)  # exact sum with a ~90-digit denominator
    big = "9" * 127 + "*" + "8" * 128
    return {
        "1 MB of digits": ("1" * MB, [1], 1),
        "1 MB of '<answer>'": ("<answer>" * (MB // 8), [1], 1),
        "1 MB of '</answer>'": ("</answer>" * (MB // 9), [1], 1),
        "1 MB of '(' in a tag": ("<answer>" + "(" * MB + "</answer>", [1], 1),
        "1 MB number in a tag": ("<answer>" + "9" * MB + "</answer>", [9], 9),
        "1 MB whitespace around": ("<answer>" + " " * MB + "1" + "\n" * MB + "</answer>", [1], 1),
        "1 MB text, answer at end": ("x" * MB + "<answer>1+2</answer>", [1, 2], 3),
        "1 MB unicode": ("é中" * (MB // 2) + "<answer>１+２</answer>", [1, 2], 3),
        "nesting depth 120": (f"<answer>{nested}</answer>", [1], 1),
        "9**9**9": ("<answer>9**9**9</answer>", [9, 9, 9], 9),
        "10,000 answer tags": ("<answer>1+2</answer>" * 10_000, [1, 2], 3),
        "10,000 open, 10,000 close": ("<answer>" * 10_000 + "1" + "</answer>" * 10_000, [1], 1),
        "256-char big-int product": (f"<answer>{big}</answer>", [int("9" * 127), int("8" * 128)], 1),
        "252-char sum of 1/p": (f"<answer>{fractions}</answer>", [1] * len(primes) + primes, 1),
        "division chain": ("<answer>" + "/".join(["7"] * 120) + "</answer>", [7] * 120, 1),
    }


def gsm8k_adversarial() -> dict[str, tuple]:
    return {
        "1 MB of digits": ("1" * MB, "1"),
        "1 MB number after ####": ("#### " + "9" * MB, "9"),
        "1 MB comma number after ####": ("#### 1" + ",234" * (MB // 4), "1"),
        "1 MB of '1,'": ("1," * (MB // 2), "1"),
        "1 MB of '1 '": ("1 " * (MB // 2), "1"),
        "1 MB of '1 ', then 1 MB text": ("1 " * (MB // 2) + "x" * MB, "1"),
        "1 MB of letters": ("a" * MB, "1"),
        "1 MB of '####'": ("####" * (MB // 4), "1"),
        "#### then 1 MB letters": ("#### " + "a" * MB, "1"),
        "#### then 1 MB of '-'": ("####" + "-" * MB + "5", "5"),
        "1 MB of '$'": ("$" * MB + "5", "5"),
        "1 MB of '.'": ("." * MB, "1"),
        "1 MB of '-1'": ("-1" * (MB // 2), "1"),
        "number, then 1 MB letters": ("42 " + "x" * MB, "42"),
        "1 MB full-width digits (NFKC)": ("１" * MB, "1"),
        "1 MB combining accents (NFKC)": ("e\u0301" * (MB // 2) + " 5", "5"),
        "1 MB CJK text, answer at end": ("中" * MB + " #### 5", "5"),
    }


def worst_case(grade: Callable[..., object], inputs: dict[str, tuple]) -> float:
    """Print the median per-call time of each adversarial input; return the slowest, in ms."""
    worst = 0.0
    for name, args in inputs.items():
        times = []
        for _ in range(CALLS_PER_INPUT):
            start = time.perf_counter()
            result = grade(*args)
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1e3
        worst = max(worst, ms)
        shown = getattr(result, "reason", result)
        print(f"    {name:<34} {ms:8.3f} ms   -> {shown}")
    return worst


def main() -> None:
    rng = random.Random(SEED)
    print(f"python {platform.python_version()} on {platform.machine()}, single process")
    countdown_cases, gsm8k_cases = countdown_responses(rng), gsm8k_responses(rng)
    mean_chars = statistics.mean(len(case[0]) for case in countdown_cases + gsm8k_cases)
    print(f"\n== throughput: {N_RESPONSES} responses of ~{mean_chars:.0f} chars each, best of {REPEATS} ==")
    countdown_rate = throughput(countdown_reward, countdown_cases)
    gsm8k_rate = throughput(gsm8k_reward, gsm8k_cases)
    print(f"  countdown_reward  {countdown_rate:10,.0f} responses/s   (target >= {TARGET_COUNTDOWN_PER_S:,})")
    print(f"  gsm8k_reward      {gsm8k_rate:10,.0f} responses/s   (target >= {TARGET_GSM8K_PER_S:,})")

    print(f"\n== worst case: median of {CALLS_PER_INPUT} calls per adversarial input ==")
    print("  countdown (grade_countdown):")
    countdown_worst = worst_case(grade_countdown, countdown_adversarial())
    print("  gsm8k (gsm8k_reward):")
    gsm8k_worst = worst_case(gsm8k_reward, gsm8k_adversarial())
    print(f"  countdown worst   {countdown_worst:8.3f} ms per call   (target < {TARGET_WORST_MS} ms)")
    print(f"  gsm8k worst       {gsm8k_worst:8.3f} ms per call   (target < {TARGET_WORST_MS} ms)")


if __name__ == "__main__":
    main()
