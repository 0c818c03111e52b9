"""grpo_calculator.py's multi-turn rollout with real vLLM and the shipped tiny calculator model: the trainer's ids are
exactly the prompt's, the ids vLLM sampled and the tool outputs' ids (on trajectories where decoding and re-encoding
gives other ids, so a loop that re-tokenized its text would fail here), the trainer's mask marks the sampled tokens
alone, each turn continues from the exact ids so far, and a rollout is reproducible (calculator_rollout_check.py)."""

import json

import pytest
from transformers import AutoTokenizer

import grpo_calculator as script
from tests.run_utils import ROOT, run_script

MODEL = ROOT / "tiny_models" / "calculator"
CAP = 24  # --max-tool-tokens of calculator_rollout_check.py


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("calculator_rollout")
    run_script(["tests/calculator_rollout_check.py", str(out)], nproc=None, timeout=600)
    return json.loads((out / "rollout.json").read_text())


def replay(run: dict, k: int, tokenizer) -> tuple[list[int], list[bool]]:
    """Trajectory k rebuilt from the recorded `generate` calls alone: each turn's returned ids, then, when the
    trajectory went on, the tool's output for that turn's text, tokenized here on its own. Also checks that every
    turn sent vLLM exactly the prompt and the ids so far, under the trajectory's index and the turn's number."""
    t = run["trajectories"][k]
    ids, sampled = [], []
    turns = [(c, c["requests"].index(k)) for c in run["calls"] if k in c["requests"]]
    for number, (call, j) in enumerate(turns):
        assert call["turn"] == number and call["sent"][j] == t["prompt"] + ids, f"turn {number} of trajectory {k}"
        ids += call["returned"][j]
        sampled += [True] * len(call["returned"][j])
        called = script.call_tool(call["text"][j], t["problem"])
        if called is not None and len(t["token_ids"]) > len(ids):  # the tool ran: its output follows
            tool = tokenizer(called[0], add_special_tokens=False).input_ids[: min(CAP, 96 - len(ids))]
            ids += tool
            sampled += [False] * len(tool)
    return ids, sampled


@pytest.mark.e2e
def test_trainer_ids_are_the_sampled_ids_then_the_tool_ids(run):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    for k, t in enumerate(run["trajectories"]):
        ids, sampled = replay(run, k, tokenizer)
        assert t["token_ids"] == ids and t["sampled"] == sampled, f"trajectory {k}: not the sampled and tool ids, in order"
        assert t["logprobs"] == sum(sampled), "one vLLM log-prob per sampled token"
        row = t["prompt"] + ids
        assert run["batch"]["input_ids"][k][: len(row)] == row, f"trainer's input ids of trajectory {k}"
        mask = run["batch"]["response_mask"][k]
        assert mask == [False] * len(t["prompt"]) + sampled + [False] * (len(mask) - len(row)), \
            f"trajectory {k}: the trainer's response_mask must mark the sampled tokens only"
        assert sum(run["batch"]["attention_mask"][k]) == len(row)
    # the case that tells a token-exact loop from one that re-tokenizes its text: "</result><calc>" decodes to text
    # whose re-encoding merges "><" into one token, where vLLM saw ">" (the tool's) and "<" (the model's)
    assert run["retokenized"] > 0, "no trajectory whose text re-encodes to other ids: the check above would not tell"
    merged = AutoTokenizer.from_pretrained(MODEL)("</result><calc>").input_ids
    assert merged != tokenizer("</result>").input_ids + tokenizer("<calc>").input_ids, "the tokenizer lost its '><' merge"


@pytest.mark.e2e
def test_turns_tool_calls_and_limits(run):
    trajectories = run["trajectories"]
    assert max(t["tool_calls"] for t in trajectories) >= 2, "some trajectory called the tool twice (3 turns)"
    assert any(t["tool_calls"] == 0 for t in trajectories), "the tiny model's habit: some answer without the tool"
    for t in trajectories:
        assert t["turns"] <= 4 and len(t["token_ids"]) <= 96 and t["end"] in ("stop", "max_turns", "budget"), t
        # every turn but the last called the tool (a call in the last turn is not run), unless a tool's output used
        # up the token budget
        assert t["turns"] - t["tool_calls"] in ((0, 1) if t["end"] == "budget" else (1,)), t
        assert "<result>" not in t["text"], "the grader reads the model's text, not the tool's"
    # one generate call per turn, over the trajectories still running
    assert [c["turn"] for c in run["calls"]] == list(range(len(run["calls"])))
    assert len(run["calls"][0]["requests"]) == len(trajectories) > len(run["calls"][-1]["requests"])


@pytest.mark.e2e
def test_vllm_and_trainer_agree_on_the_sampled_tokens(run):
    # float32 and top-p 1: the trainer's log-probs at the masked positions are vLLM's, token for token. A mask that
    # also took tool tokens, or an id that vLLM did not sample, would be off by nats.
    assert run["gap"] < 1e-4, run["gap"]


@pytest.mark.e2e
def test_rollout_is_reproducible_and_prefix_caching_is_on(run):
    assert run["again_equal"], "the same (seed, step) must give the same trajectories (a resume draws them again)"
    assert not run["other_equal"], "another step must draw other trajectories"
    assert run["prefix_caching"], "turns re-use their history's KV cache: vLLM's prefix caching must be on"
