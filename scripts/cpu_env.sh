# The environment of every CPU run here (demo, tests, benchmarks), sourced by scripts/demo.sh and scripts/test.sh:
# one thread per process (2 processes on 2 cores), no hub, and tcmalloc preloaded where the machine has it, as
# vLLM's CPU guide recommends: 5-10% faster tiny steps than glibc's malloc (README). TCMALLOC=0 leaves it out.
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ "${TCMALLOC:-1}" != 0 ]; then
  tcmalloc=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null \
             | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}' || true)
  if [ -n "$tcmalloc" ]; then export LD_PRELOAD="$tcmalloc${LD_PRELOAD:+:$LD_PRELOAD}"; fi
fi
