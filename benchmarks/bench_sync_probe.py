"""How far apart are the weight-sync probe's errors after a correct sync and after a stale one? The bound of
`ColocatedVLLM.probe_sync` (`PROBE_BOUND`) comes from this measurement.

    python benchmarks/bench_sync_probe.py [--dtype bfloat16] [--trials 4]   # re-launches itself under torchrun, 2 ranks

The shipped tiny Countdown model, trainer and vLLM in `--dtype` (bf16: mixed precision as on GPU; on a CPU without
AMX it runs, slowly), the tiny GRPO preset's prompts and sampling (top-p 1 here) and learning rate (2e-4, AdamW).
Each trial: push the weights, sample 32 prompts x 4 completions per rank, re-score every completion in vLLM and in
the trainer (`probe_gaps`); then one AdamW step on the completions' log-likelihood, not pushed, and re-score again:
vLLM one optimizer step stale, the smallest real fault; then zeros pushed, as after a level-2 wake without a push
(whose memory is undefined), and re-score again. The probe's statistic is the largest |gap| over the tokens of
`--probe-sequences` completions per rank (2 in the scripts); the table gives its distribution over disjoint groups of
completions (all ranks, all trials), and the same for the mean |gap| over those tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Args:
    dtype: str = "bfloat16"
    """vLLM's and the trainer's compute dtype: bfloat16 or float32"""
    trials: int = 4
    """sync -> sample -> stale step rounds"""
    prompts: int = 32
    """prompts per rank and trial"""
    samples: int = 4
    """completions per prompt"""
    probe_sequences: int = 2
    """completions per rank in one probe (the scripts' --sync-probe-sequences)"""
    learning_rate: float = 2e-4
    """AdamW learning rate of the stale step (the tiny GRPO preset's)"""
    nproc: int = 2
    """ranks"""
    rank_process: bool = False
    """internal: this process is a torchrun rank"""


def measure(args: Args) -> None:
    import torch

    from common.console import quiet_console
    from common.dist import exit_process, gather_to_main, init_distributed, seed_everything, shutdown_distributed
    from common.model import build_optimizer, hf_named_parameters, load_policy, load_tokenizer, pad_batch
    from common.tasks import make_countdown_problems
    from common.vllm_engine import ColocatedVLLM
    from grpo_countdown import make_prompt

    quiet_console(False)
    info = init_distributed()
    seed_everything(0)
    model = str(ROOT / "tiny_models" / "countdown")
    tok = load_tokenizer(model)
    policy = load_policy(model, info, bf16=args.dtype == "bfloat16")
    engine = ColocatedVLLM(model, info, max_model_len=256, seed=info.rank, dtype=args.dtype, cpu_kv_cache_bytes=64 * 2**20,
                           rollout_seqs=args.prompts * args.samples)
    optimizer = build_optimizer(policy, args.learning_rate)
    problems = make_countdown_problems(args.prompts * args.trials * info.world_size, seed=3, num_numbers=(3,),
                                       max_number=20, max_target=50)
    stats: dict[str, list[list[float]]] = {"correct": [], "stale": [], "wiped": []}  # per completion: token |gaps|
    for trial in range(args.trials):
        engine.wake_and_sync(policy, hf_named_parameters(policy))
        start = (trial * info.world_size + info.rank) * args.prompts
        prompts = [tok(make_prompt(p, tok, "base")).input_ids for p in problems[start: start + args.prompts]]
        groups = engine.generate(prompts, n=args.samples, max_tokens=48, stop=["</answer>"], seed=1, step=trial)
        sequences = [p + c.token_ids for p, g in zip(prompts, groups) for c in g if len(c.token_ids) > 1]
        stats["correct"] += [g.abs().tolist() for g in engine.probe_gaps(policy, sequences)]
        batch = pad_batch([s[:len(prompts[0])] for s in sequences], [s[len(prompts[0]):] for s in sequences], tok.pad_token_id)
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        (-(logprobs * batch["response_mask"]).sum() / batch["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats["stale"] += [g.abs().tolist() for g in engine.probe_gaps(policy, sequences)]
        engine.sync_weights(policy, [(n, torch.zeros(p.shape, dtype=p.dtype)) for n, p in hf_named_parameters(policy)])
        stats["wiped"] += [g.abs().tolist() for g in engine.probe_gaps(policy, sequences)]
    gathered = {k: gather_to_main(v) for k, v in stats.items()}
    if info.is_main:
        k = args.probe_sequences * info.world_size
        print(f"# tiny Countdown model, {args.dtype}, {info.world_size} ranks, torch {torch.__version__}, "
              f"{len(gathered['correct'])} completions per case; a probe = {args.probe_sequences} completions per rank")
        print(f"{'statistic':<24}{'correct: median':>16}{'max':>10}{'stale: min':>12}{'median':>10}{'wiped: min':>12}"
              f"{'  stale / correct':>18}")
        for name, reduce in (("max |gap| of a probe", max), ("mean |gap| of a probe", lambda xs: sum(xs) / len(xs))):
            row = {case: sorted(reduce([x for s in seqs[i: i + k] for x in s]) for i in range(0, len(seqs) - k + 1, k))
                   for case, seqs in gathered.items()}
            correct, stale, wiped = row["correct"], row["stale"], row["wiped"]
            print(f"{name:<24}{correct[len(correct) // 2]:>16.3g}{correct[-1]:>10.3g}{stale[0]:>12.3g}"
                  f"{stale[len(stale) // 2]:>10.3g}{wiped[0]:>12.3g}{stale[0] / max(correct[-1], 1e-12):>17.1f}x")
    engine.shutdown()
    del policy, optimizer
    shutdown_distributed()
    exit_process()


def main() -> None:
    args = tyro.cli(Args)
    if args.rank_process:
        measure(args)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(args.nproc), __file__, "--rank-process",
           "--dtype", args.dtype, "--trials", str(args.trials), "--prompts", str(args.prompts), "--samples",
           str(args.samples), "--probe-sequences", str(args.probe_sequences), "--learning-rate", str(args.learning_rate)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    sys.exit(subprocess.run(cmd, env=env, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
