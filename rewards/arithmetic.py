"""Arithmetic reward: the integer in the response's last <answer>...</answer> must equal the expression's value.

Example: problem "What is 347 * 28 - 196?" (value 9520), response "...<answer>9520</answer>" scores 1.0.

Rewards as the Countdown grader's, so curves compare: 1.0 correct, 0.1 an answer tag whose content is not the value
(a wrong number, or not an integer at all), 0.0 no answer tag. The answer must be an optional "-" and ASCII digits,
surrounding whitespace aside: "9,520", "9520.0", "+9520" and "about 9520" are `bad_number` (the calculator writes
integers plainly, and a model that copies its result has no reason to write them otherwise). Linear time: one rfind
for each tag, and an answer longer than MAX_ANSWER_CHARS is never parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CORRECT_REWARD = 1.0
FORMAT_REWARD = 0.1  # an answer tag is present, but its content is not the right integer
NO_ANSWER_REWARD = 0.0
MAX_ANSWER_CHARS = 64  # longer answers are bad_number without parsing
OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"
ARITHMETIC_REASONS = ("correct", "no_answer", "bad_number", "wrong_value")
_INTEGER_RE = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class ArithmeticGrade:
    """Why a response got its reward. `reason` is one of ARITHMETIC_REASONS."""

    reward: float
    reason: str
    answer: str | None = None  # text inside the last <answer>...</answer>, str.strip()-ed; None without one


def grade_arithmetic(response: str, value: int) -> ArithmeticGrade:
    """Grade one response against the exact value.

    >>> grade_arithmetic("<calc>3*4</calc><answer> 12 </answer>", 12)
    ArithmeticGrade(reward=1.0, reason='correct', answer='12')
    >>> grade_arithmetic("<answer>12.0</answer>", 12).reason
    'bad_number'
    """
    end = response.rfind(CLOSE_TAG)
    start = response.rfind(OPEN_TAG, 0, end) if end >= 0 else -1
    if start < 0:
        return ArithmeticGrade(NO_ANSWER_REWARD, "no_answer")
    answer = response[start + len(OPEN_TAG): end].strip()
    if len(answer) > MAX_ANSWER_CHARS or not _INTEGER_RE.fullmatch(answer):
        return ArithmeticGrade(FORMAT_REWARD, "bad_number", answer)
    if int(answer) != value:
        return ArithmeticGrade(FORMAT_REWARD, "wrong_value", answer)
    return ArithmeticGrade(CORRECT_REWARD, "correct", answer)
