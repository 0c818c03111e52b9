"""scripts/cpu_env.sh, the environment that the demo, the tests and the benchmarks share: one thread per process, and
tcmalloc preloaded where `ldconfig` knows it (never its debug build), left out with TCMALLOC=0, before any
LD_PRELOAD already set. A fake `ldconfig` on PATH stands for the machine."""

import subprocess

import pytest

from tests.run_utils import ROOT

LIB = "/opt/lib/libtcmalloc_minimal.so.4"
FOUND = f"\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => {LIB}"
DEBUG_ONLY = "\tlibtcmalloc_minimal_debug.so.4 (libc6,x86-64) => /opt/lib/libtcmalloc_minimal_debug.so.4"


@pytest.mark.parametrize("ldconfig,env,expected", [
    (FOUND, {}, LIB),
    (FOUND, {"TCMALLOC": "0"}, ""),
    (FOUND, {"LD_PRELOAD": "/a/other.so"}, f"{LIB}:/a/other.so"),
    (DEBUG_ONLY, {}, ""),
    ("", {}, ""),
], ids=["found", "turned-off", "kept-existing", "debug-build-only", "absent"])
def test_cpu_env_preloads_tcmalloc_where_found(tmp_path, ldconfig, env, expected):
    fake = tmp_path / "ldconfig"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' '{ldconfig}'\n")
    fake.chmod(0o755)
    script = 'set -euo pipefail; source scripts/cpu_env.sh; echo "${LD_PRELOAD:-}|$OMP_NUM_THREADS"'
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{expected}|1"
