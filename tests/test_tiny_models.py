"""The shipped tiny models (tiny_models/): they load in transformers and vLLM, their tokenizers round-trip every
character the tasks use, the gsm8k chat template renders as documented, and their greedy accuracy is in band."""

import importlib.util
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.tasks import make_countdown_problems, make_word_problems

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tiny_models"
NAMES = ("countdown", "gsm8k")
MAX_TOTAL_MB = 20
ACCURACY_PROBLEMS = 100  # held-out problems for the in-band check (the model cards report 200, through vLLM)
ACCURACY_BAND = {"countdown": (0.04, 0.30), "gsm8k": (0.25, 0.55)}  # greedy; the model cards: 0.12 and 0.39
VLLM_PROMPTS = 6


def load_builder():
    """scripts/build_tiny_models.py as a module: the prompt format and task settings live there."""
    spec = importlib.util.spec_from_file_location("build_tiny_models", ROOT / "scripts" / "build_tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builder():
    return load_builder()


@pytest.fixture(scope="module")
def held_out(builder) -> dict[str, list[tuple[str, object]]]:
    """(prompt, grading info) per model, on problems the builder never trained on."""
    args = builder.Args()
    countdown = make_countdown_problems(ACCURACY_PROBLEMS, seed=args.seed + 1, num_numbers=args.countdown_num_numbers,
                                        max_number=args.countdown_max_number, max_target=args.countdown_max_target)
    rows = [json.loads(line) for line in (ROOT / "data" / "word_problems" / "test.jsonl").read_text().splitlines()]
    return {
        "countdown": [(builder.countdown_prompt(p["nums"], p["target"]), p) for p in countdown],
        "gsm8k": [(f"Question: {r['question']}\nAnswer:", r["answer"]) for r in rows[:ACCURACY_PROBLEMS]],
    }


def greedy(name: str, prompts: list[str], max_new_tokens: int = 80, batch: int = 50) -> list[str]:
    """Greedy completions from transformers, left-padded batches (EOS id 0 is also the pad)."""
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODELS / name)
    model = AutoModelForCausalLM.from_pretrained(MODELS / name, dtype=torch.float32).eval()
    texts = []
    for start in range(0, len(prompts), batch):
        ids = [tok.encode(p) for p in prompts[start : start + batch]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])       # (B, T)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])                # (B, T)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def test_models_load_and_are_tiny():
    total = sum(f.stat().st_size for name in NAMES for f in (MODELS / name).iterdir())
    assert total <= MAX_TOTAL_MB * 2**20, f"shipped models take {total / 2**20:.1f} MB > {MAX_TOTAL_MB} MB"
    for name in NAMES:
        tok = AutoTokenizer.from_pretrained(MODELS / name)
        model = AutoModelForCausalLM.from_pretrained(MODELS / name)
        config = model.config
        assert type(model).__name__ == "Qwen2ForCausalLM", type(model)
        assert config.hidden_size // config.num_attention_heads == 64, "vLLM's CPU attention needs head_dim 64"
        assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == config.eos_token_id == 0
        assert len(tok) <= config.vocab_size, (len(tok), config.vocab_size)
        assert (MODELS / name / "README.md").is_file(), f"{name} needs a model card"


def test_word_problem_files_match_the_generator(builder):
    args = builder.Args()
    for split, n, seed in (("train", args.word_train, args.seed), ("test", args.word_test, args.seed + 1)):
        path = ROOT / "data" / "word_problems" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == make_word_problems(n, seed), f"{path} is stale: rerun scripts/build_tiny_models.py --only gsm8k"
    size = sum((ROOT / "data" / "word_problems" / f"{split}.jsonl").stat().st_size for split in ("train", "test"))
    assert size < 2**20, f"word-problem files take {size} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_round_trips_every_character(name, builder, held_out):
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # the builder trains BPE with Qwen2's pre-tokeniser because transformers rebuilds exactly that one on load
    assert builder.QWEN2_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX, "transformers changed Qwen2's pre-tokeniser"
    tok = AutoTokenizer.from_pretrained(MODELS / name)
    texts = [string.printable, " \n\n  \t x", "<think> </think>\n<answer> (1 + 2) / 3 </answer>", "#### 1234",
             "Ünïcødé — 5€ 日本", builder.TINYZERO_PROMPT, builder.GSM8K_CHAT_TEMPLATE]
    for problem in make_countdown_problems(100, seed=0):
        texts += [builder.countdown_prompt(problem["nums"], problem["target"]), builder.countdown_completion(problem)]
    for split in ("train", "test"):
        for line in (ROOT / "data" / "word_problems" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            texts += [f"Question: {row['question']}\nAnswer:", " " + row["answer"]]
    texts += [prompt for prompt, _ in held_out[name]]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, f"{name} tokenizer does not round-trip {text!r}"
        assert tok.eos_token_id not in ids, f"plain text must never encode to EOS: {text!r}"
    # the shipped prompts are short: TinyZero's fixed text is three added tokens, the word problems' BPE keeps words whole
    assert len(tok.encode(held_out[name][0][0])) < {"countdown": 30, "gsm8k": 80}[name], tok.encode(held_out[name][0][0])


def test_supervised_habits_are_graded_wrong(builder):
    """Each model learns a share of its completions with a slip (the habit RL unlearns): the grader must reject
    exactly those, and the builder's habit detectors must tell them apart."""
    from rewards.countdown import countdown_reward
    from rewards.gsm8k import gsm8k_reward

    for p in make_countdown_problems(50, seed=3, num_numbers=(3,), max_number=20, max_target=50):
        clean, slip = builder.countdown_completion(p), builder.countdown_completion(p, habit=True)
        assert countdown_reward(clean, p["nums"], p["target"]) == 1.0 and not builder.countdown_habit(clean), clean
        assert countdown_reward(slip, p["nums"], p["target"]) < 1.0 and builder.countdown_habit(slip), slip
    steps = {1: 0, 2: 0}
    for p in make_word_problems(60, seed=3):
        clean, slip = builder.word_completion(p), builder.word_completion(p, habit=True)
        two_step = p["answer"].count("\n") == 2
        steps[1 + two_step] += 1
        assert gsm8k_reward(clean, p["answer"]) == 1.0 and not builder.word_habit(clean, p["answer"]), clean
        assert (gsm8k_reward(slip, p["answer"]) == 0.0) == builder.word_habit(slip, p["answer"]) == two_step, slip
    assert min(steps.values()) > 0, steps


def test_gsm8k_chat_template():
    tok = AutoTokenizer.from_pretrained(MODELS / "gsm8k")
    messages = [{"role": "user", "content": "Ava has 3 apples.\nHow many?"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "Question: Ava has 3 apples.\nHow many?\nAnswer:")
    assert tok.apply_chat_template(messages, tokenize=False) == "Question: Ava has 3 apples.\nHow many?\n"
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert tok.decode(ids) == "Question: Ava has 3 apples.\nHow many?\nAnswer:", ids


@pytest.mark.parametrize("name", NAMES)
def test_greedy_accuracy_in_band(name, held_out):
    from rewards.countdown import countdown_reward
    from rewards.gsm8k import gsm8k_reward

    prompts, infos = zip(*held_out[name])
    texts = greedy(name, list(prompts))
    if name == "countdown":
        scores = [countdown_reward(t, p["nums"], p["target"]) for t, p in zip(texts, infos)]
        assert sum(s > 0 for s in scores) >= 0.9 * len(scores), "most completions should carry an <answer> tag"
    else:
        scores = [gsm8k_reward(t, answer) for t, answer in zip(texts, infos)]
        assert sum("####" in t for t in texts) >= 0.9 * len(texts), "most completions should end in '#### N'"
    accuracy = sum(s == 1.0 for s in scores) / len(scores)
    low, high = ACCURACY_BAND[name]
    assert low <= accuracy <= high, f"{name} greedy accuracy {accuracy:.2f} outside [{low}, {high}]: {texts[:3]}"


VLLM_SCRIPT = """
import gc, json, sys
from vllm import LLM, SamplingParams
results = {}
for name, (model_dir, prompts) in json.loads(sys.argv[1]).items():  # one engine at a time, one import for all
    llm = LLM(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True,
              kv_cache_memory_bytes=128 * 2**20, seed=0)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=80), use_tqdm=False)
    results[name] = [o.outputs[0].text for o in outs]
    del llm, outs
    gc.collect()
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def vllm_greedy(held_out) -> dict[str, tuple[list[str], list[str]]]:
    """{name: (prompts, vLLM's greedy texts)}: in-process vLLM engines (VLLM_ENABLE_V1_MULTIPROCESSING=0: ~1 s to
    start, not ~30 s), one subprocess for every model so that their threads and state stay out of pytest."""
    prompts = {name: [prompt for prompt, _ in held_out[name][:VLLM_PROMPTS]] for name in NAMES}
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    job = {name: (str(MODELS / name), prompts[name]) for name in NAMES}
    proc = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, json.dumps(job)], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"vLLM failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    texts = json.loads(lines[-1][len("RESULT ") :])
    return {name: (prompts[name], texts[name]) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_vllm_generates_like_transformers(name, vllm_greedy):
    """vLLM's greedy text must equal transformers' (float32 both)."""
    prompts, vllm_texts = vllm_greedy[name]
    assert vllm_texts == greedy(name, prompts), "vLLM and transformers disagree on greedy completions"
    assert all(t.strip() for t in vllm_texts), vllm_texts
