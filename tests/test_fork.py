"""The README's "Fork a script for a new task" recipe, done exactly as written: copy `grpo_countdown.py`, replace its
task block (data, prompt, reward) with a new task, and train it 2 steps with the shipped tiny model under torchrun."""

import json
import re

import pytest

from tests.run_utils import ROOT, run_script
from tests.test_grpo_e2e import SMALL

TASK_BANNER = "# Task: data, prompt, reward"
NEXT_BANNER = "# Algorithm: advantages and loss"

# The new task: write the sum of two numbers. Its own data, prompt, grader and reasons, nothing else.
SUM_TASK = '''# Task: data, prompt, reward -- here: write the sum of two numbers
# ---------------------------------------------------------------------------------------------------------------
import re

STOP = ["\\n"]
REASONS = ("correct", "no_answer", "wrong_value")


def load_problems(args: Args) -> tuple[list[dict], list[dict]]:
    """(train, test) lists of {"a": int, "b": int}; the held-out pairs come from their own seed."""
    draw = lambda rng: {"a": rng.randint(1, 20), "b": rng.randint(1, 20)}
    train_rng, test_rng = random.Random(args.seed), random.Random(1_000 + args.seed)
    return [draw(train_rng) for _ in range(args.train_size)], [draw(test_rng) for _ in range(args.test_size)]


def make_prompt(problem: dict, tokenizer, template: str) -> str:
    return f"What is {problem['a']} + {problem['b']}? Answer:"


def grade(text: str, problem: dict) -> tuple[float, str]:
    """1.0 when the first number written is a + b."""
    number = re.search(r"-?\\d+", text)
    if number is None:
        return 0.0, "no_answer"
    return (1.0, "correct") if int(number.group()) == problem["a"] + problem["b"] else (0.0, "wrong_value")


'''


def fork(source: str) -> str:
    """Replace everything from the task banner's line to the line before the next section's banner."""
    lines = source.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(TASK_BANNER))
    end = next(i for i, line in enumerate(lines) if line.startswith(NEXT_BANNER)) - 1  # keep that banner's rule line
    assert start < end, "the task block comes before the shared sections"
    return "".join(lines[:start]) + SUM_TASK + "".join(lines[end:])


def test_readme_recipe_names_what_the_test_replaces():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Fork a script for a new task"):]
    for name in ("load_problems", "make_prompt", "grade", "REASONS", "STOP", "no_answer", TASK_BANNER.lstrip("# ")):
        assert name in section, f"the README's fork recipe does not mention {name!r}"


@pytest.mark.e2e
def test_fork_for_a_new_task_trains(tmp_path):
    script = tmp_path / "sum_task.py"
    script.write_text(fork((ROOT / "grpo_countdown.py").read_text()))
    assert "countdown" not in script.read_text().split("# Task:")[1].split(NEXT_BANNER)[0].lower()
    out = tmp_path / "runs"
    # run from the repository root, as a fork inside a clone would: `common/`, `rewards/` and `tiny_models/` resolve
    proc = run_script([str(script), *SMALL, "--num-steps", "2", "--out-dir", str(out), "--exp-name", "sum"], nproc=2,
                      timeout=600, extra_env={"PYTHONPATH": str(ROOT)})
    rows = [json.loads(line) for line in (out / "sum" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"reward/mean", "reward/reason_wrong_value", "reward/reason_no_answer", "eval/accuracy"} <= set(rows[0])
    assert not any(k.startswith("reward/reason_bad_syntax") for k in rows[0]), "the fork's REASONS, not Countdown's"
    samples = [json.loads(line) for line in (out / "sum" / "samples.jsonl").read_text().splitlines()]
    assert set(json.loads(samples[0]["problem"])) == {"a", "b"}
    assert re.search(r"held-out accuracy", proc.stdout + proc.stderr)
