"""Write data/math/{train,test}.jsonl: MATH-format problems written for this project (no MATH problem is copied).

    python data/math/make_problems.py      # deterministic: the same files for the same SEED

Each row is {"problem", "solution", "level", "type"} as in MATH (hendrycks/math): the solution is short and ends with
the reference answer in \\boxed{}. The templates cover MATH's answer forms: integers, negative numbers, fractions,
square roots, multiples of pi, intervals, ordered pairs, lists of roots, percentages, degrees and thousands. They are
short, so that `grpo_math.py --preset tiny` fits its prompts in the shipped tiny models' 512 positions.
"""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction
from pathlib import Path

SEED = 0
SIZES = {"train": 84, "test": 42}  # 7 and 3.5 problems per template


def frac(value: Fraction) -> str:
    """LaTeX of an exact number: Fraction(-3, 4) -> '-\\frac{3}{4}', Fraction(5) -> '5'."""
    if value.denominator == 1:
        return str(value.numerator)
    return ("-" if value < 0 else "") + f"\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def root(n: int) -> str:
    """sqrt(n) in simplest form: 72 -> '6\\sqrt{2}', 49 -> '7', 5 -> '\\sqrt{5}'."""
    outside, inside = 1, n
    for k in range(int(math.isqrt(n)), 1, -1):
        if inside % (k * k) == 0:
            outside, inside = outside * k, inside // (k * k)
            break
    if inside == 1:
        return str(outside)
    return ("" if outside == 1 else str(outside)) + f"\\sqrt{{{inside}}}"


def add_fractions(rng):
    a, b, c, d = rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 9)
    s = Fraction(a, b) + Fraction(c, d)
    return ("Prealgebra", 3,
            f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$. Express your answer as a common fraction.",
            f"With the common denominator ${b * d}$ the sum is $\\frac{{{a * d + c * b}}}{{{b * d}}}$, "
            f"which is $\\boxed{{{frac(s)}}}$.")


def linear_equation(rng):
    a, x = rng.choice([2, 3, 4, 5, 6, -2, -3]), Fraction(rng.randint(-12, 12), rng.choice([1, 1, 2, 3]))
    b = rng.randint(-20, 20)
    c = a * x + b
    return ("Algebra", 3, f"Solve for $x$: ${a}x {'+' if b >= 0 else '-'} {abs(b)} = {frac(c)}$.",
            f"Then ${a}x = {frac(c - b)}$, so $x = \\boxed{{{frac(x)}}}$.")


def simplify_root(rng):
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11])
    n = k * k * m
    return ("Prealgebra", 3, f"Simplify $\\sqrt{{{n}}}$.",
            f"Since ${n} = {k * k} \\cdot {m}$, we have $\\sqrt{{{n}}} = \\boxed{{{k}\\sqrt{{{m}}}}}$.")


def circle_area(rng):
    r = rng.randint(2, 15)
    return ("Geometry", 3, f"A circle has radius ${r}$ cm. What is its area? Express your answer in terms of $\\pi$.",
            f"The area is $\\pi r^2 = \\boxed{{{r * r}\\pi}}$ square centimeters.")


def inequality(rng):
    a, b, c = rng.randint(2, 7), rng.randint(-15, 15), rng.randint(-15, 15)
    bound = Fraction(c - b, a)
    less = rng.random() < 0.5
    answer = f"(-\\infty, {frac(bound)}]" if less else f"({frac(bound)}, \\infty)"
    sign = "\\le" if less else ">"
    return ("Algebra", 4,
            f"Solve ${a}x {'+' if b >= 0 else '-'} {abs(b)} {sign} {c}$. Express your answer in interval notation.",
            f"So $x {sign} {frac(bound)}$, that is $x \\in \\boxed{{{answer}}}$.")


def midpoint(rng):
    x1, y1, x2, y2 = (rng.randint(-9, 9) for _ in range(4))
    mx, my = Fraction(x1 + x2, 2), Fraction(y1 + y2, 2)
    return ("Algebra", 3, f"What is the midpoint of the segment with endpoints $({x1}, {y1})$ and $({x2}, {y2})$?",
            f"Average the coordinates: the midpoint is $\\boxed{{({frac(mx)}, {frac(my)})}}$.")


def quadratic_roots(rng):
    r1, r2 = rng.sample(range(-9, 10), 2)
    while r1 + r2 == 0 or r1 * r2 == 0:  # every term present
        r1, r2 = rng.sample(range(-9, 10), 2)
    b, c = -(r1 + r2), r1 * r2
    return ("Algebra", 4,
            f"Find all solutions to $x^2 {'+' if b >= 0 else '-'} {abs(b)}x {'+' if c >= 0 else '-'} {abs(c)} = 0$. "
            "Enter the solutions, separated by commas.",
            f"It factors as $(x {'-' if r1 >= 0 else '+'} {abs(r1)})(x {'-' if r2 >= 0 else '+'} {abs(r2)}) = 0$, "
            f"so the solutions are $\\boxed{{{min(r1, r2)}, {max(r1, r2)}}}$.")


def percent(rng):
    whole, pct = rng.choice([20, 40, 50, 80, 200, 250, 400]), rng.choice([5, 10, 15, 20, 25, 30, 40, 60, 75])
    while whole * pct % 100:  # a whole part
        whole, pct = rng.choice([20, 40, 50, 80, 200, 250, 400]), rng.choice([5, 10, 15, 20, 25, 30, 40, 60, 75])
    part = whole * pct // 100
    return ("Prealgebra", 3, f"What percent of ${whole}$ is ${part}$?",
            f"Since $\\frac{{{part}}}{{{whole}}} = \\frac{{{pct}}}{{100}}$, the answer is $\\boxed{{{pct}\\%}}$.")


def triangle_angle(rng):
    a, b = rng.randint(20, 80), rng.randint(20, 80)
    return ("Geometry", 3, f"Two angles of a triangle measure ${a}^\\circ$ and ${b}^\\circ$. What is the third angle?",
            f"The angles sum to $180^\\circ$, so the third is $\\boxed{{{180 - a - b}^\\circ}}$.")


def series_sum(rng):
    n = rng.randint(50, 150)
    return ("Algebra", 3, f"Compute $1 + 2 + 3 + \\cdots + {10 * n}$.",
            f"The sum is $\\frac{{{10 * n} \\cdot {10 * n + 1}}}{{2}} = \\boxed{{{10 * n * (10 * n + 1) // 2:,}}}$."
            .replace(",", "{,}"))


def distance(rng):
    x1, y1 = rng.randint(-6, 6), rng.randint(-6, 6)
    dx, dy = rng.randint(1, 8), rng.randint(1, 8)
    x2, y2 = x1 + dx, y1 - dy
    return ("Algebra", 4,
            f"What is the distance between $({x1}, {y1})$ and $({x2}, {y2})$? Express it in simplest radical form.",
            f"The distance is $\\sqrt{{{dx}^2 + {dy}^2}} = \\boxed{{{root(dx * dx + dy * dy)}}}$.")


def slope(rng):
    x1, y1, x2, y2 = (rng.randint(-9, 9) for _ in range(4))
    while x2 == x1:
        x2 = rng.randint(-9, 9)
    m = Fraction(y2 - y1, x2 - x1)
    return ("Algebra", 3, f"What is the slope of the line through $({x1}, {y1})$ and $({x2}, {y2})$?",
            f"The slope is $\\frac{{{y2} - ({y1})}}{{{x2} - ({x1})}} = \\boxed{{{frac(m)}}}$.")


TEMPLATES = [add_fractions, linear_equation, simplify_root, circle_area, inequality, midpoint, quadratic_roots, percent,
             triangle_angle, series_sum, distance, slope]


def main(out: Path = Path(__file__).parent) -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    for split, size in SIZES.items():
        rows = []
        while len(rows) < size:
            kind, level, problem, solution = TEMPLATES[len(rows) % len(TEMPLATES)](rng)
            if problem not in seen:  # no problem twice, in a split or across them
                seen.add(problem)
                rows.append({"problem": problem, "solution": solution, "level": f"Level {level}", "type": kind})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
