"""Synthetic reasoning tasks: a Countdown solver and generator, and GSM8K-style word problems.

Pure Python, standard library only, deterministic for a seed (each call owns its `random.Random(seed)`).
These feed the tiny models' supervised data (`scripts/build_tiny_models.py`) and the CPU demos of
`grpo_countdown.py` / `ppo_gsm8k.py`.

- Countdown (as in TinyZero / Jiayi-Pan/Countdown-Tasks-3to4): reach `target` with each number used exactly
  once and binary + - * /. Expressions use ASCII integers, no unary minus, and only the parentheses they need.
- Word problems: one- or two-step stories; the answer is GSM8K-shaped, reasoning lines then `#### N`.
- Arithmetic (`grpo_calculator.py`): "347 * 28 - 196", with the steps a calculator takes, one operation each.
"""

import itertools
import random
import re
from fractions import Fraction

import numpy as np

OPS = "+-*/"
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, None: 3}  # None: a bare number, binds tightest
MAX_TRIES_PER_PROBLEM = 10_000  # rejection-sampling guard: raise rather than loop forever on impossible settings


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    """Exact binary arithmetic; None for division by zero. `_apply("/", Fraction(1), Fraction(3)) == Fraction(1, 3)`."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _join(op: str, left: tuple[str, str | None], right: tuple[str, str | None]) -> str:
    """Write `left op right` with only the parentheses precedence needs.

    A left child needs them if it binds looser than `op`; a right child also when equal and `op` is - or /
    (a-(b+c), a/(b*c)): `_join("*", ("8-5", "-"), ("3", None)) == "(8-5)*3"`,
    `_join("-", ("8", None), ("5-3", "-")) == "8-(5-3)"`.
    """
    (ls, lop), (rs, rop) = left, right
    if PRECEDENCE[lop] < PRECEDENCE[op]:
        ls = f"({ls})"
    if PRECEDENCE[rop] < PRECEDENCE[op] or (PRECEDENCE[rop] == PRECEDENCE[op] and op in "-/"):
        rs = f"({rs})"
    return f"{ls}{op}{rs}"


def solve_countdown(numbers: list[int], target: int) -> str | None:
    """An equation using each number exactly once with + - * / whose exact value is `target`, or None.

    Depth-first search over all ways to combine two terms (Fraction arithmetic, so 6/(1-3/4)=24 is found);
    the first solution in a fixed order is returned, so the result is deterministic.
    `solve_countdown([3, 8, 5], 9) == "3*(8-5)"`; `solve_countdown([1, 1, 1], 10) is None`.
    """
    assert numbers and all(isinstance(n, int) and n >= 0 for n in numbers), f"need non-negative ints, got {numbers}"
    seen: set[tuple[Fraction, ...]] = set()

    def search(terms: list[tuple[Fraction, str, str | None]]) -> str | None:
        if len(terms) == 1:
            return terms[0][1] if terms[0][0] == target else None
        key = tuple(sorted(t[0] for t in terms))
        if key in seen:  # the same multiset of values was already explored (and failed)
            return None
        seen.add(key)
        for i, j in itertools.permutations(range(len(terms)), 2):
            rest = [t for k, t in enumerate(terms) if k not in (i, j)]
            (a, sa, oa), (b, sb, ob) = terms[i], terms[j]
            for op in OPS:
                if op in "+*" and i > j:  # commutative: a+b already tried as b+a
                    continue
                value = _apply(op, a, b)
                if value is not None:
                    found = search(rest + [(value, _join(op, (sa, oa), (sb, ob)), op)])
                    if found is not None:
                        return found
        return None

    return search([(Fraction(n), str(n), None) for n in numbers])


def evaluate_countdown(expression: str) -> Fraction:
    """Exact value of an expression in the solver's syntax, by a tiny recursive-descent parser (no `eval`).

    `evaluate_countdown("(8-5)*3") == 9`; `evaluate_countdown("6/(1-3/4)") == 24`.
    """
    tokens = re.findall(r"\d+|\S", expression)  # "12*(3-4)" -> ["12", "*", "(", "3", "-", "4", ")"]
    pos = 0

    def expr() -> Fraction:  # expr := term (('+'|'-') term)*
        nonlocal pos
        value = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op, pos = tokens[pos], pos + 1
            value = _apply(op, value, term())
        return value

    def term() -> Fraction:  # term := atom (('*'|'/') atom)*
        nonlocal pos
        value = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op, pos = tokens[pos], pos + 1
            value = _apply(op, value, atom())
            assert value is not None, f"division by zero in {expression!r}"
        return value

    def atom() -> Fraction:  # atom := integer | '(' expr ')'
        nonlocal pos
        token, pos = tokens[pos], pos + 1
        if token == "(":
            value = expr()
            assert tokens[pos] == ")", f"unbalanced parentheses in {expression!r}"
            pos += 1
            return value
        assert token.isdigit(), f"unexpected token {token!r} in {expression!r}"
        return Fraction(int(token))

    value = expr()
    assert pos == len(tokens), f"trailing tokens in {expression!r}"
    return value


def random_countdown_expression(nums: list[int], rng: random.Random) -> tuple[int, str, list[str]]:
    """Combine `nums` in random order with random ops, requiring every intermediate to be a positive integer.

    Returns (value, expression, steps), e.g. for [8, 5, 3]: (9, "(8-5)*3", ["8-5=3", "3*3=9"]), or value 0
    when a step failed (non-integer, zero or negative); the caller rejects those. Integer arithmetic (not
    `_apply`'s Fractions): the demos generate 20k problems at start-up, and this is their inner loop.
    """
    terms = [(n, str(n), None) for n in nums]
    steps: list[str] = []
    while len(terms) > 1:
        i, j = rng.sample(range(len(terms)), 2)
        (a, sa, oa), (b, sb, ob) = terms[i], terms[j]
        op = rng.choice(OPS)
        if op == "/" and a % b:  # not an integer (b > 0: every term is a positive integer)
            return 0, "", []
        value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
        if value <= 0:
            return 0, "", []
        steps.append(f"{a}{op}{b}={value}")
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [(value, _join(op, (sa, oa), (sb, ob)), op)]
    return terms[0][0], terms[0][1], steps


def countdown_key(problem: dict) -> tuple[tuple[int, ...], int]:
    """Identity of a problem up to the order of its numbers: {"nums": [8, 3, 5], "target": 9, ...} -> ((3, 5, 8), 9)."""
    return tuple(sorted(problem["nums"])), problem["target"]


def make_countdown_problems(
    n: int, seed: int, num_numbers: tuple[int, ...] = (3, 4), max_number: int = 99, max_target: int = 99,
    exclude: frozenset | set = frozenset(),
) -> list[dict]:
    """`n` solvable Countdown problems: {"nums", "target", "solution", "steps"}.

    Method: draw `k` in `num_numbers` and `k` numbers in [1, max_number], combine them by a random expression
    (`random_countdown_expression`), keep it when the value is an integer target in [1, max_target]. So every
    problem is solvable by construction and `solution` is a worked equation; targets lean towards values that
    many expressions reach. Defaults resemble Jiayi-Pan/Countdown-Tasks-3to4 (3-4 numbers 1-99, target <= 99).
    Problems whose `countdown_key` is in `exclude` are skipped: small settings have few distinct problems (3 numbers
    in 1-20, target <= 50: ~15k), so a training stream would otherwise contain almost every held-out problem.
    """
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        for _ in range(MAX_TRIES_PER_PROBLEM):
            nums = [rng.randint(1, max_number) for _ in range(rng.choice(num_numbers))]
            value, expression, steps = random_countdown_expression(nums, rng)
            if 1 <= value <= max_target and (tuple(sorted(nums)), int(value)) not in exclude:
                problems.append({"nums": nums, "target": int(value), "solution": expression, "steps": steps})
                break
        else:
            raise RuntimeError(f"no solvable problem in {MAX_TRIES_PER_PROBLEM} tries: {num_numbers=} {max_target=}")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Word problems (GSM8K-shaped). Each template samples its numbers with `rng` (hi = the largest addend), derives the
# intermediate `m` and result `r` so every step is exact and positive, and writes one reasoning line per step.
NAMES = (("Ava", "she"), ("Liam", "he"), ("Maya", "she"), ("Noah", "he"),
         ("Zoe", "she"), ("Omar", "he"), ("Lena", "she"), ("Ravi", "he"),
         ("Ines", "she"), ("Tom", "he"), ("Mei", "she"), ("Sam", "he"))
ITEMS = ("apples", "marbles", "stickers", "cookies", "pencils", "books", "shells", "cards", "stamps", "beads")
WORD_TEMPLATES = (  # (sampler(rng, hi) -> numbers, question, reasoning lines)
    (lambda g, hi: _v(a=g.randint(2, hi), b=g.randint(2, hi), r=lambda v: v["a"] + v["b"]),
     "{name} has {a} {item}. {He} finds {b} more. How many {item} does {name} have now?",
     ["{name} has {a} + {b} = {r} {item} now."]),
    (lambda g, hi: _v(r=g.randint(1, hi), b=g.randint(2, hi), a=lambda v: v["r"] + v["b"]),
     "{name} had {a} {item} and gave {b} of them to {friend}. How many {item} does {name} have left?",
     ["{name} has {a} - {b} = {r} {item} left."]),
    (lambda g, hi: _v(a=g.randint(2, 12), b=g.randint(2, 12), r=lambda v: v["a"] * v["b"]),
     "{name} buys {a} boxes of {item}. Each box holds {b} {item}. How many {item} does {name} buy?",
     ["{name} buys {a} * {b} = {r} {item}."]),
    (lambda g, hi: _v(r=g.randint(2, 12), b=g.randint(2, 9), a=lambda v: v["r"] * v["b"]),
     "{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
     ["Each friend gets {a} / {b} = {r} {item}."]),
    (lambda g, hi: _v(a=g.randint(2, 20), b=g.randint(2, 9), r=lambda v: v["a"] * v["b"]),
     "A toy costs ${a}. {name} buys {b} toys. How many dollars does {name} spend?",
     ["{name} spends {b} * {a} = {r} dollars."]),
    (lambda g, hi: _v(a=g.randint(5, 40), b=g.randint(2, 9), r=lambda v: v["a"] * v["b"]),
     "{name} reads {a} pages every day. How many pages does {he} read in {b} days?",
     ["{He} reads {a} * {b} = {r} pages."]),
    (lambda g, hi: _v(a=g.randint(2, 9), b=g.randint(2, 12), m=lambda v: v["a"] * v["b"],
                      c=lambda v: g.randint(1, v["m"] - 1), r=lambda v: v["m"] - v["c"]),
     "{name} buys {a} packs of {item} with {b} {item} in each pack. {He} gives {c} {item} to {friend}. "
     "How many {item} does {name} have left?",
     ["{name} buys {a} * {b} = {m} {item}.", "After giving {c} away, {he} has {m} - {c} = {r} {item} left."]),
    (lambda g, hi: _v(a=g.randint(2, hi), b=g.randint(2, hi), c=g.randint(2, hi),
                      m=lambda v: v["a"] + v["b"], r=lambda v: v["m"] + v["c"]),
     "{name} picks {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. How many {item} does {he} pick in all?",
     ["On Monday and Tuesday {he} picks {a} + {b} = {m} {item}.", "In all {he} picks {m} + {c} = {r} {item}."]),
    (lambda g, hi: _v(a=g.randint(2, 9), b=g.randint(2, 9), m=lambda v: v["a"] * v["b"],
                      c=lambda v: g.choice([x for x in (20, 50, 100) if x > v["m"]]), r=lambda v: v["c"] - v["m"]),
     "{name} buys {a} notebooks for ${b} each and pays with a ${c} bill. How many dollars of change does {he} get?",
     ["The notebooks cost {a} * {b} = {m} dollars.", "The change is {c} - {m} = {r} dollars."]),
    (lambda g, hi: _v(a=g.randint(8, 30), b=g.randint(2, 9), c=g.randint(2, 30),
                      m=lambda v: v["a"] * v["b"], r=lambda v: v["m"] * v["c"]),
     "{name} earns ${a} an hour and works {b} hours a day. How many dollars does {he} earn in {c} days?",
     ["{He} earns {a} * {b} = {m} dollars a day.", "In {c} days {he} earns {m} * {c} = {r} dollars."]),
    (lambda g, hi: _v(r=g.randint(2, 12), c=g.randint(2, 9), m=lambda v: v["r"] * v["c"],
                      a=lambda v: g.randint(1, v["m"] - 1), b=lambda v: v["m"] - v["a"]),
     "{name} has {a} red {item} and {b} blue {item}. {He} puts them into bags of {c}. How many bags does {he} fill?",
     ["{name} has {a} + {b} = {m} {item}.", "{He} fills {m} / {c} = {r} bags."]),
    (lambda g, hi: _v(b=g.randint(1, 15), m=g.randint(5, 30), c=g.randint(2, 9),
                      a=lambda v: v["m"] + v["b"], r=lambda v: v["m"] * v["c"]),
     "A class has {a} students and {b} of them are absent. Each student who is there gets {c} {item}. "
     "How many {item} are handed out?",
     ["There are {a} - {b} = {m} students in class.", "They get {m} * {c} = {r} {item}."]),
    (lambda g, hi: _v(a=g.randint(2, 30), b=g.randint(2, 5), m=lambda v: v["a"] * v["b"], r=lambda v: v["a"] + v["m"]),
     "{name} has {a} {item}. {friend} has {b} times as many. How many {item} do they have together?",
     ["{friend} has {a} * {b} = {m} {item}.", "Together they have {a} + {m} = {r} {item}."]),
    (lambda g, hi: _v(m=g.randint(2, hi), b=g.randint(2, hi), a=lambda v: 2 * v["m"], r=lambda v: v["m"] + v["b"]),
     "{name} had {a} {item}. {He} gave half of them to {friend} and then bought {b} more. "
     "How many {item} does {name} have now?",
     ["After giving half away, {name} has {a} / 2 = {m} {item}.", "Then {he} has {m} + {b} = {r} {item}."]),
    (lambda g, hi: _v(b=g.randint(5, 60), c=g.randint(5, 60), r=g.randint(1, 60),
                      m=lambda v: v["b"] + v["c"], a=lambda v: v["m"] + v["r"]),
     "A trip is {a} km long. {name} drives {b} km in the morning and {c} km in the afternoon. How many km are left?",
     ["{name} drives {b} + {c} = {m} km.", "There are {a} - {m} = {r} km left."]),
)


def _v(**spec) -> dict:
    """Resolve sampled values in order; callables see the values before them.

    `_v(a=2, b=3, r=lambda v: v["a"] * v["b"]) == {"a": 2, "b": 3, "r": 6}`.
    """
    values: dict = {}
    for key, x in spec.items():
        values[key] = x(values) if callable(x) else x
    return values


def make_word_problems(n: int, seed: int, max_addend: int = 60) -> list[dict]:
    """`n` GSM8K-shaped problems: {"question", "answer"} with answer = reasoning lines + "\\n#### N".

    Templates, names and items are drawn uniformly; `max_addend` bounds the numbers added in sum templates.
    E.g. {"question": "Ava has 12 apples. She finds 5 more. How many apples does Ava have now?",
          "answer": "Ava has 12 + 5 = 17 apples now.\\n#### 17"}.
    """
    assert max_addend >= 2, f"max_addend must be >= 2, got {max_addend}"
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        sampler, question, lines = rng.choice(WORD_TEMPLATES)
        (name, he), (friend, _) = rng.sample(NAMES, 2)
        values = sampler(rng, max_addend)
        words = {"name": name, "he": he, "He": he.capitalize(), "friend": friend, "item": rng.choice(ITEMS)}
        fill = {**words, **values}
        assert values["r"] > 0, f"non-positive answer {values} for {question!r}"
        answer = "\n".join(line.format(**fill) for line in lines) + f"\n#### {values['r']}"
        problems.append({"question": question.format(**fill), "answer": answer})
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic expressions (the calculator task of grpo_calculator.py)
# ---------------------------------------------------------------------------------------------------------------
def arithmetic_steps(numbers: list[int], ops: list[str]) -> list[tuple[str, int]]:
    """The operations a one-operation-at-a-time calculator takes for `numbers[0] ops[0] numbers[1] ...`, in order:
    the first "*" left, else the first operation, each written with the values the steps before it produced.

    `arithmetic_steps([347, 28, 196], ["*", "-"]) == [("347*28", 9716), ("9716-196", 9520)]`;
    `arithmetic_steps([5, 3, 4], ["-", "*"]) == [("3*4", 12), ("5-12", -7)]`.
    """
    assert len(ops) == len(numbers) - 1 and set(ops) <= set("+-*"), f"{numbers} {ops}: need k numbers, k-1 of + - *"
    values, ops, steps = list(numbers), list(ops), []
    while ops:
        i = ops.index("*") if "*" in ops else 0
        a, op, b = values[i], ops.pop(i), values.pop(i + 1)
        values[i] = a + b if op == "+" else a - b if op == "-" else a * b
        steps.append((f"{a}{op}{b}", values[i]))
    return steps


def make_arithmetic_problems(n: int, seed: int, num_operands: tuple[int, ...] = (2, 3), max_number: int = 999,
                             max_value: int = 10**6, exclude: frozenset | set = frozenset()) -> list[dict]:
    """`n` arithmetic problems: {"expression": "347 * 28 - 196", "value": 9520, "steps": [["347*28", 9716],
    ["9716-196", 9520]]}.

    Method: draw k in `num_operands`, k numbers in [2, max_number] and k - 1 operators among + - *; keep the problem
    when every step (`arithmetic_steps`) lies in [0, max_value]. Expressions whose text is in `exclude` are skipped
    (pass the held-out set's, so that training never sees a held-out problem).
    """
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        for _ in range(MAX_TRIES_PER_PROBLEM):
            k = rng.choice(num_operands)
            numbers = [rng.randint(2, max_number) for _ in range(k)]
            ops = [rng.choice("+-*") for _ in range(k - 1)]
            steps = arithmetic_steps(numbers, ops)
            expression = " ".join(x for pair in zip(map(str, numbers), ops + [""]) for x in pair).strip()
            if all(0 <= v <= max_value for _, v in steps) and expression not in exclude:
                problems.append({"expression": expression, "value": steps[-1][1], "steps": [list(s) for s in steps]})
                break
        else:
            raise RuntimeError(f"no arithmetic problem in {MAX_TRIES_PER_PROBLEM} tries: {num_operands=} {max_value=}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Data order (any task)
# ---------------------------------------------------------------------------------------------------------------
def stream_indices(position: int, count: int, num_problems: int, seed: int) -> list[int]:
    """Problem indices `position` .. `position + count - 1` of the training stream, over all ranks: a fresh seeded
    permutation per epoch, read in order. A run that saves its position (the prompts it has drawn) continues exactly
    where it stopped, however many prompts each step drew (dynamic sampling draws more).

    >>> stream_indices(8, 4, 10, seed=0) == stream_indices(8, 2, 10, seed=0) + stream_indices(10, 2, 10, seed=0)
    True
    """
    out, permutations = [], {}
    for k in range(position, position + count):
        epoch, i = divmod(k, num_problems)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(num_problems)
        out.append(int(permutations[epoch][i]))
    return out


def batch_indices(step: int, prompts_per_step: int, num_problems: int, seed: int) -> list[int]:
    """Problem indices of step `step` when every step draws `prompts_per_step`: `stream_indices(step * P, P, ...)`."""
    return stream_indices(step * prompts_per_step, prompts_per_step, num_problems, seed)
