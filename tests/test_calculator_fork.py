"""grpo_calculator.py is a fork of grpo_countdown.py that differs only where a tool changes something (the diff-region
rule below keeps re-syncing it with grpo_countdown.py mechanical), and it forks in turn for another task with a tool:
replace its task block, as docs/tool_use.md's recipe says, and it trains under torchrun.

Re-sync after grpo_countdown.py changes: `git show SYNCED_WITH:grpo_countdown.py > /tmp/base.py` then
`git merge-file grpo_calculator.py /tmp/base.py grpo_countdown.py` merges the parent's changes into the fork (a
conflict only where both changed the same lines; git merge-file needs real files, not `<(...)`); this test then says
whether a difference strayed. Update SYNCED_WITH to the commit merged."""

import difflib
import json
import re

import pytest

from tests.run_utils import ROOT, run_script
from tests.test_calculator_e2e import SMALL

# A difference between grpo_countdown.py and grpo_calculator.py must lie inside one of these regions of
# grpo_calculator.py (from the line starting with the first marker to the line before the one with the second), or be
# one of the single lines below. Anything else (the update, the advantages, the loss, checkpoints) stays identical.
REGIONS = [
    ('"""GRPO', "from __future__"),                           # the docstring: what the fork is, how to launch it
    ("class Args", "# The command line is parsed"),           # settings (data, tool), presets, their checks
    ("# Task: data, prompt, reward", "# Algorithm: advantages and loss"),  # the task and its tool
    ("# ===== 1. rollout", "# ===== 2. rewards"),             # the rollout phase: in turns; the batch's sampled mask
    ("# ===== 6. log", "# ===== 7. checkpoint"),              # the log phase: the turns of each rank's loop
]
# imports; the evaluation (in turns)
SINGLE_LINES = re.compile(r"^(from |import |\s+held_out = lambda engine, step: evaluate_in_turns\(|\s+args, step, dist.device\)$"
                          r"|\s+(evaluate_saved_policy, )?mismatch_totals, rollout_totals\))")
SYNCED_WITH = "660f8a3"  # the commit of grpo_countdown.py that grpo_calculator.py last matched
MAX_DIFF_LINES = 450  # `diff grpo_countdown.py grpo_calculator.py | wc -l`

TASK_BANNER = "# Task: data, prompt, reward"
NEXT_BANNER = "# Algorithm: advantages and loss"
RECIPE_NAMES = ("load_problems", "make_prompt", "grade", "call_tool", "STOP", "REASONS", "no_answer", TASK_BANNER.lstrip("# "),
                NEXT_BANNER.lstrip("# "))


def regions(lines: list[str]) -> list[tuple[int, int]]:
    spans = []
    for start, end in REGIONS:
        i = next(k for k, line in enumerate(lines) if line.lstrip().startswith(start))
        j = next(k for k in range(i + 1, len(lines)) if lines[k].lstrip().startswith(end))
        spans.append((i, j))
    return spans


def test_the_fork_differs_from_grpo_countdown_only_where_a_tool_changes_something():
    old = (ROOT / "grpo_countdown.py").read_text().splitlines()
    new = (ROOT / "grpo_calculator.py").read_text().splitlines()
    spans = regions(new)
    inside = lambda j: any(i <= j < k for i, k in spans)
    stray = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        changed = [(j, new[j]) for j in range(j1, j2)] or [(j1, line) for line in old[i1:i2]]  # a deletion: where it was
        stray += [f"{j + 1}: {line}" for j, line in changed if not (inside(j) or SINGLE_LINES.match(line))]
    assert not stray, "grpo_calculator.py differs from grpo_countdown.py outside the tool's regions:\n" + "\n".join(stray[:20])
    size = sum(1 for line in difflib.unified_diff(old, new, n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    assert size <= MAX_DIFF_LINES, f"{size} changed lines: the fork should show the tool, little else"


# The new task: add two numbers, with an adding machine as the tool. Its own data, prompt, grader, reasons and tool.
ADDER_TASK = '''# Task: data, prompt, reward, tool -- here: add two numbers with an adding machine
# ---------------------------------------------------------------------------------------------------------------
import re

INSTRUCTIONS = ("The Assistant has a calculator: it writes an expression between <calc> and </calc>, and reads its "
                "value between <result> and </result>. It gives the final answer between <answer> and </answer>.")
CALL_OPEN, CALL_CLOSE = "<calc>", "</calc>"
STOP = ["</answer>", CALL_CLOSE]
REASONS = ("correct", "no_answer", "wrong_value")


def load_problems(args: Args) -> tuple[list[dict], list[dict]]:
    """(train, test) lists of {"a": int, "b": int}; the held-out pairs come from their own seed."""
    draw = lambda rng: {"a": rng.randint(100, 999), "b": rng.randint(100, 999)}
    train_rng, test_rng = random.Random(args.seed), random.Random(1_000 + args.seed)
    return [draw(train_rng) for _ in range(args.train_size)], [draw(test_rng) for _ in range(args.test_size)]


def make_prompt(problem: dict, tokenizer, template: str) -> str:
    return (f"A conversation between User and Assistant. {INSTRUCTIONS}\\nUser: What is {problem['a']} + {problem['b']}?"
            "\\nAssistant:")


def grade(text: str, problem: dict) -> tuple[float, str]:
    """1.0 when the last answer is a + b."""
    answer = re.findall(r"<answer>\\s*(\\d{1,12})\\s*</answer>", text)
    if not answer:
        return 0.0, "no_answer"
    return (1.0, "correct") if int(answer[-1]) == problem["a"] + problem["b"] else (0.1, "wrong_value")


def call_tool(turn_text: str, problem: dict, enabled: bool = True) -> tuple[str, bool] | None:
    """An adding machine: the sum of the (at most 8, 12-digit) numbers of the call, whatever the operators."""
    if not turn_text.endswith(CALL_CLOSE):
        return None
    numbers = [int(x) for x in re.findall(r"\\d{1,12}", turn_text.rpartition(CALL_OPEN)[2])[:8]]
    output = str(sum(numbers)) if enabled and numbers else "error: nothing to add"
    return f"<result>{output}</result>", output.startswith("error")


'''


def fork(source: str) -> str:
    """Replace everything from the task banner's line to the line before the next section's banner."""
    lines = source.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(TASK_BANNER))
    end = next(i for i, line in enumerate(lines) if line.startswith(NEXT_BANNER)) - 1  # keep that banner's rule line
    assert start < end, "the task block comes before the algorithm"
    return "".join(lines[:start]) + ADDER_TASK + "".join(lines[end:])


def test_recipe_names_what_the_test_replaces():
    doc = (ROOT / "docs" / "tool_use.md").read_text()
    section = doc[doc.index("## Fork it for a task with a tool"):]
    for name in RECIPE_NAMES:
        assert name in section, f"docs/tool_use.md's fork recipe does not mention {name!r}"


@pytest.mark.e2e
def test_fork_for_another_task_with_a_tool_trains(tmp_path):
    script = tmp_path / "adder_task.py"
    script.write_text(fork((ROOT / "grpo_calculator.py").read_text()))
    block = script.read_text().split(TASK_BANNER)[1].split(NEXT_BANNER)[0]
    assert "calculator(" not in block and "arithmetic" not in block, "the fork's task block is the adder's alone"
    out = tmp_path / "runs"
    proc = run_script([str(script), *SMALL, "--num-steps", "2", "--eval-every", "2", "--out-dir", str(out),
                       "--exp-name", "adder"], nproc=2, timeout=600, extra_env={"PYTHONPATH": str(ROOT)})
    rows = [json.loads(line) for line in (out / "adder" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"reward/mean", "reward/reason_wrong_value", "reward/reason_no_answer", "eval/accuracy"} <= set(rows[0])
    assert not any(k.startswith("reward/reason_bad_number") for k in rows[0]), "the fork's REASONS, not the calculator's"
    assert rows[0]["rollout/tool_calls_mean"] > 0, "the fork's tool was called"
    samples = [json.loads(line) for line in (out / "adder" / "samples.jsonl").read_text().splitlines()]
    assert set(json.loads(samples[0]["problem"])) == {"a", "b"}
    assert any("<result>" in s["completion"] for s in samples), "the logged trajectories show the tool's outputs"
    assert "held-out accuracy" in proc.stdout + proc.stderr


@pytest.mark.parametrize("flags,flag", [
    (["--max-turns", "0"], "--max-turns"), (["--max-turns", "65"], "--max-turns"), (["--max-tool-tokens", "0"], "--max-tool-tokens"),
    (["--num-operands", "1", "3"], "--num-operands"), (["--max-number", "0"], "--max-number"), (["--max-value", "0"], "--max-value"),
    (["--max-turns", "30", "--dynamic-sampling", "--max-generation-rounds", "3"], "--max-turns"),
])
def test_bad_tool_setting_is_one_error_line_naming_the_flag(flags, flag, monkeypatch):
    import sys

    import grpo_calculator
    from common.config import ConfigError, parse_args

    monkeypatch.setattr(sys, "argv", ["grpo_calculator.py", "--preset", "tiny", *flags])
    with pytest.raises(ConfigError) as e:
        grpo_calculator.check_args(parse_args(grpo_calculator.Args, grpo_calculator.PRESETS))
    assert e.value.code.startswith(f"error: {flag}") and "\n" not in e.value.code, e.value.code
