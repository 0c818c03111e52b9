"""MATH grader: a table of equivalences and non-equivalences, property-based fuzzing (hypothesis), adversarial inputs
answered within the time limit, and the timer leaving nothing behind."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.math import (CORRECT_REWARD, MATH_REASONS, MAX_ANSWER_CHARS, MAX_DEPTH, TIME_LIMIT_S, WRONG_REWARD,
                          MathGrade, grade_math, last_boxed, math_reward, reference_answer)

FUZZ = settings(max_examples=150, deadline=None)
FAST_LIMIT_S = 0.25  # a shorter limit for the inputs meant to run out of time, so the suite stays quick
NO_RUSH_S = 30.0  # the tables check what matches, not how fast: a loaded CI machine must not turn them into timeouts
SLACK_S = 0.5  # what a call may take past its limit on a loaded 2-core machine (measured: a few ms when idle)


def box(answer: str) -> str:
    return f"Let me think step by step. First, ... so the final answer is $\\boxed{{{answer}}}$."


# (reference, answers that must score 1.0, answers that must score 0.0 with the reason given)
EQUIVALENT = [
    ("\\frac{1}{2}", ["\\frac12", "\\frac{1}{2}", "\\dfrac{1}{2}", "\\tfrac{1}{2}", "1/2", "{1}/{2}", "0.5", ".5",
                      "0.50", "\\frac{2}{4}", "2^{-1}", "\\frac{-1}{-2}", "\\left(\\frac{1}{2}\\right)"]),
    ("-\\frac{3}{4}", ["-\\frac34", "\\frac{-3}{4}", "\\frac{3}{-4}", "-0.75", "-3/4", "−\\frac{3}{4}"]),
    ("\\frac{3}{2}", ["1.5", "1\\frac{1}{2}", "\\frac{6}{4}"]),
    ("\\frac{1}{3}", ["0.333333", "0.3333333", "\\frac{2}{6}"]),
    ("\\sqrt{2}", ["\\sqrt2", "2^{1/2}", "2^{\\frac{1}{2}}", "\\frac{\\sqrt{8}}{2}", "\\frac{2}{\\sqrt{2}}",
                   "1.41421356"]),
    ("3\\sqrt{3}", ["\\sqrt{27}", "3 \\sqrt 3", "5.196152"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\frac{1}{2}\\sqrt{3}", "\\sqrt{3}/2", "\\sqrt{\\frac{3}{4}}"]),
    ("2\\pi", ["2 \\pi", "\\pi \\cdot 2", "2\\cdot\\pi", "6.283185307"]),
    ("\\frac{\\pi}{4}", ["\\pi/4", "0.25\\pi", "\\frac{1}{4}\\pi"]),
    ("(-\\infty, 3]", ["(-\\infty,3]", "\\left(-\\infty, 3\\right]", "x \\in (-\\infty, 3]"]),
    ("(0, \\infty)", ["(0,\\infty)", "(0, +\\infty)"]),
    ("[1, 2) \\cup (3, 4]", ["[1,2)\\cup(3,4]", "(3, 4] \\cup [1, 2)"]),
    ("(1, -2)", ["(1,-2)", "\\left(1, -2\\right)"]),
    ("\\{1, 2\\}", ["\\{2, 1\\}", "1, 2", "2,1"]),
    ("1, 2, 3", ["3, 2, 1", "\\{1,2,3\\}"]),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", ["\\begin{pmatrix}1\\\\2\\end{pmatrix}"]),
    ("10\\%", ["10\\%", "10 \\%", "10", "0.1", "\\frac{1}{10}"]),  # math-verify: a percentage equals its number too
    ("5\\text{ cm}", ["5", "5 cm", "5\\text{cm}", "5 \\mbox{ cm}", "5\\text{ centimeters}"]),
    ("30^\\circ", ["30", "30^{\\circ}", "30°", "30\\degree"]),
    ("-3", ["-3", "- 3", "-3.0", "−3", "(-3)"]),
    ("0", ["-0", "0.0"]),
    ("1000000", ["1,000,000", "1{,}000{,}000", "1\\,000\\,000", "1\\ 000\\ 000", "1 000 000", "10^6", "1000000.0"]),
    ("1,\\!000", ["1000", "1,000"]),
    ("\\text{(C)}", ["C", "(C)", "\\text{(C)}", "\\textbf{(C)}"]),
    ("\\text{Evelyn}", ["\\text{Evelyn}", "\\text{evelyn}"]),
    ("x^2+2x+1", ["(x+1)^2", "x^2 + 2x + 1", "1 + 2x + x^2"]),
    ("y = 2x + 3", ["y=2x+3", "y = 3 + 2x", "2x+3"]),
    ("2", ["x=2", "\\sqrt{4}", "2.0"]),
    ("\\infty", ["\\infty"]),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{2}", ["\\frac{1}{3}", "2", "-\\frac{1}{2}", "0.51", "\\frac{1}{2}x"]),
    ("\\frac{1}{3}", ["0.333", "0.33"]),  # 6 decimals: 0.333 is not 1/3
    ("\\sqrt{2}", ["\\sqrt{3}", "1.414", "2"]),
    ("2\\pi", ["\\pi", "6.28", "2\\pi r", "360^\\circ"]),
    ("(-\\infty, 3]", ["(-\\infty, 3)", "(-\\infty, 3] \\cup \\{5\\}", "(3, \\infty)", "x \\le 3"]),
    ("(1, -2)", ["(-2, 1)", "(1, 2)"]),  # a tuple's order counts
    ("\\{1, 2\\}", ["\\{1, 2, 3\\}", "\\{1\\}"]),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", ["\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"]),
    ("10\\%", ["11\\%", "1"]),
    ("5\\text{ cm}", ["6\\text{ cm}", "50"]),
    ("30^\\circ", ["31^\\circ", "\\frac{\\pi}{6}"]),  # degrees are dropped, not converted
    ("-3", ["3", "-\\frac{1}{3}"]),
    ("1000000", ["1,000,001", "100000", "1\\,000"]),
    ("\\text{(C)}", ["D", "\\text{(D)}"]),
    ("x^2+2x+1", ["x^2+2x", "(x-1)^2"]),
    ("2", ["3", "2.0000001", "x=3"]),
]
# (response, reference, reward, reason, answer): the box, and the reasons other than correct / wrong
CASES = [
    ("\\boxed{1} and then \\boxed{2}", "2", 1.0, "correct", "2"),  # several boxes: the last one counts
    ("\\boxed{2} no wait, \\boxed{1}", "2", 0.0, "wrong", "1"),
    ("\\boxed{\\boxed{7}}", "7", 1.0, "correct", "7"),  # the innermost box is the last one opened
    ("\\fbox{7}", "7", 1.0, "correct", "7"),
    ("\\boxed{3} then \\fbox{7}", "7", 1.0, "correct", "7"),
    ("\\fbox{3} then \\boxed {7}", "7", 1.0, "correct", "7"),  # a space before the brace
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", 1.0, "correct", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", 1.0, "correct", "\\{1, 2\\}"),  # escaped braces balance too
    ("The answer is 7.", "7", 0.0, "no_answer", None),  # an answer outside any box does not count
    ("$7$", "7", 0.0, "no_answer", None),
    ("\\boxed{}", "7", 0.0, "no_answer", ""),  # an empty box
    ("\\boxed{7} and \\boxed{ }", "7", 0.0, "no_answer", " "),  # the last box is empty
    ("\\boxed{7", "7", 0.0, "no_answer", None),  # unclosed: a truncated response
    ("\\boxed{7} \\boxed{8", "7", 0.0, "no_answer", None),  # the last box is unclosed
    ("\\boxed 7", "7", 0.0, "no_answer", None),  # Hendrycks' brace-less form is not read
    ("\\boxed", "7", 0.0, "no_answer", None),
    ("", "7", 0.0, "no_answer", None),
    ("\\boxed{x+}", "7", 0.0, "unparsable", "x+"),
    ("\\boxed{)(}", "7", 0.0, "unparsable", ")("),
    ("\\boxed{\\frac{1}{}}", "7", 0.0, "unparsable", "\\frac{1}{}"),
    ("\\boxed{" + "1" * MAX_ANSWER_CHARS + "}", "1" * MAX_ANSWER_CHARS, 1.0, "correct", "1" * MAX_ANSWER_CHARS),
    ("\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", "1", 0.0, "too_long", None),
    ("\\boxed{" + "1" * 10_000, "1", 0.0, "too_long", None),  # unclosed, but too long before the text ends
    ("\\boxed{" + "\\sqrt{" * MAX_DEPTH + "1" + "}" * MAX_DEPTH + "}", "1", 1.0, "correct",
     "\\sqrt{" * MAX_DEPTH + "1" + "}" * MAX_DEPTH),  # (bare parentheses that deep may time out: ADVERSARIAL)
    ("\\boxed{" + "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1) + "}", "1", 0.0, "too_deep",
     "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)),
    ("\\boxed{" + "\\sqrt{" * (MAX_DEPTH + 1) + "2" + "}" * (MAX_DEPTH + 1) + "}", "2", 0.0, "too_deep",
     "\\sqrt{" * (MAX_DEPTH + 1) + "2" + "}" * (MAX_DEPTH + 1)),
]


@pytest.mark.parametrize("reference,answers", EQUIVALENT, ids=[r for r, _ in EQUIVALENT])
def test_equivalent_spellings_score_one(reference, answers):
    for answer in answers:
        grade = grade_math(box(answer), reference, time_limit_s=NO_RUSH_S)
        assert (grade.reward, grade.reason, grade.answer) == (CORRECT_REWARD, "correct", answer), (reference, grade)


@pytest.mark.parametrize("reference,answers", NOT_EQUIVALENT, ids=[r for r, _ in NOT_EQUIVALENT])
def test_different_answers_score_zero(reference, answers):
    for answer in answers:
        grade = grade_math(box(answer), reference, time_limit_s=NO_RUSH_S)
        assert (grade.reward, grade.reason) == (WRONG_REWARD, "wrong"), (reference, answer, grade)


@pytest.mark.parametrize("response,reference,reward,reason,answer", CASES)
def test_table(response, reference, reward, reason, answer):
    assert grade_math(response, reference, time_limit_s=NO_RUSH_S) == MathGrade(reward, reason, answer)


def test_table_covers_every_reason_but_timeout():
    assert {case[3] for case in CASES} | {"wrong", "timeout"} == set(MATH_REASONS)


def test_references_read_from_worked_solutions():
    assert reference_answer("So $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert reference_answer("First \\boxed{1}, finally \\fbox{(1, 2)}") == "(1, 2)"
    assert reference_answer("  42 ") == "42"  # a bare answer is its own reference
    long = "\\boxed{" + "1" * (2 * MAX_ANSWER_CHARS) + "}"  # a reference is read in full, whatever its length
    assert reference_answer(long) == "1" * (2 * MAX_ANSWER_CHARS)


def test_last_boxed_reads_at_most_max_chars():
    assert last_boxed("\\boxed{abc}", max_chars=3) == ("abc", False)
    assert last_boxed("\\boxed{abcd}", max_chars=3) == (None, True)
    assert last_boxed("\\boxed{abc", max_chars=3) == (None, False)  # ends unclosed inside the window
    assert last_boxed("\\boxed{abc ", max_chars=3) == (None, True)


def test_math_reward_is_the_grades_reward():
    assert math_reward(box("\\dfrac{1}{2}"), "0.5") == CORRECT_REWARD
    assert math_reward(box("3"), "0.5") == math_reward("no box", "0.5") == WRONG_REWARD


def test_grade_is_frozen():
    with pytest.raises(AttributeError):
        grade_math(box("1"), "1").reward = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- property-based tests
LATEX_PIECES = ["\\boxed{", "\\fbox{", "{", "}", "\\frac", "\\sqrt", "\\pi", "^", "_", "(", ")", "[", "]", "\\{", "\\}",
                "1", "2", "0", "9", "x", "-", "+", ",", ".", "/", "\\%", "^\\circ", "\\text{", "cm", " ", "\\infty",
                "\\cup", "=", "\\left(", "\\right)", "!", "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\", "$"]
LATEX_TEXT = st.lists(st.sampled_from(LATEX_PIECES), max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=120), LATEX_TEXT, LATEX_TEXT.map(lambda t: f"\\boxed{{{t}}}"))


def timed_grade(*args, **kwargs):
    """(seconds, grade) of one `grade_math` call with Python's cyclic garbage collector paused for its duration: by
    the time these tests run, the pytest process may hold torch, transformers and vLLM, and a full collection of it
    (~0.5 s, a pause of the whole process, not the grader's work) once landed inside a call's time (CI, 2026-12-03)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        grade = grade_math(*args, **kwargs)
        return time.perf_counter() - start, grade
    finally:
        if enabled:
            gc.enable()


@FUZZ
@given(text=ANY_TEXT, reference=st.one_of(LATEX_TEXT, st.sampled_from(["1", "\\frac{1}{2}", "(0, 1]", "x^2"])))
def test_random_text_never_raises_and_stays_within_the_limit(text, reference):
    elapsed, grade = timed_grade(text, reference, time_limit_s=FAST_LIMIT_S)
    assert elapsed < FAST_LIMIT_S + SLACK_S, (text, reference)
    assert grade.reason in MATH_REASONS
    assert grade.reward == (CORRECT_REWARD if grade.reason == "correct" else WRONG_REWARD)


def spellings(value: Fraction) -> list[str]:
    """Ways to write an exact rational number in a box."""
    sign, p, q = ("-" if value < 0 else ""), abs(value.numerator), value.denominator
    out = [f"{sign}\\frac{{{p}}}{{{q}}}", f"{sign}\\dfrac{{{p}}}{{{q}}}", f"{sign}{p}/{q}",
           f"\\frac{{{sign}{p}}}{{{q}}}", f"{sign}\\frac{{{2 * p}}}{{{2 * q}}}"]
    if q == 1:
        out += [f"{value.numerator}", f"{value.numerator}.0", f"{sign}{p:,}"]
    if 10**6 % q == 0:  # a terminating decimal
        out.append(f"{float(value):.6f}")
    return out


@FUZZ
@given(p=st.integers(-10**6, 10**6), q=st.integers(1, 1000), data=st.data())
def test_any_spelling_of_a_rational_scores_one(p, q, data):
    value = Fraction(p, q)
    answer = data.draw(st.sampled_from(spellings(value)))
    reference = f"\\frac{{{value.numerator}}}{{{value.denominator}}}" if q != 1 else str(value.numerator)
    grade = grade_math(box(answer), reference, time_limit_s=NO_RUSH_S)
    assert (grade.reward, grade.reason) == (CORRECT_REWARD, "correct"), (answer, reference, grade)


@FUZZ
@given(a=st.integers(-10**6, 10**6), delta=st.integers(1, 1000), data=st.data())
def test_a_different_number_scores_zero(a, delta, data):
    b = a + data.draw(st.sampled_from([delta, -delta]))
    grade = grade_math(box(str(b)), str(a), time_limit_s=NO_RUSH_S)
    assert (grade.reward, grade.reason) == (WRONG_REWARD, "wrong"), (a, b, grade)


def no_box(text: str) -> bool:
    return "\\boxed" not in text and "\\fbox" not in text


@FUZZ
@given(before=st.text(max_size=80), after=st.text(max_size=80).filter(no_box),
       answer=st.text(st.characters(blacklist_characters="{}"), min_size=1, max_size=MAX_ANSWER_CHARS).filter(no_box))
def test_the_last_box_is_read_whatever_surrounds_it(before, after, answer):
    assert last_boxed(f"{before}\\boxed{{{answer}}}{after}") == (answer, False)


# ---------------------------------------------------------------------------------------------- adversarial inputs
MB = 1 << 20
ADVERSARIAL = {  # name: boxed answer or whole response; each must come back within its limit
    "power tower 9^{9^{9}}": box("9^{9^{9}}"),
    "power tower 10^{10^{10}}": box("10^{10^{10}}"),
    "2^{2^{2^{2^{2^{2}}}}}": box("2^{2^{2^{2^{2^{2}}}}}"),
    "huge power 7^{123456789}": box("7^{123456789}"),
    "huge factorial (10^{6})!": box("(10^{6})!"),
    "factorial 1000000!": box("1000000!"),
    "binomial": box("\\binom{10^{9}}{10^{5}}"),
    "Gamma(10^9)": box("\\Gamma(10^{9})"),
    "sin of a huge number": box("\\sin(10^{100})"),
    "e^{e^{e^{e^{9}}}}": box("e^{e^{e^{e^{9}}}}"),
    "product of huge powers": box("10^{1000000}\\cdot 10^{1000000}"),
    "nested parentheses at the cap": box("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH),
    "nested brackets at the cap": box("[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH),
    "nested braces at the cap": box("{" * MAX_DEPTH + "1" + "}" * MAX_DEPTH),
    "nested fractions at the cap": box("\\frac{" * 4 + "1" + "}{2}" * 4),
    "long sum at the length cap": box("+".join(["x^{99}"] * (MAX_ANSWER_CHARS // 7))),
    "long product at the length cap": box("\\cdot".join(["99^{99}"] * (MAX_ANSWER_CHARS // 12))),
    "1 MB of text, no box": "x" * MB,
    "1 MB of \\boxed{": "\\boxed{" * (MB // 7),
    "1 MB of }": "\\boxed{1" + "}" * MB,
    "1 MB of {": "\\boxed" + "{" * MB,
    "1 MB of spaces before the brace": "\\boxed" + " " * MB + "{1}",
    "1 MB of digits in a box": "\\boxed{" + "9" * MB + "}",
    "1 MB of text, then a box": "é中" * (MB // 2) + "\\boxed{\\frac{1}{2}}",
    "10,000 boxes": "\\boxed{1}" * 10_000,
}


@pytest.mark.parametrize("response", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_inputs_come_back_within_the_limit(response):
    elapsed, grade = timed_grade(response, "\\frac{1}{2}", time_limit_s=FAST_LIMIT_S)
    assert elapsed < FAST_LIMIT_S + SLACK_S, (elapsed, grade)
    assert grade.reason in MATH_REASONS
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the timer is off after every call"


def test_default_limit_holds_and_is_the_papers_one_second():
    assert TIME_LIMIT_S == 1.0
    elapsed, grade = timed_grade(box("9^{9^{9}}"), "1")
    assert grade.reason == "timeout" and TIME_LIMIT_S <= elapsed < TIME_LIMIT_S + SLACK_S


def test_timer_leaves_nothing_behind_and_restores_what_was_there():
    def mine(signum, frame):
        fired.append(signum)

    fired: list[int] = []
    threads, hook = threading.active_count(), sys.unraisablehook
    previous = signal.signal(signal.SIGALRM, mine)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)  # someone else's timer, armed across the calls
        assert grade_math(box("0.5"), "\\frac{1}{2}").reason == "correct"
        assert grade_math(box("9^{9^{9}}"), "1", time_limit_s=FAST_LIMIT_S).reason == "timeout"
        assert signal.getsignal(signal.SIGALRM) is mine and sys.unraisablehook is hook
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.5 < left < 2.0 - FAST_LIMIT_S + 0.05, left  # still armed, less the time spent
        assert not fired, "the outer timer did not fire early"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert threading.active_count() == threads, "no thread started"


def test_off_the_main_thread_grades_without_a_timer():
    # sympy's simplify takes ~10-50 ms here (numbers no other test uses: nothing of it is cached yet)
    response, reference, limit = box("(y+7919)^2"), "y^2+15838y+62710561", 0.002
    assert grade_math(response, reference, time_limit_s=limit).reason == "timeout"  # the main thread: timed
    results: list[MathGrade] = []
    worker = threading.Thread(target=lambda: results.append(grade_math(response, reference, time_limit_s=limit)))
    worker.start()
    worker.join()
    assert results == [MathGrade(CORRECT_REWARD, "correct", "(y+7919)^2")], "another thread: no timer, it completes"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
