"""Every bad setting ends the run with one `error:` line naming its flag, before any model loads; `--help` is fast.

The whole table runs in-process against each script's `check_args` (a `ConfigError` is a `SystemExit` whose code is the
message: Python prints it to stderr and exits with status 1, no traceback). The cases reported in issue 14 also run
as real subprocesses, which shows the exit status, the single line, and that nothing heavy was imported first.
"""

import os
import subprocess
import sys
import time

import pytest

import grpo_countdown
import ppo_gsm8k
from common.config import ConfigError, parse_args
from tests.run_utils import ROOT

# (script, flags, flag named in the error). Extend the table when a field gets a range.
BAD = [
    *[(script, flags, flags[0]) for script in ("grpo", "ppo") for flags in [
        ["--temperature", "0"], ["--temperature", "-1"], ["--max-response-tokens", "0"], ["--max-prompt-tokens", "0"],
        ["--prompts-per-step", "0"], ["--samples-per-prompt", "0"], ["--mini-batch-size", "-8"],
        ["--micro-batch-size", "0"], ["--epochs-per-rollout", "0"], ["--learning-rate", "0"], ["--max-grad-norm", "0"],
        ["--clip-ratio", "0"], ["--logprob-token-budget", "0"], ["--eval-every", "0"], ["--eval-samples-per-prompt", "0"],
        ["--vllm-tensor-parallel-size", "0"], ["--vllm-cpu-kv-cache-gb", "0"], ["--seed", "-1"], ["--warmup-steps", "-1"],
        ["--weight-decay", "-0.1"], ["--kl-coef", "-1"], ["--eval-temperature", "-0.5"], ["--eval-samples-logged", "-1"],
        ["--save-every", "-5"], ["--top-p", "0"], ["--top-p", "1.5"], ["--eval-top-p", "2"],
        ["--vllm-gpu-memory-utilization", "0"], ["--resume", "/nonexistent"], ["--resume", "tiny_models"],
        ["--eval-only", "/nonexistent"], ["--eval-only", "rewards"], ["--is-cap", "0"], ["--is-mask-lower", "-1"], ["--is-mask-lower", "5"],
        ["--clip-ratio-high", "-0.1"], ["--max-nonfinite-skips", "-1"], ["--sync-probe-sequences", "-1"],
        ["--sync-probe-bound", "0"], ["--dual-clip", "1"], ["--dual-clip", "0.5"], ["--overlong-buffer", "-1"],
        ["--overlong-buffer", "5000"], ["--overlong-penalty", "-1"], ["--train-token-budget", "0"]]],
    ("grpo", ["--max-generation-rounds", "0"], "--max-generation-rounds"),
    ("grpo", ["--num-steps", "-1"], "--num-steps"), ("grpo", ["--num-steps", "0"], "--num-steps"),
    ("grpo", ["--samples-per-prompt", "1"], "--samples-per-prompt"), ("grpo", ["--train-size", "0"], "--train-size"),
    ("grpo", ["--test-size", "0"], "--test-size"), ("grpo", ["--synthetic-max-number", "0"], "--synthetic-max-number"),
    ("grpo", ["--synthetic-num-numbers", "1", "3"], "--synthetic-num-numbers"),
    ("ppo", ["--num-steps", "-1"], "--num-steps"), ("ppo", ["--data-passes", "0"], "--data-passes"),
    ("ppo", ["--train-size", "-1"], "--train-size"), ("ppo", ["--critic-learning-rate", "0"], "--critic-learning-rate"),
    ("ppo", ["--critic-warmup-steps", "-1"], "--critic-warmup-steps"), ("ppo", ["--value-clip", "0"], "--value-clip"),
    ("ppo", ["--kl-penalty-coef", "-1"], "--kl-penalty-coef"), ("ppo", ["--gamma", "1.5"], "--gamma"),
    ("ppo", ["--gae-lambda", "-0.1"], "--gae-lambda"),
    ("grpo", ["--eval-only", "tiny_models/countdown", "--resume", "auto"], "--eval-only"),
]
MODULES = {"grpo": grpo_countdown, "ppo": ppo_gsm8k}
SCRIPTS = {"grpo": "grpo_countdown.py", "ppo": "ppo_gsm8k.py"}


def check(script: str, flags: list[str], monkeypatch) -> None:
    module = MODULES[script]
    monkeypatch.setattr(sys, "argv", [SCRIPTS[script], "--preset", "tiny", *flags])
    module.check_args(parse_args(module.Args, module.PRESETS))


@pytest.mark.parametrize("script,flags,flag", BAD, ids=[f"{s}:{' '.join(f)}" for s, f, _ in BAD])
def test_bad_setting_is_one_error_line_naming_the_flag(script, flags, flag, monkeypatch):
    with pytest.raises(ConfigError) as e:
        check(script, flags, monkeypatch)
    message = e.value.code
    assert isinstance(message, str) and message.startswith(f"error: {flag}") and "\n" not in message, message


@pytest.mark.parametrize("script,flags", [
    ("grpo", []), ("ppo", []), ("grpo", ["--resume", "auto"]), ("ppo", ["--num-steps", "0"]),  # PPO: 0 = data passes
    ("grpo", ["--eval-only", "tiny_models/countdown"]), ("ppo", ["--eval-only", "tiny_models/gsm8k"]),
    ("grpo", ["--eval-temperature", "0", "--kl-coef", "0", "--save-every", "0", "--samples-per-prompt", "2"]),
])
def test_good_settings_pass(script, flags, monkeypatch):
    check(script, flags, monkeypatch)


@pytest.mark.parametrize("script,flags", [  # the cases of issue 14, as a user types them
    ("grpo_countdown.py", ["--temperature", "0"]), ("grpo_countdown.py", ["--max-response-tokens", "0"]),
    ("grpo_countdown.py", ["--resume", "/nonexistent"]), ("grpo_countdown.py", ["--samples-per-prompt", "1"]),
    ("grpo_countdown.py", ["--num-steps", "-1"]), ("ppo_gsm8k.py", ["--eval-samples-per-prompt", "0"]),
])
def test_bad_setting_exits_1_with_one_line_before_heavy_imports(script, flags):
    # -X importtime lists every imported module on stderr: torch (~2 s), vLLM and transformers must not be among them
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--preset", "tiny", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    rest = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert rest == [rest[0]] and rest[0].startswith(f"error: {flags[0]} "), rest
    assert not {"torch", "vllm", "transformers"} & set(imported), "checked after a heavy import"


@pytest.mark.parametrize("script,flags,message", [
    ("grpo_countdown.py", ["--prompts-per-step", "3"], "error: --prompts-per-step over ranks"),
    ("ppo_gsm8k.py", ["--mini-batch-size", "1"], "error: --mini-batch-size over ranks"),
])
def test_batch_that_does_not_divide_over_torchruns_ranks_fails_before_heavy_imports(script, flags, message):
    # torchrun sets WORLD_SIZE in each worker's environment before Python starts: the check needs nothing else
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--preset", "tiny", *flags], cwd=ROOT,
                          env={**os.environ, "WORLD_SIZE": "2"}, capture_output=True, text=True, timeout=120)
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    rest = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 1 and rest == [rest[0]] and rest[0].startswith(message), rest
    assert not {"torch", "vllm", "transformers"} & set(imported), "checked after a heavy import"


@pytest.mark.parametrize("script", ["grpo_countdown.py", "ppo_gsm8k.py"])
def test_help_is_fast_and_imports_nothing_heavy(script):
    # the scripts parse their settings before `import torch` (~2 s of the old 2-3 s --help), so torch must not appear
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert proc.returncode == 0 and "--eval-only" in proc.stdout and "--verbose" in proc.stdout
    assert not {"torch", "vllm", "transformers"} & imported, "--help imported a heavy module"
    assert seconds < 20, f"--help took {seconds:.1f} s"  # ~0.5 s on an idle 2-core machine; generous for a busy one
