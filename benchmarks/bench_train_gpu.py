"""Training-side throughput and memory on one GPU: the policy update of grpo_countdown.py, without vLLM.

Builds a randomly initialised Qwen2 with Qwen2.5-3B's shapes (no hub needed), shards it with our FSDP2 path
(`common.model.fsdp_shard`, bf16 compute, fp32 master weights and reduction), and times what one training step
of the default run costs per GPU: a no-grad log-prob pass over the rollout (old log-probs) and mini-batches of
micro-batches with forward + backward (activation checkpointing) and an AdamW step. Also compares our chunked
log-prob head with the naive full-logits head at V = 151,936.

    python benchmarks/bench_train_gpu.py                       # world of one, prints a table
    python benchmarks/bench_train_gpu.py --layers 8            # a shallower model, for a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.dist import init_distributed, shutdown_distributed  # noqa: E402
from common.model import (TokenLogprobLM, build_optimizer, chunked_token_logprobs, clip_grad_norm, fsdp_shard,  # noqa: E402
                          logprobs_in_micro_batches, pad_batch)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best seconds, peak GiB allocated) of `fn()` over `repeats` runs after one warm-up."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated() / 2**30


def head_comparison(hidden_size: int, vocab: int, batch: int, tokens: int, repeats: int) -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(batch * tokens, hidden_size, device=dev, dtype=torch.bfloat16, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size, device=dev, dtype=torch.bfloat16, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab, (batch * tokens,), device=dev, generator=g)

    def naive():
        logits = (hidden @ weight.T).float()                                    # (N, V) float32 at once
        lp = F.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
        lp.sum().backward()

    def ours(chunk):
        lp, _ = chunked_token_logprobs(hidden, weight, targets, chunk=chunk)
        lp.sum().backward()

    base = torch.cuda.memory_allocated() / 2**30
    _, t_naive, m_naive = "naive", *timed(naive, repeats)
    print(f"\n== output head, forward + backward: B={batch} T={tokens} V={vocab} H={hidden_size}, bf16 ==")
    print(f"  {'naive (B,T,V) fp32':<22} {t_naive * 1e3:8.1f} ms   peak {m_naive - base:6.2f} GiB above inputs")
    for chunk in (512, 1024, 2048):
        t, m = timed(lambda: ours(chunk), repeats)
        print(f"  {f'ours, chunk {chunk}':<22} {t * 1e3:8.1f} ms   peak {m - base:6.2f} GiB above inputs   "
              f"memory naive/ours {(m_naive - base) / (m - base):.1f}x (>= 4x)   time ours/naive {t / t_naive:.2f}x (<= 1.5x)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=36)
    p.add_argument("--seq-len", type=int, default=1280, help="prompt + response tokens per sample")
    p.add_argument("--samples", type=int, default=128, help="rollout samples per GPU (128 prompts x 8 / 8 GPUs)")
    p.add_argument("--mini-batch", type=int, default=16, help="samples per optimizer step per GPU (128 / 8 GPUs)")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--logprob-token-budget", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    dist = init_distributed()
    assert dist.device.type == "cuda", "this benchmark needs a GPU"
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=args.layers,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, rope_theta=1e6)
    with torch.device("cuda"):
        lm = Qwen2ForCausalLM(config).float()
    lm.config.use_cache = False
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = sum(p.numel() for p in lm.parameters())
    policy = fsdp_shard(TokenLogprobLM(lm), lm.model.layers, dist, bf16=True)
    optimizer = build_optimizer(policy, lr=1e-6)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {params / 1e9:.2f}B parameters "
          f"({args.layers} layers) | seq {args.seq_len}")

    # a rollout: prompts of 150 tokens, responses of seq_len - 150 tokens, random token ids
    g = torch.Generator().manual_seed(0)
    prompt_len = 150
    prompts = [torch.randint(0, 150000, (prompt_len,), generator=g).tolist() for _ in range(args.samples)]
    responses = [torch.randint(0, 150000, (args.seq_len - prompt_len,), generator=g).tolist() for _ in range(args.samples)]
    batch = pad_batch(prompts, responses, pad_id=0)
    resp_tokens = args.samples * (args.seq_len - prompt_len)

    def old_logprobs():
        logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=args.logprob_token_budget, device=dist.device)

    def one_optimizer_step():
        for u in range(0, args.mini_batch, args.micro_batch):
            mb = {k: v[u: u + args.micro_batch].to(dist.device) for k, v in batch.items()}
            lp, _ = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"], 1.0)
            (-(lp * mb["response_mask"]).sum() / mb["response_mask"].sum()).backward()
        clip_grad_norm(policy, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t_lp, m_lp = timed(old_logprobs, args.repeats)
    t_opt, m_opt = timed(one_optimizer_step, args.repeats)
    train_tokens = args.mini_batch * args.seq_len
    # 6 N per trained token (fwd + bwd) + 2 N for the activation-checkpointing recompute
    tflops = 8 * params * train_tokens / t_opt / 1e12
    print("\n== one GPU, default GRPO shapes ==")
    print(f"  old log-probs (no grad, {args.samples} samples):  {t_lp:6.2f} s  {args.samples * args.seq_len / t_lp:9.0f} tok/s   peak {m_lp:5.1f} GiB")
    print(f"  optimizer step ({args.mini_batch} samples, micro {args.micro_batch}): {t_opt:6.2f} s  {train_tokens / t_opt:9.0f} tok/s   "
          f"peak {m_opt:5.1f} GiB   ~{tflops:.0f} TFLOP/s (8N per token, with recompute)")
    n_opt_steps = args.samples // args.mini_batch
    print(f"  => training part of one step: {t_lp * 2 + t_opt * n_opt_steps:.1f} s (old + ref log-probs, "
          f"{n_opt_steps} optimizer steps) for {resp_tokens} response tokens")
    del policy, optimizer, lm
    torch.cuda.empty_cache()
    head_comparison(2048, 151936, batch=4, tokens=1024, repeats=args.repeats)
    shutdown_distributed()


if __name__ == "__main__":
    main()
