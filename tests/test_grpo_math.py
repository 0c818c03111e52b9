"""grpo_countdown.py's algorithm helpers against slow, obvious reference loops."""

import math
import random

import pytest
import torch

from common.model import lockstep_micro_batches
from grpo_countdown import (batch_indices, group_advantages, overlong_penalty, policy_loss_terms, sampler_correction,
                            zero_signal)


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
    pg, kl, clipped, _ = policy_loss_terms(logprobs, old, ref, adv, clip_ratio=0.2)
    # ratios 1.25 (clipped to 1.2 for A>0), 1.8 (clipped to 1.2), 0.5 (clipped to 0.8 for A<0: min picks -0.8)
    torch.testing.assert_close(pg, torch.tensor([[-1.2, -1.2, 0.8]]))
    assert clipped.tolist() == [[True, True, True]]
    # k3 = r - log r - 1 with r = ref / pi
    expected_kl = [r - math.log(r) - 1 for r in (1.0, 0.5, 0.5)]
    torch.testing.assert_close(kl, torch.tensor([expected_kl]))
    pg, _, clipped, _ = policy_loss_terms(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), 0.2)
    assert pg.item() == -2.0 and not clipped.item(), "on-policy: ratio 1, loss -A, nothing clipped"


def test_policy_gradient_direction():
    """The loss gradient raises the log-prob of a positive-advantage token and lowers a negative one."""
    lp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    pg, _, _, _ = policy_loss_terms(lp, lp.detach(), lp.detach(), torch.tensor([[1.0, -1.0]]), 0.2)
    pg.sum().backward()
    assert lp.grad[0, 0] < 0 < lp.grad[0, 1]


def test_batch_indices_cover_each_epoch_once_and_continue():
    n, p = 10, 4
    seq = [i for s in range(5) for i in batch_indices(s, p, n, seed=3)]  # 20 = two epochs
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:]) == list(range(10))
    assert seq[:10] != seq[10:], "each epoch gets a fresh permutation"
    assert batch_indices(3, p, n, seed=3) == seq[12:16], "step k reads the same slice whenever it runs (resume)"


# ---- clip-higher, GSPO ratio, importance weights against the sampler, zero-signal groups -------------------------
def todays_policy_loss_terms(logprobs, old_logprobs, ref_logprobs, advantages, clip_ratio):
    """policy_loss_terms before clip-higher and importance weights, kept verbatim to check nothing moved."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio) * advantages
    pg = -torch.minimum(unclipped, clipped)
    log_ratio_ref = ref_logprobs - logprobs
    return pg, torch.exp(log_ratio_ref) - log_ratio_ref - 1, clipped < unclipped


def padded_batch(seed, rows=6, length=9):
    """Random (B, L) log-probs and a right-padded response mask with varied lengths, including two empty rows."""
    g = torch.Generator().manual_seed(seed)
    lp = lambda: -torch.rand(rows, length, generator=g, dtype=torch.float64) * 3
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    lengths[1] = 0                    # a row with no response token left after the mask
    lengths[-1] = 0
    mask = torch.arange(length)[None, :] < lengths[:, None]
    advantages = (torch.randn(rows, generator=g, dtype=torch.float64)[:, None] * mask)
    return lp(), lp(), lp(), lp(), advantages, mask


def slow_sampler_correction(old, vllm, mask, mode, cap, lower):
    """One response at a time, plain floats."""
    weights, over, outside, k3 = [], [], [], []
    for o_row, v_row, m_row in zip(old.tolist(), vllm.tolist(), mask.tolist()):
        token_ratios = [math.exp(o - v) if m else 1.0 for o, v, m in zip(o_row, v_row, m_row)]
        seq = math.prod(token_ratios)
        out = not lower <= seq <= cap
        outside.append(out)
        over.append([m and r > cap for r, m in zip(token_ratios, m_row)])
        k3.append([(r - math.log(r) - 1) if m else 0.0 for r, m in zip(token_ratios, m_row)])
        if mode == "token_tis":
            w = [min(r, cap) for r in token_ratios]
        elif mode == "sequence_mask":
            w = [0.0 if out else seq] * len(o_row)
        else:
            w = [1.0] * len(o_row)
        weights.append([x if m else 0.0 for x, m in zip(w, m_row)])
    return weights, over, outside, k3


@pytest.mark.parametrize("mode", ["none", "token_tis", "sequence_mask"])
@pytest.mark.parametrize("seed", range(4))
def test_sampler_correction_matches_slow_loop(mode, seed):
    _, old, _, _, _, mask = padded_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    vllm = old + torch.randn(old.shape, generator=g, dtype=torch.float64) * 0.6  # a visible gap, some ratios > C
    cap, lower = 1.5, 0.4
    w, over, outside, k3 = sampler_correction(old, vllm, mask, mode, cap, lower)
    ew, eover, eoutside, ek3 = slow_sampler_correction(old, vllm, mask, mode, cap, lower)
    torch.testing.assert_close(w, torch.tensor(ew, dtype=torch.float64))
    assert over.tolist() == eover and outside.tolist() == eoutside
    torch.testing.assert_close(k3, torch.tensor(ek3, dtype=torch.float64))
    assert (k3 >= 0).all(), "k3 is never negative"
    assert not outside[1] and not outside[-1], "an empty response has ratio 1: inside any bounds that contain 1"


def test_sampler_correction_by_hand():
    old = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    vllm = torch.zeros(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    w, over, outside, _ = sampler_correction(old, vllm, mask, "token_tis", cap=3.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 3.0], [1.0, 0.0]]))
    assert over.tolist() == [[False, True], [False, False]]
    w, _, outside, _ = sampler_correction(old, vllm, mask, "sequence_mask", cap=3.0)
    assert outside.tolist() == [True, False]
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    w, _, outside, _ = sampler_correction(old, vllm, mask, "sequence_mask", cap=5.0, lower=0.5)
    torch.testing.assert_close(w, torch.tensor([[4.0, 4.0], [1.0, 0.0]]), msg="inside the bounds: weight = sequence ratio")
    # a huge sequence ratio (exp overflows to inf) is masked, not a NaN
    w, _, outside, _ = sampler_correction(torch.full((1, 200), 5.0), torch.zeros(1, 200), torch.ones(1, 200, dtype=torch.bool),
                                          "sequence_mask", cap=3.0)
    assert outside.item() and (w == 0).all()


def slow_policy_loss(logprobs, old, ref, adv, mask, c_low, c_high, weights, ratio_level):
    """Per token, plain floats: -w * min(r A, clip(r, 1 - c_low, 1 + c_high) A); GSPO: r = exp(mean log-ratio)."""
    out = []
    for lp_row, o_row, a_row, w_row, m_row in zip(logprobs.tolist(), old.tolist(), adv.tolist(), weights.tolist(), mask.tolist()):
        n = sum(m_row)
        seq = math.exp(sum(l - o for l, o, m in zip(lp_row, o_row, m_row) if m) / max(n, 1))
        row = []
        for l, o, a, w in zip(lp_row, o_row, a_row, w_row):
            r = seq if ratio_level == "sequence" else math.exp(l - o)
            row.append(-w * min(r * a, min(max(r, 1 - c_low), 1 + c_high) * a))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("c_high", [0.2, 0.28])
@pytest.mark.parametrize("seed", range(3))
def test_policy_loss_terms_match_slow_loop(ratio_level, c_high, seed):
    logprobs, old, ref, vllm, adv, mask = padded_batch(seed)
    weights = sampler_correction(old, vllm, mask, "token_tis", 2.0)[0]
    pg, _, _, _ = policy_loss_terms(logprobs, old, ref, adv, 0.2, c_high, weights, mask, ratio_level)
    expected = slow_policy_loss(logprobs, old, ref, adv, mask, 0.2, c_high, weights, ratio_level)
    torch.testing.assert_close(pg * mask, expected * mask)


def test_clip_higher_only_frees_the_upper_side():
    """ratio 1.25 with A > 0 is clipped at 1.2 by PPO, not by clip-higher 0.28; ratio 0.7 with A < 0 clipped by both."""
    lp, old = torch.tensor([[math.log(1.25), math.log(0.7)]]), torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    pg, _, clipped, _ = policy_loss_terms(lp, old, old, adv, 0.2, 0.28)
    torch.testing.assert_close(pg, torch.tensor([[-1.25, 0.8]]))
    assert clipped.tolist() == [[False, True]]


@pytest.mark.parametrize("seed", range(3))
def test_defaults_reproduce_todays_loss_exactly(seed):
    """clip-higher equal to the lower clip, and TIS with C = inf against vLLM log-probs equal to the trainer's,
    give today's loss bit for bit (and so do `sequence_mask` and `none`)."""
    logprobs, old, ref, _, adv, mask = padded_batch(seed)
    today = todays_policy_loss_terms(logprobs, old, ref, adv, 0.2)
    for mode in ("token_tis", "sequence_mask", "none"):
        weights = sampler_correction(old, old.clone(), mask, mode, math.inf)[0]
        assert torch.equal(weights, mask.double()), mode
        for c_high in (None, 0.2):
            got = policy_loss_terms(logprobs, old, ref, adv, 0.2, c_high, weights, mask, "token")
            for a, b in zip(got, today):
                assert torch.equal(a * mask, b * mask), (mode, c_high)
    got = policy_loss_terms(logprobs, old, ref, adv, 0.2)
    assert all(torch.equal(a, b) for a, b in zip(got, today)), "no new argument: today's function"


def test_gspo_ratio_gradient_is_the_mean_over_the_response():
    """GSPO: every token of a response gets d/dlogp_t = -A s / |y| inside the clip range (s = 1 on policy)."""
    lp = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, True, True, True]])
    pg, _, _, _ = policy_loss_terms(lp, lp.detach(), lp.detach(), torch.tensor([[2.0]], dtype=torch.float64), 0.2,
                                 mask=mask, ratio_level="sequence")
    (pg * mask).sum().backward()
    # the sum over 3 tokens of -A s, each s = exp(mean): gradient 3 * (-2) / 3 = -2 per masked token
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -2.0, -2.0, -2.0]], dtype=torch.float64))


def test_all_masked_micro_batch_gives_zero_loss_and_gradient():
    """Every response dropped by the sequence mask (or a padding micro-batch): loss 0, gradient 0, no NaN."""
    logprobs, old, ref, vllm, adv, mask = padded_batch(0)
    weights, _, outside, _ = sampler_correction(old, old + 5.0, mask, "sequence_mask", 3.0, 0.5)  # ratios ~e^-5n
    assert outside[mask.any(-1)].all() and (weights == 0).all()
    lp = logprobs.clone().requires_grad_(True)
    pg, kl, _, _ = policy_loss_terms(lp, old, ref, adv, 0.2, None, weights, mask, "token")
    loss = ((pg + 0.0 * kl) * mask).sum() / max(float(mask.sum()), 1.0)
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()


def test_zero_signal_groups():
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.1, 0.1, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    assert zero_signal(rewards, groups).tolist() == [False, False, True, True, True, True, True, True]
    # the slow definition: a sample's group has a single distinct reward
    for seed in range(5):
        rng = random.Random(seed)
        groups = [g for g in range(6) for _ in range(4)]
        rewards = [rng.choice([0.1, 1.0]) for _ in groups]
        got = zero_signal(torch.tensor(rewards), torch.tensor(groups)).tolist()
        assert got == [len({r for r, h in zip(rewards, groups) if h == g}) == 1 for g in groups]


@pytest.mark.parametrize("value", [0.1, 0.3, 0.7, 1 / 3])
def test_equal_rewards_give_exactly_zero_advantage(value):
    """r - mean(r) of 8 copies of 0.1 is ~7e-9 in float32, which the std division turned into ~7e-3: a fake signal."""
    for scale_by_std in (True, False):
        adv = group_advantages(torch.full((8,), value), torch.zeros(8, dtype=torch.long), scale_by_std)
        assert (adv == 0).all(), (value, scale_by_std)


def test_skipping_zero_signal_samples_leaves_the_gradient_unchanged():
    """The update loop drops zero-signal samples but keeps the mini-batch's token count as the normaliser:
    with kl_coef = 0 the gradient is the same as with every sample in (their policy-gradient term is 0)."""
    logprobs, old, ref, vllm, _, mask = padded_batch(3, rows=8)
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.1, 1.0, 1.0, 0.0, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    adv = group_advantages(rewards, groups, scale_by_std=True).double()[:, None] * mask
    weights = sampler_correction(old, vllm, mask, "token_tis", 3.0)[0]
    kept = ~zero_signal(rewards, groups)
    normaliser = float(mask.sum())
    grads = []
    for rows in (torch.arange(8), kept.nonzero()[:, 0]):
        lp = logprobs.clone().requires_grad_(True)
        pg, _, _, _ = policy_loss_terms(lp[rows], old[rows], ref[rows], adv[rows], 0.2, 0.28, weights[rows], mask[rows])
        ((pg * mask[rows]).sum() / normaliser).backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-15)


def slow_dual_clip_loss(logprobs, old, adv, mask, c, c_dual):
    """Dual-clip PPO (Ye et al. 2020, eq. 5) per token, plain floats: for A < 0 the objective is
    max(min(r A, clip(r) A), c_dual A), so the loss is at most -c_dual A; for A >= 0 PPO's clip."""
    out, flags = [], []
    for lp_row, o_row, a_row in zip(logprobs.tolist(), old.tolist(), adv.tolist()):
        row, frow = [], []
        for l, o, a in zip(lp_row, o_row, a_row):
            r = math.exp(l - o)
            objective = min(r * a, min(max(r, 1 - c), 1 + c) * a)
            if a < 0:
                frow.append(c_dual * a > objective)
                objective = max(objective, c_dual * a)
            else:
                frow.append(False)
            row.append(-objective)
        out.append(row)
        flags.append(frow)
    return torch.tensor(out, dtype=torch.float64), flags


@pytest.mark.parametrize("seed", range(3))
def test_dual_clip_matches_slow_loop_on_padded_batches(seed):
    logprobs, old, ref, _, adv, mask = padded_batch(seed)
    logprobs = logprobs + 2.0 * (torch.arange(logprobs.shape[1]) % 3 == 0)  # some ratios far above the clip: e^2
    pg, _, _, dual = policy_loss_terms(logprobs, old, ref, adv, 0.2, mask=mask, dual_clip=3.0)
    expected, flags = slow_dual_clip_loss(logprobs, old, adv, mask, 0.2, 3.0)
    torch.testing.assert_close(pg * mask, expected * mask)
    assert (dual & mask).tolist() == (torch.tensor(flags) & mask).tolist()
    assert (dual & mask).any(), "the batch must exercise the cap"
    undual, _, _, none = policy_loss_terms(logprobs, old, ref, adv, 0.2, mask=mask)
    assert not none.any() and torch.equal(undual[~dual], pg[~dual]), "elsewhere dual-clip changes nothing"


def test_dual_clip_by_hand_caps_the_loss_of_a_negative_advantage():
    """A = -1, ratio 5 (c = 0.2): PPO's loss is 5 and grows with the ratio; dual-clip caps it at 3, with no gradient."""
    lp = torch.tensor([[math.log(5.0), math.log(5.0), math.log(0.9)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0, -1.0]], dtype=torch.float64)
    pg, _, _, dual = policy_loss_terms(lp, old, old, adv, 0.2, dual_clip=3.0)
    torch.testing.assert_close(pg, torch.tensor([[3.0, -1.2, 0.9]], dtype=torch.float64))
    assert dual.tolist() == [[True, False, False]]
    pg.sum().backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 2] != 0


def slow_overlong(length, max_tokens, buffer, penalty):
    """DAPO eq. 13, piece by piece: 0 while |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache up to L_max."""
    if buffer == 0 or length <= max_tokens - buffer:
        return 0.0
    return penalty * ((max_tokens - buffer) - length) / buffer if length <= max_tokens else -penalty


@pytest.mark.parametrize("max_tokens, buffer, penalty", [(20, 10, 1.0), (1024, 256, 0.5), (48, 0, 1.0), (48, 47, 2.0)])
def test_overlong_penalty_matches_dapo_piecewise(max_tokens, buffer, penalty):
    lengths = torch.arange(0, max_tokens + 1)
    got = overlong_penalty(lengths, max_tokens, buffer, penalty)
    expected = torch.tensor([slow_overlong(int(n), max_tokens, buffer, penalty) for n in lengths])
    torch.testing.assert_close(got, expected)
    assert overlong_penalty(torch.tensor([5, 10, 15, 20]), 20, 10, 1.0).tolist() == [0, 0, -0.5, -1]  # the docstring's


@pytest.mark.parametrize("seed", range(5))
def test_lockstep_micro_batches_respect_size_and_token_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(30)]
    rows = sorted(rng.sample(range(30), 20), key=lambda i: -lengths[i])
    by_size = lockstep_micro_batches(rows, lengths, size=4, token_budget=None, device=torch.device("cpu"))
    assert by_size == [rows[u: u + 4] for u in range(0, 20, 4)], "by samples: the order given, cut every 4"
    budget = 100
    by_tokens = lockstep_micro_batches(rows, lengths, size=4, token_budget=budget, device=torch.device("cpu"))
    assert [r for b in by_tokens for r in b] == rows, "every row once, in order"
    for b in by_tokens:
        assert len(b) == 1 or len(b) * max(lengths[r] for r in b) <= budget, (b, [lengths[r] for r in b])
    for a, b in zip(by_tokens, by_tokens[1:]):  # greedy: the next row did not fit
        assert (len(a) + 1) * max(lengths[r] for r in a + b[:1]) > budget
    assert lockstep_micro_batches([], lengths, size=4, token_budget=budget, device=torch.device("cpu")) == []
    assert lockstep_micro_batches([4, 1, 7], {4: 9, 1: 8, 7: 3}, size=2, token_budget=17, device=torch.device("cpu")) == [[4], [1, 7]]
