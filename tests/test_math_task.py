"""grpo_math.py, the worked example of a fork for a real task: its diff against grpo_countdown.py stays where a fork may
differ, its shipped problems are sound, and it trains 2 steps under torchrun with a shipped tiny model.

A fork may differ from grpo_countdown.py in: the module docstring; the `# ---- data` section of `Args`; the defaults
of other `Args` fields (and then their docstrings, if need be); `PRESETS`; the data-specific rules of `check_args`;
the import of its grader from `rewards/` and the names it imports from `common.tasks`; the task block (from the
`# Task:` banner to the next banner). Everything else is grpo_countdown.py's.
When grpo_countdown.py changes, `python tests/test_math_task.py` re-syncs grpo_math.py: it rewrites every other line
from grpo_countdown.py and prints what changed (check_args and a default's docstring stay for a person to re-read).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python tests/test_math_task.py` from anywhere

from rewards.math import MATH_REASONS, grade_math, last_boxed, reference_answer  # noqa: E402

COUNTDOWN, FORK, DATA = ROOT / "grpo_countdown.py", ROOT / "grpo_math.py", ROOT / "data" / "math"
RULE = re.compile(r"# -{20,}\n")
SECTION = re.compile(r"    # ---- (.+)\n")
TASK_IMPORTS = ("rewards", "common.tasks")  # the modules whose imports belong to the task


# ---------------------------------------------------------------------------------------------- the fork's diff rule
def layout(source: str) -> dict[str, tuple[int, int]]:
    """The regions of a GRPO script, as [start, end) line ranges, in file order."""
    tree, lines = ast.parse(source), source.splitlines(keepends=True)
    named = lambda name: next(n for n in tree.body if getattr(n, "name", None) == name  # noqa: E731
                              or isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name)
    args, presets, check = named("Args"), named("PRESETS"), named("check_args")
    banners = [i for i in range(1, len(lines) - 1) if RULE.fullmatch(lines[i - 1]) and RULE.fullmatch(lines[i + 1])]
    task = next(i for i in banners if lines[i].startswith("# Task:"))
    after = next(i for i in banners if i > task) - 1  # the rule line that opens the next banner
    doc_end, args_start = tree.body[0].end_lineno, args.decorator_list[0].lineno - 1
    return {"docstring": (0, doc_end), "head": (doc_end, args_start), "args": (args_start, presets.lineno - 1),
            "presets": (presets.lineno - 1, check.lineno - 1), "check_args": (check.lineno - 1, check.end_lineno),
            "imports": (check.end_lineno, task), "task": (task, after), "rest": (after, len(lines))}


def args_fields(source: str) -> dict[str, dict]:
    """Args' fields: name -> {section, annotation, default, docstring, span: [start, end) lines with the docstring}."""
    tree, lines = ast.parse(source), source.splitlines(keepends=True)
    args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args")
    sections = [(i, SECTION.fullmatch(lines[i]).group(1)) for i in range(args.lineno, args.end_lineno)
                if SECTION.fullmatch(lines[i])]
    fields = {}
    for node, after in zip(args.body, args.body[1:] + [None]):
        if isinstance(node, ast.AnnAssign):
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
            fields[node.target.id] = {
                "section": ([""] + [name for i, name in sections if i < node.lineno - 1])[-1],  # "": before any
                "annotation": ast.unparse(node.annotation), "default": ast.unparse(node.value), "docstring": doc,
                "span": (node.lineno - 1, (after if doc is not None else node).end_lineno)}
    return fields


def data_section(source: str) -> tuple[int, int]:
    """[start, end) lines of Args' `# ---- data` section, from its comment to the next section's."""
    lines, (start, end) = source.splitlines(keepends=True), layout(source)["args"]
    marks = [i for i in range(start, end) if SECTION.fullmatch(lines[i])]
    first = next(i for i in marks if lines[i] == "    # ---- data\n")
    return first, next((i for i in marks if i > first), max(f["span"][1] for f in args_fields(source).values()))


def task_imports(source: str) -> dict[str, list[tuple[int, int]]]:
    """TASK_IMPORTS module -> the [start, end) lines of each import from it (the grader, common.tasks helpers)."""
    spans = {module: [] for module in TASK_IMPORTS}
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(TASK_IMPORTS):
            spans[next(m for m in TASK_IMPORTS if n.module.startswith(m))].append((n.lineno - 1, n.end_lineno))
    return spans


def resync(countdown: str, fork: str) -> str:
    """The fork as the rule wants it: grpo_countdown.py's lines everywhere but where a fork may differ, where they are
    the fork's. A fork that keeps the rule is a fixed point: resync(countdown, fork) == fork."""
    c_lines, f_lines = countdown.splitlines(keepends=True), fork.splitlines(keepends=True)
    chunks = [[line] for line in c_lines]  # what each countdown line becomes
    f_imports = task_imports(fork)
    for module, spans in task_imports(countdown).items():  # the fork's imports from a task module replace these
        for k, (a, b) in enumerate(spans):
            chunks[a:b] = [[line for fa, fb in f_imports[module] for line in f_lines[fa:fb]] if k == 0 else []] + \
                [[] for _ in range(a + 1, b)]
    c_fields, f_fields = args_fields(countdown), args_fields(fork)
    for name, field in c_fields.items():  # a field outside the data section: the fork's lines where they differ
        if name in f_fields and field["section"] != "data":
            (a, b), (fa, fb) = field["span"], f_fields[name]["span"]
            if c_lines[a:b] != f_lines[fa:fb]:
                chunks[a:b] = [f_lines[fa:fb]] + [[] for _ in range(a + 1, b)]
    (ca, cb), (fa, fb) = data_section(countdown), data_section(fork)
    chunks[ca:cb] = [f_lines[fa:fb]] + [[] for _ in range(ca + 1, cb)]
    c, f = layout(countdown), layout(fork)
    ours = lambda region: "".join(chunk for i in range(*c[region]) for chunk in chunks[i])  # noqa: E731
    theirs = lambda region: "".join(f_lines[slice(*f[region])])  # noqa: E731
    return (theirs("docstring") + ours("head") + ours("args") + theirs("presets") + theirs("check_args")
            + ours("imports") + theirs("task") + ours("rest"))


def check_args_without_data_rules(source: str) -> str:
    """check_args with every mention of a data-section field taken out: the names in its check_ranges lists and the
    `if` statements that test one."""
    data = {name for name, f in args_fields(source).items() if f["section"] == "data"}

    class DropDataRules(ast.NodeTransformer):
        def visit_Tuple(self, node):
            node.elts = [e for e in node.elts if not (isinstance(e, ast.Constant) and e.value in data)]
            return node

        def visit_If(self, node):
            tested = {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
            return None if tested & data else self.generic_visit(node)

    check = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "check_args")
    return ast.dump(DropDataRules().visit(check))


def test_fork_differs_from_grpo_countdown_only_where_a_fork_may():
    countdown, fork = COUNTDOWN.read_text(), FORK.read_text()
    diff = "".join(difflib.unified_diff(fork.splitlines(True), resync(countdown, fork).splitlines(True),
                                        "grpo_math.py", "grpo_math.py re-synced with grpo_countdown.py"))
    assert not diff, f"grpo_math.py differs from grpo_countdown.py where a fork may not (re-sync: python " \
                     f"tests/test_math_task.py):\n{diff}"


def test_args_outside_the_data_section_differ_only_in_defaults():
    countdown, fork = args_fields(COUNTDOWN.read_text()), args_fields(FORK.read_text())
    outside = lambda fields: {n: f for n, f in fields.items() if f["section"] != "data"}  # noqa: E731
    assert list(outside(fork)) == list(outside(countdown)), "the same fields, in the same sections and order"
    for name, field in outside(fork).items():
        theirs = countdown[name]
        assert (field["section"], field["annotation"]) == (theirs["section"], theirs["annotation"]), name
        if field["default"] == theirs["default"]:
            assert field["docstring"] == theirs["docstring"], f"{name}: a docstring changes only with its default"


def test_check_args_differs_only_in_data_rules():
    assert check_args_without_data_rules(FORK.read_text()) == check_args_without_data_rules(COUNTDOWN.read_text())


def test_fork_imports_from_common_tasks_what_the_shared_code_needs():
    imported = lambda source: {alias.name for n in ast.walk(ast.parse(source))  # noqa: E731
                               if isinstance(n, ast.ImportFrom) and n.module == "common.tasks" for alias in n.names}
    countdown, fork = COUNTDOWN.read_text(), FORK.read_text()
    shared = "".join(fork.splitlines(keepends=True)[slice(*layout(fork)["rest"])])
    needed = {name for name in imported(countdown) if re.search(rf"\b{name}\b", shared)}
    assert needed <= imported(fork) <= imported(countdown)


# ---------------------------------------------------------------------------------------------- the shipped problems
def read(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


def test_shipped_problems_are_math_format_with_readable_references():
    train, test = read("train"), read("test")
    assert len(train) >= 60 and len(test) >= 40
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}, "no held-out problem trains"
    for row in train + test:
        assert set(row) == {"problem", "solution", "level", "type"} and re.fullmatch(r"Level [1-5]", row["level"]), row
        answer, _ = last_boxed(row["solution"])
        assert answer is not None and reference_answer(row["solution"]) == answer.strip(), row
        grade = grade_math(row["solution"], answer, time_limit_s=30.0)  # the solution, graded by its own reference
        assert grade.reason == "correct", (row, grade)


def test_shipped_problems_are_what_the_generator_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_problems", DATA / "make_problems.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_text() == (DATA / f"{split}.jsonl").read_text(), split


# ---------------------------------------------------------------------------------------------- end to end
SMALL = ["--preset", "tiny", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--mini-batch-size", "16",
         "--micro-batch-size", "8", "--test-size", "8", "--max-response-tokens", "32", "--save-every", "0",
         "--eval-samples-per-prompt", "2", "--eval-temperature", "1.0"]


@pytest.mark.e2e
def test_grpo_math_trains_two_steps_offline(tmp_path):
    from tests.run_utils import run_script
    from tests.test_grpo_e2e import documented_keys, is_documented, read_metrics

    # --no-use-local-data: the hub is offline in the tests, so this also checks the fallback to data/math
    proc = run_script(["grpo_math.py", *SMALL, "--no-use-local-data", "--num-steps", "2", "--out-dir", str(tmp_path),
                       "--exp-name", "m"], nproc=2, timeout=600)
    assert "notice: cannot load" in proc.stdout + proc.stderr and "data/math" in proc.stdout + proc.stderr
    rows = read_metrics(tmp_path / "m")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[:2]:
        assert {f"reward/reason_{reason}" for reason in MATH_REASONS} <= set(r), "every reason of the grader is logged"
        assert math.isclose(sum(r[f"reward/reason_{reason}"] for reason in MATH_REASONS), 1.0), r
        assert all(math.isfinite(v) for v in r.values()), r
    assert {"eval/accuracy", "eval/pass_at_k", "eval/format_rate"} <= set(rows[0]) and "eval/pass_at_k" in rows[2]
    undocumented = {k for r in rows for k in r if k != "step" and not is_documented(k, documented_keys())}
    assert not undocumented, f"metrics without a line in the glossary: {undocumented}"
    samples = [json.loads(line) for line in (tmp_path / "m" / "samples.jsonl").read_text().splitlines()]
    assert samples and set(json.loads(samples[0]["problem"])) == {"problem", "answer"}


if __name__ == "__main__":  # re-sync grpo_math.py with grpo_countdown.py
    before = FORK.read_text()
    after = resync(COUNTDOWN.read_text(), before)
    FORK.write_text(after)
    sys.stdout.writelines(difflib.unified_diff(before.splitlines(True), after.splitlines(True), "before", "after"))
