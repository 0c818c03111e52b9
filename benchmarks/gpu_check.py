"""The GPU path in one command: correctness of the colocated engine, the real scripts, and one 3B-shaped GRPO step.

    python benchmarks/gpu_check.py                    # one NVIDIA GPU with vLLM installed: < 8 min, one table
    python benchmarks/gpu_check.py --out-dir logs     # each part's log and JSON result go there (default: a temp dir)
    python benchmarks/gpu_check.py --skip step3b      # leave parts out (cycles_tied, cycles_untied, grpo, ppo, step3b)

Parts, each in its own process (one vLLM engine per process), world size 1:
  cycles_tied / cycles_untied  a small random Qwen2 (tied / untied embeddings) under FSDP2 and a colocated vLLM with
                 sleep mode: 3 cycles of AdamW step -> sleep(level 2) -> wake -> sync -> probe -> generate, the
                 weight-sync probe (`ColocatedVLLM.probe_sync`) inside its bound every time; then vLLM's weights wiped
                 (`reset_weights` where the version has it, else a push of zeros) and synced again, which the probe
                 must pass, proving the sync overwrites every parameter; device memory before sleep, asleep, awake.
  grpo / ppo     `grpo_countdown.py` / `ppo_gsm8k.py --preset tiny` for a few steps (bf16 on GPU, AMX CPUs):
                 every metric finite, the probe inside its bound.
  step3b         GPU only: one GRPO step of a Qwen2.5-3B-shaped model (random weights; 36 layers, hidden 2048, 16/2
                 heads, intermediate 11008, vocabulary 151,936, tied) at 16 prompts x 8 samples x up to 1,024 new
                 tokens, one GPU's share of the default 8-GPU run: seconds per phase, generated tokens/s, trainer MFU,
                 peak memory awake and in training.
Without CUDA it runs the first four on CPU with tiny models (float32) and says that it skipped step3b.
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
PARTS = ("cycles_tied", "cycles_untied", "grpo", "ppo", "step3b")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0}  # dense, per GPU
QWEN25_3B = dict(num_hidden_layers=36, hidden_size=2048, num_attention_heads=16, num_key_value_heads=2,
                 intermediate_size=11008, vocab_size=151_936, tie_word_embeddings=True, max_position_embeddings=4096,
                 rope_theta=1e6, rms_norm_eps=1e-6)


def device_used_gib() -> float:
    """Memory in use on the GPU by every allocator (torch's and vLLM's sleep-mode pool alike)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


# ---------------------------------------------------------------------------------------------------------------
# Part: sleep -> wake -> sync cycles with the probe, and the wiped-weights check
# ---------------------------------------------------------------------------------------------------------------
def part_cycles(tied: bool, work: Path) -> dict:
    import torch
    import vllm
    from transformers import AutoTokenizer

    from common.dist import init_distributed, seed_everything
    from common.model import build_optimizer, hf_named_parameters, load_policy, pad_batch
    from common.vllm_engine import ColocatedVLLM
    from tests.tiny_lm import save_tiny_qwen2

    dist = init_distributed()
    on_gpu = dist.device.type == "cuda"
    seed_everything(0)
    model_dir = save_tiny_qwen2(work / "model", tie_word_embeddings=tied, hidden=256 if on_gpu else 128, layers=4 if on_gpu else 2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = load_policy(str(model_dir), dist, bf16=on_gpu)
    optimizer = build_optimizer(policy, lr=1e-3)
    used = device_used_gib if on_gpu else (lambda: float("nan"))
    trainer_only = used()
    engine = ColocatedVLLM(str(model_dir), dist, max_model_len=256, gpu_memory_utilization=0.3,
                           cpu_kv_cache_bytes=32 * 2**20)
    prompts = [tok.encode(s) for s in ["Numbers: 3 5 7\n", "The answer is", "<think>"]]
    batch = pad_batch(prompts, [tok.encode(" 42 + 7")] * len(prompts), tok.pad_token_id)
    out: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
                 "dtype": engine.dtype, "bound": engine.probe_bound, "probe": [], "generated": []}
    engine.wake_and_sync(policy, hf_named_parameters(policy))
    out["mem_awake_gib"] = used()
    for cycle in range(3):
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])   # (B, L)
        (-logprobs.sum() / batch["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        engine.sleep()
        out.setdefault("mem_asleep_gib", used())
        engine.wake_and_sync(policy, hf_named_parameters(policy))
        sequences = [p + c.token_ids for p, g in zip(prompts, engine.generate(prompts, n=2, max_tokens=16, seed=1, step=cycle)) for c in g]
        out["probe"].append(engine.probe_sync(policy, [s for s in sequences if len(s) >= 2], bound=math.inf, step=cycle))
        out["generated"].append(len(sequences))
    out["mem_awake_again_gib"] = used()
    # wipe vLLM's weights, then sync: the probe passes only if the sync wrote every parameter
    try:
        engine.llm.collective_rpc("reset_weights")
        out["wipe"] = "reset_weights"
    except Exception:  # older vLLM (0.26) has no such worker call: push zeros instead
        engine.sync_weights(policy, ((n, torch.zeros(p.shape, dtype=p.dtype, device=dist.device)) for n, p in hf_named_parameters(policy)))
        out["wipe"] = "zeros pushed"
    sequences = [p + tok.encode(" 12 34") for p in prompts]
    out["probe_wiped"] = engine.probe_sync(policy, sequences, bound=math.inf)
    engine.wake_and_sync(policy, hf_named_parameters(policy))
    out["probe_after_wipe"] = engine.probe_sync(policy, sequences, bound=math.inf)
    out["mem_trainer_only_gib"] = trainer_only
    vllm_mem = out["mem_awake_gib"] - trainer_only
    out["sleep_frees"] = (out["mem_awake_gib"] - out["mem_asleep_gib"]) / vllm_mem if on_gpu and vllm_mem > 0 else float("nan")
    out["ok"] = (max(out["probe"]) <= engine.probe_bound and out["probe_after_wipe"] <= engine.probe_bound
                 and out["probe_wiped"] > engine.probe_bound and all(n == 6 for n in out["generated"]))
    engine.shutdown()
    return out


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
                mini_batch: int = 16, micro_batch: int = 2) -> dict:
    import torch

    from common.dist import init_distributed, seed_everything
    from common.model import (build_optimizer, clip_grad_norm, hf_named_parameters, load_policy, logprobs_in_micro_batches,
                              pad_batch, select_rows)
    from common.vllm_engine import ColocatedVLLM
    from grpo_countdown import group_advantages, policy_loss_terms

    dist = init_distributed()
    seed_everything(0)
    model_dir = str(save_random_3b(Path(tempfile.gettempdir()) / "qwen25_3b_shaped"))
    policy = load_policy(model_dir, dist, bf16=True, activation_checkpointing=True)
    reference = load_policy(model_dir, dist, bf16=True, trainable=False, cpu_offload=True)  # world of one: shards won't fit
    optimizer = build_optimizer(policy, lr=1e-6)
    engine = ColocatedVLLM(model_dir, dist, max_model_len=prompt_len + max_new, gpu_memory_utilization=0.25)
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
        clock("sync", lambda: engine.wake_and_sync(policy, hf_named_parameters(policy)))
        out["mem_awake_gib"] = device_used_gib()
        groups = clock("generate", lambda: engine.generate(prompt_ids, n=samples, temperature=1.0, top_p=1.0,
                                                           max_tokens=max_new, seed=0, step=step))
        clock("probe", lambda: engine.probe_sync(policy, [prompt_ids[0] + groups[0][0].token_ids], step=step))
        clock("sleep", engine.sleep)
        samples_ = [(i, c) for i, g in enumerate(groups) for c in g]
        batch = pad_batch([prompt_ids[i] for i, _ in samples_], [c.token_ids for _, c in samples_], 0)     # (B, L)
        mask = batch["response_mask"]                                                                       # (B, L)
        old = clock("old_logprobs", lambda: logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=16384,
                                                                        device=dist.device)[0])            # (B, L)
        ref = clock("ref_logprobs", lambda: logprobs_in_micro_batches(reference, batch, temperature=1.0, max_tokens=16384,
                                                                        device=dist.device)[0])            # (B, L)
        rewards = torch.rand(len(samples_), generator=rng)                                                  # (B,)
        advantages = group_advantages(rewards, torch.tensor([i for i, _ in samples_]), scale_by_std=True)[:, None] * mask
        torch.cuda.reset_peak_memory_stats()

        def train():
            for m in range(0, len(samples_), mini_batch):
                normaliser = float(mask[m: m + mini_batch].sum())
                for u in range(m, m + mini_batch, micro_batch):
                    rows = list(range(u, u + micro_batch))
                    mb = select_rows(batch, rows, dist.device)
                    l = mb["input_ids"].shape[1]
                    logprobs, _ = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"], 1.0)  # (b, l)
                    pg, kl, _ = policy_loss_terms(logprobs, old[rows, :l].to(dist.device), ref[rows, :l].to(dist.device),
                                                  advantages[rows, :l].to(dist.device), 0.2)                # (b, l)
                    (((pg + 1e-3 * kl) * mb["response_mask"]).sum() / normaliser).backward()
                clip_grad_norm(policy, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        clock("train", train)
        out["mem_train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    tokens = int(batch["attention_mask"].sum())
    seq = batch["attention_mask"].sum(-1).float()                                                           # (B,)
    layers, hidden = QWEN25_3B["num_hidden_layers"], QWEN25_3B["hidden_size"]
    # model FLOPs of forward + backward: 6N per token, plus attention 12 * layers * hidden * seq per token (PaLM App. B)
    flops = 6 * n_params * tokens + 12 * layers * hidden * float((seq * seq).sum())
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in out["device"]), float("nan"))
    new_tokens = int(mask.sum())
    out.update(times_s=dict(times), step_s=sum(times.values()), new_tokens=new_tokens,
               generate_tokens_per_s=new_tokens / times["generate"], train_tflops=flops / times["train"] / 1e12,
               mfu=flops / times["train"] / 1e12 / peak, sync_s=times["sync"])
    engine.shutdown()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Part: the real scripts, tiny presets
# ---------------------------------------------------------------------------------------------------------------
def part_script(name: str, work: Path, on_gpu: bool) -> dict:
    script = {"grpo": "grpo_countdown.py", "ppo": "ppo_gsm8k.py"}[name]
    small = [] if on_gpu else ["--num-steps", "2", "--prompts-per-step", "8", "--samples-per-prompt", "4", "--mini-batch-size", "16",
                               "--micro-batch-size", "8", "--test-size", "16", "--train-size", "256"]
    steps = ["--num-steps", "4"] if on_gpu else []
    cmd = [sys.executable, script, "--preset", "tiny", *small, *steps, "--eval-every", "2", "--out-dir", str(work),
           "--exp-name", name]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"ok": False, "error": (proc.stdout + proc.stderr).strip().splitlines()[-1][:200]}
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    probe = [r["train/sync_probe_error"] for r in rows if "train/sync_probe_error" in r]
    finite = all(math.isfinite(v) for r in rows for v in r.values())
    return {"ok": finite and bool(probe), "steps": len(probe), "finite": finite, "probe_max": max(probe, default=float("nan")),
            "eval_accuracy": [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]}


# ---------------------------------------------------------------------------------------------------------------
# Driver: one process per part, then one table
# ---------------------------------------------------------------------------------------------------------------
def run_part(part: str, out_dir: Path, timeout: int) -> dict:
    work = out_dir / part
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--part", part, "--out-dir", str(work)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        (work / "log.txt").write_text(proc.stdout + proc.stderr)
        result = json.loads((work / "result.json").read_text()) if (work / "result.json").is_file() else {
            "ok": False, "error": ((proc.stdout + proc.stderr).strip().splitlines() or ["no output"])[-1][:200]}
    except subprocess.TimeoutExpired:
        result = {"ok": False, "error": f"timed out after {timeout} s"}
    result["wall_s"] = time.perf_counter() - start
    return result


def fmt(x, spec=".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(results: dict, skipped: list[str]) -> None:
    print(f"\n{'part':<15}{'ok':<6}{'wall s':>8}  details")
    for part, r in results.items():
        if "error" in r:
            details = r["error"]
        elif part.startswith("cycles"):
            details = (f"{r['dtype']} probe {', '.join(fmt(e, '.2g') for e in r['probe'])} (bound {fmt(r['bound'], '.0e')}); "
                       f"wiped ({r['wipe']}) {fmt(r['probe_wiped'], '.2g')} -> synced {fmt(r['probe_after_wipe'], '.2g')}; "
                       f"GiB trainer {fmt(r['mem_trainer_only_gib'], '.2f')} awake {fmt(r['mem_awake_gib'], '.2f')} "
                       f"asleep {fmt(r['mem_asleep_gib'], '.2f')} (sleep frees {fmt(100 * r['sleep_frees'], '.0f')}%)")
        elif part == "step3b":
            t = r["times_s"]
            details = (f"step {r['step_s']:.1f} s = " + " + ".join(f"{k} {v:.1f}" for k, v in t.items())
                       + f"; {r['generate_tokens_per_s']:.0f} new tok/s; train {r['train_tflops']:.0f} TFLOP/s "
                       f"(MFU {fmt(100 * r['mfu'], '.0f')}%); GiB awake {r['mem_awake_gib']:.1f}, train peak {r['mem_train_peak_gib']:.1f}")
        else:
            details = (f"{r['steps']} steps, metrics finite: {r['finite']}, probe max {fmt(r['probe_max'], '.2g')}, "
                       f"eval accuracy {', '.join(fmt(a, '.3f') for a in r['eval_accuracy'])}")
        print(f"{part:<15}{'yes' if r.get('ok') else 'NO':<6}{r['wall_s']:>8.0f}  {details}")
    for part in skipped:
        print(f"{part:<15}{'skip':<6}{'':>8}  {'needs CUDA' if part == 'step3b' else 'left out (--skip)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=None, help="logs and results (default: a temporary directory)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = parser.parse_args()
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.part:  # a child process: one part, its result as JSON
        import torch

        on_gpu = torch.cuda.is_available()
        if args.part.startswith("cycles"):
            result = part_cycles(args.part == "cycles_tied", out_dir)
        elif args.part == "step3b":
            result = part_step3b(out_dir)
        else:
            result = part_script(args.part, out_dir, on_gpu)
        (out_dir / "result.json").write_text(json.dumps(result))
        from common.dist import exit_process, shutdown_distributed

        shutdown_distributed()
        exit_process()  # skip Python's teardown of torch and vLLM (seconds)
    import torch

    on_gpu = torch.cuda.is_available()
    skipped = [p for p in PARTS if p in args.skip or (p == "step3b" and not on_gpu)]
    timeouts = {"step3b": 300} if on_gpu else {}
    print(f"gpu_check: {'CUDA ' + torch.cuda.get_device_name() if on_gpu else 'no CUDA: CPU mode, tiny models, float32'}; "
          f"torch {torch.__version__}; logs in {out_dir}", flush=True)
    results = {}
    for part in PARTS:
        if part not in skipped:
            results[part] = run_part(part, out_dir, timeouts.get(part, 240))
            print(f"  {part}: {'ok' if results[part].get('ok') else 'FAILED'} in {results[part]['wall_s']:.0f} s", flush=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results, skipped)
    sys.exit(0 if all(r.get("ok") for r in results.values()) else 1)


if __name__ == "__main__":
    main()
