"""Benchmark the rule-based graders: throughput on realistic responses, worst-case time on adversarial ones.

Run on one core:  OMP_NUM_THREADS=1 python benchmarks/bench_rewards.py

1. Throughput: graded responses per second over a few thousand synthetic ~1 KB responses (a <think> block of
   reasoning text, then the answer), single process, best of REPEATS passes.
2. Worst case: per-call time on adversarial inputs (1 MB responses of digits, of tags, of parens, 9**9**9, ...),
   median of CALLS_PER_INPUT calls per input; the table lists every input, the last line the slowest.
The MATH grader (sympy behind math-verify) is ~100x slower: it gets MATH_RESPONSES typical responses (G = 8 per
reference, as a GRPO step grades them), with its cache of parsed references and without it, and its adversarial
inputs run against its 1 s time limit (every call there is bounded by the limit, plus how late the alarm lands).
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
from rewards.math import (MAX_ANSWER_CHARS, MAX_DEPTH, TIME_LIMIT_S, _parse_reference, grade_math,  # noqa: E402
                          math_reward)

N_RESPONSES = 4000
REPEATS = 3
CALLS_PER_INPUT = 5
RESPONSE_CHARS = 1000
MB = 1 << 20
TARGET_COUNTDOWN_PER_S = 20_000
TARGET_GSM8K_PER_S = 50_000
TARGET_WORST_MS = 5.0
MATH_RESPONSES = 800
MATH_GROUP = 8  # responses per reference: a prompt's G samples
MATH_CALLS_PER_INPUT = 3
SEED = 0
# (reference, spellings of the same value, spellings of other values): the answer forms of MATH's references
MATH_ANSWERS = [
    ("\\frac{1}{2}", ["0.5", "\\dfrac{1}{2}", "1/2"], ["\\frac{1}{3}", "2"]),
    ("-\\frac{3}{4}", ["-0.75", "\\frac{-3}{4}"], ["\\frac{3}{4}"]),
    ("3\\sqrt{3}", ["\\sqrt{27}", "3 \\sqrt 3"], ["3\\sqrt{2}", "9"]),
    ("2\\pi", ["2 \\pi", "\\pi \\cdot 2"], ["\\pi", "6.28"]),
    ("(-\\infty, 3]", ["(-\\infty,3]"], ["(-\\infty, 3)", "(3, \\infty)"]),
    ("(1, -2)", ["(1,-2)"], ["(-2, 1)"]),
    ("\\{1, 2\\}", ["\\{2, 1\\}", "1, 2"], ["\\{1\\}"]),
    ("10\\%", ["10", "0.1"], ["11\\%"]),
    ("5\\text{ cm}", ["5", "5 cm"], ["6\\text{ cm}"]),
    ("30^\\circ", ["30", "30^{\\circ}"], ["60^\\circ"]),
    ("1000000", ["1,000,000", "10^6"], ["100000"]),
    ("x^2+2x+1", ["(x+1)^2"], ["x^2+1"]),
    ("42", ["42", "42.0"], ["24", "41"]),
    ("-7", ["-7"], ["7"]),
    ("\\text{(C)}", ["C", "(C)"], ["D"]),
]


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


def math_responses(rng: random.Random) -> list[tuple[str, str]]:
    """(response, reference), MATH_GROUP per reference in a row: half right in some spelling, 3/8 wrong, 1/8 unboxed."""
    out = []
    for i in range(MATH_RESPONSES):
        reference, same, other = MATH_ANSWERS[(i // MATH_GROUP) % len(MATH_ANSWERS)]
        answer = rng.choice(same if i % 8 < 4 else other)
        tail = f"The answer is {answer}." if i % 8 == 7 else f"So the final answer is $\\boxed{{{answer}}}$."
        out.append((f"{filler(rng, RESPONSE_CHARS - 40)}\n{tail}", reference))
    return out


def uncached_math_reward(response: str, reference: str) -> float:
    _parse_reference.cache_clear()
    return math_reward(response, reference)


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


def math_adversarial() -> dict[str, tuple]:
    boxed = lambda answer: (f"so the answer is $\\boxed{{{answer}}}$", "\\frac{1}{2}")  # noqa: E731
    return {
        "power tower 9^{9^{9}}": boxed("9^{9^{9}}"),
        "power tower 10^{10^{10}}": boxed("10^{10^{10}}"),
        "huge power 7^{123456789}": boxed("7^{123456789}"),
        "huge factorial (10^{6})!": boxed("(10^{6})!"),
        "binomial of 10^9": boxed("\\binom{10^{9}}{10^{5}}"),
        "Gamma(10^9)": boxed("\\Gamma(10^{9})"),
        "e^{e^{e^{e^{9}}}}": boxed("e^{e^{e^{e^{9}}}}"),
        "product of 10^{10^6}": boxed("10^{1000000}\\cdot 10^{1000000}"),
        f"parentheses {MAX_DEPTH} deep": boxed("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH),
        f"braces {MAX_DEPTH} deep": boxed("{" * MAX_DEPTH + "1" + "}" * MAX_DEPTH),
        f"parentheses {MAX_DEPTH + 1} deep (too_deep)": boxed("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)),
        f"sum of x^99 at {MAX_ANSWER_CHARS} chars": boxed("+".join(["x^{99}"] * (MAX_ANSWER_CHARS // 7))),
        "1 MB of text, no box": ("x" * MB, "1"),
        "1 MB of '\\boxed{'": ("\\boxed{" * (MB // 7), "1"),
        "1 MB of '{' after a box": ("\\boxed" + "{" * MB, "1"),
        "1 MB of spaces before the brace": ("\\boxed" + " " * MB + "{1}", "1"),
        "1 MB number in a box (too_long)": ("\\boxed{" + "9" * MB + "}", "1"),
        "1 MB unicode, then a box": ("é中" * (MB // 2) + "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        "10,000 boxes": ("\\boxed{1}" * 10_000, "1"),
    }


def worst_case(grade: Callable[..., object], inputs: dict[str, tuple], calls: int = CALLS_PER_INPUT) -> float:
    """Print the median per-call time of each adversarial input; return the slowest, in ms."""
    worst = 0.0
    for name, args in inputs.items():
        times = []
        for _ in range(calls):
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

    cases = math_responses(rng)
    print(f"\n== MATH grader: {len(cases)} responses of ~{statistics.mean(len(c[0]) for c in cases):.0f} chars, "
          f"{MATH_GROUP} per reference, best of {REPEATS} ==")
    cached, uncached = throughput(math_reward, cases), throughput(uncached_math_reward, cases)
    print(f"  math_reward       {cached:10,.0f} responses/s   (parsed references cached)")
    print(f"  math_reward       {uncached:10,.0f} responses/s   (every reference parsed again)")
    print(f"  math (grade_math), median of {MATH_CALLS_PER_INPUT} calls per input, time limit {TIME_LIMIT_S} s:")
    math_worst = worst_case(grade_math, math_adversarial(), MATH_CALLS_PER_INPUT)
    print(f"  math worst        {math_worst:8.3f} ms per call   (limit {TIME_LIMIT_S * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
