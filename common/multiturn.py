"""Multi-turn rollouts for tasks with a tool, token-exact: what `ColocatedVLLM.generate` is to a single-turn task.

    groups = rollout(engine, tokenizer, prompt_ids, problems, n=8, stop=STOP, call_tool=call_tool, args=args, step=k,
                     temperature=1.0, top_p=1.0)
    batch = pad_batch(prompt_ids_per_sample, [t.token_ids for t in ...], pad_id, [t.sampled for t in ...])

A trajectory alternates the model's turns and the tool's outputs. Each turn is one batched `generate` over this
rank's unfinished trajectories, each continuing from its exact token ids so far (prompt + sampled + tool ids), never
from re-encoded text: BPE merges tokens across a turn's boundary, and the trainer would score tokens that were never
sampled (docs/tool_use.md). The script's task block gives the stop strings and the tool (`call_tool`); the script
trains only on the sampled tokens (`Trajectory.sampled`, the batch's `response_mask`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from common.metrics import held_out_results


@dataclass
class Trajectory:
    """One sample of a multi-turn rollout; a script reads it as a single-turn `Completion` (token_ids, logprobs, text,
    finish_reason).

    token_ids: everything after the prompt, in order: each turn's sampled ids, then its tool output's ids.
    sampled:   one bool per id of `token_ids`, True where vLLM sampled it (those train; tool ids are context).
    logprobs:  vLLM's log-prob of each sampled id, in order.
    text:      the model's own text, every turn's (what `grade` reads); `shown` adds the tool outputs (logs).
    end:       "stop" (answered, or a turn called no tool), "max_turns" or "budget" (cut by a limit).
    Example: prompt [p], a call [5, 6] (vLLM), the tool's [7, 8], an answer [9] -> token_ids [5, 6, 7, 8, 9],
    sampled [1, 1, 0, 0, 1], 2 logprobs then 1: 3 in all, turns 2, tool_calls 1.
    """
    token_ids: list[int] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    shown: str = ""
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    end: str = ""  # "" while it runs

    @property
    def finish_reason(self) -> str:
        """As a `Completion`'s: "length" when cut at the token budget (`rollout/truncated`), else "stop"."""
        return "length" if self.end == "budget" else "stop"


def rollout(engine, tokenizer, prompt_ids: list[list[int]], problems: list[dict], n: int, stop: list[str],
            call_tool: Callable, args, step: int, *, temperature: float, top_p: float, stream: str = "rollout",
            first_turn: int = 0) -> list[list[Trajectory]]:
    """Sample `n` trajectories for each prompt, in turns; returns one list of n per prompt, in order. `args`: the
    script's settings `max_turns`, `max_response_tokens`, `max_tool_tokens`, `no_tool`, `seed`.

    Each turn is one batched `generate` over this rank's unfinished trajectories, each continuing from its exact ids
    so far (`TokensPrompt`, never text), seeded by the trajectory's index and the turn (`sampling_seed`; dynamic
    sampling's round r starts at turn `first_turn` = r * --max-turns). Generation stops at `stop`;
    `call_tool(turn_text, problem, enabled)` runs on the turn's text (pure Python between two `generate` calls, none
    inside vLLM's loop) and returns None (no call: the trajectory ends) or (text to append, whether it is an error);
    the outputs are tokenized once, in one batch, and appended.
    A trajectory ends when a turn calls no tool, after `--max-turns` turns (a call in the last turn is not run), or
    when its sampled and tool tokens reach `--max-response-tokens` (each turn may sample what is left; a tool output
    is cut to `--max-tool-tokens` and to what is left). No collective: with one engine per rank, ranks run their
    own number of turns (a tensor-parallel group agrees on it, `group_any`, as it must make the same calls).
    """
    trajectories = [Trajectory() for _ in prompt_ids for _ in range(n)]
    owner = [i for i in range(len(prompt_ids)) for _ in range(n)]                           # trajectory -> prompt
    for turn in range(args.max_turns):
        live = [k for k, t in enumerate(trajectories) if not t.end]
        if not engine.group_any(bool(live)):
            break
        outputs = engine.generate([prompt_ids[owner[k]] + trajectories[k].token_ids for k in live],  # exact ids so far
                                  temperature=temperature, top_p=top_p, stop=stop, seed=args.seed, step=step,
                                  max_tokens=[args.max_response_tokens - len(trajectories[k].token_ids) for k in live],
                                  stream=stream, turn=first_turn + turn, requests=live)
        calls = []  # (trajectory, text to append, error)
        for k, (c,) in zip(live, outputs):
            t = trajectories[k]
            t.token_ids += c.token_ids
            t.sampled += [True] * len(c.token_ids)
            t.logprobs += c.logprobs
            t.text, t.shown, t.turns = t.text + c.text, t.shown + c.text, t.turns + 1
            called = call_tool(c.text, problems[owner[k]], not args.no_tool) if c.finish_reason == "stop" else None
            if c.finish_reason == "length" or len(t.token_ids) >= args.max_response_tokens:
                t.end = "budget"
            elif called is None:
                t.end = "stop"
            elif turn + 1 == args.max_turns:
                t.end = "max_turns"
            else:
                calls.append((t, *called))
        tool_ids = tokenizer([text for _, text, _ in calls], add_special_tokens=False).input_ids if calls else []
        for (t, _, error), ids in zip(calls, tool_ids):
            ids = ids[: min(args.max_tool_tokens, args.max_response_tokens - len(t.token_ids))]
            t.token_ids += ids
            t.sampled += [False] * len(ids)
            t.shown += tokenizer.decode(ids)
            t.tool_calls, t.tool_errors = t.tool_calls + 1, t.tool_errors + error
            if len(t.token_ids) >= args.max_response_tokens:
                t.end = "budget"
    return [trajectories[i * n: (i + 1) * n] for i in range(len(prompt_ids))]


def evaluate_in_turns(engine, tokenizer, problems: list[dict], prompt_ids: list[list[int]], grade: Callable,
                      stop: list[str], call_tool: Callable, args, step: int,
                      device: torch.device) -> tuple[dict[str, float], list[dict]]:
    """`common.metrics.evaluate_held_out` with trajectories: sample `--eval-samples-per-prompt` of them (in turns, with
    the tool, or without it under `--no-tool`) for each of this rank's held-out problems and grade them. Returns the
    `eval/` metrics over all ranks (a collective) and this rank's samples, k rows per problem, in order."""
    k = args.eval_samples_per_prompt
    groups = rollout(engine, tokenizer, prompt_ids, problems, k, stop, call_tool, args, step,
                     temperature=args.eval_temperature, top_p=args.eval_top_p, stream="eval")
    grades = [[grade(t.text, p) for t in g] for p, g in zip(problems, groups)]
    calls = (sum(t.tool_calls for g in groups for t in g), sum(map(len, groups)))
    return held_out_results(problems, grades, [[sum(t.sampled) for t in g] for g in groups],
                            [[t.shown for t in g] for g in groups], device, {"eval/tool_calls_mean": calls})


def tool_use_totals(grades: list[list[tuple[float, str]]], groups: list[list[Trajectory]],
                    world: int) -> dict[str, list[float]]:
    """This rank's [sum, count] of the tool-use metrics (docs/metrics.md), reduced over ranks with the others; and
    `rollout/response_len_mean` and `rollout/tokens` over the sampled tokens only (they replace `rollout_totals`', which
    would count the tool's too). Example: two trajectories, one answering right after 1 call (2 turns, 5 sampled + 3 tool
    tokens), one at once (1 turn, 4 sampled tokens, wrong) -> turns_mean [3, 2], tool_calls_mean [1, 2],
    tool_token_frac [3, 12], accuracy_tool [1, 1], accuracy_no_tool [0, 1], response_len_mean [9, 2]."""
    ts = [t for g in groups for t in g]
    correct = [r == 1.0 for g in grades for r, _ in g]
    used = [t.tool_calls > 0 for t in ts]
    n, calls = float(len(ts)), float(sum(t.tool_calls for t in ts))
    sampled, tokens = float(sum(sum(t.sampled) for t in ts)), float(sum(len(t.sampled) for t in ts))
    return {
        "rollout/turns_mean": [float(sum(t.turns for t in ts)), n],
        "rollout/tool_calls_mean": [calls, n],
        "rollout/tool_error_frac": [float(sum(t.tool_errors for t in ts)), calls],
        "rollout/cut_by_limit": [float(sum(t.end in ("max_turns", "budget") for t in ts)), n],
        "rollout/tool_token_frac": [tokens - sampled, tokens],
        "reward/accuracy_tool": [float(sum(c and u for c, u in zip(correct, used))), float(sum(used))],
        "reward/accuracy_no_tool": [float(sum(c and not u for c, u in zip(correct, used))), n - sum(used)],
        "rollout/response_len_mean": [sampled, n],
        "rollout/tokens": [sampled, 1.0 / world],
    }
