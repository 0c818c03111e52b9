"""benchmarks/gpu_check.py in its CPU mode (no CUDA here): every part it can run passes, the 3B step says skipped."""

import json
import re

import pytest

from tests.run_utils import probe_error_fits_tiny_preset_dtype, run_script


@pytest.mark.e2e
def test_gpu_check_cpu_mode(tmp_path):
    proc = run_script(["benchmarks/gpu_check.py", "--out-dir", str(tmp_path)], nproc=None, timeout=900)
    table = proc.stdout[proc.stdout.index("\npart "):]
    for part in ("cycles_tied", "cycles_untied", "grpo", "ppo"):
        assert re.search(rf"^{part} +yes ", table, flags=re.M), table
    assert re.search(r"^step3b +skip +needs CUDA", table, flags=re.M), table
    results = json.loads((tmp_path / "results.json").read_text())
    for variant in ("cycles_tied", "cycles_untied"):
        r = results[variant]
        assert max(r["probe"]) < 1e-4 and r["probe_after_wipe"] < 1e-4, r  # float32: exact after every sync
        assert r["probe_wiped"] > 1e-2, "the wipe must be visible to the probe, else it proves nothing"
    assert results["grpo"]["steps"] == 2 and probe_error_fits_tiny_preset_dtype(results["grpo"]["probe_max"]), results["grpo"]
