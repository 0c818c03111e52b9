"""benchmarks/gpu_check.py in its CPU mode (no CUDA here): every part it runs passes, the GPU-only ones say skipped.
Left out here: the parts that run the scripts (grpo, ppo; the end-to-end tests run both scripts' tiny presets) and the
untied model's cycles (the same code as the tied one's; tests/test_weight_sync.py checks the untied sync)."""

import json
import re

import pytest

from tests.run_utils import run_script


@pytest.mark.e2e
def test_gpu_check_cpu_mode(tmp_path):
    proc = run_script(["benchmarks/gpu_check.py", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                       "--skip", "grpo", "ppo", "cycles_untied"], nproc=None, timeout=900)
    table = proc.stdout[proc.stdout.index("\npart "):]
    assert not re.search(r"^\S* *FAIL ", table, flags=re.M), table
    assert re.search(r"^cycles_tied \(\d+ s\) +pass ", table, flags=re.M), table
    for part in ("grpo", "ppo", "cycles_untied"):
        assert re.search(rf"^{part} +skip +left out", table, flags=re.M), table
    assert re.search(r"^step3b +skip +needs CUDA", table, flags=re.M) and re.search(r"^multiturn3b +skip +needs CUDA", table, flags=re.M), table
    assert re.search(r"^cycles_2gpu +skip +needs 2 GPUs", table, flags=re.M), table
    for row in ("exact check, a push 1 step stale +caught", "decode path \\(mean \\|gap\\|\\)", "probe after a wipe"):
        assert re.search(row, table), (row, table)
    results = json.loads((tmp_path / "results.json").read_text())
    r = results["cycles_tied"]
    assert not any(r["exact"]) and r["stale_caught"].startswith("error: vLLM's weights are not the trainer's"), r
    assert max(r["probe"]) < 1e-5 and max(r["decode_gap"]) < 1e-5 and r["probe_after_wipe"] < 1e-5, r  # float32
    assert r["probe_wiped"] > 1e-2, "the wipe must be visible to the probe, else it proves nothing"
