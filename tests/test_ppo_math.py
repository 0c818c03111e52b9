"""ppo_gsm8k.py's GAE and value loss against slow per-token loops and hand-computed cases."""

import random

import pytest
import torch

from common.model import pad_batch
from ppo_gsm8k import gae, grade, value_loss_terms


def slow_gae(rewards, values, gamma, lam):
    """One response at a time, textbook recursion (GAE paper eq. 16), V after the last token = 0."""
    advantages, next_value, next_adv = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        advantages[t], next_value = next_adv, values[t]
    return advantages


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (1.0, 0.5)])
@pytest.mark.parametrize("seed", range(4))
def test_gae_matches_slow_loop_on_padded_batches(gamma, lam, seed):
    rng = random.Random(seed)
    prompt_lens = [rng.randint(1, 6) for _ in range(5)]
    resp_lens = [rng.randint(1, 9) for _ in range(5)]
    batch = pad_batch([[1] * p for p in prompt_lens], [[2] * r for r in resp_lens], pad_id=0)
    mask = batch["response_mask"]
    rewards = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed)) * mask
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed + 100)) * mask
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for i in range(5):
        m = mask[i]
        expected = slow_gae(rewards[i][m].tolist(), values[i][m].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[i][m], torch.tensor(expected), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(returns[i][m], torch.tensor(expected) + values[i][m], atol=1e-5, rtol=1e-5)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_with_gamma_lambda_one_is_reward_minus_value():
    mask = torch.tensor([[False, True, True, True]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.0, 0.2, 0.5, 0.8]])
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.8, 0.5, 0.2]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 1.0, 1.0, 1.0]]))


def test_value_loss_by_hand():
    old = torch.tensor([[0.5, 0.5, 0.5]])
    new = torch.tensor([[0.6, 1.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 1.0]])
    loss, clipped = value_loss_terms(new, old, ret, value_clip=0.2)
    # 1st: inside the clip range: 0.5 * 0.4^2.  2nd: V=1.0 would be perfect but is clipped to 0.7: 0.5 * 0.3^2.
    # 3rd: V=0.0 -> clipped 0.3; the max keeps the unclipped (larger) error 0.5 * 1^2
    torch.testing.assert_close(loss, torch.tensor([[0.08, 0.045, 0.5]]))
    assert clipped.tolist() == [[False, True, False]]


@pytest.mark.parametrize("text,reward,reason", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 1.0, "correct"),
    ("#### 8", 0.0, "wrong_value"),
    ("I don't know.", 0.0, "no_answer"),
])
def test_grade(text, reward, reason):
    assert grade(text, {"question": "", "answer": "7"}) == (reward, reason)


def test_shared_loss_helpers_are_identical_in_both_scripts():
    """The PPO-clip loss, the sampler correction and the overlong shaping are the same code in both scripts (tested in
    test_grpo_math.py)."""
    import inspect

    import grpo_countdown
    import ppo_gsm8k

    for name in ("policy_loss_terms", "sampler_correction", "overlong_penalty"):
        assert inspect.getsource(getattr(grpo_countdown, name)) == inspect.getsource(getattr(ppo_gsm8k, name)), name
