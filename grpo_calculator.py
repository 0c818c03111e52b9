"""GRPO with a tool, in one file: multi-turn rollouts in which the model calls a calculator (a fork of grpo_countdown.py).

Task: arithmetic ("What is 347 * 28 - 196?") that a small model's own arithmetic gets wrong. The model may write an
expression between <calc> and </calc>; the rollout runs the calculator (`tools/calculator.py`) on it and appends its
value between <result> and </result>; the final answer goes between <answer> and </answer> (`rewards.arithmetic`:
1 correct, 0.1 answer tag but wrong, 0 no answer tag).

Algorithm (GRPO, DeepSeekMath https://arxiv.org/abs/2402.03300 §4; R1-zero recipe https://arxiv.org/abs/2501.12948):
for each step, sample G trajectories for each of P prompts from the current policy (vLLM, in turns with the tool),
grade them with a rule, turn each reward into an advantage relative to the other G samples of the same prompt, and
take PPO-clip steps on those advantages with a k3 KL penalty to the frozen initial policy. No critic, no reward model.
`diff grpo_countdown.py grpo_calculator.py` shows what a tool changes: the task block (with `call_tool`), its
settings, and the rollout phase, which samples in turns (`common.multiturn.rollout`): each turn is one batched
`generate` over every unfinished trajectory of the rank, stopped at the tool call's closing tag; the tool runs, its
output is tokenized once and appended, and the next turn continues from the exact token ids so far, never from
re-encoded text (BPE would merge tokens across a turn's boundary, and the trainer would score tokens that were never
sampled: docs/tool_use.md). Limits: `--max-turns`, `--max-response-tokens`, `--max-tool-tokens`. Only sampled tokens
train: the batch's `response_mask` marks them, so the loss, the KL term, the importance weights and every per-token
metric see the tool's tokens as context. Seeds per (step, rank, trajectory, turn). `--no-tool`: every call errs.

Departures from the paper, all deliberate:
- Token-level loss aggregation (DAPO https://arxiv.org/abs/2503.14476 §3.3): the loss is the mean over every
  response token of the mini-batch, on all ranks together, not a mean over sequences of per-sequence means.
  `--advantage dr_grpo` gives Dr. GRPO (https://arxiv.org/abs/2503.20783 §3.1): no std normalisation and a
  constant normaliser (mini-batch size x max response tokens).
- Old-policy log-probs are recomputed by the trainer, not taken from vLLM; the gap is logged (`train/mismatch_kl`)
  and corrected by importance weights on the policy-gradient term (`--is-correction`: TRL's sequence mask by
  default, or Yao et al.'s truncated IS). After each weight sync, exact checksums and a log-prob probe stop the run
  if vLLM does not compute with the trainer's weights (a silent mismatch is a known failure of colocated RL).
- Prompts whose G samples all got the same reward (advantage 0, no policy gradient) skip the trainer's log-prob
  pass and the update's forward and backward passes (`--skip-zero-signal-groups`). `--dynamic-sampling` goes further
  (DAPO §3.2): it draws and samples further prompts until every rank has its share of groups with signal.
- DAPO's other pieces are options, off by default: overlong reward shaping and truncated samples out of the loss
  (§3.4: `--overlong-buffer`, `--mask-truncated`), clip-higher (§3.1: `--clip-ratio-high`); and dual-clip PPO
  (`--dual-clip`). docs/loss.md has the formulas and the recipe.
- Generation stops at "</answer>" (everything after it is never graded) and at "</calc>" (the tool runs).

Launch:
    torchrun --nproc_per_node 8 grpo_calculator.py                      # Qwen2.5-3B, 8 GPUs
    torchrun --nproc_per_node 2 grpo_calculator.py --preset tiny        # the shipped tiny model, 2 CPU processes
    python grpo_calculator.py --preset tiny --num-steps 3               # one process
    python grpo_calculator.py --preset tiny --eval-only tiny_models/calculator --no-tool  # the model without its tool
"""

from __future__ import annotations

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
    model: str = "Qwen/Qwen2.5-3B"
    """policy to train: a local Hugging Face directory or a hub id"""
    # ---- data (generated: `common.tasks.make_arithmetic_problems`)
    train_size: int = 327_680
    """training problems"""
    test_size: int = 1024
    """held-out problems"""
    num_operands: tuple[int, ...] = (2, 3)
    """numbers per problem (one of these per problem): one calculator call per operation"""
    max_number: int = 999
    """numbers are drawn from 2..max_number"""
    max_value: int = 1_000_000
    """every step of a problem's arithmetic lies in 0..max_value"""
    test_seed: int = 1
    """held-out set's seed (training problems exclude it; 1 = the shipped tiny model's held-out set)"""
    prompt_template: Literal["base", "chat"] = "base"
    """`base`: a plain-text template for base models; `chat`: the tokenizer's chat template (instruct models)"""
    # ---- tool
    max_turns: int = 6
    """model turns (generate calls) per trajectory: a tool call in the last one ends the trajectory unanswered"""
    max_tool_tokens: int = 64
    """a tool's output is cut to this many tokens"""
    no_tool: bool = False
    """every tool call answers "error: tool disabled": the same model without its tool (with --eval-only)"""
    # ---- rollout
    num_steps: int = 200
    """training steps (one rollout + one policy update each)"""
    prompts_per_step: int = 128
    """P: prompts per step, over all ranks"""
    samples_per_prompt: int = 8
    """G: completions per prompt (the group of GRPO)"""
    temperature: float = 1.0
    """sampling temperature; the trainer divides its logits by the same value"""
    top_p: float = 0.9
    """nucleus sampling"""
    max_prompt_tokens: int = 256
    """a longer prompt is an error"""
    max_response_tokens: int = 1024
    """a trajectory's tokens after its prompt, sampled and tool tokens together, are cut here (`rollout/truncated`)"""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (§3.2): while a rank has fewer than its share of prompts whose G rewards differ, draw
    and sample further prompts (a round); the step trains on its share of those, zero-signal groups filling a shortfall"""
    max_generation_rounds: int = 3
    """dynamic sampling: at most this many rounds per step (verl's max_num_gen_batches)"""
    overlong_buffer: int = 0
    """L_cache of DAPO's overlong shaping (§3.4): a response within L_cache tokens of --max-response-tokens loses up to
    --overlong-penalty of reward, linearly (0: off)"""
    overlong_penalty: float = 1.0
    """the largest overlong penalty (DAPO: 1)"""
    mask_truncated: bool = False
    """DAPO's overlong filtering (§3.4): responses cut at --max-response-tokens leave the loss and its normaliser"""
    # ---- policy update
    mini_batch_size: int = 128
    """samples per optimizer step, over all ranks (P*G/mini_batch_size optimizer steps per epoch)"""
    micro_batch_size: int = 2
    """samples per forward/backward on each rank (gradient accumulation up to the mini-batch)"""
    epochs_per_rollout: int = 1
    """passes over each rollout"""
    learning_rate: float = 1e-6
    """AdamW learning rate"""
    lr_schedule: Literal["constant", "cosine", "polynomial"] = "constant"
    """decay over the whole run after warm-up"""
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
    kl_coef: float = 1e-3
    """weight of the k3 KL estimate to the reference policy in the loss (0 skips the reference model)"""
    advantage: Literal["grpo", "dr_grpo"] = "grpo"
    """grpo: (r - mean) / (std + eps) per prompt, token-mean loss; dr_grpo: r - mean, constant normaliser"""
    skip_zero_signal_groups: bool = True
    """leave prompts whose G rewards are all equal out of the update's passes (their gradient is 0; see the update loop)"""
    # ---- evaluation
    eval_every: int = 8
    """evaluation on the held-out set every N steps (and at the start and the end)"""
    eval_samples_per_prompt: int = 1
    """completions per held-out problem (`eval/pass_at_k` uses all of them)"""
    eval_temperature: float = 0.0
    """0 is greedy"""
    eval_top_p: float = 1.0
    """nucleus sampling at evaluation"""


PRESETS = {
    "default": Args(),
    "tiny": Args(preset="tiny", model="tiny_models/calculator", train_size=20_000, test_size=200,
                 # held-out accuracy is up from 28.5% by step 5, then stays; top-p 1: every digit stays reachable (docs/tool_use.md)
                 num_steps=20, prompts_per_step=64, samples_per_prompt=8, top_p=1.0, max_response_tokens=96, max_turns=4, max_tool_tokens=24,
                 # 2 optimizer steps per rollout, not 8: as accurate in half the steps, each step cheaper (docs/cpu_performance.md)
                 mini_batch_size=256, micro_batch_size=128, learning_rate=2e-4, lr_schedule="cosine", warmup_steps=10,
                 kl_coef=0.0, eval_every=5, logprob_token_budget=4096,
                 save_every=0, activation_checkpointing=False, reshard_after_forward=False, vllm_cpu_kv_cache_gb=0.25,
                 bf16=True),  # on a CPU with AMX: 10-20% faster steps than float32, as accurate (docs/cpu_performance.md)
}


def check_args(args: Args) -> None:
    """Every setting whose range matters, checked right after parsing, before anything loads: a bad one ends the run
    with one `error:` line naming its flag. To check a new field, add its name to a rule (see common.config)."""
    check_run_args(args)
    check_ranges(args,
                 positive=("num_steps", "prompts_per_step", "samples_per_prompt", "temperature", "max_prompt_tokens",
                           "max_response_tokens", "mini_batch_size", "micro_batch_size", "epochs_per_rollout",
                           "learning_rate", "max_grad_norm", "clip_ratio", "clip_ratio_high", "train_size", "test_size",
                           "max_number", "max_value", "max_turns", "max_tool_tokens", "eval_every", "eval_samples_per_prompt",
                           "is_cap", "max_generation_rounds"),
                 non_negative=("warmup_steps", "weight_decay", "kl_coef", "eval_temperature", "test_seed",
                               "is_mask_lower", "overlong_buffer", "overlong_penalty"),
                 probability=("top_p", "eval_top_p"), above_one=("dual_clip",))  # dual clip: its cap lies above the clip's
    if args.samples_per_prompt < 2:  # one sample is its own group mean: every advantage would be 0
        raise ConfigError(f"--samples-per-prompt {args.samples_per_prompt}: GRPO compares the samples of a prompt, use >= 2")
    if not args.num_operands or min(args.num_operands) < 2:
        raise ConfigError(f"--num-operands {args.num_operands}: a problem needs >= 2 numbers (one operation)")
    if args.max_turns * (args.max_generation_rounds if args.dynamic_sampling else 1) > 64:  # common.dist.TURN_STRIDE
        raise ConfigError(f"--max-turns {args.max_turns}: at most 64 turns (x rounds of dynamic sampling) a step are seeded")
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
from common.metrics import (PhaseTimer, RunLogger, add_totals, end_of_step_metrics, evaluate_saved_policy,  # noqa: E402
                            mismatch_totals, rollout_totals)
from common.model import (NonFiniteGuard, build_optimizer, build_scheduler, clip_grad_norm,  # noqa: E402
                          hf_named_parameters, load_policy, load_tokenizer, lockstep_micro_batches,
                          logprobs_in_micro_batches, pad_batch, select_rows, use_bf16)
from common.multiturn import evaluate_in_turns, rollout, tool_use_totals  # noqa: E402
from common.tasks import batch_indices, make_arithmetic_problems, stream_indices  # noqa: E402
from common.vllm_engine import ColocatedVLLM  # noqa: E402
from rewards.arithmetic import ARITHMETIC_REASONS, grade_arithmetic  # noqa: E402
from tools.calculator import DISABLED, calculator  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# Task: data, prompt, reward, tool (the four things to change when forking this script for another task with a tool)
# ---------------------------------------------------------------------------------------------------------------
INSTRUCTIONS = ("The Assistant has a calculator: it writes an expression between <calc> and </calc>, and reads its "
                "value between <result> and </result>. It gives the final answer between <answer> and </answer>.")
TEMPLATE = "A conversation between User and Assistant. {instructions}\nUser: {question}\nAssistant:"  # base models
QUESTION = "What is {expression}?"
CALL_OPEN, CALL_CLOSE = "<calc>", "</calc>"
STOP = ["</answer>", CALL_CLOSE]  # an answer ends the trajectory; a tool call ends the turn (`call_tool` runs it)
REASONS = ARITHMETIC_REASONS  # every reason `grade` returns: one `reward/reason_<r>` metric each


def load_problems(args: Args) -> tuple[list[dict], list[dict]]:
    """(train, test) lists of {"expression": "347 * 28 - 196", "value": 9520, "steps": [...]}, generated."""
    shape = dict(num_operands=args.num_operands, max_number=args.max_number, max_value=args.max_value)
    test = make_arithmetic_problems(args.test_size, seed=args.test_seed, **shape)
    train = make_arithmetic_problems(args.train_size, seed=args.seed, exclude={p["expression"] for p in test}, **shape)
    return train, test


def make_prompt(problem: dict, tokenizer, template: str) -> str:
    """The text the model continues. base: TEMPLATE (the shipped tiny model learned exactly this text); chat: the
    instructions as the system message and the question as the user's, in the tokenizer's chat template."""
    question = QUESTION.format(expression=problem["expression"])
    if template == "base":
        return TEMPLATE.format(instructions=INSTRUCTIONS, question=question)
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def grade(text: str, problem: dict) -> tuple[float, str]:
    """(reward, reason) of the model's own text (every turn's, no tool output): 1.0 correct, 0.1 a wrong or
    unreadable answer, 0.0 no answer tag."""
    g = grade_arithmetic(text, problem["value"])
    return g.reward, g.reason


def call_tool(turn_text: str, problem: dict, enabled: bool = True) -> tuple[str, bool] | None:
    """The tool: None when the turn did not end in a call (the trajectory ends), else (the text to append, whether
    the tool reported an error). Pure and bounded, as a grader: a bad call is an error the model reads.
    '...<calc>347*28</calc>' -> ('<result>9716</result>', False); '<calc>1/0</calc>' -> ('<result>error: division by
    zero</result>', True)."""
    if not turn_text.endswith(CALL_CLOSE):
        return None
    output = calculator(turn_text[: -len(CALL_CLOSE)].rpartition(CALL_OPEN)[2]) if enabled else DISABLED
    return f"<result>{output}</result>", output.startswith("error:")


# ---------------------------------------------------------------------------------------------------------------
# Algorithm: advantages and loss
# ---------------------------------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantage of each sample relative to the other samples of its prompt.

    rewards (B,), group_ids (B,) = index of the prompt of each sample (any order) -> advantages (B,).
    Example: rewards [1, 0, 0.1, 0.1], groups [0, 0, 1, 1], scale_by_std=False -> [0.5, -0.5, 0, 0].
    """
    advantages = torch.zeros_like(rewards)                                      # (B,)
    for g in group_ids.unique():
        members = group_ids == g                                                # (B,)
        r = rewards[members]                                                    # (G,)
        if (r == r[0]).all():  # no signal: exactly 0 (r - r.mean() can leave ~1e-8, which the std division blows up to ~1e-2)
            continue
        a = r - r.mean()
        if scale_by_std:  # DeepSeekMath eq. in §4.1.2; Dr. GRPO drops it (it favours too easy / too hard prompts)
            a = a / (r.std() + eps) if len(r) > 1 else a
        advantages[members] = a
    return advantages


def zero_signal(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """True for each sample of a prompt whose G rewards are all equal: its advantage is 0, so it adds nothing to
    the policy gradient (DAPO https://arxiv.org/abs/2503.14476 §3.2 resamples such groups; we skip their passes).

    rewards (B,), group_ids (B,) -> (B,) bool. Example: rewards [1, 0, 0.1, 0.1], groups [0, 0, 1, 1] -> [F, F, T, T].
    """
    out = torch.zeros_like(rewards, dtype=torch.bool)                           # (B,)
    for g in group_ids.unique():
        members = group_ids == g                                                # (B,)
        out[members] = bool((rewards[members] == rewards[members][0]).all())
    return out


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
    encode = lambda problem: tokenizer(make_prompt(problem, tokenizer, args.prompt_template)).input_ids
    test_share = test_set[dist.rank:: world]  # this rank's share of the held-out set, tokenized once
    test_prompt_ids = [encode(p) for p in test_share]
    first = [train_set[i] for i in batch_indices(0, args.prompts_per_step, len(train_set), args.seed)][dist.rank:: world]
    check_prompt_lengths([*zip(test_prompt_ids, test_share), *((encode(p), p) for p in first)], args.max_prompt_tokens,
                         dist.device)  # one line naming the longest
    held_out = lambda engine, step: evaluate_in_turns(engine, tokenizer, test_share, test_prompt_ids, grade, STOP, call_tool,
                                                      args, step, dist.device)

    if args.eval_only is not None:  # evaluate a saved policy on the held-out set, write its samples, stop
        evaluate_saved_policy(args, dist, held_out, run_dir)
        return shutdown_distributed()

    # ---- models: policy (trained), reference (frozen, for the KL term), one vLLM engine per rank
    bf16 = use_bf16(args.bf16, dist.device)  # on CPU only with AMX, where it pays
    policy = load_policy(args.model, dist, bf16=bf16, activation_checkpointing=args.activation_checkpointing,
                         reshard_after_forward=args.reshard_after_forward)
    reference = (load_policy(args.model, dist, bf16=bf16, trainable=False, cpu_offload=args.ref_cpu_offload)
                 if args.kl_coef > 0 else None)
    optimizer = build_optimizer(policy, args.learning_rate, weight_decay=args.weight_decay)
    total_updates = args.num_steps * args.epochs_per_rollout * num_mini
    scheduler = build_scheduler(optimizer, args.lr_schedule, args.warmup_steps, total_updates)
    engine = ColocatedVLLM.from_args(args, dist)
    trained = dict(models={"policy": policy}, optimizers={"policy": optimizer}, schedulers={"policy": scheduler})
    state = resume_state(args.resume, run_dir, dist, **trained)  # {"step": 0} for a fresh start
    start_step = state["step"]
    # prompts drawn from the training stream so far, over all ranks (dynamic sampling draws more than P per step)
    position = state.get("data_position", start_step * args.prompts_per_step)
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
                    desc="GRPO", dynamic_ncols=True)
    for step in progress:
        step_start = time.perf_counter()
        metrics: dict[str, float] = {}
        # ===== 1. rollout: wake vLLM, push the current weights (exactly checked), (evaluate), sample G completions per
        # prompt and grade them; with --dynamic-sampling, further rounds of prompts until every rank has its share of
        # groups whose rewards differ. Ranks agree on the number of rounds (an all-reduce each) and all sample in each
        # (ranks of one tensor-parallel vLLM replica must make the same calls; a rank done early costs no wall time).
        with timer("sync"):
            engine.wake_and_sync(policy, hf_named_parameters(policy), step=step)
        if step % args.eval_every == 0:
            with timer("eval"):
                metrics.update(evaluate(step))
        problems, prompt_ids, groups, grades, has_signal, first_drawn = [], [], [], [], [], position
        for round_ in range(args.max_generation_rounds if args.dynamic_sampling else 1):
            if round_ and not all_reduce_max(int(sum(has_signal) < local_prompts), dist.device):
                break
            shard = stream_indices(position + dist.rank * local_prompts, local_prompts, len(train_set), args.seed)  # this rank's
            position += args.prompts_per_step
            drawn = [train_set[i] for i in shard]
            ids = [encode(p) for p in drawn]
            with timer("generate"):  # in turns, with the tool; each round its own random streams (`first_turn`)
                new = rollout(engine, tokenizer, ids, drawn, args.samples_per_prompt, STOP, call_tool, args, step,
                              temperature=args.temperature, top_p=args.top_p, first_turn=round_ * args.max_turns)
            with timer("grade"):
                new_grades = [[grade(c.text, p) for c in g] for p, g in zip(drawn, new)]
            problems, prompt_ids, groups, grades = problems + drawn, prompt_ids + ids, groups + new, grades + new_grades
            has_signal += [len({r for r, _ in g}) > 1 for g in new_grades]  # the grader's rewards differ (verl: "acc")
        if args.sync_probe_sequences:  # vLLM re-scores a few samples: its log-probs must be the trainer's
            with timer("probe"):
                metrics["train/sync_probe_error"] = engine.probe_sync(
                    policy, [prompt_ids[i] + c.token_ids for i, g in enumerate(groups) for c in g][: args.sync_probe_sequences],
                    bound=args.sync_probe_bound, seed=args.seed, step=step)
        engine.sleep()
        rollout_stats = rollout_totals(grades, groups, REASONS, world)  # also the samples dynamic sampling leaves out
        rollout_stats.update(tool_use_totals(grades, groups, world))  # turns, tool calls, ...; lengths: sampled tokens
        turns = max(c.turns for g in groups for c in g)  # the turns of this rank's longest loop (per round)
        if args.dynamic_sampling:  # train on this rank's share of groups, those with signal first, each in draw order
            keep = sorted(sorted(range(len(has_signal)), key=lambda i: not has_signal[i])[:local_prompts])
            problems, prompt_ids, groups, grades = ([x[i] for i in keep] for x in (problems, prompt_ids, groups, grades))
        # the G samples of a prompt stay together on this rank: group statistics need no communication
        samples = [(i, c) for i, g in enumerate(groups) for c in g]
        group_ids = torch.tensor([i for i, _ in samples])                                               # (B,)
        batch = pad_batch([prompt_ids[i] for i, _ in samples], [c.token_ids for _, c in samples], pad_id,  # (B, L) each;
                          [c.sampled for _, c in samples])  # response_mask: the sampled tokens, not the tool's
        mask = batch["response_mask"]                                                                   # (B, L)
        lengths = mask.sum(-1)                                                                          # (B,)

        # ===== 2. rewards: the grader's plus DAPO's overlong shaping; a prompt whose G samples all got the same reward
        # has no signal (advantage 0 for each); with --mask-truncated, responses cut at the length limit leave the loss
        penalties = overlong_penalty(lengths, args.max_response_tokens, args.overlong_buffer, args.overlong_penalty)  # (B,)
        rewards = torch.tensor([r for g in grades for r, _ in g], dtype=torch.float32) + penalties      # (B,)
        truncated = torch.tensor([c.finish_reason == "length" for _, c in samples])                     # (B,) bool
        zero = zero_signal(rewards, group_ids)                                                          # (B,) bool
        loss_mask = mask & ~truncated[:, None] if args.mask_truncated else mask                         # (B, L)
        train_rows = (~zero if args.skip_zero_signal_groups else torch.ones_like(zero)) & loss_mask.any(-1)  # (B,) bool
        scored = loss_mask & train_rows[:, None]                                                        # (B, L)

        # ===== 3. old and reference log-probs (no grad), recomputed by the trainer for the samples that train
        with timer("logprob"):
            old_logprobs, _ = logprobs_in_micro_batches(policy, batch, rows=train_rows, temperature=args.temperature,
                                                        max_tokens=args.logprob_token_budget, device=dist.device)  # (B, L)
            ref_logprobs = (logprobs_in_micro_batches(reference, batch, rows=train_rows, temperature=args.temperature,
                                                      max_tokens=args.logprob_token_budget, device=dist.device)[0]
                            if reference is not None else old_logprobs)                                # (B, L)
        vllm_logprobs = torch.zeros_like(old_logprobs)                                                  # (B, L)
        vllm_logprobs[mask] = torch.tensor([lp for _, c in samples for lp in c.logprobs])
        # importance weights against the sampler (vLLM), fixed for the whole update: they use no trained quantity
        correction = sampler_correction(old_logprobs, vllm_logprobs, scored, args.is_correction, args.is_cap, args.is_mask_lower)
        is_weights = correction[0]                                                                      # (B, L)

        # ===== 4. advantages, per prompt over its G samples; every token of a response shares its sample's
        sample_advantages = group_advantages(rewards, group_ids, scale_by_std=args.advantage == "grpo")  # (B,)
        advantages = sample_advantages[:, None] * mask                                                  # (B, L)

        # ===== 5. policy update: epochs x mini-batches x micro-batches, one optimizer step per mini-batch
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
                    if args.advantage == "grpo":
                        normaliser = global_means({"n": (float(loss_mask[mini].sum()), 1.0)}, dist.device)["n"] * world
                    else:  # Dr. GRPO: a constant, the same for every batch
                        normaliser = float(args.mini_batch_size * args.max_response_tokens)
                    mini_loss = 0.0  # this rank's share of the mini-batch loss, for the non-finite guard
                    # zero-signal samples (A = 0: no policy gradient) skip their passes; the normaliser above still counts
                    # their tokens, so the gradient does not change (with --kl-coef > 0 their KL term is dropped). FSDP
                    # lockstep: a rank with fewer micro-batches runs its shortest sample at zero weight (same graph)
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
                        loss = ((pg + args.kl_coef * kl) * m_tok).sum() / normaliser
                        # FSDP averages gradients over ranks; we want the sum over ranks of each rank's share
                        (loss * world).backward()
                        mini_loss += loss.item()
                        add_totals(totals, {"train/pg_loss": pg, "train/kl": kl, "train/entropy": entropy,
                                            "train/clip_frac": clipped, "train/dual_clip_frac": dual}, m_tok)
                    grad_norm = clip_grad_norm(policy, args.max_grad_norm)
                    if guard.all_finite(step, mini_loss, grad_norm):  # one all-reduce: every rank steps, or none does
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    totals["train/grad_norm"][0] += grad_norm
                    totals["train/grad_norm"][1] += 1.0 / world  # every rank sees the same global norm

        # ===== 6. log (one all-reduce for all sums and counts)
        n = float(len(samples))
        totals.update(rollout_stats)
        totals.update(mismatch_totals(vllm_logprobs, old_logprobs, scored, correction, train_rows))
        totals.update({
            "train/advantage_abs": [float(sample_advantages.abs().sum()), n],
            "train/zero_signal_frac": [float(zero.sum()), n],
            "reward/overlong_penalty": [float(penalties.sum()), n],
            "rollout/groups_kept": [float(min(sum(has_signal), local_prompts)), 1.0 / world],
            "rollout/prompts_drawn": [float(position - first_drawn), 1.0],  # the same on every rank
        })
        metrics.update(global_means({k: tuple(v) for k, v in totals.items()}, dist.device))
        metrics["rollout/generation_rounds"] = metrics["rollout/prompts_drawn"] / args.prompts_per_step
        metrics["rollout/response_len_max"] = all_reduce_max(int(lengths.max()), dist.device)
        metrics["rollout/rank_turns_max"] = all_reduce_max(turns, dist.device)
        metrics["rollout/rank_turns_min"] = -all_reduce_max(-turns, dist.device)
        metrics.update(guard.pop())
        metrics.update(end_of_step_metrics(timer, step_start, metrics["rollout/tokens"], dist.device))
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        logger.log(metrics, step)
        progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['reward/accuracy']:.3f}")

        # ===== 7. checkpoint
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.num_steps:
            with timer("checkpoint"):
                save_checkpoint(run_dir / f"step_{step + 1:06d}", dist, **trained, tokenizer=tokenizer,
                                state={"step": step + 1, "data_position": position})

    # ===== final evaluation and checkpoint
    engine.wake_and_sync(policy, hf_named_parameters(policy), step=args.num_steps)
    final = evaluate(args.num_steps)
    engine.sleep()
    logger.log(final, args.num_steps)
    save_checkpoint(run_dir / f"step_{args.num_steps:06d}", dist, **trained, tokenizer=tokenizer,
                    state={"step": args.num_steps, "data_position": position})
    print0(logger.summary(started))
    logger.finish()
    engine.shutdown()
    del policy, reference, optimizer, scheduler, trained
    shutdown_distributed()


if __name__ == "__main__":
    main(ARGS)
    exit_process()  # all is written and closed: skip Python's ~2.5 s teardown of torch and vLLM
