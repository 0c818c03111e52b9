"""The GPU path in one command: correctness of the colocated engine, the real scripts, and one 3B-shaped GRPO step.

    python benchmarks/gpu_check.py                    # one or more NVIDIA GPUs with vLLM installed: <= 12 min, one table
    python benchmarks/gpu_check.py --out-dir logs     # each part's log and JSON result go there (default: a temp dir)
    python benchmarks/gpu_check.py --skip step3b      # leave parts out (see PARTS)

Parts, each in its own process (one vLLM engine per process); every row of the table is a check with its value, the
threshold it was held to, and a verdict:
  cycles_tied / cycles_untied  a small random Qwen2 (tied / untied embeddings) under FSDP2 and a colocated vLLM with
                 sleep mode: 3 cycles of AdamW step -> sleep(level 2) -> wake -> sync -> exact check -> probe ->
                 generate. Checked each cycle: the exact weight check (`ColocatedVLLM.check_weights`), the probe, and
                 the decode path (the sampled tokens' log-probs at top-p 1 against the trainer's, after the wake: the
                 probe runs prefill only). Then a push one optimizer step stale, which the exact check must catch,
                 and vLLM's weights wiped (`reset_weights` where the version has it, else a push of zeros), which the
                 probe must see and the next sync must repair. Memory: torch's reserved cache just before each wake
                 (the engine empties it first: vLLM 0.26 does not), and what sleep leaves resident on the device beyond
                 the trainer's own memory (CUDA graphs, on 0.26 outside the sleep pool). cycles_untied runs with the
                 user's allocator settings `PYTORCH_ALLOC_CONF=expandable_segments:True` and checks that they are
                 the same after the engine is built (vLLM 0.26 rewrote them) and after a sleep/wake cycle.
  cycles_2gpu    cycles_tied on 2 ranks (torchrun), where the machine has 2 GPUs.
  grpo / ppo     `grpo_countdown.py` / `ppo_gsm8k.py --preset tiny` for a few steps (bf16 on GPU, AMX CPUs):
                 every metric finite, the probe inside its bound (each sync passed the exact check, or the run stops).
  step3b         GPU only: one GRPO step of a Qwen2.5-3B-shaped model (random weights; 36 layers, hidden 2048, 16/2
                 heads, intermediate 11008, vocabulary 151,936, tied) at 16 prompts x 8 samples x up to 1,024 new
                 tokens, one GPU's share of the default 8-GPU run: seconds per phase, the exact check's cost against
                 the sync, generated tokens/s, trainer MFU with fixed 2-sample micro-batches and with token-budget
                 micro-batches (`--train-token-budget`), peak memory awake and in training.
  multiturn3b    GPU only: one step of grpo_calculator.py's multi-turn rollout and update at the same shape (a stand-in
                 tool: a turn ends at the text "w151", the tool answers 32 fixed ids): seconds per phase and per turn,
                 turns per trajectory, sampled tokens/s with prefix caching on, trainer MFU; the trainer's ids are the
                 sampled + tool ids and its mask the sampled ones.
Without CUDA it runs cycles_tied, cycles_untied, grpo and ppo on CPU with tiny models (float32) and says which it
skipped. Compile caches (torch inductor, Triton, vLLM) are shared by all parts and kept across runs in `--cache-dir`,
and each part's time limit is cut to what is left of the 12-minute total, so a cold machine finishes in time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("cycles_tied", "cycles_untied", "cycles_2gpu", "grpo", "ppo", "step3b", "multiturn3b")
BUDGET_S = 12 * 60  # the whole check; each part's limit is cut to what is left
PART_LIMIT_S = {"cycles_tied": 240, "cycles_untied": 150, "cycles_2gpu": 150, "grpo": 240, "ppo": 240, "step3b": 360,
                "multiturn3b": 300}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0}  # dense, per GPU
QWEN25_3B = dict(num_hidden_layers=36, hidden_size=2048, num_attention_heads=16, num_key_value_heads=2,
                 intermediate_size=11008, vocab_size=151_936, tie_word_embeddings=True, max_position_embeddings=4096,
                 rope_theta=1e6, rms_norm_eps=1e-6)
RESIDENT_BOUND_GIB = 1.0  # what sleep may leave on the device beyond the trainer's memory (graphs, NCCL, workspaces)


def device_used_gib() -> float:
    """Memory in use on the GPU by every allocator (torch's and vLLM's sleep-mode pool alike)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def allocator_settings() -> str | None:
    """torch's CUDA allocator settings in effect (None where this torch cannot tell)."""
    import torch

    try:
        return torch._C._accelerator_getAllocatorSettings()
    except AttributeError:
        return (torch.cuda.memory._snapshot().get("allocator_settings") or {}).get("PYTORCH_ALLOC_CONF")


# ---------------------------------------------------------------------------------------------------------------
# Part: sleep -> wake -> sync cycles with the exact check, the probe and the decode path; a stale push; a wipe
# ---------------------------------------------------------------------------------------------------------------
def part_cycles(tied: bool, work: Path) -> dict:
    import torch
    import vllm
    from torch.distributed.tensor import DTensor
    from transformers import AutoTokenizer

    from common.dist import init_distributed, seed_everything
    from common.model import build_optimizer, hf_named_parameters, load_policy, logprobs_in_micro_batches, pad_batch
    from common.vllm_engine import ColocatedVLLM, WeightSyncError
    from tests.tiny_lm import save_tiny_qwen2

    dist = init_distributed()
    on_gpu = dist.device.type == "cuda"
    seed_everything(0)
    model_dir = save_tiny_qwen2(work / "model", tie_word_embeddings=tied, hidden=256 if on_gpu else 128, layers=4 if on_gpu else 2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = load_policy(str(model_dir), dist, bf16=on_gpu)
    optimizer = build_optimizer(policy, lr=1e-3)
    used = device_used_gib if on_gpu else (lambda: float("nan"))
    reserved = (lambda: torch.cuda.memory_reserved() / 2**30) if on_gpu else (lambda: float("nan"))
    out: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
                 "ranks": dist.world_size, "alloc_before": allocator_settings() if on_gpu else None}
    trainer_only = used()
    engine = ColocatedVLLM(str(model_dir), dist, max_model_len=256, gpu_memory_utilization=0.3, rollout_seqs=6,
                           cpu_kv_cache_bytes=32 * 2**20)
    out.update(dtype=engine.dtype, bound=engine.probe_bound, alloc_after_build=allocator_settings() if on_gpu else None,
               probe=[], decode_gap=[], exact=[], reserved_before_wake_gib=[], generated=[])
    prompts = [tok.encode(s) for s in ["Numbers: 3 5 7\n", "The answer is", "<think>"]]
    batch = pad_batch(prompts, [tok.encode(" 42 + 7")] * len(prompts), tok.pad_token_id)

    def train_step():
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])   # (B, L)
        (-logprobs.sum() / batch["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def wake_sync_check(push=None) -> str:
        """Wake, push (the current weights, or `push`), check vLLM against the trainer's current weights, wake the KV
        cache: "" when the exact check passed, else its message."""
        out["reserved_before_wake_gib"].append(reserved())
        engine.wake(["weights"])
        engine.sync_weights(policy, push if push is not None else hf_named_parameters(policy))
        try:
            engine.check_weights(policy, hf_named_parameters(policy))
            return ""
        except WeightSyncError as e:
            return str(e)
        finally:
            engine.wake(["kv_cache"])

    engine.wake_and_sync(policy, hf_named_parameters(policy))
    out["mem_awake_gib"] = used()
    for cycle in range(3):
        train_step()
        engine.sleep()
        out.setdefault("mem_asleep_gib", used())
        out["exact"].append(wake_sync_check())
        groups = engine.generate(prompts, n=2, temperature=1.0, top_p=1.0, max_tokens=16, seed=1, step=cycle)
        sequences = [p + c.token_ids for p, g in zip(prompts, groups) for c in g]
        out["probe"].append(engine.probe_sync(policy, [s for s in sequences if len(s) >= 2], bound=math.inf, step=cycle))
        # decode path: vLLM's log-probs of the tokens it sampled (top-p 1, temperature 1: raw) against the trainer's
        done = [(p, c) for p, g in zip(prompts, groups) for c in g if c.token_ids]
        sampled = pad_batch([p for p, _ in done], [c.token_ids for _, c in done], tok.pad_token_id)      # (B, L)
        trainer, _ = logprobs_in_micro_batches(policy, sampled, temperature=1.0, max_tokens=4096, device=dist.device)
        gaps = trainer[sampled["response_mask"]] - torch.tensor([x for _, c in done for x in c.logprobs])  # (N,)
        out["decode_gap"].append(float(gaps.abs().mean()))
        out["generated"].append(len(sequences))
    out["alloc_after_cycles"] = allocator_settings() if on_gpu else None
    out["mem_awake_again_gib"] = used()
    # a push one optimizer step stale: the exact check must stop it
    stale = [(n, (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()) for n, p in hf_named_parameters(policy)]
    train_step()
    engine.sleep()
    out["stale_caught"] = wake_sync_check(stale)
    engine.wake_and_sync(policy, hf_named_parameters(policy))
    # wipe vLLM's weights, then sync: the probe sees the wipe, and the sync repairs every parameter
    try:
        engine.llm.collective_rpc("reset_weights")
        out["wipe"] = "reset_weights"
    except Exception:  # older vLLM (0.26) has no such worker call: push zeros instead
        engine.sync_weights(policy, [(n, torch.zeros(p.shape, dtype=p.dtype, device=dist.device)) for n, p in hf_named_parameters(policy)])
        out["wipe"] = "zeros pushed"
    probed = [p + tok.encode(" 12 34") for p in prompts]
    out["probe_wiped"] = engine.probe_sync(policy, probed, bound=math.inf)
    out["exact_after_wipe"] = wake_sync_check()
    out["probe_after_wipe"] = engine.probe_sync(policy, probed, bound=math.inf)
    out["mem_trainer_only_gib"] = trainer_only
    out["resident_asleep_gib"] = out["mem_asleep_gib"] - trainer_only
    engine.shutdown()
    return out


def cycles_checks(r: dict) -> list[tuple[str, str, str, bool]]:
    """(check, value, threshold, passed) rows of a cycles part."""
    bound = r["bound"]
    rows = [
        ("exact check, 3 cycles + after the wipe", "passed" if not any(r["exact"]) and not r["exact_after_wipe"]
         else (list(filter(None, r["exact"])) or [r["exact_after_wipe"]])[0][:90], "every tensor equal", not any(r["exact"]) and not r["exact_after_wipe"]),
        ("exact check, a push 1 step stale", "caught" if r["stale_caught"] else "MISSED", "stops the run", bool(r["stale_caught"])),
        ("probe (mean |gap|), 3 cycles", ", ".join(f"{e:.2g}" for e in r["probe"]), f"<= {bound:g}", max(r["probe"]) <= bound),
        ("decode path (mean |gap|)", ", ".join(f"{e:.2g}" for e in r["decode_gap"]), f"<= {bound:g}", max(r["decode_gap"]) <= bound),
        (f"probe after a wipe ({r['wipe']})", f"{r['probe_wiped']:.2g} -> synced {r['probe_after_wipe']:.2g}",
         f"> {bound:g}, then <= {bound:g}", r["probe_wiped"] > bound and r["probe_after_wipe"] <= bound),
        ("completions per cycle", ", ".join(map(str, r["generated"])), "6", all(n == 6 for n in r["generated"])),
    ]
    if r["device"] != "cpu":
        resident = r["resident_asleep_gib"]
        rows += [
            ("torch reserved before each wake, GiB", ", ".join(f"{x:.2f}" for x in r["reserved_before_wake_gib"]),
             "emptied by the engine: report", True),
            ("resident while asleep beyond the trainer, GiB", f"{resident:.2f} (awake {r['mem_awake_gib'] - r['mem_trainer_only_gib']:.2f})",
             f"<= {RESIDENT_BOUND_GIB}", resident <= RESIDENT_BOUND_GIB),
            ("allocator settings: before / built / after cycles", f"{r['alloc_before']!r} / {r['alloc_after_build']!r} / "
             f"{r['alloc_after_cycles']!r}", "all equal", r["alloc_before"] == r["alloc_after_build"] == r["alloc_after_cycles"]),
        ]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Part: one GRPO step of a Qwen2.5-3B-shaped model (GPU only)
# ---------------------------------------------------------------------------------------------------------------
def save_random_3b(path: Path) -> Path:
    """A randomly initialised Qwen2 with Qwen2.5-3B's shapes, in bf16, and a word-level tokenizer of its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if (path / "config.json").is_file():
        return path
    vocab = {f"w{i}": i for i in range(QWEN25_3B["vocab_size"] - 1)} | {"<eos>": QWEN25_3B["vocab_size"] - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>").save_pretrained(path)
    config = Qwen2Config(**QWEN25_3B, eos_token_id=QWEN25_3B["vocab_size"] - 1, pad_token_id=QWEN25_3B["vocab_size"] - 1,
                         bos_token_id=None, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def part_step3b(work: Path, prompts: int = 16, samples: int = 8, max_new: int = 1024, prompt_len: int = 150,
                mini_batch: int = 16, micro_batch: int = 2, token_budget: int = 16384) -> dict:
    import torch

    from common.dist import init_distributed, seed_everything
    from common.model import (build_optimizer, clip_grad_norm, hf_named_parameters, load_policy, lockstep_micro_batches,
                              logprobs_in_micro_batches, pad_batch, select_rows)
    from common.vllm_engine import ColocatedVLLM
    from grpo_countdown import group_advantages, policy_loss_terms

    dist = init_distributed()
    seed_everything(0)
    model_dir = str(save_random_3b(Path(tempfile.gettempdir()) / "qwen25_3b_shaped"))
    policy = load_policy(model_dir, dist, bf16=True, activation_checkpointing=True)
    reference = load_policy(model_dir, dist, bf16=True, trainable=False, cpu_offload=True)  # world of one: shards won't fit
    optimizer = build_optimizer(policy, lr=1e-6)
    engine = ColocatedVLLM(model_dir, dist, max_model_len=prompt_len + max_new, gpu_memory_utilization=0.25,
                           rollout_seqs=prompts * samples)
    n_params = sum(p.numel() for p in policy.parameters())
    times, out = {}, {"params_b": n_params / 1e9, "device": torch.cuda.get_device_name()}
    rng = torch.Generator().manual_seed(0)
    prompt_ids = [torch.randint(0, QWEN25_3B["vocab_size"] - 1, (prompt_len,), generator=rng).tolist() for _ in range(prompts)]

    def clock(name, fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return result

    engine.sleep()  # as at the start of every step: vLLM asleep, the trainer holds the GPU
    for step in range(2):  # step 0 warms up (first sleep/wake, kernels); step 1 is reported
        times.clear()
        torch.cuda.reset_peak_memory_stats()
        clock("sync", lambda: engine.wake_and_sync(policy, hf_named_parameters(policy)))  # push + exact check
        clock("check", lambda: engine.check_weights(policy, hf_named_parameters(policy)))  # the check alone, again
        out["mem_awake_gib"] = device_used_gib()
        groups = clock("generate", lambda: engine.generate(prompt_ids, n=samples, temperature=1.0, top_p=1.0,
                                                           max_tokens=max_new, seed=0, step=step))
        clock("probe", lambda: engine.probe_sync(policy, [prompt_ids[0] + groups[0][0].token_ids], step=step))
        clock("sleep", engine.sleep)
        samples_ = [(i, c) for i, g in enumerate(groups) for c in g]
        batch = pad_batch([prompt_ids[i] for i, _ in samples_], [c.token_ids for _, c in samples_], 0)     # (B, L)
        mask = batch["response_mask"]                                                                       # (B, L)
        lengths = batch["attention_mask"].sum(-1).tolist()
        old = clock("old_logprobs", lambda: logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=16384,
                                                                        device=dist.device)[0])            # (B, L)
        ref = clock("ref_logprobs", lambda: logprobs_in_micro_batches(reference, batch, temperature=1.0, max_tokens=16384,
                                                                        device=dist.device)[0])            # (B, L)
        rewards = torch.rand(len(samples_), generator=rng)                                                  # (B,)
        advantages = group_advantages(rewards, torch.tensor([i for i, _ in samples_]), scale_by_std=True)[:, None] * mask
        torch.cuda.reset_peak_memory_stats()

        def train(budget):
            """The update of grpo_countdown.py: fixed micro-batches of `micro_batch` samples, or `budget` tokens."""
            for m in range(0, len(samples_), mini_batch):
                mini = sorted(range(m, m + mini_batch), key=lambda i: -lengths[i])
                normaliser = float(mask[mini].sum())
                for rows in lockstep_micro_batches(mini, lengths, size=micro_batch, token_budget=budget, device=dist.device):
                    mb = select_rows(batch, rows, dist.device)
                    l = mb["input_ids"].shape[1]
                    logprobs, _ = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"], 1.0)  # (b, l)
                    pg, kl, _ = policy_loss_terms(logprobs, old[rows, :l].to(dist.device), ref[rows, :l].to(dist.device),
                                                  advantages[rows, :l].to(dist.device), 0.2)                # (b, l)
                    (((pg + 1e-3 * kl) * mb["response_mask"]).sum() / normaliser).backward()
                clip_grad_norm(policy, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        clock("train", lambda: train(None))
        out["mem_train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        clock("train_token_budget", lambda: train(token_budget))
        out["mem_train_budget_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    tokens = int(batch["attention_mask"].sum())
    seq = batch["attention_mask"].sum(-1).float()                                                           # (B,)
    layers, hidden = QWEN25_3B["num_hidden_layers"], QWEN25_3B["hidden_size"]
    # model FLOPs of forward + backward: 6N per token, plus attention 12 * layers * hidden * seq per token (PaLM App. B)
    flops = 6 * n_params * tokens + 12 * layers * hidden * float((seq * seq).sum())
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in out["device"]), float("nan"))
    new_tokens = int(mask.sum())
    train_budget_s = times.pop("train_token_budget")
    out.update(times_s=dict(times), step_s=sum(times.values()) - times["check"], new_tokens=new_tokens,
               generate_tokens_per_s=new_tokens / times["generate"], train_tflops=flops / times["train"] / 1e12,
               mfu=flops / times["train"] / 1e12 / peak, train_budget_s=train_budget_s, token_budget=token_budget,
               mfu_budget=flops / train_budget_s / 1e12 / peak, check_share=times["check"] / (times["sync"] - times["check"]))
    engine.shutdown()
    return out


def step3b_checks(r: dict) -> list[tuple[str, str, str, bool]]:
    t = r["times_s"]
    return [
        ("step seconds by phase", f"{r['step_s']:.1f} s = " + " + ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "check"),
         "report", True),
        ("exact check's cost", f"{t['check']:.2f} s = {100 * r['check_share']:.0f}% of the push", "<= 10%", r["check_share"] <= 0.10),
        ("generation", f"{r['generate_tokens_per_s']:.0f} new tokens/s ({r['new_tokens']} tokens)", "report", True),
        ("trainer MFU, 2-sample micro-batches", f"{fmt(100 * r['mfu'], '.0f')}% ({r['train_tflops']:.0f} TFLOP/s, "
         f"{t['train']:.1f} s, peak {r['mem_train_peak_gib']:.1f} GiB)", "report", True),
        (f"trainer MFU, {r['token_budget']}-token micro-batches", f"{fmt(100 * r['mfu_budget'], '.0f')}% "
         f"({r['train_budget_s']:.1f} s, peak {r['mem_train_budget_peak_gib']:.1f} GiB)", "report", True),
        ("memory awake, GiB", f"{r['mem_awake_gib']:.1f}", "report", True),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Part: one multi-turn GRPO step (grpo_calculator.py's rollout) of a Qwen2.5-3B-shaped model (GPU only)
# ---------------------------------------------------------------------------------------------------------------
MULTITURN_STOP = "w151"  # stand-in tool call: a random model writes a token starting "w151" about once in 145 tokens


def part_multiturn3b(work: Path, prompts: int = 16, samples: int = 8, max_turns: int = 4, max_response: int = 1024,
                     tool_tokens: int = 32, prompt_len: int = 150, micro_batch: int = 2, mini_batch: int = 16) -> dict:
    """One step of grpo_calculator.py at one GPU's share of the default 8-GPU run: its multi-turn rollout
    (`common.multiturn.rollout`: one batched generate per turn over the unfinished trajectories, each continuing from
    its exact ids, vLLM's prefix cache re-using their histories), the trainer's log-prob pass and a GRPO update on the
    sampled-token mask. A random model never writes a real call, so the task is a stand-in: a turn ends at the text
    "w151" (~145 tokens on average) and the tool answers `tool_tokens` fixed ids. Reports seconds per phase and per
    turn, turns and tool tokens per trajectory, sampled tokens/s and trainer MFU, and checks the trainer's ids (sampled
    + tool ids) and mask (the sampled ones, one vLLM log-prob each)."""
    import dataclasses
    import types

    import torch

    import grpo_calculator as script
    from common.dist import init_distributed, seed_everything
    from common.model import (build_optimizer, clip_grad_norm, hf_named_parameters, load_policy, load_tokenizer,
                              logprobs_in_micro_batches, pad_batch, select_rows)
    from common.multiturn import rollout
    from common.vllm_engine import ColocatedVLLM

    dist = init_distributed()
    seed_everything(0)
    model_dir = str(save_random_3b(Path(tempfile.gettempdir()) / "qwen25_3b_shaped"))
    tokenizer = load_tokenizer(model_dir)
    policy = load_policy(model_dir, dist, bf16=True, activation_checkpointing=True)
    optimizer = build_optimizer(policy, lr=1e-6)
    engine = ColocatedVLLM(model_dir, dist, max_model_len=prompt_len + max_response, gpu_memory_utilization=0.25,
                           rollout_seqs=prompts * samples)
    args = dataclasses.replace(script.Args(), max_turns=max_turns, max_response_tokens=max_response,
                               max_tool_tokens=tool_tokens, seed=0)
    call_tool = lambda text, problem, enabled=True: ("<result>", False) if text.endswith(MULTITURN_STOP) else None
    # the random model's word-level tokenizer encodes no text of its own vocabulary: the tool's output is fixed ids
    tool_ids = lambda texts, add_special_tokens=False: types.SimpleNamespace(input_ids=[list(range(7, 7 + tool_tokens))] * len(texts))
    rng = torch.Generator().manual_seed(0)
    prompt_ids = [torch.randint(0, len(tokenizer) - 1, (prompt_len,), generator=rng).tolist() for _ in range(prompts)]
    times, turn_s = {}, []
    generate = engine.generate

    def timed_generate(*a, **kw):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(*a, **kw)
        turn_s.append(time.perf_counter() - start)
        return out

    engine.generate = timed_generate

    def clock(name, fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return result

    class ToolTokenizer:  # what `rollout` needs of a tokenizer: encode the tool's outputs, decode for the logs
        __call__ = staticmethod(tool_ids)
        decode = staticmethod(tokenizer.decode)

    out = {"device": torch.cuda.get_device_name(),
           "prefix_caching": engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching}
    engine.sleep()
    for step in range(2):  # step 0 warms up; step 1 is reported
        times.clear()
        turn_s.clear()
        torch.cuda.reset_peak_memory_stats()
        clock("sync", lambda: engine.wake_and_sync(policy, hf_named_parameters(policy)))
        groups = clock("rollout", lambda: rollout(engine, ToolTokenizer(), prompt_ids, [{}] * prompts, samples,
                                                  [MULTITURN_STOP], call_tool, args, step, temperature=1.0, top_p=1.0))
        clock("sleep", engine.sleep)
        trajectories = [(i, t) for i, g in enumerate(groups) for t in g]
        batch = pad_batch([prompt_ids[i] for i, _ in trajectories], [t.token_ids for _, t in trajectories], 0,
                          [t.sampled for _, t in trajectories])                                   # (B, L) each
        mask = batch["response_mask"]                                                             # (B, L)
        old = clock("old_logprobs", lambda: logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=16384,
                                                                        device=dist.device)[0])  # (B, L)
        vllm_lp = torch.cat([torch.tensor(t.logprobs) for _, t in trajectories])                  # (N,)
        rewards = torch.rand(len(trajectories), generator=rng)                                     # (B,)
        advantages = script.group_advantages(rewards, torch.tensor([i for i, _ in trajectories]), True)[:, None] * mask

        def train():
            """grpo_calculator.py's update (no KL): fixed micro-batches, the token mean over the sampled mask."""
            lengths = batch["attention_mask"].sum(-1).tolist()
            for m in range(0, len(trajectories), mini_batch):
                mini = sorted(range(m, m + mini_batch), key=lambda i: -lengths[i])
                normaliser = float(mask[mini].sum())
                for u in range(0, mini_batch, micro_batch):
                    rows = mini[u: u + micro_batch]
                    mb = select_rows(batch, rows, dist.device)
                    l = mb["input_ids"].shape[1]
                    logprobs, _ = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"], 1.0)  # (b, l)
                    pg = script.policy_loss_terms(logprobs, old[rows, :l].to(dist.device), old[rows, :l].to(dist.device),
                                                  advantages[rows, :l].to(dist.device), 0.2)[0]            # (b, l)
                    ((pg * mb["response_mask"]).sum() / normaliser).backward()
                clip_grad_norm(policy, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        clock("train", train)
    out["mem_train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    sampled = int(mask.sum())
    tokens = int(batch["attention_mask"].sum())
    seq = batch["attention_mask"].sum(-1).float()                                                 # (B,)
    n_params = sum(p.numel() for p in policy.parameters())
    layers, hidden = QWEN25_3B["num_hidden_layers"], QWEN25_3B["hidden_size"]
    flops = 6 * n_params * tokens + 12 * layers * hidden * float((seq * seq).sum())               # PaLM App. B
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in out["device"]), float("nan"))
    ts = [t for _, t in trajectories]
    out.update(
        times_s=dict(times), step_s=sum(times.values()), turn_s=list(turn_s),
        turns_mean=sum(t.turns for t in ts) / len(ts), tool_calls_mean=sum(t.tool_calls for t in ts) / len(ts),
        tool_token_frac=sum(len(t.sampled) - sum(t.sampled) for t in ts) / max(sum(len(t.sampled) for t in ts), 1),
        cut_frac=sum(t.end != "stop" for t in ts) / len(ts), sampled_tokens=sampled,
        generate_tokens_per_s=sampled / times["rollout"], mfu=flops / times["train"] / 1e12 / peak,
        # the trainer's ids are the sampled and tool ids: the mask holds exactly the sampled tokens, one vLLM log-prob
        # each, and the trainer's log-probs there are vLLM's up to bf16 (mean |gap|)
        ids_exact=all(batch["input_ids"][k, : len(prompt_ids[i]) + len(t.token_ids)].tolist() == prompt_ids[i] + t.token_ids
                      for k, (i, t) in enumerate(trajectories)) and sampled == len(vllm_lp),
        logprob_gap=float((old[mask] - vllm_lp).abs().mean()),
    )
    engine.shutdown()
    return out


def multiturn3b_checks(r: dict) -> list[tuple[str, str, str, bool]]:
    t = r["times_s"]
    return [
        ("multi-turn step seconds by phase", f"{r['step_s']:.1f} s = " + " + ".join(f"{k} {v:.1f}" for k, v in t.items()),
         "report", True),
        ("seconds per turn (generate)", ", ".join(f"{s:.1f}" for s in r["turn_s"]), "report", True),
        ("turns, tool calls per trajectory", f"{r['turns_mean']:.2f}, {r['tool_calls_mean']:.2f} (tool tokens "
         f"{100 * r['tool_token_frac']:.0f}%, cut by a limit {100 * r['cut_frac']:.0f}%)", "> 1 turn", r["turns_mean"] > 1),
        ("generation, prefix caching " + ("on" if r["prefix_caching"] else "OFF"),
         f"{r['generate_tokens_per_s']:.0f} sampled tokens/s ({r['sampled_tokens']} tokens)", "caching on", r["prefix_caching"]),
        ("trainer ids = sampled + tool ids, mask = sampled", "exact" if r["ids_exact"] else "DIFFER", "exact", r["ids_exact"]),
        ("vLLM/trainer log-prob gap on sampled tokens", f"{r['logprob_gap']:.3g}", "<= 0.1 (bf16)", r["logprob_gap"] <= 0.1),
        ("trainer MFU, 2-sample micro-batches", f"{fmt(100 * r['mfu'], '.0f')}% ({t['train']:.1f} s, peak "
         f"{r['mem_train_peak_gib']:.1f} GiB)", "report", True),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Part: the real scripts, tiny presets
# ---------------------------------------------------------------------------------------------------------------
def part_script(name: str, work: Path, on_gpu: bool, limit_s: float) -> dict:
    script = {"grpo": "grpo_countdown.py", "ppo": "ppo_gsm8k.py"}[name]
    small = [] if on_gpu else ["--num-steps", "2", "--prompts-per-step", "8", "--samples-per-prompt", "4", "--mini-batch-size", "16",
                               "--micro-batch-size", "8", "--test-size", "16", "--train-size", "256"]
    steps = ["--num-steps", "4"] if on_gpu else []
    cmd = [sys.executable, script, "--preset", "tiny", *small, *steps, "--eval-every", "2", "--out-dir", str(work),
           "--exp-name", name]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(limit_s - 15, 10))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"{script} did not finish in {limit_s - 15:.0f} s"}
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"ok": False, "error": (proc.stdout + proc.stderr).strip().splitlines()[-1][:200]}
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    probe = [r["train/sync_probe_error"] for r in rows if "train/sync_probe_error" in r]
    finite = all(math.isfinite(v) for r in rows for v in r.values())
    return {"ok": finite and bool(probe), "steps": len(probe), "finite": finite, "probe_max": max(probe, default=float("nan")),
            "eval_accuracy": [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]}


def script_checks(r: dict) -> list[tuple[str, str, str, bool]]:
    return [("steps, every metric finite", f"{r['steps']} steps, finite: {r['finite']}", "all finite", r["finite"]),
            ("probe (mean |gap|), largest", fmt(r["probe_max"], ".2g"), "< the run's bound (else it stops)", r["steps"] > 0),
            ("held-out accuracy", ", ".join(fmt(a, ".3f") for a in r["eval_accuracy"]), "report", True)]


# ---------------------------------------------------------------------------------------------------------------
# Driver: one process per part, then one table
# ---------------------------------------------------------------------------------------------------------------
def run_part(part: str, out_dir: Path, limit_s: float, cache_dir: Path) -> dict:
    work = out_dir / part
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
           # compiled kernels and captured-graph inputs are reused by every later part and run (a cold machine pays once)
           "VLLM_CACHE_ROOT": str(cache_dir / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
           "TRITON_CACHE_DIR": str(cache_dir / "triton")}
    if part == "cycles_untied":  # a user's allocator settings for the trainer: vLLM must leave them as they were
        env["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
                if part == "cycles_2gpu" else [sys.executable])
    start = time.perf_counter()
    try:
        proc = subprocess.run([*launcher, __file__, "--part", part, "--out-dir", str(work), "--limit-s", str(limit_s)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        (work / "log.txt").write_text(proc.stdout + proc.stderr)
        result = json.loads((work / "result.json").read_text()) if (work / "result.json").is_file() else {
            "ok": False, "error": ((proc.stdout + proc.stderr).strip().splitlines() or ["no output"])[-1][:200]}
    except subprocess.TimeoutExpired:
        result = {"ok": False, "error": f"timed out after {limit_s:.0f} s"}
    result["wall_s"] = time.perf_counter() - start
    if "error" not in result:
        result["checks"] = (cycles_checks(result) if part.startswith("cycles") else
                            step3b_checks(result) if part == "step3b" else
                            multiturn3b_checks(result) if part == "multiturn3b" else script_checks(result))
        result["ok"] = all(passed for *_, passed in result["checks"])
    return result


def fmt(x, spec=".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(results: dict, skipped: dict[str, str]) -> None:
    """One row per check: part, verdict, value, threshold; a part that failed to run is one row with its error."""
    print(f"\n{'part':<22}{'verdict':<9}{'check':<48}{'value':<60}threshold")
    for part, r in results.items():
        if "error" in r:
            print(f"{part + ' (' + format(r['wall_s'], '.0f') + ' s)':<22}{'FAIL':<9}{'ran to the end':<48}{r['error']}")
            continue
        for i, (check, value, threshold, passed) in enumerate(r["checks"]):
            name = f"{part} ({r['wall_s']:.0f} s)" if i == 0 else ""
            print(f"{name:<22}{'pass' if passed else 'FAIL':<9}{check:<48}{value:<60}{threshold}")
    for part, why in skipped.items():
        print(f"{part:<22}{'skip':<9}{why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=None, help="logs and results (default: a temporary directory)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "r1-clean-gpu-check"),
                        help="compile caches shared by the parts and kept across runs")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--limit-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.part:  # a child process: one part, its result as JSON
        import torch

        on_gpu = torch.cuda.is_available()
        if args.part.startswith("cycles"):
            result = part_cycles(args.part != "cycles_untied", out_dir)
        elif args.part == "step3b":
            result = part_step3b(out_dir)
        elif args.part == "multiturn3b":
            result = part_multiturn3b(out_dir)
        else:
            result = part_script(args.part, out_dir, on_gpu, args.limit_s)
        from common.dist import exit_process, shutdown_distributed

        if int(os.environ.get("RANK", "0")) == 0:
            (out_dir / "result.json").write_text(json.dumps(result))
        shutdown_distributed()
        exit_process()  # skip Python's teardown of torch and vLLM (seconds)
    import torch

    on_gpu = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if on_gpu else 0
    skipped = {p: "left out (--skip)" for p in PARTS if p in args.skip}
    if not on_gpu:
        skipped["step3b"] = skipped["multiturn3b"] = "needs CUDA"
    if gpus < 2:
        skipped["cycles_2gpu"] = "needs 2 GPUs"
    print(f"gpu_check: {'CUDA ' + torch.cuda.get_device_name() + f' x {gpus}' if on_gpu else 'no CUDA: CPU mode, tiny models, float32'}; "
          f"torch {torch.__version__}; logs in {out_dir}", flush=True)
    results, started = {}, time.perf_counter()
    for part in PARTS:
        if part in skipped:
            continue
        left = BUDGET_S - (time.perf_counter() - started)
        if left < 60:
            skipped[part] = f"no time left of the {BUDGET_S // 60}-minute budget"
            continue
        results[part] = run_part(part, out_dir, min(PART_LIMIT_S[part], left), Path(args.cache_dir))
        print(f"  {part}: {'ok' if results[part].get('ok') else 'FAILED'} in {results[part]['wall_s']:.0f} s", flush=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results, skipped)
    sys.exit(0 if all(r.get("ok") for r in results.values()) else 1)


if __name__ == "__main__":
    main()
