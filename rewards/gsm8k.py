"""GSM8K reward: 1.0 when the response's final number equals the reference answer exactly, else 0.0.

Prediction: if the response contains "####" (GSM8K's own answer marker), the first number after the last "####";
otherwise the last number in the response. The text is NFKC-normalised first, so full-width digits read as digits.
A number is an optional "-", digits with optional thousands separators, optional decimals: "-1,234.50" -> "-1234.50".
- A comma group must be exactly 3 digits: "1,2345" is the numbers 1 and 2345, "1,2,3" is three numbers.
- A "-" right after a letter, digit or ")" is an operator, not a sign: "10-5" is the numbers 10 and 5.
- "$" and "%" around a number are ignored; a trailing sentence period is not a decimal point ("is 18." -> "18").
Numbers compare as exact decimals: "18.00" equals "18", ".5" equals "0.5", "-5" is not "5".

Where we differ from oat, and why: oat takes the last number and compares strings, so "$18.00" against "18" (or
"18.0" against "18") scores 0 there although the answer is right; we compare values. We also honour "####" in the
response, the format GSM8K's own solutions use.

Bounded work: digits are located with str.find/rfind (C speed), and the regex only runs on a short window around the
answer, starting or ending at a character no number contains, so it reads exactly what a full left-to-right scan
reads. The price: the answer must sit in a run of at most MAX_NUMBER_CHARS number characters (digits , . - $), the run
ending at the last digit, or the run from the first digit after "####"; a longer run is not read (reward 0). No real
answer looks like that, and it keeps a 1 MB response to well under a millisecond (plus NFKC on non-ASCII text).
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

MARKER = "####"  # GSM8K's answer fields end with "#### <number>"
MAX_NUMBER_CHARS = 128
_DIGITS = "0123456789"
_MAX_PREFIX_CHARS = 3  # "-$." is the longest text a number can have before its first digit
_NUMBER_RE = re.compile(
    r"""
    (?=[-$.0-9])                    # cheap first-character filter (the regex engine scans ~6x faster with it)
    (?P<sign>-(?<![\w)]-))?         # a "-" right after a letter, digit or ")" is an operator, not a sign
    \$?
    (?P<body>
        [0-9]{1,3}(?:,[0-9]{3}(?![0-9]))+(?:\.[0-9]+)?  # 1,234,567.89: every comma group exactly 3 digits
      | [0-9]+(?:\.[0-9]+)?                             # 1234.5; in "is 18." the period is not part of the number
      | \.[0-9]+                                        # .5
    )
    """,
    re.VERBOSE,
)
_BOUNDARY_RE = re.compile(r"[^-$,.0-9]")  # a character no number contains: scanning from it stays aligned


def _nfkc(text: str) -> str:
    """NFKC-normalise, skipping the work for ASCII text (already normal): 'ＡＢ１２' -> 'AB12'."""
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def _as_string(match: re.Match[str] | None) -> str | None:
    """Normalised number text of a match: '-$1,234.50' -> '-1234.50'."""
    return None if match is None else (match["sign"] or "") + match["body"].replace(",", "")


def _first_number(text: str, start: int) -> str | None:
    """First number in text[start:], as a left-to-right scan from `start` reads it: ('#### 1,234.', 4) -> '1234'."""
    hits = [i for i in (text.find(digit, start) for digit in _DIGITS) if i >= 0]
    if not hits:
        return None
    first_digit = min(hits)  # the first number contains it, and starts at most _MAX_PREFIX_CHARS before it ("-$.5")
    limit = first_digit + MAX_NUMBER_CHARS + 1
    boundary = _BOUNDARY_RE.search(text, first_digit, limit)
    if boundary is None and limit <= len(text):
        return None  # a run of more than MAX_NUMBER_CHARS number characters: not an answer
    end = boundary.start() if boundary else len(text)  # the number ends before the boundary: the regex can stop there
    return _as_string(_NUMBER_RE.search(text, max(start, first_digit - _MAX_PREFIX_CHARS), end))


def _last_number(text: str) -> str | None:
    """Last number in text, as a left-to-right scan of the whole text reads it: 'from 3 to 1,000.' -> '1000'."""
    end = max(map(text.rfind, _DIGITS)) + 1  # every number ends with a digit, so the last one ends here
    if end == 0:
        return None
    window = end - MAX_NUMBER_CHARS - 1
    boundary = _BOUNDARY_RE.search(text, max(0, window), end)
    if boundary is None and window >= 0:
        return None  # a run of more than MAX_NUMBER_CHARS number characters: not an answer
    # Scanning from a character no number contains reads the same numbers as scanning from 0.
    matches = list(_NUMBER_RE.finditer(text, boundary.start() if boundary else 0, end))  # at most ~64 short matches
    return _as_string(matches[-1]) if matches else None


def extract_answer(response: str) -> str | None:
    """The predicted number, normalised: the first after the last "####" if there is one, else the last one.

    >>> extract_answer("She pays 3 * $4 = $12.\\nSo the total is $1,234.50.")
    '1234.50'
    >>> extract_answer("#### -7 (check: 10-17 = -7)")
    '-7'
    """
    text = _nfkc(response)
    marker = text.rfind(MARKER)
    return _last_number(text) if marker < 0 else _first_number(text, marker + len(MARKER))


def parse_reference(answer_field: str) -> str:
    """The reference number in GSM8K's `answer` field, normalised; raises ValueError when there is none.

    >>> parse_reference("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 1,234")
    '1234'
    """
    text = _nfkc(answer_field)
    marker = text.rfind(MARKER)
    number = None if marker < 0 else _first_number(text, marker + len(MARKER))
    if number is None:
        raise ValueError(f"GSM8K answer field has no number after {MARKER!r}: ...{answer_field[-80:]!r}")
    return number


def gsm8k_reward(response: str, reference: str) -> float:
    """1.0 if the predicted number equals the reference exactly, else 0.0.

    `reference` is the number string ("1234"), or GSM8K's raw answer field when it contains "####".
    An unparsable reference is a caller bug and raises ValueError.

    >>> gsm8k_reward("... so she earns $18.00 per day.", "18")
    1.0
    """
    if MARKER in reference:
        expected = parse_reference(reference)
    else:
        match = _NUMBER_RE.fullmatch(_nfkc(reference).strip())
        expected = _as_string(match)
        if expected is None:
            raise ValueError(f"reference must be a number like '1234' or a GSM8K answer field, got {reference!r}")
    predicted = extract_answer(response)
    return 1.0 if predicted is not None and Decimal(predicted) == Decimal(expected) else 0.0
