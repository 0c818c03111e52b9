"""The shipped tool-use model, tiny_models/calculator: it loads, its tokenizer round-trips every piece of text a rollout
decodes (prompts, the model's turns, the tool's outputs, errors), the builder's prompt is the script's, and its
supervised completions are graded as the card says (the habit wrong, the tool's path right)."""

import importlib.util

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import grpo_calculator as script
from common.tasks import make_arithmetic_problems
from rewards.arithmetic import grade_arithmetic
from tests.run_utils import ROOT
from tools.calculator import DISABLED, calculator

MODEL = ROOT / "tiny_models" / "calculator"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_tiny_models", ROOT / "scripts" / "build_tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_loads_small_with_a_card():
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tok = AutoTokenizer.from_pretrained(MODEL)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.hidden_size // model.config.num_attention_heads == 64
    assert tok.eos_token_id == tok.pad_token_id == model.config.eos_token_id == 0 and len(tok) <= model.config.vocab_size
    assert sum(f.stat().st_size for f in MODEL.iterdir()) < 6 * 2**20
    card = (MODEL / "README.md").read_text()
    assert "with and without the tool" in card and "--only calculator" in card


def test_prompts_and_turns_round_trip_and_the_builder_prompts_as_the_script(builder):
    tok = AutoTokenizer.from_pretrained(MODEL)
    texts = [DISABLED, "<result>error: division by zero</result>", "<calc>1/0</calc>", calculator("2 ** 3")]
    for p in make_arithmetic_problems(100, seed=7):
        prompt = script.make_prompt(p, tok, "base")
        assert prompt == builder.calculator_prompt(p["expression"]), "the model learned the builder's prompt"
        texts += [prompt] + [text for kind in ("tool", "direct", "disabled") for text, _ in builder.calculator_segments(p, kind)]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text and tok.eos_token_id not in ids, text
    assert len(tok(texts[4]).input_ids) < 30, "the prompt's fixed text is two added tokens"


def test_supervised_completions_grade_as_the_card_says(builder):
    for p in make_arithmetic_problems(200, seed=3):
        for kind in ("tool", "direct", "disabled"):
            segments = builder.calculator_segments(p, kind)
            model_text = "".join(text for text, trained in segments if trained)
            assert grade_arithmetic(model_text, p["value"]).reward == 1.0, (kind, segments)  # the data's answers are right
            calls = [text for text, _ in segments if text.endswith(script.CALL_CLOSE)]
            assert len(calls) == {"tool": len(p["steps"]), "direct": 0, "disabled": 1}[kind]
            for call, (result, _) in zip(calls, segments[1::2]):  # each call's result is what the tool answers
                assert script.call_tool(call, p, enabled=kind != "disabled") == (result, kind == "disabled")
