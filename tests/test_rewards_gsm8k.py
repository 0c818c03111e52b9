"""GSM8K grader: a table of hand-written cases, then property-based fuzzing (hypothesis)."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.gsm8k import _NUMBER_RE, MARKER, MAX_NUMBER_CHARS, extract_answer, gsm8k_reward, parse_reference

FUZZ = settings(max_examples=250, deadline=None)
FIELD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"

# (response, reference, reward, extracted answer)
CASES = [
    ("So the answer is 18.", "18", 1.0, "18"),  # trailing sentence period
    ("She earns $18.00 per day.", "18", 1.0, "18.00"),  # "$" and trailing zeros (oat scores this 0)
    ("The total is 1,234 apples", "1234", 1.0, "1234"),
    ("The total is 1,234,567.", "1,234,567", 1.0, "1234567"),  # commas in the reference too
    ("#### 1,234", "1234", 1.0, "1234"),
    ("####1234", "1234", 1.0, "1234"),  # "####" without a space
    ("#### 3\nwait, recheck\n#### 4", "4", 1.0, "4"),  # several "####": the last one counts
    ("#### 4 apples, 5 pears", "4", 1.0, "4"),  # first number after "####", not the last one
    ("It is 42. #### no number here", "42", 0.0, None),  # "####" present: only what follows it counts
    ("5 ####", "5", 0.0, None),
    ("The change is -5 dollars", "5", 0.0, "-5"),  # "-5" is not "5"
    ("x = -5", "-5", 1.0, "-5"),
    ("the result is (-7)", "-7", 1.0, "-7"),
    ("#### -$1,234.50.", "-1234.5", 1.0, "-1234.50"),
    ("$-5 or -$5", "-5", 1.0, "-5"),
    ("10-5", "5", 1.0, "5"),  # a "-" after a digit is an operator
    ("x-5", "5", 1.0, "5"),  # ... and after a letter
    ("1,2345", "2345", 1.0, "2345"),  # a comma group must be 3 digits: not 12345
    ("1,2,3", "3", 1.0, "3"),  # three numbers
    ("1234,567", "567", 1.0, "567"),
    ("about 50%", "50", 1.0, "50"),
    ("half is .5", "0.5", 1.0, ".5"),
    ("half is 0.50", ".5", 1.0, "0.50"),
    ("pi is 3.14", "3", 0.0, "3.14"),
    ("１２３ ＋ ４５６ ＝ ５７９", "579", 1.0, "579"),  # full-width digits (NFKC)
    ("＃＃＃＃ ５", "5", 1.0, "5"),  # full-width marker
    ("the answer is \\boxed{72}", FIELD, 1.0, "72"),  # raw GSM8K answer field as reference
    ("18 apples, then 20 pears", "18", 0.0, "20"),  # last number
    ("She had 5 dollars and 0 cents", "5", 0.0, "0"),
    ("no numbers here", "5", 0.0, None),
    ("", "0", 0.0, None),
    ("answer: 7\n\n  ", "7", 1.0, "7"),
    ("1" * (MAX_NUMBER_CHARS + 1), "1", 0.0, None),  # too long to be an answer
    ("#### " + "9" * (MAX_NUMBER_CHARS + 1), "9", 0.0, None),
    ("1," * 500 + "2", "2", 0.0, None),  # a 1,001-character run of number characters
    ("7" * MAX_NUMBER_CHARS, "7" * MAX_NUMBER_CHARS, 1.0, "7" * MAX_NUMBER_CHARS),  # the longest run read
    ("a " + "7" * MAX_NUMBER_CHARS, "7" * MAX_NUMBER_CHARS, 1.0, "7" * MAX_NUMBER_CHARS),
    ("7" * (MAX_NUMBER_CHARS + 1), "7", 0.0, None),
    ("####-" + "7" * MAX_NUMBER_CHARS, "-" + "7" * MAX_NUMBER_CHARS, 1.0, "-" + "7" * MAX_NUMBER_CHARS),
    ("####" + "7" * (MAX_NUMBER_CHARS + 1) + " 5", "5", 0.0, None),
    ("1, " * 500 + "2", "2", 1.0, "2"),
    ("x" * 10_000 + " 12 " + "y" * 10_000, "12", 1.0, "12"),
]


@pytest.mark.parametrize("response,reference,reward,answer", CASES)
def test_table(response, reference, reward, answer):
    assert extract_answer(response) == answer
    assert gsm8k_reward(response, reference) == reward


@pytest.mark.parametrize(
    "field,number",
    [(FIELD, "72"), ("... #### 1,234", "1234"), ("####-3", "-3"), ("#### 2.50", "2.50"), ("#### $5\n", "5")],
)
def test_parse_reference(field, number):
    assert parse_reference(field) == number


@pytest.mark.parametrize("field", ["", "72", "The answer is 72.", "#### ", "#### none", "72 ####"])
def test_parse_reference_errors(field):
    with pytest.raises(ValueError, match="no number after"):
        parse_reference(field)


@pytest.mark.parametrize("reference", ["", "abc", "12 apples", "1/2", "#### ", "1.2.3"])
def test_bad_reference_raises(reference):
    with pytest.raises(ValueError):
        gsm8k_reward("#### 12", reference)


# ---------------------------------------------------------------------------------------------- property-based tests
PIECES = list("0123456789,.-$% \n()ax#") + ["####", "1,234", "１", "－", "\u0301", "é"]
TEXT = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(PIECES), max_size=400).map("".join))


def slow_extract(response: str) -> str | None:
    """Oracle: a plain left-to-right scan of the whole text with the grader's number regex, and its run-length cap."""
    text = unicodedata.normalize("NFKC", response)
    if MARKER in text:
        match = next(_NUMBER_RE.finditer(text, text.rfind(MARKER) + len(MARKER)), None)
        run = re.match(r"[0-9][-$,.0-9]*", text[match.start():].lstrip("-$.")) if match else None
    else:
        match = ([None] + list(_NUMBER_RE.finditer(text)))[-1]
        run = re.search(r"[-$,.0-9]*\Z", text[: match.end()]) if match else None
    if match is None or len(run[0]) > MAX_NUMBER_CHARS:
        return None
    return (match["sign"] or "") + match["body"].replace(",", "")


@FUZZ
@given(text=TEXT)
def test_random_text_never_raises_and_matches_full_scan(text):
    assert gsm8k_reward(text, "5") in (0.0, 1.0)
    assert extract_answer(text) == slow_extract(text)


@st.composite
def formatted_numbers(draw) -> tuple[str, Decimal]:
    """A random number as a model might write it, and its exact value: ('-$1,234.50', Decimal('-1234.50'))."""
    integer, decimals = draw(st.integers(0, 10**12)), draw(st.text("0123456789", max_size=4))
    sign = draw(st.sampled_from(["", "-"]))
    body = f"{integer:,}" if draw(st.booleans()) else str(integer)
    body += f".{decimals}" if decimals else ""
    text = f"{sign}{draw(st.sampled_from(['', '$']))}{body}{draw(st.sampled_from(['', '%']))}"
    return text, Decimal(f"{sign}{integer}.{decimals or 0}")


@FUZZ
@given(number=formatted_numbers(), before=TEXT, after=st.text(st.characters(exclude_characters="#＃﹟"), max_size=50),
       space=st.sampled_from(["", " ", "\n"]), period=st.sampled_from(["", "."]))
def test_number_after_marker_is_extracted(number, before, after, space, period):
    text, value = number
    response = f"{before}####{space}{text}{period} {after}"
    assert Decimal(extract_answer(response)) == value, response
    assert gsm8k_reward(response, str(value)) == 1.0
    assert gsm8k_reward(response, str(value + 1)) == 0.0


@FUZZ
@given(number=formatted_numbers(), before=st.text(st.characters(exclude_characters="#＃﹟"), max_size=200),
       after=st.text(st.characters(exclude_characters="#＃﹟"), max_size=50).map(
           lambda s: "".join(c for c in unicodedata.normalize("NFKC", s) if not c.isdigit())))
def test_last_number_is_extracted(number, before, after):
    text, value = number
    response = f"{before} {text}. {after}"
    assert Decimal(extract_answer(response)) == value, response
    assert gsm8k_reward(response, f"{value:f}") == 1.0
