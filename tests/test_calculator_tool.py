"""The calculator tool (tools/calculator.py) and the arithmetic grader (rewards/arithmetic.py): tables of hand-written
cases, then property-based fuzzing (hypothesis): no input raises, takes long or answers long, and every well-formed
expression gets its exact value."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.arithmetic import (ARITHMETIC_REASONS, CORRECT_REWARD, FORMAT_REWARD, NO_ANSWER_REWARD, ArithmeticGrade,
                                grade_arithmetic)
from tools.calculator import DECIMALS, MAX_CHARS, MAX_DEPTH, MAX_DIGITS, MAX_RESULT_DIGITS, calculator, format_value

FUZZ = settings(max_examples=300, deadline=None)
MAX_OUTPUT_CHARS = 64  # what any input may make the calculator answer (tokens the rollout appends)

CALCULATOR_CASES = [
    # values: exact, integers plain, other values rounded to 6 places
    ("347*28 - 196", "9520"),
    ("347 * 28 - 196", "9520"),
    (" 2 + 3 * 4 ", "14"),
    ("(2 + 3) * 4", "20"),
    ("2 - 3 - 4", "-5"),  # left to right
    ("24 / 4 / 2", "3"),
    ("10 / 4", "2.5"),
    ("10 / 3", "3.333333"),
    ("2 / 3", "0.666667"),
    ("1 / 8", "0.125"),
    ("10 / 3 * 3", "10"),  # exact fractions, no float rounding
    ("0.1 + 0.2", "0.3"),
    ("-1 / 3", "-0.333333"),
    ("1 / 1000000000", "0"),
    ("-3", "-3"),
    ("2 * -3", "-6"),
    ("--3", "3"),
    ("+3", "3"),
    ("-" * 150 + "3", "3"),  # unary signs: a loop, not recursion
    ("007", "7"),
    ("0", "0"),
    ("((((1))))", "1"),
    ("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH, "1"),
    ("9" * MAX_DIGITS, "9" * MAX_DIGITS),
    ("12\n+\t3", "15"),
    # errors the model reads
    ("1 / 0", "error: division by zero"),
    ("1 / (2 - 2)", "error: division by zero"),
    ("0 / 0", "error: division by zero"),
    ("", "error: empty expression"),
    ("   \n", "error: empty expression"),
    ("2 ** 3", "error: unexpected '*'"),
    ("2 ^ 3", "error: unsupported character '^'"),
    ("7 % 3", "error: unsupported character '%'"),
    ("1,000 + 1", "error: unsupported character ','"),
    ("1e3", "error: unsupported character 'e'"),
    ("1.5.2", "error: unsupported character '.'"),
    (".5", "error: unsupported character '.'"),
    ("٣ + 1", "error: unsupported character '٣'"),  # Arabic-Indic digit: not ASCII
    ("__import__('os').system('ls')", "error: unsupported character '_'"),
    ("3 +", "error: unexpected end of expression"),
    ("(3 + 4", "error: unexpected end of expression"),
    ("3 + 4)", "error: unexpected ')'"),
    ("3 4", "error: unexpected number"),
    ("2(3)", "error: unexpected '('"),
    ("()", "error: unexpected ')'"),
    ("*3", "error: unexpected '*'"),
    ("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "error: too deeply nested"),
    ("9" * (MAX_DIGITS + 1), "error: number too long"),
    ("1." + "5" * MAX_DIGITS, "error: number too long"),
    ("*".join(["9" * 25] * 2), "error: result too large"),
    ("1 / " + "/".join(["7" * 25] * 2), "error: result too large"),
    ("1+" * (MAX_CHARS // 2) + "1", f"error: expression too long (over {MAX_CHARS} characters)"),
]


@pytest.mark.parametrize("expression,expected", CALCULATOR_CASES)
def test_calculator_table(expression, expected):
    assert calculator(expression) == expected


def test_format_value():
    assert [format_value(Fraction(n, d)) for n, d in [(7, 2), (-1, 3), (5, 1), (-5, 1), (1, 2 * 10**6), (3, 2 * 10**6)]] == \
        ["3.5", "-0.333333", "5", "-5", "0", "0.000002"]  # half to even: 0.5e-6 -> 0, 1.5e-6 -> 2e-6


# ---------------------------------------------------------------------------------------------- property-based tests
PIECES = list("0123456789+-*/() \n\t.,^%=xe_٣３") + ["**", "//", "(((", ")))", "9" * 20, "<calc>", "</calc>", "1/0"]
EXPRESSION_LIKE = st.lists(st.sampled_from(PIECES), max_size=80).map("".join)  # text the parser half-accepts
ANY_TEXT = st.one_of(st.text(max_size=300), EXPRESSION_LIKE)


@FUZZ
@given(text=ANY_TEXT)
def test_calculator_never_raises_and_stays_short(text):
    start = time.perf_counter()
    out = calculator(text)
    assert time.perf_counter() - start < 0.05, text  # bounded time (typically ~20 us)
    assert isinstance(out, str) and 0 < len(out) <= MAX_OUTPUT_CHARS, (text, out)
    if out.startswith("error: "):
        assert "<" not in out[:-3] or "'<'" in out, out  # errors quote one character at most: no tags leak
    else:
        Fraction(out)  # a plain number


def test_calculator_worst_cases_are_fast():
    worst = ["(" * 10_000, "-" * 10**6, "9" * 10**6, "1/" * 10**5 + "1", "*".join(["9" * 30] * 6), "(" * 5000 + ")" * 5000,
             "\n" * 10**6, "٣" * 10**5]
    for text in worst:
        start = time.perf_counter()
        out = calculator(text)
        assert out.startswith("error: ") and time.perf_counter() - start < 0.05, (text[:20], out)


@st.composite
def expressions(draw, depth: int = 0) -> tuple[str, Fraction | None]:
    """A random expression tree over random ints: (text, exact value, None after a division by zero)."""
    if depth >= 3 or draw(st.booleans()):
        leaf = draw(st.integers(0, 10**6))
        return str(leaf), Fraction(leaf)
    op = draw(st.sampled_from("+-*/"))
    (left, lv), (right, rv) = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    if lv is None or rv is None or (op == "/" and rv == 0):
        value = None
    else:
        value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv if op == "*" else lv / rv
    space = draw(st.sampled_from(["", " ", "\n"]))
    return f"({left}{space}{op}{space}{right})", value


@FUZZ
@given(expr=expressions())
def test_calculator_gets_every_well_formed_expression_right(expr):
    text, value = expr
    out = calculator(text)
    if value is None:
        assert out == "error: division by zero", (text, out)
    else:  # leaves <= 10**6, at most 8 of them: far below the size bound
        assert out == format_value(value), (text, out)
        assert abs(Fraction(out) - value) <= Fraction(1, 2 * 10**DECIMALS)


@FUZZ
@given(a=st.integers(-10**12, 10**12), b=st.integers(-10**12, 10**12))
def test_calculator_integer_arithmetic_matches_python(a, b):
    assert calculator(f"{a} + {b}") == str(a + b)
    assert calculator(f"{a} - {b}") == str(a - b)
    assert calculator(f"{a} * {b}") == str(a * b)
    assert calculator(f"({a}) * ({b})") == str(a * b)
    if b != 0 and a % b == 0:
        assert calculator(f"{a} / {b}") == str(a // b)


def test_result_bound_is_the_documented_one():
    assert calculator("1" + "0" * 20 + " * 1" + "0" * 19) == "1" + "0" * (MAX_RESULT_DIGITS - 1)
    assert calculator("1" + "0" * 20 + " * 1" + "0" * 20) == "error: result too large"


# ---------------------------------------------------------------------------------------------- the task's grader
GRADER_CASES = [
    ("<calc>347*28</calc><calc>9716-196</calc><answer>9520</answer>", 9520, 1.0, "correct", "9520"),
    ("<answer> 9520 </answer>", 9520, 1.0, "correct", "9520"),
    ("<answer>\n9520\n</answer>\n", 9520, 1.0, "correct", "9520"),
    ("<answer>-5</answer>", -5, 1.0, "correct", "-5"),
    ("<answer>09520</answer>", 9520, 1.0, "correct", "09520"),
    ("<answer>1</answer> no: <answer>9520</answer>", 9520, 1.0, "correct", "9520"),  # the last answer counts
    ("<answer>9520</answer> <answer>", 9520, 1.0, "correct", "9520"),  # an unclosed tag after it is ignored
    ("<answer>9521</answer>", 9520, 0.1, "wrong_value", "9521"),
    ("<answer>-9520</answer>", 9520, 0.1, "wrong_value", "-9520"),
    ("<answer>9,520</answer>", 9520, 0.1, "bad_number", "9,520"),
    ("<answer>9520.0</answer>", 9520, 0.1, "bad_number", "9520.0"),
    ("<answer>+9520</answer>", 9520, 0.1, "bad_number", "+9520"),
    ("<answer>347*28-196</answer>", 9520, 0.1, "bad_number", "347*28-196"),
    ("<answer></answer>", 9520, 0.1, "bad_number", ""),
    ("<answer>٩٥٢٠</answer>", 9520, 0.1, "bad_number", "٩٥٢٠"),  # ASCII digits only
    ("<answer>" + "9" * 65 + "</answer>", 9520, 0.1, "bad_number", "9" * 65),
    ("", 9520, 0.0, "no_answer", None),
    ("9520", 9520, 0.0, "no_answer", None),
    ("<answer>9520", 9520, 0.0, "no_answer", None),
    ("9520</answer>", 9520, 0.0, "no_answer", None),
    ("</answer>9520<answer>", 9520, 0.0, "no_answer", None),
    ("<calc>347*28</calc><result>9716</result>", 9520, 0.0, "no_answer", None),
]


@pytest.mark.parametrize("response,value,reward,reason,answer", GRADER_CASES)
def test_grader_table(response, value, reward, reason, answer):
    assert grade_arithmetic(response, value) == ArithmeticGrade(reward, reason, answer)


def test_grader_table_covers_every_reason():
    assert {case[3] for case in GRADER_CASES} == set(ARITHMETIC_REASONS)
    assert (CORRECT_REWARD, FORMAT_REWARD, NO_ANSWER_REWARD) == (1.0, 0.1, 0.0)  # as the Countdown grader's


@FUZZ
@given(text=ANY_TEXT, value=st.integers(-10**9, 10**9))
def test_grader_never_raises(text, value):
    for response in (text, f"<answer>{text}</answer>", f"<answer>{text}", f"<answer>{value}</answer>{text}"):
        grade = grade_arithmetic(response, value)
        assert grade.reason in ARITHMETIC_REASONS and (grade.reason == "correct") == (grade.reward == CORRECT_REWARD)


@FUZZ
@given(value=st.integers(-10**12, 10**12), delta=st.integers(1, 100), before=ANY_TEXT)
def test_grader_reads_the_value_after_any_text(value, delta, before):
    assert grade_arithmetic(f"{before}<answer>{value}</answer>", value).reward == CORRECT_REWARD
    assert grade_arithmetic(f"{before}<answer>{value + delta}</answer>", value).reason == "wrong_value"
