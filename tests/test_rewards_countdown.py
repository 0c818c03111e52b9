"""Countdown grader: a table of hand-written cases, then property-based fuzzing (hypothesis)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.countdown import (
    CORRECT_REWARD,
    COUNTDOWN_REASONS,
    FORMAT_REWARD,
    MAX_ANSWER_CHARS,
    MAX_PAREN_DEPTH,
    NO_ANSWER_REWARD,
    CountdownGrade,
    countdown_reward,
    grade_countdown,
)

FUZZ = settings(max_examples=250, deadline=None)
NUMS = [3, 5, 7]  # target 22 = 3 * 5 + 7


def tag(answer: str) -> str:
    return f"<think>let me try some combinations</think>\n<answer>{answer}</answer>"


# (response, numbers, target, reward, reason, answer, value); value None means "not evaluated"
CASES = [
    # correct answers, in various layouts
    (tag("3 * 5 + 7"), NUMS, 22, 1.0, "correct", "3 * 5 + 7", Fraction(22)),
    (tag("7+5*3"), NUMS, 22, 1.0, "correct", "7+5*3", Fraction(22)),
    (tag(" (3*5)+7 ") + "\n\n", NUMS, 22, 1.0, "correct", "(3*5)+7", Fraction(22)),  # trailing newline is fine
    ("<answer>\n3 * 5\n+ 7\n</answer>", NUMS, 22, 1.0, "correct", "3 * 5\n+ 7", Fraction(22)),  # multi-line answer
    ("<answer>1+2</answer> no wait <answer>3*5+7</answer>", NUMS, 22, 1.0, "correct", "3*5+7", Fraction(22)),
    ("<answer>3*5+7</answer> no wait <answer>3+5+7</answer>", NUMS, 22, 0.1, "wrong_value", "3+5+7", Fraction(15)),
    ("<answer><answer>3*5+7</answer>", NUMS, 22, 1.0, "correct", "3*5+7", Fraction(22)),  # innermost open tag
    ("<answer>3*5+7</answer> <answer>", NUMS, 22, 1.0, "correct", "3*5+7", Fraction(22)),  # unclosed tag ignored
    (tag("10 / 3 * 3"), [10, 3, 3], 10, 1.0, "correct", "10 / 3 * 3", Fraction(10)),  # exact: no float rounding
    (tag("(1 + 2) / 3 / 4 * 8"), [1, 2, 3, 4, 8], 2, 1.0, "correct", "(1 + 2) / 3 / 4 * 8", Fraction(2)),
    (tag("0 * 9 + 4"), [0, 9, 4], 4, 1.0, "correct", "0 * 9 + 4", Fraction(4)),  # "0" itself is fine
    (tag("((((((((1))))))))+2"), [1, 2], 3, 1.0, "correct", "((((((((1))))))))+2", Fraction(3)),
    (tag("6 - 8"), [6, 8], -2, 1.0, "correct", "6 - 8", Fraction(-2)),  # negative results via binary minus are fine
    # no answer tag
    ("", NUMS, 22, 0.0, "no_answer", None, None),
    ("3 * 5 + 7", NUMS, 22, 0.0, "no_answer", None, None),
    ("<answer>3 * 5 + 7", NUMS, 22, 0.0, "no_answer", None, None),
    ("3 * 5 + 7</answer>", NUMS, 22, 0.0, "no_answer", None, None),
    ("</answer>3*5+7<answer>", NUMS, 22, 0.0, "no_answer", None, None),
    ("<ANSWER>3*5+7</ANSWER>", NUMS, 22, 0.0, "no_answer", None, None),
    # wrong value / numbers
    (tag("3 + 5 + 7"), NUMS, 22, 0.1, "wrong_value", "3 + 5 + 7", Fraction(15)),
    (tag("3 * 5 + 7 + 7"), NUMS, 29, 0.1, "wrong_numbers", "3 * 5 + 7 + 7", Fraction(29)),  # reused number
    (tag("3 * 5"), NUMS, 15, 0.1, "wrong_numbers", "3 * 5", Fraction(15)),  # missing number
    (tag("3 * 5 + 7 - 1"), NUMS, 21, 0.1, "wrong_numbers", "3 * 5 + 7 - 1", Fraction(21)),  # extra number
    (tag("35 - 7 - 6"), NUMS, 22, 0.1, "wrong_numbers", "35 - 7 - 6", Fraction(22)),
    (tag("1 / 3"), [1, 3], Fraction(1, 3), 1.0, "correct", "1 / 3", Fraction(1, 3)),
    (tag("1 / 3 * 3"), [1, 3, 3], 1, 1.0, "correct", "1 / 3 * 3", Fraction(1)),
    # division by zero: invalid, not an exception; wrong numbers take priority over it
    (tag("7 / (5 - 5)"), [7, 5, 5], 1, 0.1, "div_by_zero", "7 / (5 - 5)", None),
    (tag("7 / 0"), [7], 1, 0.1, "wrong_numbers", "7 / 0", None),
    (tag("0 / 0 + 1 / 0"), [0, 0, 1, 0], 1, 0.1, "div_by_zero", "0 / 0 + 1 / 0", None),
    # things TinyZero's eval accepts and we reject
    (tag("9**9**9"), [9, 9, 9], 9, 0.1, "bad_syntax", "9**9**9", None),  # hangs an eval-based grader
    (tag("1.5*4"), [1, 5, 4], 6, 0.1, "bad_syntax", "1.5*4", None),  # "correct" for an eval-based grader
    (tag("7 // 2"), [7, 2], 3, 0.1, "bad_syntax", "7 // 2", None),
    (tag("7 % 4 + 3"), [7, 4, 3], 6, 0.1, "bad_syntax", "7 % 4 + 3", None),
    (tag("-3 + 5"), [3, 5], 2, 0.1, "bad_syntax", "-3 + 5", None),  # unary minus
    (tag("+3 + 5"), [3, 5], 8, 0.1, "bad_syntax", "+3 + 5", None),  # unary plus
    (tag("3 * 5 + 7 = 22"), NUMS, 22, 0.1, "bad_syntax", "3 * 5 + 7 = 22", None),  # "=" inside the answer
    (tag("03 * 5 + 7"), NUMS, 22, 0.1, "bad_syntax", "03 * 5 + 7", None),  # leading zero
    (tag("3 5 * 7"), NUMS, 105, 0.1, "bad_syntax", "3 5 * 7", None),  # whitespace does not join digits
    (tag("abs(3) * 5 + 7"), NUMS, 22, 0.1, "bad_syntax", "abs(3) * 5 + 7", None),  # names and calls
    (tag("３ * 5 + 7"), NUMS, 22, 0.1, "bad_syntax", "３ * 5 + 7", None),  # full-width digit
    (tag("٣ * 5 + 7"), NUMS, 22, 0.1, "bad_syntax", "٣ * 5 + 7", None),  # Arabic-Indic digit (\d would match)
    (tag("3 × 5 + 7"), NUMS, 22, 0.1, "bad_syntax", "3 × 5 + 7", None),  # unicode times sign
    (tag("(3 * 5 + 7"), NUMS, 22, 0.1, "bad_syntax", "(3 * 5 + 7", None),  # unbalanced
    (tag("3 * 5 + 7)"), NUMS, 22, 0.1, "bad_syntax", "3 * 5 + 7)", None),
    (tag("()"), [], 0, 0.1, "bad_syntax", "()", None),
    (tag(""), NUMS, 22, 0.1, "bad_syntax", "", None),  # empty answer
    (tag("   \n "), NUMS, 22, 0.1, "bad_syntax", "", None),
    (tag("3 * 5 + 7 / 0 +"), NUMS, 22, 0.1, "bad_syntax", "3 * 5 + 7 / 0 +", None),  # syntax beats div_by_zero
    # bounds
    (tag("1+" * 200 + "1"), [1] * 201, 201, 0.1, "too_long", "1+" * 200 + "1", None),
    (tag("1" * (MAX_ANSWER_CHARS + 1)), [1], 1, 0.1, "too_long", "1" * (MAX_ANSWER_CHARS + 1), None),
    (tag("(" * MAX_PAREN_DEPTH + "1" + ")" * MAX_PAREN_DEPTH), [1], 1, 1.0, "correct",
     "(" * MAX_PAREN_DEPTH + "1" + ")" * MAX_PAREN_DEPTH, Fraction(1)),
    (tag("(" * (MAX_PAREN_DEPTH + 1) + "1" + ")" * (MAX_PAREN_DEPTH + 1)), [1], 1, 0.1, "too_deep",
     "(" * (MAX_PAREN_DEPTH + 1) + "1" + ")" * (MAX_PAREN_DEPTH + 1), None),
    (tag("(" * 100), [], 0, 0.1, "too_deep", "(" * 100, None),
    (tag("1 + x + " + "(" * 100), [1], 1, 0.1, "bad_syntax", "1 + x + " + "(" * 100, None),  # first error wins
    (tag("9" * 250), [int("9" * 250)], int("9" * 250), 1.0, "correct", "9" * 250, Fraction(int("9" * 250))),
    ("<answer>" * 10_000 + "3*5+7</answer>", NUMS, 22, 1.0, "correct", "3*5+7", Fraction(22)),  # 10,000 tags
    ("<answer>3*5</answer>" * 10_000 + "<answer>3*5+7</answer>", NUMS, 22, 1.0, "correct", "3*5+7", Fraction(22)),
    ("<answer>3*5+7" + "</answer>" * 30, NUMS, 22, 0.1, "too_long", "3*5+7" + "</answer>" * 29, None),
]


@pytest.mark.parametrize("response,numbers,target,reward,reason,answer,value", CASES)
def test_table(response, numbers, target, reward, reason, answer, value):
    grade = grade_countdown(response, numbers, target)
    assert grade == CountdownGrade(reward, reason, answer, value), (response[:200], grade)
    assert countdown_reward(response, numbers, target) == reward
    assert grade.reason in COUNTDOWN_REASONS


def test_table_covers_every_reason():
    assert {case[4] for case in CASES} == set(COUNTDOWN_REASONS)


def test_rewards_match_tinyzero():
    assert (CORRECT_REWARD, FORMAT_REWARD, NO_ANSWER_REWARD) == (1.0, 0.1, 0.0)


def test_grade_is_frozen():
    grade = grade_countdown(tag("3*5+7"), NUMS, 22)
    with pytest.raises(AttributeError):
        grade.reward = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- property-based tests
GRAMMAR_PIECES = list("0123456789+-*/() \n\t.=x٣３") + ["<answer>", "</answer>", "**", "//", "07", "<think>"]
GRAMMAR_TEXT = st.lists(st.sampled_from(GRAMMAR_PIECES), max_size=60).map("".join)  # text the parser half-accepts
ANY_TEXT = st.one_of(st.text(max_size=200), GRAMMAR_TEXT)


@FUZZ
@given(text=ANY_TEXT, numbers=st.lists(st.integers(0, 100), max_size=6), target=st.integers(-1000, 1000))
def test_random_text_never_raises(text, numbers, target):
    for response in (text, f"<answer>{text}</answer>", f"<answer>{text}"):
        grade = grade_countdown(response, numbers, target)
        assert grade.reward in (NO_ANSWER_REWARD, FORMAT_REWARD, CORRECT_REWARD)
        assert grade.reason in COUNTDOWN_REASONS
        assert (grade.reason == "correct") == (grade.reward == CORRECT_REWARD)


@st.composite
def expressions(draw, depth: int = 0) -> tuple[str, Fraction | None, list[int]]:
    """A random expression tree over random ints: (text, exact value or None on division by zero, leaves)."""
    if depth >= 3 or draw(st.booleans()):
        leaf = draw(st.integers(0, 100))
        return str(leaf), Fraction(leaf), [leaf]
    op = draw(st.sampled_from("+-*/"))
    (left, lv, ln), (right, rv, rn) = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    if lv is None or rv is None or (op == "/" and rv == 0):
        value = None
    elif op == "/":
        value = lv / rv
    else:
        value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    space = draw(st.sampled_from(["", " ", "\n"]))
    return f"({left}{space}{op}{space}{right})", value, ln + rn


@FUZZ
@given(expr=expressions(), shuffle=st.randoms(use_true_random=False))
def test_random_correct_equation_scores_one(expr, shuffle):
    text, value, leaves = expr
    if value is None:
        return  # division by zero somewhere in the tree
    numbers = list(leaves)
    shuffle.shuffle(numbers)
    grade = grade_countdown(f"<think>...</think>\n<answer>{text}</answer>\n", numbers, value)
    assert (grade.reward, grade.reason, grade.value) == (1.0, "correct", value), (text, numbers, grade)


@FUZZ
@given(expr=expressions(), delta=st.integers(1, 10))
def test_wrong_target_or_numbers_scores_format_reward(expr, delta):
    text, value, leaves = expr
    if value is None:
        return
    response = f"<answer>{text}</answer>"
    assert grade_countdown(response, leaves, value + delta).reason == "wrong_value"
    assert grade_countdown(response, leaves + [leaves[0]], value).reason == "wrong_numbers"  # a number left unused
    reused = f"<answer>{text}+{leaves[0]}-{leaves[0]}</answer>"  # same value, a number used twice
    assert grade_countdown(reused, leaves, value).reason == "wrong_numbers"
    if len(leaves) > 1:
        assert grade_countdown(response, leaves[1:], value).reason == "wrong_numbers"  # a number not given
    for wrong in ((leaves, value + delta), (leaves + [leaves[0]], value)):
        assert countdown_reward(response, *wrong) == FORMAT_REWARD
