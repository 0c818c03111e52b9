"""common/tasks.py: Countdown solver and generator, word problems; and the graders score their references 1.0."""

import re
from collections import Counter
from fractions import Fraction

import pytest

import random

from common.tasks import (
    OPS as COUNTDOWN_OPS, _join, countdown_key, evaluate_countdown, make_countdown_problems, make_word_problems,
    random_countdown_expression, solve_countdown,
)

EQUATION_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")  # "12 * 3 = 36" in word-problem reasoning
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: Fraction(a, b)}
SETTINGS = [  # (num_numbers, max_number, max_target): the defaults (Countdown-Tasks-3to4-like) and the tiny model's
    ((3, 4), 99, 99),
    ((3,), 20, 50),
]


def numbers_in(expression: str) -> list[int]:
    """The integers an expression uses: '(8-5)*3' -> [8, 5, 3]."""
    return [int(n) for n in re.findall(r"\d+", expression)]


@pytest.mark.parametrize("num_numbers,max_number,max_target", SETTINGS)
def test_countdown_problems_are_solved_by_their_solution(num_numbers, max_number, max_target):
    problems = make_countdown_problems(300, seed=0, num_numbers=num_numbers, max_number=max_number,
                                       max_target=max_target)
    assert len(problems) == 300
    for p in problems:
        assert len(p["nums"]) in num_numbers and all(1 <= n <= max_number for n in p["nums"]), p
        assert 1 <= p["target"] <= max_target, p
        assert Counter(numbers_in(p["solution"])) == Counter(p["nums"]), f"numbers not used exactly once: {p}"
        assert re.fullmatch(r"[0-9+\-*/()]+", p["solution"]), f"not in the grader's syntax: {p}"
        assert evaluate_countdown(p["solution"]) == p["target"], p
        assert len(p["steps"]) == len(p["nums"]) - 1, p
        last = p["steps"][-1]
        assert int(last.split("=")[1]) == p["target"], f"last step does not reach the target: {p}"
        for step in p["steps"]:  # "8-5=3": each shown step is exact
            lhs, rhs = step.split("=")
            assert evaluate_countdown(lhs) == int(rhs), p


def test_countdown_defaults_resemble_countdown_tasks_3to4():
    problems = make_countdown_problems(500, seed=1)
    sizes = Counter(len(p["nums"]) for p in problems)
    assert set(sizes) == {3, 4}, sizes
    assert max(n for p in problems for n in p["nums"]) > 90, "numbers should span 1-99"
    assert len({p["target"] for p in problems}) > 80, "targets should span most of 1-99"


def test_countdown_generation_is_deterministic():
    assert make_countdown_problems(50, seed=3) == make_countdown_problems(50, seed=3)
    assert make_countdown_problems(50, seed=3) != make_countdown_problems(50, seed=4)


def test_countdown_exclude_keeps_held_out_problems_out():
    settings = dict(num_numbers=(3,), max_number=20, max_target=50)
    held_out = make_countdown_problems(200, seed=1, **settings)
    keys = {countdown_key(p) for p in held_out}
    train = make_countdown_problems(5000, seed=0, **settings, exclude=keys)
    assert not keys & {countdown_key(p) for p in train}
    assert countdown_key({"nums": [8, 3, 5], "target": 9}) == countdown_key({"nums": [5, 8, 3], "target": 9})


@pytest.mark.parametrize("numbers,target", [
    ([3, 8, 5], 9), ([1, 3, 4, 6], 24), ([3, 3, 8, 8], 24), ([25, 50, 75, 100], 1), ([7], 7), ([2, 2], 0),
    ([44, 19, 35], 98), ([10, 10, 10, 10], 1),
])
def test_solve_countdown_finds_solutions(numbers, target):
    solution = solve_countdown(numbers, target)
    assert solution is not None, (numbers, target)
    assert Counter(numbers_in(solution)) == Counter(numbers), solution
    assert evaluate_countdown(solution) == target, solution


@pytest.mark.parametrize("numbers,target", [([1, 1, 1], 10), ([2], 3), ([1, 1, 1, 1], 100)])
def test_solve_countdown_returns_none_when_unsolvable(numbers, target):
    assert solve_countdown(numbers, target) is None


def test_solve_countdown_solves_generated_problems():
    for p in make_countdown_problems(100, seed=5):
        solution = solve_countdown(p["nums"], p["target"])
        assert solution is not None and evaluate_countdown(solution) == p["target"], (p, solution)


def test_evaluate_countdown_precedence():
    assert evaluate_countdown("(8-5)*3") == 9
    assert evaluate_countdown("8-5*3") == -7
    assert evaluate_countdown("8-(5-3)") == 6 and evaluate_countdown("8-5-3") == 0
    assert evaluate_countdown("6/(1-3/4)") == 24
    assert evaluate_countdown("12 / 4 / 3") == 1


def test_word_problems_answers_match_their_arithmetic():
    problems = make_word_problems(1000, seed=0)
    for p in problems:
        assert set(p) == {"question", "answer"}, p
        *lines, final = p["answer"].split("\n")
        assert re.fullmatch(r"#### \d+", final), f"last line must be '#### N': {p}"
        equations = [m for line in lines for m in EQUATION_RE.findall(line)]
        assert len(equations) == len(lines) and 1 <= len(lines) <= 2, f"one equation per reasoning line: {p}"
        for a, op, b, c in equations:
            assert OPS[op](int(a), int(b)) == int(c), f"wrong arithmetic {a} {op} {b} = {c} in {p}"
        assert int(final[5:]) == int(equations[-1][3]), f"#### differs from the last result: {p}"
        for a, _, b, _ in equations:  # every operand comes from the question or an earlier line
            for n in (a, b):
                assert re.search(rf"\b{n}\b", p["question"]) or n == "2" or any(n == e[3] for e in equations), (n, p)


def test_word_problems_are_varied_and_deterministic():
    problems = make_word_problems(1000, seed=0)
    assert problems == make_word_problems(1000, seed=0)
    assert problems != make_word_problems(1000, seed=1)
    openings = Counter(re.sub(r"\d+", "N", p["question"]).split()[1] for p in problems)
    assert len(openings) >= 5, openings
    assert len({p["question"] for p in problems}) > 990, "questions should rarely repeat"
    assert max(int(p["answer"].rsplit("#### ", 1)[1]) for p in problems) > 999, "some answers should be large"


def test_graders_score_reference_solutions():
    countdown = pytest.importorskip("rewards.countdown")
    gsm8k = pytest.importorskip("rewards.gsm8k")
    tiny = make_countdown_problems(200, seed=0, num_numbers=(3,), max_number=20, max_target=50)
    for p in make_countdown_problems(200, seed=0) + tiny:
        response = f" {', '.join(p['steps'])}</think>\n<answer>{p['solution']}</answer>"
        assert countdown.countdown_reward(response, p["nums"], p["target"]) == 1.0, p
        assert countdown.countdown_reward(response, p["nums"], p["target"] + 1) < 1.0, p
    for p in make_word_problems(300, seed=0):
        reference = gsm8k.parse_reference(p["answer"])
        assert reference == p["answer"].rsplit("#### ", 1)[1], p
        assert gsm8k.gsm8k_reward(" " + p["answer"], p["answer"]) == 1.0, p
        assert gsm8k.gsm8k_reward(" " + p["answer"], reference) == 1.0, p
        assert gsm8k.gsm8k_reward(" " + p["answer"], str(int(reference) + 1)) == 0.0, p


def fraction_countdown_expression(nums: list[int], rng: random.Random):
    """The generator's first, slow form: exact Fractions, rejecting a non-integer, zero or negative step afterwards."""
    terms = [(Fraction(n), str(n), None) for n in nums]
    steps = []
    while len(terms) > 1:
        i, j = rng.sample(range(len(terms)), 2)
        (a, sa, oa), (b, sb, ob) = terms[i], terms[j]
        op = rng.choice(COUNTDOWN_OPS)
        value = OPS[op](a, b)
        if value <= 0 or value.denominator != 1:
            return 0, "", []
        steps.append(f"{a}{op}{b}={value}")
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [(value, _join(op, (sa, oa), (sb, ob)), op)]
    return int(terms[0][0]), terms[0][1], steps


@pytest.mark.parametrize("num_numbers,max_number", [((3,), 20), ((3, 4), 99), ((2, 3, 4), 9)])
def test_integer_generator_equals_the_fraction_one(num_numbers, max_number):
    """The integer arithmetic of `random_countdown_expression` draws the same numbers and returns the same problems
    as exact Fractions would: same values, expressions, steps and random stream."""
    fast, slow = random.Random(7), random.Random(7)
    for _ in range(3000):
        nums = [fast.randint(1, max_number) for _ in range(fast.choice(num_numbers))]
        assert nums == [slow.randint(1, max_number) for _ in range(slow.choice(num_numbers))]
        assert random_countdown_expression(nums, fast) == fraction_countdown_expression(nums, slow)
