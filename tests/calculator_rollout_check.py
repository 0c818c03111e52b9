"""Run with plain `python` (a world of one) by test_calculator_rollout.py: the multi-turn `rollout` of grpo_calculator.py
(`common.multiturn.rollout` with its STOP and `call_tool`)
with the shipped tiny calculator model (or the model folder given after OUT) and a real vLLM engine, every
`generate` call recorded on the way.

Writes <out>/rollout.json with what the test asserts on:
  trajectories   per trajectory: prompt ids, token_ids, sampled mask, number of vLLM log-probs, turns, tool calls, end
  calls          per generate call (turn): the ids sent to vLLM and, per request, the ids vLLM returned and its text
  batch          the trainer's batch of the script (`pad_batch` with the sampled masks): input_ids and response_mask rows
  gap            max |vLLM - trainer| log-prob over the sampled tokens (float32, top-p 1: the same tokens, ~1e-6)
  retokenized    how many trajectories re-encode differently from their ids after decoding (BPE merges ids across
                 a turn's boundary: what a text-based loop would have trained on)
  again, other   the same rollout redone at the same step (must be identical) and at the next step (must differ)
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grpo_calculator as script  # noqa: E402
from common.dist import exit_process, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import load_policy, load_tokenizer, logprobs_in_micro_batches, pad_batch  # noqa: E402
from common.multiturn import rollout  # noqa: E402
from common.tasks import make_arithmetic_problems  # noqa: E402
from common.vllm_engine import ColocatedVLLM  # noqa: E402

MODEL = str(Path(__file__).resolve().parents[1] / "tiny_models" / "calculator")


def main(out: Path, model: str) -> None:
    dist = init_distributed()
    seed_everything(0)
    args = dataclasses.replace(script.PRESETS["tiny"], model=model, top_p=1.0, bf16=False, max_response_tokens=96,
                               max_turns=4, max_tool_tokens=24, seed=3)
    tokenizer = load_tokenizer(model)
    problems = make_arithmetic_problems(12, seed=5, num_operands=(2, 3))
    prompt_ids = [tokenizer(script.make_prompt(p, tokenizer, "base")).input_ids for p in problems]
    engine = ColocatedVLLM.from_args(args, dist)
    calls = []
    generate = engine.generate

    def recorded(prompts, **kwargs):
        groups = generate(prompts, **kwargs)
        calls.append({"sent": [list(p) for p in prompts], "requests": kwargs.get("requests"), "turn": kwargs.get("turn"),
                      "returned": [g[0].token_ids for g in groups], "text": [g[0].text for g in groups]})
        return groups

    engine.generate = recorded
    groups = rollout(engine, tokenizer, prompt_ids, problems, 4, script.STOP, script.call_tool, args, step=0, temperature=1.0, top_p=1.0)
    first_calls = list(calls)
    again = rollout(engine, tokenizer, prompt_ids, problems, 4, script.STOP, script.call_tool, args, step=0, temperature=1.0, top_p=1.0)
    other = rollout(engine, tokenizer, prompt_ids, problems, 4, script.STOP, script.call_tool, args, step=1, temperature=1.0, top_p=1.0)
    samples = [(i, t) for i, g in enumerate(groups) for t in g]
    # the trainer's batch, as the script builds it, and the trainer's log-probs of the sampled tokens
    batch = pad_batch([prompt_ids[i] for i, _ in samples], [t.token_ids for _, t in samples], 0, [t.sampled for _, t in samples])
    policy = load_policy(model, dist)
    trainer, _ = logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=4096, device=dist.device)
    vllm = torch.cat([torch.tensor(t.logprobs) for _, t in samples])
    gap = float((trainer[batch["response_mask"]] - vllm).abs().max())
    retokenized = sum(tokenizer(tokenizer.decode(prompt_ids[i] + t.token_ids)).input_ids != prompt_ids[i] + t.token_ids
                      for i, t in samples)
    flat = lambda gs: [(t.token_ids, t.sampled) for g in gs for t in g]
    result = {
        "trajectories": [{"prompt": prompt_ids[i], "token_ids": t.token_ids, "sampled": t.sampled, "logprobs": len(t.logprobs),
                          "turns": t.turns, "tool_calls": t.tool_calls, "tool_errors": t.tool_errors, "end": t.end,
                          "text": t.text, "shown": t.shown, "problem": problems[i]} for i, t in samples],
        "calls": first_calls,
        "batch": {"input_ids": batch["input_ids"].tolist(), "response_mask": batch["response_mask"].tolist(),
                  "attention_mask": batch["attention_mask"].tolist()},
        "gap": gap,
        "retokenized": retokenized,
        "again_equal": flat(again) == flat(groups),
        "other_equal": flat(other) == flat(groups),
        "prefix_caching": engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching,
    }
    (out / "rollout.json").write_text(json.dumps(result))
    engine.shutdown()
    del policy
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else MODEL)
    exit_process()
