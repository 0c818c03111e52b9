"""Benchmark host memory of loading a model into FSDP2: every rank reading the checkpoint vs. rank-0 loading.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_rank0_loading.py
      (builds the random ~50M-parameter Qwen2 of bench_weight_sync.py in a temporary directory, then launches
       `torchrun --standalone --nproc_per_node 2 benchmarks/bench_rank0_loading.py --model-dir DIR --mode M`
       once per mode, each in fresh processes: a process's peak memory only ever grows)

Modes:
  every_rank   what the scripts did before: every rank `from_pretrained` (float32), then `fully_shard`
  broadcast    rank 0 reads, the others build on the meta device; torch's `set_model_state_dict(...,
               broadcast_from_rank0=True)` sends every rank each full tensor, and each keeps its shard
  rank0        `common.model.load_policy`: rank 0 reads, the others build on the meta device and receive only
               their shards, scattered from rank 0 one parameter at a time (`shard_from_rank0`)
Reported per rank: peak resident memory (ru_maxrss) before loading (after imports), after loading, and the
difference, the figure that matters: what loading added to the process's peak. `--copies 2` loads two models
(policy and reference, as GRPO with a KL term does).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo


@dataclass
class Args:
    layers: int = 11
    """decoder layers of bench_weight_sync.py's model (11: ~50M parameters)"""
    copies: int = 1
    """models loaded one after the other (2: policy and reference)"""
    nproc: int = 2
    """ranks to launch under torchrun"""
    model_dir: str = ""
    """internal: the model to load (set by the plain-python launcher for the torchrun ranks)"""
    mode: str = ""
    """internal: every_rank, broadcast or rank0"""


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(args: Args) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from common.dist import init_distributed, seed_everything, shutdown_distributed
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig

    from common.model import TokenLogprobLM, fsdp_shard, load_on_rank0, load_policy

    info = init_distributed()
    seed_everything(0)
    dist.barrier()
    before = peak_mib()
    models = []
    for _ in range(args.copies):
        if args.mode == "every_rank":
            lm = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
            models.append(fsdp_shard(TokenLogprobLM(lm), lm.model.layers, info, bf16=False))
        elif args.mode == "broadcast":
            model = TokenLogprobLM(load_on_rank0(AutoModelForCausalLM, args.model_dir, AutoConfig.from_pretrained(args.model_dir), info))
            full = model.state_dict() if info.is_main else {}
            fsdp_shard(model, model.lm.model.layers, info, bf16=False)
            if not info.is_main:
                model.to_empty(device=info.device)
            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
            del full
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
            models.append(model)
        else:
            models.append(load_policy(args.model_dir, info))
    dist.barrier()
    after = peak_mib()
    params = sum(p.numel() for p in models[0].parameters())  # DTensor.numel() is the global size
    rows = [None] * info.world_size
    dist.all_gather_object(rows, {"rank": info.rank, "before": before, "after": after})
    if info.is_main:
        print(json.dumps({"mode": args.mode, "copies": args.copies, "params": params, "ranks": rows}), flush=True)
    del models
    shutdown_distributed()


def launch(args: Args) -> int:
    """Plain `python`: build the model once, run each mode under torchrun, print the table."""
    from benchmarks.bench_weight_sync import Args as ModelArgs, save_model

    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_rank0_loading_") as tmp:
        save_model(ModelArgs(layers=args.layers), Path(tmp))
        for mode in ("every_rank", "broadcast", "rank0"):
            cmd = [torchrun, "--standalone", "--nproc_per_node", str(args.nproc), __file__, "--model-dir", tmp,
                   "--mode", mode, "--copies", str(args.copies)]
            print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                return proc.returncode
            results.append(json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"mode"'))))
    params = results[0]["params"]
    print(f"\n# {args.nproc} ranks, CPU, float32; model {params / 1e6:.1f} M parameters = {params * 4 / 2**20:.0f} MiB "
          f"float32, {args.copies} cop{'y' if args.copies == 1 else 'ies'} loaded")
    print(f"{'mode':<11} {'rank':>4} {'peak before MiB':>16} {'peak after MiB':>15} {'added by loading MiB':>21}")
    for res in results:
        for r in res["ranks"]:
            print(f"{res['mode']:<11} {r['rank']:>4} {r['before']:>16.0f} {r['after']:>15.0f} {r['after'] - r['before']:>21.0f}")
    return 0


def main() -> None:
    args = tyro.cli(Args)
    if args.model_dir:
        measure(args)
    else:
        sys.exit(launch(args))


if __name__ == "__main__":
    main()
