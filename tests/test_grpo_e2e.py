"""grpo_countdown.py end to end: the real script under torchrun (2 ranks, CPU, real vLLM), the shipped tiny model."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.run_utils import ROOT, probe_error_fits_tiny_preset_dtype, run_script

MODEL = ROOT / "tiny_models" / "countdown"
SMALL = ["--preset", "tiny", "--train-size", "512", "--test-size", "16", "--prompts-per-step", "8", "--samples-per-prompt", "4",
         "--mini-batch-size", "16", "--micro-batch-size", "4", "--eval-every", "2", "--top-p", "1.0", "--save-every", "0"]
FLOAT32 = ["--no-bf16"]  # the tiny preset is bf16 on an AMX CPU; in float32 vLLM == trainer exactly
# the first run and the resume check sample with DAPO's dynamic sampling: extra rounds and a saved data position
DYNAMIC = ["--dynamic-sampling", "--max-generation-rounds", "3"]
EXPECTED_KEYS = {
    "reward/mean", "reward/accuracy", "reward/format_rate", "reward/solved_prompt_frac", "reward/reason_no_answer",
    "reward/reason_wrong_value", "reward/reason_correct", "rollout/response_len_mean", "rollout/response_len_max",
    "rollout/truncated", "rollout/tokens", "train/pg_loss", "train/kl", "train/entropy", "train/clip_frac",
    "train/grad_norm", "train/lr", "train/vllm_logprob_gap", "train/sync_probe_error", "time/probe_s", "train/advantage_abs", "time/sync_s", "time/generate_s",
    "train/mismatch_kl", "train/is_weight_mean", "train/is_truncated_frac", "train/is_masked_frac", "train/zero_signal_frac",
    "time/grade_s", "time/logprob_s", "time/train_s", "time/step_s", "perf/generate_tokens_per_s", "perf/peak_mem_gb",
}
UPDATE_KEYS = {"train/pg_loss", "train/kl", "train/entropy", "train/clip_frac"}  # means over the samples the update ran on
EVAL_KEYS = {"eval/accuracy", "eval/pass_at_k", "eval/format_rate", "eval/response_len", "time/eval_s"}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def documented_keys() -> set[str]:
    """The keys of the metrics glossary, docs/metrics.md: its `| key | definition |` table."""
    glossary = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+/[a-z_<>]+)` \|", glossary, flags=re.M))


def is_documented(key: str, documented: set[str]) -> bool:
    return key in documented or any(re.fullmatch(re.escape(d).replace("<r>", "[a-z_]+").replace("<phase>", "[a-z]+"), key)
                                    for d in documented)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """4 steps, a checkpoint after 3 (step_000003): the resume test's uninterrupted reference."""
    out = tmp_path_factory.mktemp("grpo")
    proc = run_script(["grpo_countdown.py", *SMALL, *FLOAT32, *DYNAMIC, "--num-steps", "4", "--save-every", "3",
                       "--out-dir", str(out), "--exp-name", "a"], nproc=2)
    return out / "a", proc.stdout + proc.stderr


@pytest.mark.e2e
def test_grpo_runs_logs_and_learns_something(first_run):
    run_dir, output = first_run
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4], "four training steps, then the final evaluation"
    for r in rows[:4]:
        # a step where every prompt's samples got equal rewards skips the whole update: no update means to log
        expected = EXPECTED_KEYS - UPDATE_KEYS if r["train/zero_signal_frac"] == 1 else EXPECTED_KEYS
        assert expected <= set(r), f"missing: {expected - set(r)}"
        assert all(math.isfinite(v) for v in r.values()), r
        # vLLM and the trainer agree on the sampled tokens' log-probs (float32, top-p 1, weights synced each step)
        assert r["train/vllm_logprob_gap"] < 1e-3, r["train/vllm_logprob_gap"]
        assert r["train/sync_probe_error"] < 1e-4, r["train/sync_probe_error"]  # exact in float32
        # ... so the importance weights against vLLM are ~1 and no response is masked (default: sequence_mask, C = 3)
        assert abs(r["train/is_weight_mean"] - 1) < 1e-2 and r["train/is_masked_frac"] == 0 and r["train/mismatch_kl"] < 1e-4, r
        assert 0 <= r["reward/accuracy"] <= r["reward/format_rate"] <= 1
        assert r["rollout/tokens"] > 0 and r["time/generate_s"] > 0
    assert EVAL_KEYS <= set(rows[0]) and EVAL_KEYS <= set(rows[2]) and "eval/accuracy" in rows[4]
    assert any(r["train/advantage_abs"] > 0 for r in rows[:4]), "some group had different rewards"
    # dynamic sampling: ranks agreed on the rounds; a step that stopped early had its share of groups with signal
    for r in rows[:4]:
        rounds = r["rollout/generation_rounds"]
        assert rounds in (1, 2, 3) and r["rollout/prompts_drawn"] == rounds * 8 and r["rollout/groups_kept"] <= 8, r
        assert rounds == 3 or r["rollout/groups_kept"] == 8, r
    assert any(r["rollout/generation_rounds"] > 1 for r in rows[:4]), "the tiny model leaves some groups without signal"
    saved = torch.load(run_dir / "step_000003" / "trainer_state.pt", weights_only=False)["state"]  # mid-run
    assert saved["data_position"] == sum(r["rollout/prompts_drawn"] for r in rows[:3]), saved
    assert (run_dir / "step_000004" / "trainer_state.pt").is_file(), "and the final checkpoint"
    assert "held-out accuracy" in output and (run_dir / "metrics.png").stat().st_size > 1000
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"problem", "completion", "reward", "reason"} <= set(samples[0])
    undocumented = {k for r in rows for k in r if k != "step" and not is_documented(k, documented_keys())}
    assert not undocumented, f"metrics without a line in the README's glossary: {undocumented}"


@pytest.mark.e2e
def test_grpo_demo_preset_runs_as_the_readme_launches_it(tmp_path):
    """The tiny preset untouched but for its length: 2 processes, bf16 where the CPU has AMX, 2 optimizer steps per
    rollout of 512 samples (one 128-sample micro-batch per rank and optimizer step), the whole held-out set."""
    run_script(["grpo_countdown.py", "--preset", "tiny", "--num-steps", "1", "--out-dir", str(tmp_path), "--exp-name", "d"],
               nproc=2)
    rows = read_metrics(tmp_path / "d")
    assert [r["step"] for r in rows] == [0, 1]
    assert all(math.isfinite(v) for r in rows for v in r.values()), rows
    # warm-up is linear over 10 optimizer steps: after the first rollout's 2 it is at 3/10 of 2e-4 (8 steps: 9/10)
    assert rows[0]["train/lr"] == pytest.approx(2e-4 * 3 / 10), rows[0]["train/lr"]
    assert 0.10 <= rows[0]["eval/accuracy"] <= 0.13, rows[0]["eval/accuracy"]  # README: 11.0% in bf16, 12.0% in float32
    assert probe_error_fits_tiny_preset_dtype(rows[0]["train/sync_probe_error"]), rows[0]["train/sync_probe_error"]


@pytest.mark.e2e
@pytest.mark.parametrize("flags", [
    ["--is-correction", "token_tis", "--clip-ratio-high", "0.28", "--ratio-level", "sequence", "--dual-clip", "3",
     "--train-token-budget", "300"],
    ["--is-correction", "none", "--no-skip-zero-signal-groups", "--kl-coef", "0.01", "--advantage", "dr_grpo",
     "--overlong-buffer", "30", "--mask-truncated", "--max-response-tokens", "40"],
], ids=["token_tis-clip_higher-gspo-dual_clip-token_budget", "none-no_skip-kl-overlong"])
def test_grpo_loss_options_run_in_the_presets_dtype_with_finite_documented_metrics(flags, tmp_path):
    """The tiny preset's dtype, as the demo runs it: bf16 trainer and vLLM where the CPU has AMX (common.model.use_bf16)."""
    proc = run_script(["grpo_countdown.py", *SMALL, "--num-steps", "2", "--eval-every", "8", "--out-dir", str(tmp_path),
                       "--exp-name", "m", *flags], nproc=2)
    assert "WARNING" not in proc.stdout + proc.stderr
    rows = read_metrics(tmp_path / "m")
    for r in rows[:2]:
        assert EXPECTED_KEYS - UPDATE_KEYS <= set(r), EXPECTED_KEYS - set(r)
        assert all(math.isfinite(v) for v in r.values()), r
        assert abs(r["train/is_weight_mean"] - 1) < 1e-2 and r["train/is_truncated_frac"] == 0, r
        assert probe_error_fits_tiny_preset_dtype(r["train/sync_probe_error"]), r
    undocumented = {k for r in rows for k in r if k != "step" and not is_documented(k, documented_keys())}
    assert not undocumented, f"metrics without a line in the README's glossary: {undocumented}"


@pytest.mark.e2e
def test_grpo_checkpoint_loads_and_weights_changed(first_run):
    run_dir, _ = first_run
    ckpt = run_dir / "step_000003"
    assert (ckpt / "trainer_state.pt").is_file() and not list(run_dir.glob("*.tmp"))
    trained = dict(AutoModelForCausalLM.from_pretrained(ckpt / "policy").named_parameters())
    initial = load_file(MODEL / "model.safetensors")
    changed = [n for n, p in trained.items() if n in initial and not torch.equal(p.detach(), initial[n].float())]
    assert len(changed) > len(trained) // 2, f"only {len(changed)} of {len(trained)} tensors changed"


@pytest.mark.e2e
def test_grpo_resume_continues_exactly(first_run, tmp_path):
    run_dir, _ = first_run
    resumed = tmp_path / "resumed"
    proc = run_script(["grpo_countdown.py", *SMALL, *FLOAT32, *DYNAMIC, "--num-steps", "4", "--out-dir", str(tmp_path),
                       "--exp-name", "resumed", "--resume", str(run_dir / "step_000003")], nproc=2)
    assert "resumed from" in proc.stdout + proc.stderr
    rows = read_metrics(resumed)
    assert [r["step"] for r in rows] == [3, 4], "the resumed run trains step 3 only, then evaluates"
    # the uninterrupted 4-step run: its step 3 must be the resumed run's step 3 (same weights, data position, seeds)
    reference = next(r for r in read_metrics(run_dir) if r["step"] == 3)
    for key in ("reward/mean", "rollout/response_len_mean", "rollout/tokens", "train/pg_loss", "train/kl",
                "rollout/prompts_drawn", "rollout/groups_kept"):
        assert (key in rows[0]) == (key in reference), key  # update means are absent when every group was skipped
        assert rows[0].get(key) == pytest.approx(reference.get(key), rel=1e-4, abs=1e-6), key


@pytest.mark.e2e
@pytest.mark.parametrize("flags,message", [
    (["--model", "/nonexistent/model"], "cannot load --model '/nonexistent/model'"),
    (["--max-prompt-tokens", "10"], 'has 17 tokens > --max-prompt-tokens 10: raise it'),
    (["--prompts-per-step", "3"], "--prompts-per-step over ranks"),
    (["--mini-batch-size", "12"], "by --mini-batch-size"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_grpo_startup_errors_are_one_clear_line(flags, message, tmp_path):
    proc = run_script(["grpo_countdown.py", *SMALL, "--out-dir", str(tmp_path), *flags], nproc=2, check=False, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "error: " in output and message in output, output[-3000:]
    assert not (tmp_path / "grpo_countdown" / "metrics.jsonl").exists(), "failed before any training"


@pytest.mark.e2e
def test_grpo_dataset_without_named_fields(tmp_path):
    data = tmp_path / "countdown_data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"numbers": [1, 2, 3], "goal": 6}) + "\n" for _ in range(40)))
    proc = run_script(["grpo_countdown.py", *SMALL, "--no-synthetic", "--dataset", str(data), "--train-size", "30",
                       "--test-size", "5", "--out-dir", str(tmp_path)], nproc=None, check=False, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--numbers-field" in output and "error: " in output, output[-3000:]


def console_lines(output: str) -> list[str]:
    """The console as a person sees it: progress-bar redraws (\\r) and lines, without blanks."""
    return [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip()]


@pytest.mark.e2e
def test_grpo_console_is_quiet(first_run):
    _, output = first_run
    ours = re.compile(r"^(GRPO:|step +\d+ \||held-out accuracy )")  # the progress bar, the per-step line, the summary
    noise = [line for line in console_lines(output) if not ours.match(line)]
    assert not noise, "library messages on the console:\n" + "\n".join(noise[:20])
    assert "WARNING" not in output and "Warning" not in output


@pytest.mark.e2e
def test_grpo_real_error_still_shows(tmp_path):
    # a KV cache too small for one sequence: vLLM's own error (raised inside the quieted engine start-up) must surface
    proc = run_script(["grpo_countdown.py", *SMALL, "--num-steps", "1", "--out-dir", str(tmp_path),
                       "--vllm-cpu-kv-cache-gb", "0.000001"], nproc=None, check=False, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" in output and "No available memory for the cache blocks" in output, output[-3000:]


@pytest.mark.e2e
def test_grpo_eval_only_of_a_checkpoint_under_torchrun(first_run, tmp_path):
    run_dir, _ = first_run
    proc = run_script(["grpo_countdown.py", *SMALL, "--eval-only", str(run_dir / "step_000003"), "--eval-samples-per-prompt", "3",
                       "--eval-temperature", "1.0", "--out-dir", str(tmp_path), "--exp-name", "ev"], nproc=2, timeout=600)
    output = proc.stdout + proc.stderr
    assert re.search(r"step_000003/policy: held-out accuracy [\d.]+% \| pass@3 [\d.]+% \| format rate [\d.]+% "
                     r"\(16 problems x 3 samples\)", output), output[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ev" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16 * 3, "every held-out problem of both ranks, k samples each"
    assert {"problem", "completion", "reward", "reason"} <= set(rows[0])
    assert len({r["problem"] for r in rows}) == 16
    assert not (tmp_path / "ev" / "metrics.jsonl").exists(), "evaluation does not train"
