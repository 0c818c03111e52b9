#!/usr/bin/env bash
# Install vLLM 0.26.0 offline from the kit that build_kit.sh made, on an NVIDIA machine (x86_64, Python 3.12, glibc
# >= 2.31) that already has torch 2.11.0+cu130 and transformers: no network, nothing in site-packages is changed.
#   scripts/gpu_kit/install_offline.sh PIECES_DIR [TARGET_DIR]     # e.g. /tmp/kit /tmp/vllm_site (the default)
#   PYTHONPATH=TARGET_DIR python benchmarks/gpu_check.py
# Steps: check the pieces against MANIFEST.sha256, join and unpack them, check every wheel against SHA256SUMS,
# `pip install --no-index --no-deps --target` the wheels the machine does not already have at the same version,
# then import vllm from TARGET_DIR. PYTHON picks the interpreter (default: python).
set -euo pipefail
PIECES=$(cd "${1:?usage: install_offline.sh PIECES_DIR [TARGET_DIR]}" && pwd)
TARGET=${2:-/tmp/vllm_site}
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "[1/5] check $(grep -c . "$PIECES/MANIFEST.sha256") pieces in $PIECES against MANIFEST.sha256"
(cd "$PIECES" && sha256sum --quiet -c MANIFEST.sha256)

echo "[2/5] join and unpack the pieces"
(cd "$PIECES" && cat $(cut -d' ' -f3- MANIFEST.sha256 | sort)) | tar -C "$WORK" -xf -

echo "[3/5] check $(grep -c . "$WORK/SHA256SUMS") wheels against SHA256SUMS"
(cd "$WORK" && sha256sum --quiet -c SHA256SUMS)

# A wheel whose distribution this interpreter already has at the same version is not installed again: the machine's
# copy serves. Any other version on the machine is shadowed by ours, since TARGET_DIR comes first on PYTHONPATH.
mapfile -t TODO < <(cd "$WORK" && "$PY" - *.whl <<'EOF'
import importlib.metadata as md, sys
for wheel in sys.argv[1:]:
    name, version = wheel.split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have == version:
        print(f"  already here: {name} {version}", file=sys.stderr)
    else:
        print(wheel)
EOF
)
mkdir -p "$TARGET"
if [ ${#TODO[@]} -eq 0 ]; then
    echo "[4/5] nothing to install: $PY has every wheel of the kit"
elif "$PY" -m pip --version > /dev/null 2>&1; then
    echo "[4/5] pip install --no-index --no-deps --target $TARGET: ${#TODO[@]} wheels"
    (cd "$WORK" && "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-index \
        --no-deps --upgrade --target "$TARGET" "${TODO[@]}")
else
    # No pip: none of these wheels has a .data folder, so unzipping one is what `pip install --target` does.
    echo "[4/5] no pip for $PY: unzip ${#TODO[@]} wheels into $TARGET"
    for w in "${TODO[@]}"; do "$PY" -m zipfile -e "$WORK/$w" "$TARGET"; done
fi

echo "[5/5] import vllm from $TARGET"
PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
import torch
import vllm
from vllm import LLM, SamplingParams  # noqa: F401  (the names gpu_check.py uses)

gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"  vllm {vllm.__version__} from {vllm.__file__}, torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}")
EOF
echo "done: run  PYTHONPATH=$TARGET $PY benchmarks/gpu_check.py"
