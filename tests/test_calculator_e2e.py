"""grpo_calculator.py end to end: the real script under torchrun (2 ranks, CPU, real vLLM), the shipped tiny calculator
model. One 4-step run serves most checks: its metrics are finite and documented, vLLM and the trainer agree on the
sampled tokens, ranks whose trajectories took different numbers of turns finish every step together, and a resume
from its step-3 checkpoint redoes step 3 exactly. An evaluation without the tool shows what the tool is worth."""

import json
import math
import re
from pathlib import Path

import pytest

from tests.run_utils import ROOT, run_script
from tests.test_grpo_e2e import console_lines, documented_keys, is_documented

MODEL = ROOT / "tiny_models" / "calculator"
SMALL = ["--preset", "tiny", "--train-size", "512", "--test-size", "64", "--prompts-per-step", "4", "--samples-per-prompt", "4",
         "--mini-batch-size", "16", "--micro-batch-size", "8", "--eval-every", "2", "--top-p", "1.0", "--no-bf16"]
TOOL_KEYS = {"rollout/turns_mean", "rollout/tool_calls_mean", "rollout/cut_by_limit", "rollout/tool_token_frac",
             "rollout/rank_turns_max", "rollout/rank_turns_min"}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calculator")
    proc = run_script(["grpo_calculator.py", *SMALL, "--num-steps", "4", "--save-every", "3", "--out-dir", str(out),
                       "--exp-name", "a"], nproc=2)
    return out / "a", proc.stdout + proc.stderr


@pytest.mark.e2e
def test_calculator_runs_with_finite_documented_metrics(first_run):
    run_dir, output = first_run
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4], "four training steps, then the final evaluation"
    for r in rows[:4]:
        assert TOOL_KEYS <= set(r), TOOL_KEYS - set(r)
        assert all(math.isfinite(v) for v in r.values()), r
        # float32, top-p 1: the trainer scores exactly the tokens vLLM sampled; a tool token in the mask would cost nats
        assert r["train/vllm_logprob_gap"] < 1e-3 and r["train/sync_probe_error"] < 1e-4, r
        assert abs(r["train/is_weight_mean"] - 1) < 1e-2 and r["train/is_masked_frac"] == 0, r
        assert 1 <= r["rollout/turns_mean"] <= 4 and 0 <= r["rollout/tool_calls_mean"] < r["rollout/turns_mean"], r
        assert 0 < r["rollout/tool_token_frac"] < 1 and 0 <= r["rollout/cut_by_limit"] <= 1, r
        assert 0 <= r["reward/accuracy"] <= r["reward/format_rate"] <= 1
    assert {"eval/accuracy", "eval/tool_calls_mean"} <= set(rows[0]) and "eval/accuracy" in rows[4]
    assert "held-out accuracy" in output and (run_dir / "metrics.png").stat().st_size > 1000
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert any("<result>" in s["completion"] for s in samples), "logged trajectories show the tool's outputs"
    undocumented = {k for r in rows for k in r if k != "step" and not is_documented(k, documented_keys())}
    assert not undocumented, f"metrics without a line in the glossary: {undocumented}"


@pytest.mark.e2e
def test_ranks_with_different_numbers_of_turns_stay_in_lockstep(first_run):
    """Each rank runs its own turn loop, with no collective inside: ranks that need different numbers of turns meet
    again at the first collective after the rollout. The run finishing every step is the proof; this checks the
    premise, that in some step one rank's loop ran more turns than the other's."""
    rows = read_metrics(first_run[0])
    spans = [(r["rollout/rank_turns_min"], r["rollout/rank_turns_max"]) for r in rows[:4]]
    assert any(low < high for low, high in spans), f"every step's ranks ran the same turns: {spans}"


@pytest.mark.e2e
def test_calculator_console_is_quiet(first_run):
    _, output = first_run
    ours = re.compile(r"^(GRPO:|step +\d+ \||held-out accuracy )")
    noise = [line for line in console_lines(output) if not ours.match(line)]
    assert not noise, "library messages on the console:\n" + "\n".join(noise[:20])


@pytest.mark.e2e
def test_calculator_resume_continues_exactly(first_run, tmp_path):
    run_dir, _ = first_run
    proc = run_script(["grpo_calculator.py", *SMALL, "--num-steps", "4", "--save-every", "3", "--out-dir", str(tmp_path),
                       "--exp-name", "resumed", "--resume", str(run_dir / "step_000003")], nproc=2)
    assert "resumed from" in proc.stdout + proc.stderr
    rows = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows] == [3, 4], "the resumed run trains step 3 only, then evaluates"
    reference = next(r for r in read_metrics(run_dir) if r["step"] == 3)
    for key in ("reward/mean", "rollout/response_len_mean", "rollout/tokens", "rollout/turns_mean", "rollout/tool_calls_mean",
                "rollout/tool_token_frac", "train/pg_loss", "train/kl", "train/grad_norm"):
        assert (key in rows[0]) == (key in reference), key  # update means are absent when every group was skipped
        assert rows[0].get(key) == pytest.approx(reference.get(key), rel=1e-4, abs=1e-6), key
    assert rows[1]["eval/accuracy"] == reference_final(run_dir), "the same weights after step 3: the same evaluation"


def reference_final(run_dir: Path) -> float:
    return next(r for r in read_metrics(run_dir) if r["step"] == 4)["eval/accuracy"]


@pytest.mark.e2e
def test_the_tool_helps_the_tiny_model(first_run, tmp_path):
    """The shipped model, greedy, on the same 64 held-out problems: with the calculator (the first run's evaluation at
    step 0, before any update) and without it (`--eval-only --no-tool`: every call answers "error: tool disabled")."""
    with_tool = read_metrics(first_run[0])[0]["eval/accuracy"]
    proc = run_script(["grpo_calculator.py", *SMALL, "--eval-only", str(MODEL), "--no-tool", "--out-dir", str(tmp_path),
                       "--exp-name", "off"], nproc=None, timeout=600)
    match = re.search(r"held-out accuracy ([\d.]+)%", proc.stdout + proc.stderr)
    assert match, (proc.stdout + proc.stderr)[-3000:]
    without = float(match.group(1)) / 100
    rows = [json.loads(line) for line in (tmp_path / "off" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and any("error: tool disabled" in r["completion"] for r in rows)
    assert with_tool >= without + 0.15, f"with the tool {with_tool:.1%}, without {without:.1%}"
