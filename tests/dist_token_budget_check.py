"""Run under torchrun by test_token_budget.py: the update's gradient does not depend on how a mini-batch is cut
into micro-batches, by samples (`--micro-batch-size`) or by padded tokens (`--train-token-budget`), on 2 ranks whose
samples have unequal lengths (so they get different micro-batch counts under a token budget and pad in lockstep).

Each rank builds a padded mini-batch of 12 samples of lengths that differ by rank, runs grpo_countdown.py's loss and
accumulation loop over `lockstep_micro_batches` (fixed 2-sample micro-batches, then several token budgets), and writes
<out>/rank<r>.json: the relative difference (2-norm) of the gathered gradient from the fixed-size one, per budget,
and each budget's micro-batch count on this rank (before the lockstep padding) and after it.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.dist import exit_process, global_means, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import load_policy, lockstep_micro_batches, pad_batch, select_rows  # noqa: E402
from grpo_countdown import policy_loss_terms  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402


def gradient(policy, batch, advantages, old, rows, budget, device, world):
    """grpo_countdown.py's micro-batch loop over one mini-batch; returns the full gradient, flattened (a collective)."""
    mask = batch["response_mask"]
    lengths = batch["attention_mask"].sum(-1).tolist()
    normaliser = global_means({"n": (float(mask[rows].sum()), 1.0)}, device)["n"] * world
    micro = lockstep_micro_batches(rows, lengths, size=2, token_budget=budget, device=device)
    for mb_rows in micro:
        live, mb_rows = float(bool(mb_rows)), mb_rows or rows[-1:]
        mb = select_rows(batch, mb_rows, device)
        l = mb["input_ids"].shape[1]
        logprobs, _ = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"], 1.0)        # (b, l)
        pg, _, _, _ = policy_loss_terms(logprobs, old[mb_rows, :l], old[mb_rows, :l], advantages[mb_rows, :l], 0.2)
        ((pg * mb["response_mask"].float() * live).sum() / normaliser * world).backward()
    grads = torch.cat([(p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).flatten() for p in policy.parameters()])
    policy.zero_grad(set_to_none=True)
    return grads, sum(1 for m in micro if m), len(micro)


def main():
    model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    dist = init_distributed()
    seed_everything(0)
    policy = load_policy(model_dir, dist)  # float32
    g = torch.Generator().manual_seed(10 + dist.rank)
    prompt_len = 3 + 2 * dist.rank  # the ranks' sequences differ in length
    responses = [torch.randint(1, 60, (int(n),), generator=g).tolist()
                 for n in torch.randint(1, 25 + 15 * dist.rank, (12,), generator=g)]
    batch = pad_batch([[7] * prompt_len] * 12, responses, pad_id=0)                                  # (B, L) each
    rows = sorted(range(12), key=lambda i: -len(responses[i]))
    with torch.no_grad():
        old, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"], 1.0)     # (B, L)
    old = old - 0.05 * torch.randn(old.shape, generator=g)  # ratios != 1, so the clip acts on some tokens
    advantages = torch.randn(12, 1, generator=g) * batch["response_mask"]                           # (B, L)
    reference, _, _ = gradient(policy, batch, advantages, old, rows, None, dist.device, dist.world_size)
    result = {}
    for budget in (40, 100, 400):
        got, local, padded = gradient(policy, batch, advantages, old, rows, budget, dist.device, dist.world_size)
        result[str(budget)] = {"rel": float((got - reference).norm() / reference.norm()),  # relative, in the 2-norm
                               "micro_batches": local, "after_lockstep": padded}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))
    del policy
    shutdown_distributed()


if __name__ == "__main__":
    main()
    exit_process()
