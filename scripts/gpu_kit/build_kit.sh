#!/usr/bin/env bash
# Build the offline vLLM kit for an air-gapped NVIDIA machine that already has torch 2.11.0+cu130 and transformers
# (Python 3.12, x86_64): download vllm 0.26.0 and the wheels of requirements-gpu-kit.txt from PyPI, drop the parts of
# the vllm wheel that Hopper does not use, and cut everything into pieces small enough for one transfer each.
#   scripts/gpu_kit/build_kit.sh [OUT_DIR] [PIECE_MIB]    # defaults: $GPU_KIT_DIR or ~/.cache/r1-clean/gpu_kit, 50
# Writes OUT_DIR/pieces/{kit.tar.part00,...,MANIFEST.sha256}; OUT_DIR/wheels keeps the downloads (a re-run reuses
# them). Install on the target with scripts/gpu_kit/install_offline.sh (see scripts/gpu_kit/README.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-${GPU_KIT_DIR:-$HOME/.cache/r1-clean/gpu_kit}}
# A device call carries at most 64 MiB including the repository's working tree (~9 MiB): 50 MiB pieces leave room.
PIECE_MIB=${2:-50}
PY=${PYTHON:-python3}
VLLM_VERSION=0.26.0
VLLM_WHEEL=vllm-$VLLM_VERSION-cp38-abi3-manylinux_2_28_x86_64.whl
# FA2 kernels (Hopper runs FA3; flash_attn_interface.py imports FA2 inside try/except) and the Rust frontend binary
# (only used with VLLM_RUST_FRONTEND_PATH): 146 MB of the 304 MB wheel.
DROP=("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" "vllm/vllm-rs")
# The target's Python and platform: llguidance 1.7 ships manylinux_2_31 wheels only (glibc >= 2.31 on the target).
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
        --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$OUT/wheels" "$OUT/slim"
echo "[1/4] download vllm $VLLM_VERSION and $(grep -c '^[^#]' "$HERE/requirements-gpu-kit.txt") wheels into $OUT/wheels"
"$PY" -m pip download --quiet --disable-pip-version-check "${TARGET[@]}" -d "$OUT/wheels" \
    "vllm==$VLLM_VERSION" -r "$HERE/requirements-gpu-kit.txt" 2>&1 | { grep -v "is ignored: it is neither" || true; }

echo "[2/4] repack $VLLM_WHEEL without: ${DROP[*]}"
# Delete the entries in place (no recompression) and rewrite RECORD without their lines, so pip accepts the wheel.
SLIM="$OUT/slim/$VLLM_WHEEL"
if [ ! -f "$SLIM" ] || [ "$OUT/wheels/$VLLM_WHEEL" -nt "$SLIM" ]; then
    rm -rf "$OUT/slim" && mkdir -p "$OUT/slim/rec"
    cp "$OUT/wheels/$VLLM_WHEEL" "$SLIM.tmp"
    zip -q -d "$SLIM.tmp" "${DROP[@]}"
    RECORD=vllm-$VLLM_VERSION.dist-info/RECORD
    (cd "$OUT/slim/rec" && unzip -q "$SLIM.tmp" "$RECORD")
    for f in "${DROP[@]}"; do grep -v "^$f," "$OUT/slim/rec/$RECORD" > "$OUT/slim/rec/RECORD.new" || true
        mv "$OUT/slim/rec/RECORD.new" "$OUT/slim/rec/$RECORD"; done
    (cd "$OUT/slim/rec" && zip -q "$SLIM.tmp" "$RECORD")
    rm -rf "$OUT/slim/rec" && mv "$SLIM.tmp" "$SLIM"
fi
"$PY" - "$SLIM" "${DROP[@]}" <<'EOF'
import csv, io, sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
record = zipfile.ZipFile(sys.argv[1]).read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
listed = {row[0] for row in csv.reader(io.StringIO(record)) if row}
assert not set(sys.argv[2:]) & (names | listed), "dropped files still in the wheel or its RECORD"
assert listed == names, f"RECORD and wheel differ: {sorted(listed ^ names)[:5]}"
EOF

echo "[3/4] tar the wheels and cut into $PIECE_MIB MiB pieces"
# Every wheel of the kit, by its pinned name: the repacked vllm plus one file per requirements line.
mapfile -t WHEELS < <("$PY" - "$HERE/requirements-gpu-kit.txt" "$OUT/wheels" <<'EOF'
import re, sys, pathlib, zipfile
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
files = {}
for p in pathlib.Path(sys.argv[2]).glob("*.whl"):
    name, version = p.name.split("-")[:2]
    files.setdefault((norm(name), version), []).append(p.name)
for line in open(sys.argv[1]):
    req = line.split("#")[0].strip()
    if req:
        name, version = req.split("==")
        found = files.get((norm(name), version))
        assert found and len(found) == 1, f"expected one wheel for {req} in {sys.argv[2]}, found {found}"
        # install_offline.sh may unzip wheels when the target has no pip: that is only right without .data/.
        data = [n for n in zipfile.ZipFile(pathlib.Path(sys.argv[2]) / found[0]).namelist() if ".data/" in n]
        assert not data, f"{found[0]} has a .data folder: {data[:3]}"
        print(found[0])
EOF
)
# The tar's contents: hard links, so nothing is copied; rebuilt each run so no stale wheel slips in.
rm -rf "$OUT/stage" && mkdir -p "$OUT/stage"
ln "$SLIM" "$OUT/stage/"
for w in "${WHEELS[@]}"; do ln "$OUT/wheels/$w" "$OUT/stage/"; done
(cd "$OUT/stage" && sha256sum -- *.whl > SHA256SUMS)
PIECES="$OUT/pieces"
rm -rf "$PIECES" && mkdir -p "$PIECES"
# Fixed order and mtimes: the same inputs give the same pieces.
tar -C "$OUT/stage" --sort=name --mtime=2026-01-01 --owner=0 --group=0 -cf - SHA256SUMS "$VLLM_WHEEL" "${WHEELS[@]}" \
    | split -b "${PIECE_MIB}M" -d -a 2 - "$PIECES/kit.tar.part"
(cd "$PIECES" && sha256sum kit.tar.part* > MANIFEST.sha256)

echo "[4/4] kit in $PIECES: $((${#WHEELS[@]} + 1)) wheels, $(ls "$PIECES" | grep -c part) pieces"
(cd "$PIECES" && stat -c '%n %s' -- * | awk '{printf "  %-20s %6.1f MiB\n", $1, $2 / 1048576; t += $2}
    END {printf "  %-20s %6.1f MiB\n", "total", t / 1048576}')
