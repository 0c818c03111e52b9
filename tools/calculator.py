"""A calculator tool for multi-turn rollouts: the model writes an arithmetic expression between <calc> and </calc>,
the rollout loop runs `calculator` on it and appends the answer between <result> and </result>.

A grader's sibling (docs/design.md): a pure function, no I/O, no `eval`, bounded time and output size on any input,
and every bad input becomes an error string the model reads, never an exception:

    calculator("347*28 - 196")   -> "9520"
    calculator("10 / 4")         -> "2.5"
    calculator("1 / 0")          -> "error: division by zero"
    calculator("2 ** 3")         -> "error: unexpected '*'"

Grammar (whitespace between tokens is ignored):
    expr   := term (("+" | "-") term)*
    term   := signed (("*" | "/") signed)*
    signed := ("+" | "-")* atom              (unary signs: "-3", "2*-3", "--3")
    atom   := NUMBER | "(" expr ")"
    NUMBER := [0-9]+ ("." [0-9]+)?           (ASCII digits only: "1,000", "2^3", "**", "%", "٣", "1e3" are errors)
Values are exact fractions: "0.1 + 0.2" is 0.3, "10 / 3 * 3" is 10. A whole result is written as an integer, any
other rounded to DECIMALS places, trailing zeros dropped ("10 / 3" -> "3.333333", "1 / 8" -> "0.125").

Bounds, each with its own error: at most MAX_CHARS characters of input, MAX_DIGITS digits per number, MAX_DEPTH
nested parentheses (the parser's recursion), and every intermediate value's numerator and denominator below
10**MAX_RESULT_DIGITS (a product never multiplies numbers longer than that: big-int work stays in microseconds).
An answer is therefore at most ~50 characters, an error at most ~40.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 200           # longer input: "error: expression too long"
MAX_DIGITS = 30           # digits of one number (before and after its point)
MAX_DEPTH = 32            # nested parentheses
MAX_RESULT_DIGITS = 40    # |numerator| and denominator of every intermediate value stay below 10**40
DECIMALS = 6              # places a non-whole result is rounded to (half to even)
DISABLED = "error: tool disabled"  # what a rollout without the tool answers every call (`--no-tool`)

# One token per match: a number, or any single non-space character (operators, parentheses, or something invalid).
_TOKEN_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?|\S")
_LIMIT = 10**MAX_RESULT_DIGITS


class _Error(Exception):
    """Raised inside the parser; args[0] is the message after "error: ". Never leaves `calculator`."""


def _checked(value: Fraction) -> Fraction:
    if abs(value.numerator) >= _LIMIT or value.denominator >= _LIMIT:
        raise _Error("result too large")
    return value


def _parse(tokens: list[str]) -> Fraction:
    """Evaluate tokens exactly with the grammar above: ["2", "*", "(", "3", "+", "4", ")"] -> Fraction(14)."""
    pos = 0

    def peek() -> str:
        return tokens[pos] if pos < len(tokens) else ""

    def unexpected() -> _Error:
        token = peek()
        if not token:
            return _Error("unexpected end of expression")
        return _Error("unexpected number" if token[0].isdigit() else f"unexpected {token!r}")

    def atom(depth: int) -> Fraction:
        nonlocal pos
        token = peek()
        if token == "(":
            if depth == MAX_DEPTH:
                raise _Error("too deeply nested")
            pos += 1
            value = expr(depth + 1)
            if peek() != ")":
                raise unexpected()
            pos += 1
            return value
        if token[:1].isdigit():  # the tokenizer only lets ASCII digits start a token this long
            if sum(c.isdigit() for c in token) > MAX_DIGITS:
                raise _Error("number too long")
            pos += 1
            return Fraction(token)  # exact: Fraction("0.1") is 1/10
        raise unexpected()

    def signed(depth: int) -> Fraction:
        nonlocal pos
        negative = False
        while peek() in ("+", "-"):  # a loop, not recursion: "------3" costs no stack
            negative ^= peek() == "-"
            pos += 1
        value = atom(depth)
        return -value if negative else value

    def term(depth: int) -> Fraction:
        nonlocal pos
        value = signed(depth)
        while peek() in ("*", "/"):
            op = peek()
            pos += 1
            right = signed(depth)
            if op == "/" and right == 0:
                raise _Error("division by zero")
            value = _checked(value * right if op == "*" else value / right)
        return value

    def expr(depth: int) -> Fraction:
        nonlocal pos
        value = term(depth)
        while peek() in ("+", "-"):
            op = peek()
            pos += 1
            right = term(depth)
            value = _checked(value + right if op == "+" else value - right)
        return value

    value = expr(0)
    if pos != len(tokens):
        raise unexpected()
    return value


def format_value(value: Fraction) -> str:
    """An integer as it is, anything else rounded to DECIMALS places without trailing zeros:
    Fraction(7, 2) -> "3.5", Fraction(-1, 3) -> "-0.333333", Fraction(1, 10**9) -> "0"."""
    rounded = round(value, DECIMALS)  # a Fraction, rounded half to even
    if rounded.denominator == 1:
        return str(rounded.numerator)
    sign = "-" if rounded < 0 else ""
    scaled = abs(rounded.numerator) * 10**DECIMALS // rounded.denominator  # exact: the denominator divides 10**6
    whole, frac = divmod(scaled, 10**DECIMALS)
    return f"{sign}{whole}.{frac:0{DECIMALS}d}".rstrip("0")


def calculator(expression: str) -> str:
    """The value of an arithmetic expression, or an error message starting with "error: " (see the module docs).

    >>> calculator("(7 - 3) / 8")
    '0.5'
    >>> calculator("7 -")
    'error: unexpected end of expression'
    """
    if len(expression) > MAX_CHARS:
        return f"error: expression too long (over {MAX_CHARS} characters)"
    tokens = _TOKEN_RE.findall(expression)
    if not tokens:
        return "error: empty expression"
    for token in tokens:
        if len(token) == 1 and token not in "+-*/()0123456789":
            return f"error: unsupported character {token!r}"
    try:
        return format_value(_parse(tokens))
    except _Error as error:
        return f"error: {error.args[0]}"
