"""Run under torchrun by test_checkpoint.py: save after one AdamW step, restore into fresh objects, compare.
The policy keeps FSDP2's gathered weights from forward to backward (`reshard_after_forward=False`, the tiny presets'
setting), and a no-grad log-prob pass runs right before the save, as a step's probe or old-log-prob pass may.

Writes <out>/rank<r>.json with the largest differences found, and leaves the checkpoint at <out>/step_000001.
"""

import json
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from common.dist import exit_process, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import build_optimizer, build_scheduler, load_policy, logprobs_in_micro_batches, pad_batch  # noqa: E402


def train_step(policy, optimizer, scheduler):
    batch = pad_batch([[5, 6, 7], [8, 9]], [[10, 11], [12]], pad_id=0)
    logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    (-logprobs.sum()).backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def full_params(model):
    return {n: p.full_tensor().clone() for n, p in model.named_parameters()}


def main():
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    dist = init_distributed()
    seed_everything(0)
    make = lambda: (lambda m: (m, build_optimizer(m, lr=1e-2)))(load_policy(model_dir, dist, reshard_after_forward=False))
    policy, optimizer = make()
    scheduler = build_scheduler(optimizer, "cosine", warmup_steps=2, total_steps=10)
    train_step(policy, optimizer, scheduler)
    logprobs_in_micro_batches(policy, pad_batch([[5, 6]], [[7]], pad_id=0), temperature=1.0, max_tokens=64,
                              device=dist.device)  # no backward follows: the weights must be resharded after it
    sharded = all(isinstance(p, DTensor) for p in policy.parameters())
    ckpt = out / "step_000001"
    save_checkpoint(ckpt, dist, models={"policy": policy}, optimizers={"policy": optimizer},
                    schedulers={"policy": scheduler}, state={"step": 1, "data_position": 17})
    step1 = full_params(policy)
    if dist.is_main:  # the test compares the Hugging Face export against these
        torch.save({n.removeprefix("lm."): t for n, t in step1.items()}, out / "step1_params.pt")
    expected_rng = torch.rand(3)
    train_step(policy, optimizer, scheduler)  # the reference continuation
    after_two = full_params(policy)

    fresh, fresh_opt = make()
    fresh_sched = build_scheduler(fresh_opt, "cosine", warmup_steps=2, total_steps=10)
    state = load_checkpoint(ckpt, dist, models={"policy": fresh}, optimizers={"policy": fresh_opt},
                            schedulers={"policy": fresh_sched})
    rng_equal = bool(torch.equal(torch.rand(3), expected_rng))
    train_step(fresh, fresh_opt, fresh_sched)  # must land exactly where the uninterrupted run did
    resumed = full_params(fresh)
    diff = max((after_two[n] - resumed[n]).abs().max().item() for n in after_two)
    (out / f"rank{dist.rank}.json").write_text(json.dumps({
        "sharded_after_no_grad_pass": sharded, "state": state, "resume_diff": diff, "rng_equal": rng_equal, "lr": fresh_sched.get_last_lr()[0],
        "expected_lr": scheduler.get_last_lr()[0]}))
    del policy, optimizer, fresh, fresh_opt
    shutdown_distributed()


if __name__ == "__main__":
    main()
    exit_process()
