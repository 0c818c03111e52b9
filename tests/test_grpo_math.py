"""grpo_countdown.py's algorithm helpers against slow, obvious reference loops."""

import math
import random

import pytest
import torch

from grpo_countdown import batch_indices, group_advantages, policy_loss_terms


def slow_advantages(rewards, groups, scale_by_std, eps=1e-6):
    out = []
    for r, g in zip(rewards, groups):
        members = [x for x, h in zip(rewards, groups) if h == g]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1)) if len(members) > 1 else 0.0
        out.append((r - mean) / (std + eps) if scale_by_std and len(members) > 1 else r - mean)
    return out


@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_group_advantages_match_slow_loop(scale_by_std, seed):
    rng = random.Random(seed)
    groups = [g for g in range(6) for _ in range(rng.choice([1, 4, 8]))]
    rewards = [rng.choice([0.0, 0.1, 1.0]) for _ in groups]
    got = group_advantages(torch.tensor(rewards), torch.tensor(groups), scale_by_std)
    torch.testing.assert_close(got, torch.tensor(slow_advantages(rewards, groups, scale_by_std), dtype=torch.float32),
                               atol=1e-5, rtol=1e-5)


def test_group_advantages_do_not_depend_on_sample_order():
    """Statistics are per prompt: interleaving the samples of different prompts changes nothing."""
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.1, 1.0, 1.0, 0.0, 0.1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    sorted_adv = group_advantages(rewards, groups, scale_by_std=True)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    shuffled_adv = group_advantages(rewards[perm], groups[perm], scale_by_std=True)
    torch.testing.assert_close(shuffled_adv, sorted_adv[perm])
    assert group_advantages(torch.tensor([1.0, 0, 0.1, 0.1]), torch.tensor([0, 0, 1, 1]), False).tolist() == pytest.approx([0.5, -0.5, 0, 0])
    # a group where every sample got the same reward carries no signal
    assert group_advantages(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([3, 3, 3]), True).abs().max() == 0


def test_policy_loss_terms_by_hand():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]])
    old = torch.tensor([[math.log(0.4), math.log(0.5), math.log(0.4)]])
    ref = torch.tensor([[math.log(0.5), math.log(0.45), math.log(0.1)]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    pg, kl, clipped = policy_loss_terms(logprobs, old, ref, adv, clip_ratio=0.2)
    # ratios 1.25 (clipped to 1.2 for A>0), 1.8 (clipped to 1.2), 0.5 (clipped to 0.8 for A<0: min picks -0.8)
    torch.testing.assert_close(pg, torch.tensor([[-1.2, -1.2, 0.8]]))
    assert clipped.tolist() == [[True, True, True]]
    # k3 = r - log r - 1 with r = ref / pi
    expected_kl = [r - math.log(r) - 1 for r in (1.0, 0.5, 0.5)]
    torch.testing.assert_close(kl, torch.tensor([expected_kl]))
    pg, _, clipped = policy_loss_terms(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), 0.2)
    assert pg.item() == -2.0 and not clipped.item(), "on-policy: ratio 1, loss -A, nothing clipped"


def test_policy_gradient_direction():
    """The loss gradient raises the log-prob of a positive-advantage token and lowers a negative one."""
    lp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    pg, _, _ = policy_loss_terms(lp, lp.detach(), lp.detach(), torch.tensor([[1.0, -1.0]]), 0.2)
    pg.sum().backward()
    assert lp.grad[0, 0] < 0 < lp.grad[0, 1]


def test_batch_indices_cover_each_epoch_once_and_continue():
    n, p = 10, 4
    seq = [i for s in range(5) for i in batch_indices(s, p, n, seed=3)]  # 20 = two epochs
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:]) == list(range(10))
    assert seq[:10] != seq[10:], "each epoch gets a fresh permutation"
    assert batch_indices(3, p, n, seed=3) == seq[12:16], "step k reads the same slice whenever it runs (resume)"
