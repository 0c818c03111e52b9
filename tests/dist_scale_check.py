"""Run under torchrun by test_scale.py (2 ranks, CPU, gloo): rank-0 loading, the non-finite guard, lean sync's cast.

Writes <out>/rank<r>.json with what the test asserts on:
  policy_equal / critic_equal   every full parameter and every buffer of this rank equals a plain `from_pretrained`
                                made with the same seed (the model init of loading on every rank)
  guard                         the non-finite guard fed a real NaN loss on the last rank only
  cast_then_gather_equal        bf16 cast of each shard, then all-gather == all-gather, then bf16 cast (bitwise)
"""

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.dist import exit_process, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import (NonFiniteGuard, build_optimizer, clip_grad_norm, load_critic, load_policy,  # noqa: E402
                          pad_batch)
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification  # noqa: E402


def equals_plain_load(model, plain) -> bool:
    """Full parameters and local buffers of our sharded wrapper vs. a plain Hugging Face model (names without `lm.`)."""
    expected = {**dict(plain.named_parameters()), **dict(plain.named_buffers())}
    mine = {n.removeprefix("lm."): p.full_tensor() for n, p in model.named_parameters()}
    mine.update({n.removeprefix("lm."): b for n, b in model.named_buffers()})
    return set(mine) == set(expected) and all(torch.equal(mine[n], expected[n].detach()) for n in expected)


def full_params(model) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor().clone() for n, p in model.named_parameters()}


def main():
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    dist = init_distributed()
    result = {}

    # ---- rank-0 loading: same weights, buffers and (critic) new-head init as every rank loading the checkpoint
    seed_everything(0)
    policy = load_policy(model_dir, dist)
    seed_everything(0)
    result["policy_equal"] = equals_plain_load(policy, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    seed_everything(0)
    critic = load_critic(model_dir, dist)
    seed_everything(0)
    config = AutoConfig.from_pretrained(model_dir, num_labels=1)
    config.classifier_dropout = 0.0
    plain_critic = AutoModelForTokenClassification.from_pretrained(model_dir, config=config, dtype=torch.float32)
    result["critic_equal"] = equals_plain_load(critic, plain_critic)
    del critic, plain_critic

    # ---- lean sync: casting each shard to bf16 before the all-gather is bitwise the cast of the gathered tensor
    result["cast_then_gather_equal"] = all(
        torch.equal(p.detach().to(torch.bfloat16).full_tensor(), p.full_tensor().to(torch.bfloat16))
        for _, p in policy.named_parameters())

    # ---- non-finite guard with a real NaN in the loss of the last rank only
    optimizer = build_optimizer(policy, lr=1e-2)
    batch = pad_batch([[5, 6, 7], [8, 9]], [[10, 11], [12]], pad_id=0)
    guard = NonFiniteGuard(max_consecutive=2, dist_info=dist)

    def step(step_index: int, poison: bool) -> tuple[bool, float]:
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        loss = -logprobs.sum()
        if poison and dist.rank == dist.world_size - 1:
            loss = loss * float("nan")
        loss.backward()
        norm = clip_grad_norm(policy, 1.0)
        ok = guard.all_finite(step_index, loss.item(), norm)
        if ok:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return ok, norm

    before = full_params(policy)
    ok, norm = step(0, poison=True)
    after_skip = full_params(policy)
    g = {"nan_step_ok": ok, "nan_norm_finite": math.isfinite(norm),
         "unchanged_after_skip": all(torch.equal(before[n], after_skip[n]) for n in before)}
    ok, _ = step(1, poison=False)
    after_good = full_params(policy)
    g.update(good_step_ok=ok, changed_after_good=any(not torch.equal(after_skip[n], after_good[n]) for n in before),
             all_finite=all(bool(t.isfinite().all()) for t in after_good.values()), metric=guard.pop())
    step(2, poison=True)  # one skip: the run goes on
    try:
        step(3, poison=True)  # the second in a row: the run stops
        g["stopped"] = None
    except SystemExit as e:
        g["stopped"] = str(e.code)
    g["metric_after"] = guard.pop()
    result["guard"] = g

    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{dist.rank}.json").write_text(json.dumps(result))
    del policy, optimizer
    shutdown_distributed()


if __name__ == "__main__":
    main()
    exit_process()
