"""PPO with a learned critic (GAE) on GSM8K, in one file.

Algorithm (PPO https://arxiv.org/abs/1707.06347 with GAE https://arxiv.org/abs/1506.02438, applied to LLMs as in
InstructGPT https://arxiv.org/abs/2203.02155 and oat's GSM8K run https://github.com/sail-sg/oat): for each step,
sample G completions for each of P questions from the current policy (vLLM), grade them (`rewards.gsm8k`: 1 if the
final number equals the reference, else 0), put that reward on the last response token, estimate per-token
advantages with a critic (a value model trained alongside) and GAE, and take several epochs of PPO-clip steps on
the policy and of clipped value regression on the critic, with a k3 KL term to the frozen initial policy.

Departures from the papers, all deliberate:
- Token-level loss aggregation (DAPO https://arxiv.org/abs/2503.14476 §3.3) for both losses: the mean over every
  response token of the mini-batch, on all ranks together.
- KL to the reference as a loss term (k3, as in GRPO) by default; the classic per-token KL penalty in the reward
  (InstructGPT eq. 2) is available with `--kl-penalty-coef` and is 0 by default, as in oat's run.
- gamma = lambda = 1 by default (oat's setting): the advantage of token t is then R - V(s_t).
- Old-policy log-probs are recomputed by the trainer, not taken from vLLM; the gap is logged (`train/mismatch_kl`)
  and corrected by importance weights on the policy-gradient term (`--is-correction`: TRL's sequence mask by
  default, or Yao et al.'s truncated IS). After each weight sync, exact checksums and a log-prob probe stop the run
  if vLLM does not compute with the trainer's weights (a silent mismatch is a known failure of colocated RL).

Launch:
    torchrun --nproc_per_node 8 ppo_gsm8k.py                            # rho-1b-sft-GSM8K, 8 GPUs
    torchrun --nproc_per_node 2 ppo_gsm8k.py --preset tiny              # the shipped tiny model, 2 CPU processes
    python ppo_gsm8k.py --preset tiny --num-steps 3                     # one process
    python ppo_gsm8k.py --preset tiny --eval-only runs/ppo_gsm8k/step_000024       # evaluate a checkpoint
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from common.config import (ConfigError, RunArgs, batch_sizes, check_model_source, check_prompt_lengths, check_ranges,
                           check_run_args, parse_args, policy_dir)


@dataclass
class Args(RunArgs):  # RunArgs (common/config.py): outputs, logging, precision, checkpoints, vLLM
    # ---- model
    model: str = "lkevinzc/rho-1b-sft-GSM8K"
    """policy to train (and the critic's initial backbone): a local Hugging Face directory or a hub id"""
    # ---- data
    dataset: str = "openai/gsm8k"
    """Hugging Face dataset with train and test splits; `use_local_data` reads `local_data_dir` instead"""
    dataset_config: str = "main"
    """dataset configuration name"""
    question_field: str = "question"
    """column with the question"""
    answer_field: str = "answer"
    """column with the reference: GSM8K's worked answer ending in `#### N`, or a bare number (`answer_is_final`)"""
    answer_is_final: bool = False
    """the answer column already holds the final number (e.g. a `final_answer` column)"""
    train_size: int = 0
    """use the first N training questions (0: all)"""
    test_size: int = 0
    """use the first N test questions (0: all 1,319)"""
    use_local_data: bool = False
    """read `local_data_dir`/{train,test}.jsonl (also the automatic fallback when the hub is unreachable)"""
    local_data_dir: str = "data/word_problems"
    """GSM8K-format JSONL files written for this project (`question`, `answer` ending in `#### N`)"""
    prompt_template: Literal["chat", "base"] = "chat"
    """`chat`: the tokenizer's chat template (the SFT model was trained with it); `base`: `BASE_TEMPLATE`"""
    # ---- rollout
    num_steps: int = 0
    """training steps (one rollout + one update each); 0: `data_passes` over the training questions"""
    data_passes: float = 6.0
    """passes over the training questions when `num_steps` is 0"""
    prompts_per_step: int = 64
    """P: questions per step, over all ranks"""
    samples_per_prompt: int = 8
    """G: completions per question"""
    temperature: float = 1.2
    """sampling temperature; the trainer divides its logits by the same value"""
    top_p: float = 0.9
    """nucleus sampling"""
    max_prompt_tokens: int = 1024
    """a longer prompt is an error"""
    max_response_tokens: int = 1024
    """completions are cut here (counted in `rollout/truncated`)"""
    overlong_buffer: int = 0
    """L_cache of DAPO's overlong shaping (§3.4): a response within L_cache tokens of --max-response-tokens loses up to
    --overlong-penalty of reward, linearly (0: off)"""
    overlong_penalty: float = 1.0
    """the largest overlong penalty (DAPO: 1)"""
    mask_truncated: bool = False
    """DAPO's overlong filtering (§3.4): responses cut at --max-response-tokens leave both losses and their normaliser"""
    # ---- policy update
    mini_batch_size: int = 64
    """samples per optimizer step, over all ranks (P*G/mini_batch_size optimizer steps per epoch)"""
    micro_batch_size: int = 8
    """samples per forward/backward on each rank (gradient accumulation up to the mini-batch)"""
    epochs_per_rollout: int = 2
    """PPO epochs: passes over each rollout"""
    learning_rate: float = 1e-6
    """AdamW learning rate of the policy"""
    critic_learning_rate: float = 1e-6
    """AdamW learning rate of the critic"""
    critic_warmup_steps: int = 0
    """first steps train only the critic: with a fresh value head, A = R - V is mostly noise at first"""
    lr_schedule: Literal["constant", "cosine", "polynomial"] = "polynomial"
    """decay over the whole run after warm-up (both models)"""
    warmup_steps: int = 0
    """optimizer steps of linear warm-up"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping (global norm)"""
    clip_ratio: float = 0.2
    """PPO clip: ratios outside [1 - c, 1 + c_high] get no gradient"""
    clip_ratio_high: float | None = None
    """c_high, DAPO's clip-higher (0.28 in the paper); None: equal to `clip_ratio`"""
    dual_clip: float | None = None
    """c of dual-clip PPO (https://arxiv.org/abs/1912.09729 §4.1): for A < 0 a token's loss is at most -c * A (3 there
    and in verl); None: off"""
    ratio_level: Literal["token", "sequence"] = "token"
    """PPO ratio per token, or GSPO's one per response, exp(mean over its tokens of logp - logp_old) (clip ~3e-4/4e-4 there)"""
    is_correction: Literal["none", "token_tis", "sequence_mask"] = "sequence_mask"
    """importance weights for vLLM sampling from a policy slightly off the trainer's (`sampler_correction`; TRL's default)"""
    is_cap: float = 3.0
    """C: token_tis caps each token's weight at C; sequence_mask drops a response whose ratio exceeds C (TRL: 3.0)"""
    is_mask_lower: float = 0.0
    """sequence_mask also drops a response whose ratio is below this (0: no lower bound, as TRL's default)"""
    value_clip: float = 0.2
    """new values stay within +-value_clip of the old ones in the clipped value loss"""
    kl_coef: float = 1e-4
    """weight of the k3 KL estimate to the reference policy in the loss"""
    kl_penalty_coef: float = 0.0
    """per-token KL penalty in the reward, -coef * (logp_old - logp_ref) (InstructGPT); the reference model loads if either coefficient is > 0"""
    gamma: float = 1.0
    """GAE discount"""
    gae_lambda: float = 1.0
    """GAE lambda"""
    whiten_advantages: bool = False
    """normalise advantages to mean 0, std 1 over the rollout (all ranks)"""
    # ---- evaluation
    eval_every: int = 50
    """evaluation on the held-out set every N steps (and at the start and the end)"""
    eval_samples_per_prompt: int = 16
    """completions per held-out problem (`eval/pass_at_k` uses all of them)"""
    eval_temperature: float = 0.35
    """0 is greedy"""
    eval_top_p: float = 0.9
    """nucleus sampling at evaluation"""


PRESETS = {
    "default": Args(),
    "tiny": Args(preset="tiny", model="tiny_models/gsm8k", use_local_data=True,
                 num_steps=24, prompts_per_step=32, samples_per_prompt=8, temperature=1.0, max_prompt_tokens=256, max_response_tokens=64,
                 mini_batch_size=64, micro_batch_size=32, learning_rate=5e-5, critic_learning_rate=1e-3,
                 critic_warmup_steps=5, kl_coef=0.0, eval_every=8, eval_samples_per_prompt=1, eval_temperature=0.0, eval_top_p=1.0,
                 logprob_token_budget=4096, save_every=0, activation_checkpointing=False, reshard_after_forward=False,
                 vllm_cpu_kv_cache_gb=0.25,
                 bf16=True),  # on a CPU with AMX: the demo in ~2.6 min instead of ~3.9, as accurate (README)
}


def check_args(args: Args) -> None:
    """Every setting whose range matters, checked right after parsing, before anything loads: a bad one ends the run
    with one `error:` line naming its flag. To check a new field, add its name to a rule (see common.config)."""
    check_run_args(args)
    check_ranges(args,
                 positive=("data_passes", "prompts_per_step", "samples_per_prompt", "temperature", "max_prompt_tokens",
                           "max_response_tokens", "mini_batch_size", "micro_batch_size", "epochs_per_rollout",
                           "learning_rate", "critic_learning_rate", "max_grad_norm", "clip_ratio", "value_clip",
                           "eval_every", "eval_samples_per_prompt", "is_cap", "clip_ratio_high"),
                 non_negative=("num_steps", "train_size", "test_size", "critic_warmup_steps", "warmup_steps",
                               "weight_decay", "kl_coef", "kl_penalty_coef", "eval_temperature", "is_mask_lower",
                               "overlong_buffer", "overlong_penalty"),
                 unit_interval=("gamma", "gae_lambda"),
                 probability=("top_p", "eval_top_p"), above_one=("dual_clip",))  # dual clip: its cap lies above the clip's
    if args.is_mask_lower >= args.is_cap:
        raise ConfigError(f"--is-mask-lower {args.is_mask_lower}: must be below --is-cap {args.is_cap}")
    if args.overlong_buffer >= args.max_response_tokens:
        raise ConfigError(f"--overlong-buffer {args.overlong_buffer}: must be below --max-response-tokens {args.max_response_tokens}")


# The command line is parsed and checked here, before the heavy imports below: torch alone takes ~2 s to import, and
# `--help` or a bad flag should answer at once. Imported as a module (as the tests do), the script parses nothing.
if __name__ == "__main__":
    ARGS = parse_args(Args, PRESETS)
    check_args(ARGS)

import torch  # noqa: E402  (after the settings: see above)
from tqdm import tqdm  # noqa: E402

from common.checkpoint import resume_state, save_checkpoint  # noqa: E402
from common.console import quiet_console  # noqa: E402
from common.dist import (all_reduce_max, exit_process, global_means, init_distributed, print0,  # noqa: E402
                         seed_everything, shutdown_distributed)
from common.metrics import (PhaseTimer, RunLogger, add_totals, end_of_step_metrics, evaluate_held_out,  # noqa: E402
                            evaluate_saved_policy, mismatch_totals, rollout_totals)
from common.model import (NonFiniteGuard, build_optimizer, build_scheduler, clip_grad_norm,  # noqa: E402
                          hf_named_parameters, load_critic, load_policy, load_tokenizer, lockstep_micro_batches,
                          logprobs_in_micro_batches, pad_batch, select_rows, use_bf16, values_in_micro_batches)
from common.tasks import batch_indices  # noqa: E402
from common.vllm_engine import ColocatedVLLM  # noqa: E402
from rewards.gsm8k import extract_answer, gsm8k_reward, parse_reference  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# Task: data, prompt, reward (the three things to change when forking this script for another task)
# ---------------------------------------------------------------------------------------------------------------
BASE_TEMPLATE = "Question: {question}\nAnswer:"
STOP = ["\n\nQuestion", "\n\nProblem"]  # oat's stop strings: an SFT model goes on to invent the next question
REASONS = ("correct", "no_answer", "wrong_value")


def load_problems(args: Args) -> tuple[list[dict], list[dict]]:
    """(train, test) lists of {"question": str, "answer": reference number as a string}."""
    splits = None
    if not args.use_local_data:
        try:
            import datasets

            splits = datasets.load_dataset(args.dataset, args.dataset_config)
        except Exception as e:  # no hub (offline machine): fall back, loudly, to the project's files
            print0(f"notice: cannot load {args.dataset!r} ({type(e).__name__}); using {args.local_data_dir} instead")
    if splits is None:
        splits = {name: [json.loads(line) for line in (Path(args.local_data_dir) / f"{name}.jsonl").read_text().splitlines() if line]
                  for name in ("train", "test")}
    out = []
    for name, size in (("train", args.train_size), ("test", args.test_size)):
        rows = splits[name]
        columns = rows.column_names if hasattr(rows, "column_names") else list(rows[0])
        missing = {args.question_field, args.answer_field} - set(columns)
        if missing:
            raise ConfigError(f"dataset {args.dataset!r} ({name}) has no field(s) {sorted(missing)} (it has {columns}): "
                              "set --question-field / --answer-field")
        rows = list(rows)[: size or None]
        out.append([{"question": r[args.question_field],
                     "answer": str(r[args.answer_field]).strip() if args.answer_is_final else parse_reference(r[args.answer_field])}
                    for r in rows])
    return out[0], out[1]


def make_prompt(problem: dict, tokenizer, template: str) -> str:
    """The text the model continues. chat: the question as a user message in the chat template; base: plain text."""
    if template == "base":
        return BASE_TEMPLATE.format(question=problem["question"])
    messages = [{"role": "user", "content": problem["question"]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def grade(text: str, problem: dict) -> tuple[float, str]:
    """(reward, reason): 1.0 when the final number equals the reference, else 0.0."""
    if extract_answer(text) is None:
        return 0.0, "no_answer"
    return (1.0, "correct") if gsm8k_reward(text, problem["answer"]) == 1.0 else (0.0, "wrong_value")


# ---------------------------------------------------------------------------------------------------------------
# Algorithm: advantages and loss
# ---------------------------------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (https://arxiv.org/abs/1506.02438 eq. 16) over right-padded responses.

    rewards, values (B, L) float, mask (B, L) bool (True on response tokens, one contiguous run per row).
    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0);  A_t = delta_t + gamma * lam * A_{t+1}.
    Returns advantages, returns = advantages + values, both (B, L) and 0 outside the mask.
    Example: one response of 2 tokens, rewards [0, 1], values [0.5, 0.8], gamma = lam = 1 -> A = [0.5, 0.2].
    """
    advantages = torch.zeros_like(rewards)                                      # (B, L)
    next_value = torch.zeros_like(rewards[:, 0])                                # (B,)
    next_advantage = torch.zeros_like(rewards[:, 0])                            # (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]               # (B,)
        a = delta + gamma * lam * next_advantage                                # (B,)
        # outside the response nothing is carried: after it, V and A stay 0; before it, they are never used
        next_advantage = torch.where(mask[:, t], a, next_advantage)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(mask[:, t], a, torch.zeros_like(a))
    return advantages, (advantages + values) * mask


def value_loss_terms(values, old_values, returns, value_clip: float):
    """Per-token clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-c)
    (PPO2's value clipping, https://github.com/openai/baselines/blob/ea25b9e8/baselines/ppo2/model.py#L68-L75).
    All inputs (b, l). Returns loss (b, l) and clipped (b, l) bool (the clipped term was the larger one)."""
    clipped_values = old_values + torch.clamp(values - old_values, -value_clip, value_clip)  # (b, l)
    unclipped_loss = (values - returns) ** 2                                    # (b, l)
    clipped_loss = (clipped_values - returns) ** 2                              # (b, l)
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), clipped_loss > unclipped_loss


def policy_loss_terms(logprobs, old_logprobs, ref_logprobs, advantages, clip_ratio: float, clip_ratio_high: float | None = None,
                      is_weights=None, mask=None, ratio_level: str = "token", dual_clip: float | None = None):
    """Per-token PPO-clip loss and k3 KL estimate. All inputs (b, l); advantages broadcast per token.

    pg = -w * min(ratio * A, clip(ratio, 1 - c, 1 + c_high) * A),  ratio = exp(logp - logp_old)   (PPO eq. 7)
      c_high: DAPO's clip-higher (https://arxiv.org/abs/2503.14476 §3.1), = c when None (PPO)
      dual_clip c_d: where A < 0, pg is at most -c_d * A before w (dual-clip PPO, https://arxiv.org/abs/1912.09729
        eq. 5): a token whose ratio exploded stops pushing the loss without bound
      w: the detached importance weight against the sampler (`sampler_correction`), 1 when None
      ratio_level "sequence": GSPO (https://arxiv.org/abs/2507.18071 §4.1) uses one ratio per response,
        exp(mean over its `mask` tokens of logp - logp_old), on each of its tokens (so the loss, a token mean, weights
        responses by length, unlike GSPO's mean over responses)
    kl = exp(ref - logp) - (ref - logp) - 1   (k3: unbiased, always >= 0; http://joschu.net/blog/kl-approx.html)
    Returns pg (b, l), kl (b, l), clipped (b, l) bool, dual_clipped (b, l) bool.
    Example (dual-clip): A = -1, ratio = 5, c = 0.2, c_d = 3: min(-5, -1.2) = -5, so pg = 5, capped at 3.
    """
    c_high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    log_ratio = logprobs - old_logprobs                                         # (b, l)
    if ratio_level == "sequence":
        m = mask.float()                                                        # (b, l)
        log_ratio = ((log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)).expand_as(log_ratio)
    ratio = torch.exp(log_ratio)                                                # (b, l)
    unclipped = ratio * advantages                                              # (b, l)
    clipped = torch.clamp(ratio, 1 - clip_ratio, 1 + c_high) * advantages       # (b, l)
    pg = -torch.minimum(unclipped, clipped)                                     # (b, l)
    dual_clipped = torch.zeros_like(pg, dtype=torch.bool)                       # (b, l)
    if dual_clip is not None:
        cap = -dual_clip * advantages                                           # (b, l): > 0 where A < 0
        dual_clipped = (advantages < 0) & (pg > cap)                            # (b, l)
        pg = torch.where(dual_clipped, cap, pg)                                 # (b, l)
    if is_weights is not None:
        pg = is_weights * pg                                                    # (b, l)
    log_ratio_ref = ref_logprobs - logprobs                                     # (b, l)
    kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1                           # (b, l)
    return pg, kl, clipped < unclipped, dual_clipped


def sampler_correction(old_logprobs, vllm_logprobs, mask, mode: str, cap: float, lower: float = 0.0):
    """Importance weights for the gap between the policy that sampled (vLLM: its kernels, bf16, top-p) and the
    trainer's old policy, from the sampled tokens' log-probs. All inputs (B, L), mask bool.

    rho_t = exp(logp_old - logp_vllm) per token;  rho = prod_t rho_t per response (TRL: a sum of log-ratios)
      token_tis:     w_t = min(rho_t, C)   (truncated IS, Yao et al. 2025, https://fengyao.notion.site/off-policy-rl)
      sequence_mask: w_t = rho if lower <= rho <= C, else 0: the response leaves the loss (masked IS, as TRL's
                     default `vllm_importance_sampling_mode="sequence_mask"`, trl #4493)
      none:          w_t = 1
    With top_p < 1 vLLM's log-probs are renormalised over the nucleus while the trainer's are not: rho_t is then
    also the nucleus' probability mass (<= 1), and the weights correct for top-p as well.
    Returns w (B, L) (0 outside the mask), over_cap (B, L) bool (rho_t > C), outside (B,) bool (rho out of
    [lower, C]), k3 (B, L): rho_t - log rho_t - 1, an estimate of KL(vLLM || trainer) per token.
    Example: log-ratios [[0, log 4]], mask all True, C = 3: token_tis -> [[1, 3]]; sequence_mask -> rho = 4 > 3 -> [[0, 0]].
    """
    log_ratio = (old_logprobs - vllm_logprobs) * mask                           # (B, L)
    token_ratio = torch.exp(log_ratio)                                          # (B, L)
    seq_ratio = torch.exp(log_ratio.sum(-1))                                    # (B,)
    outside = (seq_ratio > cap) | (seq_ratio < lower)                           # (B,)
    if mode == "token_tis":
        weights = torch.clamp(token_ratio, max=cap)                             # (B, L)
    elif mode == "sequence_mask":
        weights = torch.where(outside, torch.zeros_like(seq_ratio), seq_ratio)[:, None].expand_as(token_ratio)  # (B, L)
    else:
        weights = torch.ones_like(token_ratio)                                  # (B, L)
    return weights * mask, (token_ratio > cap) & mask, outside, (torch.expm1(log_ratio) - log_ratio) * mask  # expm1: k3 >= 0 near 0


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (https://arxiv.org/abs/2503.14476 §3.4, eq. 13), added to the reward: 0 up to
    `max_tokens - buffer` tokens, then falling linearly to -penalty at `max_tokens` (longer is cut by generation).
    lengths (B,) -> (B,). Example: max 20, buffer 10, penalty 1: lengths [5, 10, 15, 20] -> [0, 0, -0.5, -1]."""
    if buffer == 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    return -penalty * ((lengths.float() - (max_tokens - buffer)).clamp(min=0) / buffer).clamp(max=1.0)


def main(args: Args) -> None:
    if args.eval_only is not None:  # derived: the model under evaluation
        args.model = policy_dir(args.eval_only)
    quiet_console(args.verbose)
    dist = init_distributed()
    world = dist.world_size
    local_prompts, num_mini, local_mini = batch_sizes(args, world)
    check_model_source(args.model)
    run_dir = Path(args.out_dir) / args.exp_name
    seed_everything(args.seed)
    tokenizer = load_tokenizer(args.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set, test_set = load_problems(args)
    if len(test_set) == 0:
        raise ConfigError("the held-out set is empty: set --test-size > 0")
    if args.num_steps == 0:  # derived: `data_passes` over the training questions
        args.num_steps = math.ceil(args.data_passes * len(train_set) / args.prompts_per_step)
    encode = lambda problem: tokenizer(make_prompt(problem, tokenizer, args.prompt_template)).input_ids
    test_share = test_set[dist.rank:: world]  # this rank's share of the held-out set, tokenized once
    test_prompt_ids = [encode(p) for p in test_share]
    first = [train_set[i] for i in batch_indices(0, args.prompts_per_step, len(train_set), args.seed)][dist.rank:: world]
    check_prompt_lengths([*zip(test_prompt_ids, test_share), *((encode(p), p) for p in first)], args.max_prompt_tokens,
                         dist.device)  # one line naming the longest
    held_out = lambda engine, step: evaluate_held_out(engine, test_share, test_prompt_ids, grade, STOP, args, step, dist.device)

    if args.eval_only is not None:  # evaluate a saved policy on the held-out set, write its samples, stop
        evaluate_saved_policy(args, dist, held_out, run_dir)
        return shutdown_distributed()

    # ---- models: policy and critic (trained), reference (frozen, for the KL terms), one vLLM engine per rank
    bf16 = use_bf16(args.bf16, dist.device)  # on CPU only with AMX, where it pays
    policy = load_policy(args.model, dist, bf16=bf16, activation_checkpointing=args.activation_checkpointing,
                         reshard_after_forward=args.reshard_after_forward)
    critic = load_critic(args.model, dist, bf16=bf16, activation_checkpointing=args.activation_checkpointing,
                         reshard_after_forward=args.reshard_after_forward)
    reference = (load_policy(args.model, dist, bf16=bf16, trainable=False, cpu_offload=args.ref_cpu_offload)
                 if args.kl_coef > 0 or args.kl_penalty_coef > 0 else None)
    optimizer = build_optimizer(policy, args.learning_rate, weight_decay=args.weight_decay)
    critic_optimizer = build_optimizer(critic, args.critic_learning_rate, weight_decay=args.weight_decay)
    total_updates = args.num_steps * args.epochs_per_rollout * num_mini
    scheduler = build_scheduler(optimizer, args.lr_schedule, args.warmup_steps, total_updates)
    critic_scheduler = build_scheduler(critic_optimizer, args.lr_schedule, args.warmup_steps, total_updates)
    engine = ColocatedVLLM.from_args(args, dist)
    trained = dict(models={"policy": policy, "critic": critic}, optimizers={"policy": optimizer, "critic": critic_optimizer},
                   schedulers={"policy": scheduler, "critic": critic_scheduler})
    start_step = resume_state(args.resume, run_dir, dist, **trained)["step"]  # 0 for a fresh start
    logger = RunLogger(run_dir, asdict(args), enabled=dist.is_main, track=args.track, project=args.wandb_project,
                       run_name=args.exp_name, resume=start_step > 0, start_step=start_step)
    timer = PhaseTimer(dist.device)
    guard = NonFiniteGuard(args.max_nonfinite_skips, dist)  # no optimizer step on a NaN/inf loss or gradient norm

    def evaluate(step: int) -> dict[str, float]:
        """Sample this rank's share of the held-out set and grade it (the engine must be awake and synced)."""
        stats, rows = held_out(engine, step)
        logger.log_samples(rows[:: args.eval_samples_per_prompt][: args.eval_samples_logged], step)  # 1 per problem
        return stats

    started = time.time()
    progress = tqdm(range(start_step, args.num_steps), initial=start_step, total=args.num_steps, disable=not dist.is_main,
                    desc="PPO", dynamic_ncols=True)
    for step in progress:
        step_start = time.perf_counter()
        metrics: dict[str, float] = {}
        # ===== 1. rollout: wake vLLM, push the current weights (exactly checked), (evaluate), sample G completions per
        # question and grade them
        with timer("sync"):
            engine.wake_and_sync(policy, hf_named_parameters(policy), step=step)
        if step % args.eval_every == 0:
            with timer("eval"):
                metrics.update(evaluate(step))
        shard = batch_indices(step, args.prompts_per_step, len(train_set), args.seed)[dist.rank * local_prompts:][:local_prompts]
        problems = [train_set[i] for i in shard]  # this rank's shard
        prompt_ids = [encode(p) for p in problems]
        with timer("generate"):
            groups = engine.generate(prompt_ids, n=args.samples_per_prompt, temperature=args.temperature, top_p=args.top_p,
                                     max_tokens=args.max_response_tokens, stop=STOP, seed=args.seed, step=step)
        with timer("grade"):
            grades = [[grade(c.text, p) for c in g] for p, g in zip(problems, groups)]
        if args.sync_probe_sequences:  # vLLM re-scores a few samples: its log-probs must be the trainer's
            with timer("probe"):
                metrics["train/sync_probe_error"] = engine.probe_sync(
                    policy, [prompt_ids[i] + c.token_ids for i, g in enumerate(groups) for c in g][: args.sync_probe_sequences],
                    bound=args.sync_probe_bound, seed=args.seed, step=step)
        engine.sleep()
        samples = [(i, c) for i, g in enumerate(groups) for c in g]
        batch = pad_batch([prompt_ids[i] for i, _ in samples], [c.token_ids for _, c in samples], pad_id)  # (B, L) each
        mask = batch["response_mask"]                                                                   # (B, L)
        lengths = mask.sum(-1)                                                                          # (B,)

        # ===== 2. rewards: the grader's plus DAPO's overlong shaping; with --mask-truncated, responses cut at the length
        # limit leave the loss
        penalties = overlong_penalty(lengths, args.max_response_tokens, args.overlong_buffer, args.overlong_penalty)  # (B,)
        rewards = torch.tensor([r for g in grades for r, _ in g], dtype=torch.float32) + penalties      # (B,)
        truncated = torch.tensor([c.finish_reason == "length" for _, c in samples])                     # (B,) bool
        loss_mask = mask & ~truncated[:, None] if args.mask_truncated else mask                         # (B, L)
        train_rows = loss_mask.any(-1)                                                                  # (B,) bool

        # ===== 3. old and reference log-probs and old values (no grad), recomputed by the trainer
        with timer("logprob"):
            old_logprobs, _ = logprobs_in_micro_batches(policy, batch, temperature=args.temperature,
                                                        max_tokens=args.logprob_token_budget, device=dist.device)  # (B, L)
            ref_logprobs = (logprobs_in_micro_batches(reference, batch, temperature=args.temperature,
                                                      max_tokens=args.logprob_token_budget, device=dist.device)[0]
                            if reference is not None else old_logprobs)                                # (B, L)
            old_values = values_in_micro_batches(critic, batch, max_tokens=args.logprob_token_budget, device=dist.device) * mask  # (B, L)
        vllm_logprobs = torch.zeros_like(old_logprobs)                                                  # (B, L)
        vllm_logprobs[mask] = torch.tensor([lp for _, c in samples for lp in c.logprobs])
        # importance weights against the sampler (vLLM), fixed for the whole update: they use no trained quantity
        correction = sampler_correction(old_logprobs, vllm_logprobs, loss_mask, args.is_correction, args.is_cap, args.is_mask_lower)
        is_weights = correction[0]                                                                      # (B, L)

        # ===== 4. advantages: the task reward on each response's last token (+ optional KL penalty per token), GAE
        last = (mask * torch.arange(mask.shape[1])).argmax(-1)                                          # (B,)
        token_rewards = -args.kl_penalty_coef * (old_logprobs - ref_logprobs) * mask                    # (B, L)
        token_rewards[torch.arange(len(samples)), last] += rewards
        advantages, returns = gae(token_rewards, old_values, mask, args.gamma, args.gae_lambda)          # (B, L) each
        if args.whiten_advantages:  # over all response tokens of all ranks
            moments = global_means({"m": (float(advantages[mask].sum()), float(mask.sum())),
                                    "m2": (float((advantages[mask] ** 2).sum()), float(mask.sum()))}, dist.device)
            advantages = (advantages - moments["m"]) / math.sqrt(max(moments["m2"] - moments["m"] ** 2, 0.0) + 1e-8) * mask

        # ===== 5. policy and critic update: epochs x mini-batches x micro-batches, one optimizer step per mini-batch
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # key -> [sum, count] on this rank
        seq_lengths = batch["attention_mask"].sum(-1).tolist()  # padded tokens a sample brings to a micro-batch
        with timer("train"):
            rng = random.Random(args.seed * 100_003 + step)  # shuffle after advantages are computed, never before
            for _ in range(args.epochs_per_rollout):
                order = rng.sample(range(len(samples)), len(samples))
                for m in range(num_mini):
                    mini = sorted(order[m * local_mini: (m + 1) * local_mini], key=lambda i: -int(mask[i].sum()))  # less padding
                    # loss normaliser over the whole mini-batch on all ranks, so the gradient does not depend on
                    # how the batch is split into micro-batches or ranks (docs/design.md)
                    normaliser = global_means({"n": (float(loss_mask[mini].sum()), 1.0)}, dist.device)["n"] * world
                    mini_loss = 0.0  # this rank's share of the mini-batch loss, for the non-finite guard
                    # FSDP lockstep: a rank with fewer micro-batches (token budget, truncated samples left out) runs its
                    # shortest sample at zero weight (same graph, no gradient)
                    for rows in lockstep_micro_batches([i for i in mini if train_rows[i]], seq_lengths, size=args.micro_batch_size,
                                                       token_budget=args.train_token_budget, device=dist.device):
                        live, rows = float(bool(rows)), rows or mini[-1:]
                        mb = select_rows(batch, rows, dist.device)
                        l = mb["input_ids"].shape[1]
                        logprobs, entropy = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"], args.temperature)  # (b, l)
                        m_tok = mb["response_mask"].float() * live                                           # (b, l); 0: stand-in
                        pg, kl, clipped, dual = policy_loss_terms(
                            logprobs, old_logprobs[rows, :l].to(dist.device), ref_logprobs[rows, :l].to(dist.device),
                            advantages[rows, :l].to(dist.device), args.clip_ratio, args.clip_ratio_high,
                            is_weights[rows, :l].to(dist.device), mb["response_mask"], args.ratio_level, args.dual_clip)  # (b, l)
                        values = critic(mb["input_ids"], mb["attention_mask"])                                   # (b, l)
                        vf, vf_clipped = value_loss_terms(values, old_values[rows, :l].to(dist.device),
                                                          returns[rows, :l].to(dist.device), args.value_clip)       # (b, l)
                        actor_on = float(step >= args.critic_warmup_steps)  # 0: zero policy gradient, Adam does not move
                        loss = ((actor_on * (pg + args.kl_coef * kl) + vf) * m_tok).sum() / normaliser  # one backward, both models
                        # FSDP averages gradients over ranks; we want the sum over ranks of each rank's share
                        (loss * world).backward()
                        mini_loss += loss.item()
                        add_totals(totals, {"train/pg_loss": pg, "train/kl": kl, "train/entropy": entropy,
                                            "train/clip_frac": clipped, "train/dual_clip_frac": dual,
                                            "train/value_loss": vf, "train/value_clip_frac": vf_clipped}, m_tok)
                    grad_norms = [clip_grad_norm(model, args.max_grad_norm) for model in (policy, critic)]
                    finite = guard.all_finite(step, mini_loss, *grad_norms)  # one all-reduce: every rank steps, or none does
                    for name, grad_norm, opt, sched in (("grad_norm", grad_norms[0], optimizer, scheduler),
                                                        ("critic_grad_norm", grad_norms[1], critic_optimizer, critic_scheduler)):
                        totals[f"train/{name}"][0] += grad_norm
                        totals[f"train/{name}"][1] += 1.0 / world  # every rank sees the same global norm
                        if finite:
                            opt.step()
                        sched.step()
                        opt.zero_grad(set_to_none=True)

        # ===== 6. log (one all-reduce for all sums and counts)
        n = float(len(samples))
        totals.update(rollout_totals(grades, groups, REASONS, world))
        totals.update(mismatch_totals(vllm_logprobs, old_logprobs, loss_mask, correction, train_rows))
        totals.update({
            "reward/overlong_penalty": [float(penalties.sum()), n],
            "train/advantage_mean": [float(advantages[mask].sum()), float(mask.sum())],
            "train/advantage_sq": [float((advantages[mask] ** 2).sum()), float(mask.sum())],
            "train/value_mean": [float(old_values[mask].sum()), float(mask.sum())],
            "train/return_mean": [float(returns[mask].sum()), float(mask.sum())],
            "train/return_sq": [float((returns[mask] ** 2).sum()), float(mask.sum())],
            "train/residual_mean": [float((returns - old_values)[mask].sum()), float(mask.sum())],
            "train/residual_sq": [float(((returns - old_values)[mask] ** 2).sum()), float(mask.sum())],
        })
        metrics.update(global_means({k: tuple(v) for k, v in totals.items()}, dist.device))
        metrics["rollout/response_len_max"] = all_reduce_max(int(lengths.max()), dist.device)
        metrics.update(guard.pop())
        variance = lambda key: metrics.pop(f"train/{key}_sq") - metrics[f"train/{key}_mean"] ** 2
        metrics["train/advantage_std"] = math.sqrt(max(variance("advantage"), 0.0))
        # explained variance of the returns by the old values: 1 is a perfect critic, <= 0 no better than a constant
        residual_var, return_var = variance("residual"), variance("return")
        metrics.pop("train/residual_mean")
        metrics["train/explained_variance"] = 1.0 - residual_var / return_var if return_var > 1e-12 else 0.0  # constant returns
        metrics.update(end_of_step_metrics(timer, step_start, metrics["rollout/tokens"], dist.device))
        metrics.update({"train/lr": scheduler.get_last_lr()[0], "train/critic_lr": critic_scheduler.get_last_lr()[0]})
        logger.log(metrics, step)
        progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['reward/accuracy']:.3f}")

        # ===== 7. checkpoint
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.num_steps:
            with timer("checkpoint"):
                save_checkpoint(run_dir / f"step_{step + 1:06d}", dist, **trained, state={"step": step + 1}, tokenizer=tokenizer)

    # ===== final evaluation and checkpoint
    engine.wake_and_sync(policy, hf_named_parameters(policy), step=args.num_steps)
    final = evaluate(args.num_steps)
    engine.sleep()
    logger.log(final, args.num_steps)
    save_checkpoint(run_dir / f"step_{args.num_steps:06d}", dist, **trained, state={"step": args.num_steps}, tokenizer=tokenizer)
    print0(logger.summary(started))
    logger.finish()
    engine.shutdown()
    del policy, critic, reference, optimizer, critic_optimizer, scheduler, critic_scheduler, trained
    shutdown_distributed()


if __name__ == "__main__":
    main(ARGS)
    exit_process()  # all is written and closed: skip Python's ~2.5 s teardown of torch and vLLM
