"""Run a script as a subprocess (under torchrun or plain python) the way a user would, and check it exited cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def run_script(args: list[str], *, nproc: int | None = 2, timeout: int = 900, check: bool = True,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """nproc=None runs `python script ...`; otherwise `torchrun --standalone --nproc_per_node nproc script ...`."""
    launcher = [sys.executable] if nproc is None else [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",  # the scripts quiet vLLM themselves (common.console)
           **(extra_env or {})}
    proc = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"exit code {proc.returncode}\n{output[-6000:]}"
        assert "Traceback" not in output, f"traceback in the output:\n{output[-6000:]}"
    return proc


def probe_error_fits_tiny_preset_dtype(error: float) -> bool:
    """The tiny presets ask for bf16, which a CPU runs only with AMX (common.model.use_bf16): then vLLM and the trainer
    round alike but run other kernels, so the sync probe's mean gap lies in (1e-4, PROBE_BOUND["bfloat16"]) (and the
    1e-4 floor shows bf16 really ran); in float32 they agree to < 1e-5."""
    import torch

    from common.model import use_bf16
    from common.vllm_engine import PROBE_BOUND
    return 1e-4 < error <= PROBE_BOUND["bfloat16"] if use_bf16(True, torch.device("cpu")) else error < 1e-5
