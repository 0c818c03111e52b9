"""Countdown reward: combine the given numbers, each exactly once, with + - * / and parentheses to reach the target.

Example: numbers [3, 5, 7], target 22, response "<think>...</think> <answer>3 * 5 + 7</answer>" scores 1.0.

Rewards are the values TinyZero and oat use, so reward curves compare: 1.0 correct, 0.1 an answer tag is present but
the equation is invalid or wrong, 0.0 no answer tag. TinyZero's grader: `compute_score(format_score=0.1,
score=1.)` in https://github.com/Jiayi-Pan/TinyZero/blob/f36b1b8d53f3ea99a486cb1dcbcb539e603f8f04/verl/utils/reward_score/countdown.py

Where we differ from TinyZero/oat, and why:
- They `eval` the answer behind a character whitelist that lets `**` through, so `9**9**9` with numbers [9, 9, 9]
  hangs the trainer. We parse with the grammar below (never eval), cap the answer length and the paren nesting.
- Their whitelist accepts "." and unary minus, and they check numbers with `re.findall(r"\\d+")`, so `1.5*4` with
  numbers [1, 5, 4] scores 1.0 for target 6. We accept only ASCII integers and binary operators.
- They compare floats within 1e-5; we use exact fractions: `10 / 3 * 3` is 10, `1 / 3` is not 0.333333.
- They read only the last line (and require an "Assistant:" marker), so a newline after </answer> scores 0.0 there.
  We take the last <answer>...</answer> pair anywhere in the response; it may span lines.

Grammar (whitespace between tokens is ignored; anything else, e.g. "=", "**", "%", "1.5", "-3", "07", is bad_syntax):
    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := INT | "(" expr ")"
    INT    := "0" | [1-9][0-9]*

Reason priority when several apply (first wins): too_long > bad_syntax or too_deep (whichever the left-to-right parse
meets first) > wrong_numbers > div_by_zero > wrong_value. `value` is set whenever the whole expression evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

CORRECT_REWARD = 1.0
FORMAT_REWARD = 0.1  # an answer tag is present, but the equation is invalid or wrong
NO_ANSWER_REWARD = 0.0
MAX_ANSWER_CHARS = 256  # longer answers are "too_long": keeps parsing and big-int arithmetic to microseconds
MAX_PAREN_DEPTH = 16  # deeper nesting is "too_deep": bounds the parser's recursion
OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"
COUNTDOWN_REASONS = (
    "correct", "no_answer", "too_long", "bad_syntax", "too_deep", "wrong_numbers", "div_by_zero", "wrong_value",
)

# One token per match: a run of ASCII digits, an operator or paren, or any other single non-space character (invalid).
# Whitespace is Python's (str.isspace), as for the str.strip() of the answer.
_TOKEN_RE = re.compile(r"[0-9]+|[-+*/()]|\S")


@dataclass(frozen=True)
class CountdownGrade:
    """Why a response got its reward. `reason` is one of COUNTDOWN_REASONS."""

    reward: float
    reason: str
    answer: str | None = None  # text inside the last <answer>...</answer>, str.strip()-ed; None without one
    value: Fraction | None = None  # exact value of the answer, when it parsed and evaluated


class _Invalid(Exception):
    """Raised by the parser; args[0] is the reason, "bad_syntax" or "too_deep"."""


def _last_answer(response: str) -> str | None:
    """Text of the last <answer>...</answer> pair, in linear time: '<answer> 1+2 </answer>.' -> '1+2'."""
    end = response.rfind(CLOSE_TAG)
    start = response.rfind(OPEN_TAG, 0, end) if end >= 0 else -1
    # plain str.strip(): on 1 MB of padding it is ~13x faster than strip(" \t\n...")
    return None if start < 0 else response[start + len(OPEN_TAG) : end].strip()


def _evaluate(tokens: list[str]) -> tuple[Fraction | int | None, list[int]]:
    """Parse and evaluate tokens exactly. Returns (value, used): value is None after any division by zero, used lists
    the integers in the order they appear. Raises _Invalid.

    ["(", "7", "-", "3", ")", "/", "8"] -> (Fraction(1, 2), [7, 3, 8]);  ["1", "/", "0"] -> (None, [1, 0])
    """
    used: list[int] = []
    pos = 0

    def factor(depth: int) -> Fraction | int | None:
        nonlocal pos
        token = tokens[pos] if pos < len(tokens) else ""
        pos += 1
        if token == "(":
            if depth == MAX_PAREN_DEPTH:
                raise _Invalid("too_deep")
            value = expr(depth + 1)
            if pos >= len(tokens) or tokens[pos] != ")":
                raise _Invalid("bad_syntax")
            pos += 1
            return value
        if "0" <= token[:1] <= "9" and (token[0] != "0" or len(token) == 1):  # ASCII digit run, no leading zero
            used.append(int(token))
            return used[-1]
        raise _Invalid("bad_syntax")

    def term(depth: int) -> Fraction | int | None:
        nonlocal pos
        value = factor(depth)
        while pos < len(tokens) and tokens[pos] in ("*", "/"):
            pos += 1
            op, right = tokens[pos - 1], factor(depth)
            if value is None or right is None or (op == "/" and right == 0):
                value = None  # division by zero: keep parsing, so later syntax errors still take priority
            else:
                value = value * right if op == "*" else Fraction(value, right)
        return value

    def expr(depth: int) -> Fraction | int | None:
        nonlocal pos
        value = term(depth)
        while pos < len(tokens) and tokens[pos] in ("+", "-"):
            pos += 1
            op, right = tokens[pos - 1], term(depth)
            if value is None or right is None:
                value = None
            else:
                value = value + right if op == "+" else value - right
        return value

    value = expr(0)
    if pos != len(tokens):
        raise _Invalid("bad_syntax")
    return value, used


def grade_countdown(response: str, numbers: Sequence[int], target: int) -> CountdownGrade:
    """Grade one response and say why.

    >>> grade_countdown("<answer>(7 - 3) / 8</answer>", [3, 7, 8], 2)
    CountdownGrade(reward=0.1, reason='wrong_value', answer='(7 - 3) / 8', value=Fraction(1, 2))
    """
    answer = _last_answer(response)
    if answer is None:
        return CountdownGrade(NO_ANSWER_REWARD, "no_answer")
    if len(answer) > MAX_ANSWER_CHARS:
        return CountdownGrade(FORMAT_REWARD, "too_long", answer)
    try:
        value, used = _evaluate(_TOKEN_RE.findall(answer))
    except _Invalid as invalid:
        return CountdownGrade(FORMAT_REWARD, invalid.args[0], answer)
    exact = None if value is None else Fraction(value)
    if sorted(used) != sorted(numbers):
        reason = "wrong_numbers"
    elif exact is None:
        reason = "div_by_zero"
    elif exact != target:
        reason = "wrong_value"
    else:
        return CountdownGrade(CORRECT_REWARD, "correct", answer, exact)
    return CountdownGrade(FORMAT_REWARD, reason, answer, exact)


def countdown_reward(response: str, numbers: Sequence[int], target: int) -> float:
    """1.0 correct, 0.1 answer tag present but equation invalid or wrong, 0.0 no answer tag.

    >>> countdown_reward("<think>3*5=15, 15+7=22</think>\\n<answer>3 * 5 + 7</answer>\\n", [3, 5, 7], 22)
    1.0
    """
    return grade_countdown(response, numbers, target).reward
