"""MATH reward: the content of the response's last \\boxed{...}, compared with the reference by math-verify.

Example: reference "\\frac{1}{2}", response "... so the answer is \\boxed{0.5}." scores 1.0 (reason `correct`).

Rewards are the Dr. GRPO paper's (https://arxiv.org/abs/2503.20783; its grader, `boxed_reward_fn`:
https://github.com/sail-sg/understand-r1-zero/blob/dfca49dd460ee7cc8e4a5a162c876a7fd6993b87/understand_r1_zero/math_grader.py#L1006-L1023):
1.0 correct, 0.0 otherwise, no format reward ("to avoid hacking").

The answer is the content of the last `\\boxed{` or `\\fbox{` of the response, up to its matching brace (nested braces
are balanced; escaped `\\{ \\}` count as braces, as in Hendrycks' `last_boxed_only_string`). No box, a last box that
never closes (a truncated response) or an empty one is `no_answer`. Answer and reference are each parsed by
math-verify (https://github.com/huggingface/Math-Verify, `parse` with LaTeX extraction) into sympy, then compared by its
`verify`: numbers to 6 decimals, symbolic equality, sets in any order, intervals, tuples, matrices, equations, with
`\\text{}` units, `^\\circ` and `\\%` dropped (docs/math_grader.md has the table of what matches). A reference is a bare
answer ("\\frac{1}{2}"); `reference_answer` reads it from a worked solution (MATH's `solution` field).

Where we differ from math-verify alone, and why:
- Thousands separators written as spaces ("1\\,000", "1\\ 000", "1 000") are removed first: math-verify reads
  "1\\,000\\,000" as the product 1*0*0. "°" and "\\degree" are read as "^\\circ".
- math-verify bounds its own time with `signal.alarm` (whole seconds; 5 s by default) and swallows its own timeouts;
  we turn its timeouts off and bound the whole call ourselves (below), so a timeout is a reason of its own.

Bounded time on any input. First, cheap caps in linear time: the box is found with `str.rfind`, its content is read at
most MAX_ANSWER_CHARS characters far (`too_long` past that), and brackets of any kind nest at most MAX_DEPTH deep
(`too_deep`; math-verify tries several readings of every level of bare parentheses). Then parse and verify run under
a wall-clock limit, `time_limit_s` (TIME_LIMIT_S = 1 s, the per-answer timeout of the paper's trainer:
https://github.com/sail-sg/understand-r1-zero/blob/dfca49dd460ee7cc8e4a5a162c876a7fd6993b87/train_zero_math.py#L109),
reason `timeout`. The limit is a SIGALRM from `setitimer(ITIMER_REAL)`, so it holds where our scripts grade, in the
main thread of every torchrun rank:
- sympy can run away (`9^{9^{9}}`, `(10^{6})!`, deep LaTeX); CPython checks for signals inside its long-integer
  arithmetic too, so even one huge multiplication, power or factorial stops at the limit.
- The alarm raises `_Timeout`, a BaseException: math-verify's and sympy's `except Exception` do not swallow it, and
  the timer fires again every REFIRE_S until the call returns, should anything else swallow it (an alarm that lands
  in a `__del__` or a gc callback, where Python cannot raise, is dropped without the usual "Exception ignored").
- Nothing is left behind: no thread, no process; on return the timer is off, the previous SIGALRM handler and
  `sys.unraisablehook` are back, and an outer ITIMER_REAL timer someone else had set runs on with its remaining time.
- Off the main thread Python delivers no signals: there the call has no time limit (the caps still apply), so a
  grader in a thread pool can hang on an adversarial answer. Grade in the main thread.
Parsed references are cached (REFERENCE_CACHE_SIZE): a prompt's G samples share one reference
(benchmarks/bench_rewards.py measures the gain).

Reasons, in the order they are decided: no_answer > too_long > too_deep > timeout > correct > unparsable (the answer
is not LaTeX math-verify can read, and its text is not the reference's) > wrong. Every call returns; none raises.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from math_verify import LatexExtractionConfig, parse, verify

CORRECT_REWARD = 1.0
WRONG_REWARD = 0.0  # every other reason: no format reward (see the docstring)
MAX_ANSWER_CHARS = 256  # the longest reference among MATH's 12,500 problems is ~150 characters
MAX_DEPTH = 8  # brackets ( [ { nest at most this deep in an answer (MATH's answers: 3-4)
TIME_LIMIT_S = 1.0
REFIRE_S = 0.05
REFERENCE_CACHE_SIZE = 4096
MATH_REASONS = ("correct", "no_answer", "too_long", "too_deep", "unparsable", "wrong", "timeout")

_BOX_OPENERS = ("\\boxed", "\\fbox")
_BRACES = re.compile(r"[{}]")
_BRACKETS = re.compile(r"[(\[{)\]}]")
_SPACES = re.compile(r"\s*")
_THOUSANDS_GAP = re.compile(r"(?<=\d)(?:\\[,;: ]|~| )(?=\d{3}(?!\d))")  # "1\,000" -> "1000"; not "1 23"
_DEGREES = re.compile(r"°|\\degree(?![a-zA-Z])")
# The answer is handed to math-verify as one box, so its LaTeX extraction reads exactly that box.
_LATEX = (LatexExtractionConfig(boxed_match_priority=0),)
# With its own timeouts off, math-verify warns once per process that the caller must bound time: we do (see above).
logging.getLogger("math_verify").setLevel(logging.ERROR)


@dataclass(frozen=True)
class MathGrade:
    """Why a response got its reward. `reason` is one of MATH_REASONS."""

    reward: float
    reason: str
    answer: str | None = None  # the content of the last box, as written; None without one


class _Timeout(BaseException):
    """Raised by the SIGALRM handler when a call runs past its limit (a BaseException: see the module docstring)."""


def last_boxed(text: str, max_chars: int = MAX_ANSWER_CHARS) -> tuple[str | None, bool]:
    """(content of the last \\boxed{...} or \\fbox{...}, too_long), reading at most `max_chars` of the content.

    'so \\boxed{\\frac{1}{2}}.' -> ('\\frac{1}{2}', False);  '\\boxed{1} \\fbox{2}' -> ('2', False);
    '\\boxed{1' -> (None, False): unclosed;  '\\boxed{' + 'x' * 300 + '}' -> (None, True)
    """
    start, opener = max((text.rfind(o), o) for o in _BOX_OPENERS)
    if start < 0:
        return None, False
    brace = _SPACES.match(text, start + len(opener)).end()  # "\boxed {x}" is a box too
    if not text.startswith("{", brace):
        return None, False
    depth = 0
    end = brace + max_chars + 2  # the opening brace, at most max_chars of content, the closing brace
    for match in _BRACES.finditer(text, brace, end):
        depth += 1 if match.group() == "{" else -1
        if depth == 0:
            return text[brace + 1: match.start()], False
    return None, len(text) - brace - 1 > max_chars  # more than max_chars unclosed: too long; else unclosed: no answer


def reference_answer(solution: str) -> str:
    """The answer of a reference: the content of a worked solution's last box, else the text itself, stripped.

    'Hence $x = \\boxed{\\frac{1}{2}}$.' -> '\\frac{1}{2}';  ' 42 ' -> '42'
    """
    answer, _ = last_boxed(solution, max_chars=len(solution))
    return (answer if answer is not None else solution).strip()


def _depth(answer: str) -> int:
    """Deepest nesting of ( [ { in `answer` (closers of any kind close): '\\frac{(1)}{2}' -> 2."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(answer):
        depth += 1 if match.group() in "([{" else -1
        deepest = max(deepest, depth)
    return deepest


def _normalize(latex: str) -> str:
    """The departures from math-verify of the docstring: '1\\,000\\,000' -> '1000000', '30°' -> '30^\\circ'."""
    return _DEGREES.sub(r"^\\circ", _THOUSANDS_GAP.sub("", latex))


def _parse(answer: str) -> list:
    """math-verify's parse of one boxed answer: [sympy object, its LaTeX] when it reads it, [text] or [] when not."""
    return parse("\\boxed{" + _normalize(answer) + "}", extraction_config=_LATEX, parsing_timeout=None)


@lru_cache(maxsize=REFERENCE_CACHE_SIZE)
def _parse_reference(reference: str) -> tuple:
    return tuple(_parse(reference))


@contextmanager
def _time_limit(seconds: float):
    """Raise _Timeout in the body after `seconds` of wall-clock time (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise _Timeout

    def drop_ours(unraisable):  # an alarm inside a __del__ or a gc callback cannot raise: Python would print it
        if not isinstance(unraisable.exc_value, _Timeout):
            hook(unraisable)

    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)  # someone else's timer: re-armed below
    started = time.monotonic()
    previous, hook = signal.getsignal(signal.SIGALRM), sys.unraisablehook
    try:  # the alarm can only raise inside this block, so the clean-up below always runs
        sys.unraisablehook = drop_ours
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, REFIRE_S)
        yield
    finally:
        armed[0] = False  # first, and no call before it: from here on the handler returns without raising
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        sys.unraisablehook = hook
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 1e-6), outer_interval)


def grade_math(response: str, reference: str, time_limit_s: float = TIME_LIMIT_S) -> MathGrade:
    """Grade one response against a reference answer (the bare answer: see `reference_answer`) and say why.

    >>> grade_math("The roots sum to $\\\\boxed{\\\\dfrac{1}{2}}$.", "0.5")
    MathGrade(reward=1.0, reason='correct', answer='\\\\dfrac{1}{2}')
    """
    try:
        answer, too_long = last_boxed(response)
        if too_long:
            return MathGrade(WRONG_REWARD, "too_long")
        if answer is None or not answer.strip():
            return MathGrade(WRONG_REWARD, "no_answer", answer)
        if _depth(answer) > MAX_DEPTH:
            return MathGrade(WRONG_REWARD, "too_deep", answer)
        try:
            with _time_limit(time_limit_s):
                predicted = _parse(answer)
                correct = verify(list(_parse_reference(reference)), predicted, timeout_seconds=None)
        except _Timeout:
            return MathGrade(WRONG_REWARD, "timeout", answer)
        if correct:
            return MathGrade(CORRECT_REWARD, "correct", answer)
        readable = any(not isinstance(p, str) for p in predicted)
        return MathGrade(WRONG_REWARD, "wrong" if readable else "unparsable", answer)
    except Exception:  # math-verify catches its own errors; anything else (a bug, RecursionError) is no grade
        return MathGrade(WRONG_REWARD, "unparsable")


def math_reward(response: str, reference: str) -> float:
    """1.0 if the last box of `response` holds an answer equal to `reference`, else 0.0.

    >>> math_reward("\\\\boxed{(-\\\\infty, 3]}", "(-\\\\infty,3]")
    1.0
    """
    return grade_math(response, reference).reward


def _warm_up() -> None:
    """The first calls of a process pay for lazy imports and cold caches (math-verify builds its parser; sympy's
    simplify imports sympy.physics.units): pay here, at import, not inside the first graded calls' limits."""
    for answer, reference in (("1", "1"), ("\\sqrt{3}", "\\sqrt{2}"), ("(x+1)^2", "x^2+1"), ("(1, 2)", "[1, 2)"),
                              ("\\{1, 2\\}", "1, 2"), ("y = 2x", "2x"), ("10\\%", "0.1"), ("2\\pi", "6.28"),
                              ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1, 2)")):
        verify(_parse(reference), _parse(answer), timeout_seconds=None)


_warm_up()
