"""The offline vLLM kit for GPU machines (scripts/gpu_kit/): scripts parse, every requirement is pinned. No network."""

import re
import subprocess
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_kit"


@pytest.mark.parametrize("script", ["build_kit.sh", "install_offline.sh"])
def test_kit_script_is_valid_bash(script):
    path = KIT / script
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"{script}: {proc.stderr}"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and lines[1].startswith("# "), f"{script}: shebang, then what it does"
    assert "set -euo pipefail" in lines, f"{script} must run under set -euo pipefail"


def test_requirements_are_pinned_and_explained():
    names = []
    for line in (KIT / "requirements-gpu-kit.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        req, _, why = line.partition("#")
        pinned = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!-]*", req.strip())
        assert pinned, f"not name==version: {line!r}"
        assert why.strip(), f"say why it is needed: {line!r}"
        names.append(re.sub(r"[-_.]+", "-", req.split("==")[0]).lower())
    assert len(names) == len(set(names)), "a package is listed twice"
    # torch, triton and the CUDA libraries are the machine's own; vllm travels as its own repacked wheel.
    shipped_by_machine = {n for n in names if n in {"torch", "triton", "vllm"} or n.startswith("nvidia-")}
    assert not shipped_by_machine, f"must not be in the kit: {shipped_by_machine}"
