"""ppo_gsm8k.py end to end: the real script under torchrun (2 ranks, CPU, real vLLM), the shipped tiny model."""

import math
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from tests.run_utils import ROOT, probe_error_fits_tiny_preset_dtype, run_script
from tests.test_grpo_e2e import console_lines, documented_keys, is_documented, read_metrics

MODEL = ROOT / "tiny_models" / "gsm8k"
SMALL = ["--preset", "tiny", "--train-size", "256", "--test-size", "16", "--prompts-per-step", "8", "--samples-per-prompt", "4",
         "--mini-batch-size", "16", "--micro-batch-size", "4", "--eval-every", "2", "--eval-samples-per-prompt", "2",
         "--eval-temperature", "1.0", "--top-p", "1.0", "--save-every", "0", "--critic-warmup-steps", "1"]
EXPECTED_KEYS = {
    "reward/mean", "reward/accuracy", "reward/format_rate", "rollout/response_len_mean", "train/pg_loss", "train/kl",
    "train/entropy", "train/clip_frac", "train/grad_norm", "train/critic_grad_norm", "train/value_loss",
    "train/value_clip_frac", "train/explained_variance", "train/value_mean", "train/return_mean", "train/advantage_mean",
    "train/advantage_std", "train/lr", "train/critic_lr", "train/vllm_logprob_gap", "train/sync_probe_error", "time/train_s", "perf/peak_mem_gb",
    "train/mismatch_kl", "train/is_weight_mean", "train/is_truncated_frac", "train/is_masked_frac",
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")  # float32 (the tiny preset is bf16 on an AMX CPU): vLLM == trainer exactly
    proc = run_script(["ppo_gsm8k.py", *SMALL, "--no-bf16", "--num-steps", "3", "--out-dir", str(out), "--exp-name", "a"], nproc=2)
    (out / "console.txt").write_text(proc.stdout + proc.stderr)
    return out / "a"


@pytest.mark.e2e
def test_ppo_runs_and_logs(first_run):
    rows = read_metrics(first_run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows[:3]:
        assert EXPECTED_KEYS <= set(r), f"missing: {EXPECTED_KEYS - set(r)}"
        assert all(math.isfinite(v) for v in r.values()), r
        assert r["train/vllm_logprob_gap"] < 1e-3
        assert abs(r["train/is_weight_mean"] - 1) < 1e-2 and r["train/is_masked_frac"] == 0 and r["train/mismatch_kl"] < 1e-4, r
        assert r["train/value_loss"] > 0 and r["train/critic_grad_norm"] > 0
    assert {"eval/accuracy", "eval/pass_at_k"} <= set(rows[0]) and rows[0]["eval/pass_at_k"] >= rows[0]["eval/accuracy"]
    undocumented = {k for r in rows for k in r if k != "step" and not is_documented(k, documented_keys())}
    assert not undocumented, f"metrics without a line in the README's glossary: {undocumented}"


@pytest.mark.e2e
def test_ppo_token_tis_clip_higher_gspo_run_in_the_presets_dtype(tmp_path):
    """The tiny preset as the demo runs it: bf16 trainer and vLLM where the CPU has AMX (common.model.use_bf16)."""
    proc = run_script(["ppo_gsm8k.py", *SMALL, "--num-steps", "2", "--eval-every", "8", "--out-dir", str(tmp_path), "--exp-name", "m",
                       "--is-correction", "token_tis", "--clip-ratio-high", "0.28", "--ratio-level", "sequence"], nproc=2)
    assert "WARNING" not in proc.stdout + proc.stderr
    rows = read_metrics(tmp_path / "m")
    for r in rows[:2]:
        assert EXPECTED_KEYS <= set(r) and all(math.isfinite(v) for v in r.values()), r
        assert abs(r["train/is_weight_mean"] - 1) < 1e-2 and r["train/is_truncated_frac"] == 0, r
        assert probe_error_fits_tiny_preset_dtype(r["train/sync_probe_error"]), r
    undocumented = {k for r in rows for k in r if k != "step" and not is_documented(k, documented_keys())}
    assert not undocumented, f"metrics without a line in the README's glossary: {undocumented}"


@pytest.mark.e2e
def test_ppo_console_is_quiet(first_run):
    output = (first_run.parent / "console.txt").read_text()
    ours = re.compile(r"^(PPO:|step +\d+ \||held-out accuracy )")  # the progress bar, the per-step line, the summary
    noise = [line for line in console_lines(output) if not ours.match(line)]
    assert not noise and "WARNING" not in output, "library messages on the console:\n" + "\n".join(noise[:20])


@pytest.mark.e2e
def test_ppo_checkpoint_has_both_models_and_both_changed(first_run):
    ckpt = first_run / "step_000003"
    initial = load_file(MODEL / "model.safetensors")
    policy = dict(AutoModelForCausalLM.from_pretrained(ckpt / "policy").named_parameters())
    critic_model = AutoModelForTokenClassification.from_pretrained(ckpt / "critic")
    critic = dict(critic_model.named_parameters())
    assert critic_model.config.num_labels == 1 and "score.weight" in critic
    changed = lambda params: sum(not torch.equal(p.detach(), initial[n].float()) for n, p in params.items() if n in initial)
    assert changed(policy) > len(policy) // 2, "the policy was trained"
    assert changed(critic) > len(critic) // 2, "the critic's backbone was trained"


@pytest.mark.e2e
def test_ppo_resume_continues(first_run, tmp_path):
    proc = run_script(["ppo_gsm8k.py", *SMALL, "--num-steps", "4", "--out-dir", str(tmp_path), "--exp-name", "resumed",
                       "--resume", str(first_run / "step_000003")], nproc=2)
    assert "resumed from" in proc.stdout + proc.stderr
    rows = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows] == [3, 4]
    assert (tmp_path / "resumed" / "step_000004" / "critic" / "config.json").is_file()


@pytest.mark.e2e
def test_ppo_eval_only_of_a_model_directory(tmp_path):
    proc = run_script(["ppo_gsm8k.py", *SMALL, "--eval-only", str(MODEL), "--out-dir", str(tmp_path), "--exp-name", "ev"],
                      nproc=None, timeout=600)
    assert "pass@2" in proc.stdout + proc.stderr
    assert len((tmp_path / "ev" / "eval_samples.jsonl").read_text().splitlines()) == 16 * 2
