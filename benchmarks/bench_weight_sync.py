"""Benchmark pushing FSDP2-sharded trainer weights into the colocated vLLM engine: seconds and bytes per sync.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_weight_sync.py
      (builds a random ~50M-parameter Qwen2 in a temporary directory, then re-launches itself once per vLLM dtype
       as `torchrun --standalone --nproc_per_node 2 benchmarks/bench_weight_sync.py --model-dir DIR --vllm-dtype D`)

Two vLLM dtypes, each in its own torchrun launch:
  float32    the CPU path: the trainer's float32 shards are gathered as they are
  bfloat16   the GPU path (vLLM's default dtype there), run here on CPU to compare: each shard is cast to bf16
             before its all-gather (`ColocatedVLLM.sync_dtype`), so the collectives move half the bytes
             (labelled "bf16 on CPU": gloo on one machine, not NCCL between GPUs)
"gathered" is what each sync's all-gathers produce on every rank (the full tensors); each rank receives
(world - 1) / world of it from the others.

The model is shaped like a small Qwen2.5: head_dim 64 (vLLM's CPU attention rejects 16), grouped-query attention
(8 query heads, 2 KV heads), tied input/output embeddings (as in Qwen2.5-0.5B/1.5B/3B). Tied embeddings mean
the shared matrix is gathered once but handed to vLLM twice (as embed_tokens and lm_head, see
`ColocatedVLLM.sync_weights`). The tokenizer is the character tokenizer of tests/tiny_lm.py: vLLM needs one,
and the config's vocabulary may be larger than it.

Each rank loads the model with `common.model.load_policy` (FSDP2, float32) and builds its own `ColocatedVLLM`.
Measured, each once for warm-up and then `repeats` times (best and median; the duration of one call is the
maximum over ranks, every call starts after a barrier):
  sync          engine.sync_weights(policy, hf_named_parameters(policy)): gather + vLLM reload, interleaved
  gather only   `full_tensor()` of every parameter (of its bf16 cast in bfloat16), in order, dropped: the collectives alone
  reload only   engine.sync_weights fed the already gathered full tensors: vLLM's reload_weights alone
  check         engine.check_weights(policy, ...): the exact checksums of the trainer's shards and of vLLM's weights
                (on CPU read back through each linear layer's own matrix product), compared; run after every sync
2 CPU cores shared with other work: timings are noisy, read the best column first.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from common.dist import init_distributed, print0, seed_everything, shutdown_distributed  # noqa: E402


@dataclass
class Args:
    hidden: int = 512
    """hidden size"""
    layers: int = 11
    """decoder layers (11 gives ~50M parameters at the other defaults)"""
    heads: int = 8
    """query heads (head_dim = hidden / heads = 64)"""
    kv_heads: int = 2
    """key/value heads"""
    intermediate: int = 1536
    """MLP intermediate size"""
    vocab: int = 32_768
    """config vocabulary size (rows of the tied embedding)"""
    repeats: int = 5
    """timed calls per measurement after one warm-up call"""
    nproc: int = 2
    """ranks to launch under torchrun"""
    max_model_len: int = 256
    """vLLM max_model_len"""
    kv_cache_mib: int = 64
    """vLLM KV cache on CPU, MiB"""
    seed: int = 0
    vllm_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    """vLLM dtypes to benchmark, one torchrun launch each"""
    vllm_dtype: str = ""
    """internal: the vLLM dtype of this launch"""
    model_dir: str = ""
    """internal: the model to load (set by the plain-python launcher for the torchrun ranks)"""


def save_model(args: Args, path: Path) -> None:
    """A random Qwen2 with the character tokenizer, saved to `path` (float32 safetensors)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tests.tiny_lm import save_char_tokenizer

    save_char_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert args.hidden % args.heads == 0 and args.hidden // args.heads == 64, "vLLM's CPU attention needs head_dim 64"
    assert len(tok) <= args.vocab, f"tokenizer has {len(tok)} tokens, more than vocab {args.vocab}"
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.max_model_len,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                         bos_token_id=None, torch_dtype="float32")
    torch.manual_seed(args.seed)
    Qwen2ForCausalLM(config).save_pretrained(path)


def launch(args: Args) -> int:
    """Plain `python`: build the model once, then run this script under torchrun on it."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    with tempfile.TemporaryDirectory(prefix="bench_weight_sync_") as tmp:
        save_model(args, Path(tmp))
        for dtype in args.vllm_dtypes:
            cmd = [torchrun, "--standalone", "--nproc_per_node", str(args.nproc), __file__, "--model-dir", tmp,
                   "--repeats", str(args.repeats), "--max-model-len", str(args.max_model_len),
                   "--kv-cache-mib", str(args.kv_cache_mib), "--seed", str(args.seed), "--vllm-dtype", dtype]
            print(" ".join(cmd), flush=True)
            if subprocess.run(cmd, env=env).returncode != 0:
                return 1
        return 0


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    """Seconds of `fn()` (slowest rank), one warm-up call, then `repeats` calls, each starting after a barrier."""
    import torch.distributed as dist

    times = []
    for i in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if i > 0:
            times.append(elapsed.item())
    return times


def bench(args: Args) -> None:
    from torch.distributed.tensor import DTensor

    from common.console import quiet_console

    quiet_console(verbose=False)  # the libraries' routine messages (before vLLM is imported): only the table shows
    from common.model import hf_named_parameters, load_policy
    from common.vllm_engine import ColocatedVLLM

    dist_info = init_distributed()
    seed_everything(args.seed)
    policy = load_policy(args.model_dir, dist_info)
    engine = ColocatedVLLM(args.model_dir, dist_info, max_model_len=args.max_model_len,
                           cpu_kv_cache_bytes=args.kv_cache_mib * 2**20, seed=dist_info.rank, dtype=args.vllm_dtype)
    cast = engine.sync_dtype  # None in float32: shards are gathered as they are
    n_params = sum(p.numel() for _, p in hf_named_parameters(policy))  # DTensor.numel() is the global size
    n_tensors = sum(1 for _ in hf_named_parameters(policy))
    millions = n_params / 1e6

    def gather(p):  # what sync_weights does with each parameter
        p = p.detach().to(cast) if cast is not None else p.detach()
        return p.full_tensor() if isinstance(p, DTensor) else p

    def gather_only():
        for _, p in hf_named_parameters(policy):
            full = gather(p)
            del full

    gathered = [(name, gather(p)) for name, p in hf_named_parameters(policy)]
    gathered_bytes = sum(t.numel() * t.element_size() for _, t in gathered)
    results = {
        "sync": timed(lambda: engine.sync_weights(policy, hf_named_parameters(policy)), args.repeats, dist_info.device),
        "gather only": timed(gather_only, args.repeats, dist_info.device),
        "reload only": timed(lambda: engine.sync_weights(policy, gathered), args.repeats, dist_info.device),
        "check": timed(lambda: engine.check_weights(policy, hf_named_parameters(policy)), args.repeats, dist_info.device),
    }
    del gathered

    label = args.vllm_dtype + (" (bf16 on CPU: the GPU path, simulated)" if args.vllm_dtype == "bfloat16" and
                               dist_info.device.type == "cpu" else "")
    print0(f"# {dist_info.world_size} ranks, torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
           f"device {dist_info.device.type}, trainer float32, vLLM {label}")
    print0(f"# model: Qwen2 hidden {policy.config.hidden_size}, {policy.config.num_hidden_layers} layers, "
           f"{policy.config.num_attention_heads}/{policy.config.num_key_value_heads} heads, intermediate "
           f"{policy.config.intermediate_size}, vocab {policy.config.vocab_size}, tied embeddings")
    print0(f"# parameters: {millions:.2f} M in {n_tensors} tensors ({n_params * 4 / 2**20:.0f} MiB float32); "
           f"each call: 1 warm-up, then best / median of {args.repeats} (slowest rank per call)")
    print0(f"# bytes per sync: gathered {gathered_bytes / 2**20:.1f} MiB on every rank, of which each rank receives "
           f"{gathered_bytes * (dist_info.world_size - 1) / dist_info.world_size / 2**20:.1f} MiB from the others "
           f"({'bf16' if cast is not None else 'float32'} tensors)")
    print0()
    print0(f"{'measurement':<12} {'best s':>8} {'median s':>9} {'best s/M params':>16} {'median s/M params':>18}")
    for name, times in results.items():
        best, median = min(times), statistics.median(times)
        print0(f"{name:<12} {best:>8.3f} {median:>9.3f} {best / millions:>16.4f} {median / millions:>18.4f}")
    print0(f"# all sync times: {', '.join(f'{t:.3f}' for t in results['sync'])}")
    print0(f"# the exact check costs {statistics.median(results['check']) / statistics.median(results['sync']):.0%} of a "
           f"sync (medians)")

    engine.shutdown()
    del policy, engine
    shutdown_distributed()


def main() -> None:
    args = tyro.cli(Args)
    if args.model_dir:
        bench(args)
    else:
        sys.exit(launch(args))


if __name__ == "__main__":
    main()
