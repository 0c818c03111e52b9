"""Command line and start-up checks shared by the scripts: presets, exact batch arithmetic, model sources.

Errors here are one line that names the fix, raised before any model is loaded.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import tyro

T = TypeVar("T")


@dataclass
class RunArgs:
    """The settings every script shares: outputs and logging, precision and memory, checkpoints, the vLLM engine.
    A script's `Args` extends it with its task and its algorithm (`class Args(RunArgs)`); `--help` lists both, these
    first, and `check_run_args` checks their ranges."""
    # ---- experiment
    preset: str = "default"
    """`default`: the script's full run on 8 GPUs (the defaults listed); `tiny`: the shipped tiny model on a 2-core
    CPU; other flags override either"""
    exp_name: str = ""
    """name of the run: outputs go to <out_dir>/<exp_name> (default: the script's file name)"""
    seed: int = 1
    """seeds model init, data order and (with step and rank) vLLM sampling"""
    out_dir: str = "runs"
    """metrics.jsonl, samples.jsonl, metrics.png and checkpoints go under <out_dir>/<exp_name>"""
    track: bool = False
    """also log to Weights & Biases (WANDB_MODE=offline works without an account)"""
    wandb_project: str = "r1-clean"
    """wandb project name"""
    verbose: bool = False
    """also show vLLM's, torch's and transformers' own messages (routine warnings are silenced by default)"""
    # ---- precision and memory
    bf16: bool = True
    """compute in bfloat16 with float32 master weights and gradient reduction, and vLLM in bfloat16; on a CPU only
    where it has AMX (bf16 matrix units), else float32 (docs/cpu_performance.md)"""
    activation_checkpointing: bool = True
    """recompute decoder-layer activations in backward (less memory, ~30% more compute)"""
    reshard_after_forward: bool = True
    """FSDP2 frees each layer's gathered weights after forward and gathers them again in backward (least memory);
    False keeps them until backward: one all-gather fewer per layer and step (small models, CPU)"""
    ref_cpu_offload: bool = False
    """keep the reference model's shards in CPU memory between uses (frees GPU memory; no gain on a CPU)"""
    logprob_token_budget: int = 16384
    """padded tokens per micro-batch in the no-grad log-prob passes"""
    train_token_budget: int | None = None
    """cut the update's micro-batches by padded tokens (at most this many each; a longer sample goes alone) instead of
    by --micro-batch-size samples (None)"""
    # ---- checkpoints, evaluation output
    save_every: int = 50
    """checkpoint every N steps (and at the end); 0 saves only at the end"""
    resume: str | None = None
    """a checkpoint folder (<out_dir>/<exp_name>/step_XXXXXX) to continue from, or `auto`: the newest complete one
    under <out_dir>/<exp_name>, or a fresh start if there is none (re-submit the same command after a preemption)"""
    max_nonfinite_skips: int = 10
    """a non-finite loss or gradient norm on any rank skips that optimizer step on every rank; after this many
    skips in a row the run stops with an error (0: never stop)"""
    eval_only: str | None = None
    """evaluate a checkpoint folder (its `policy/`) or a model directory on the held-out set, write eval_samples.jsonl, stop"""
    eval_samples_logged: int = 4
    """completions shown in the samples table at each evaluation"""
    # ---- vLLM
    vllm_gpu_memory_utilization: float = 0.35
    """fraction of GPU memory for vLLM's weights and KV cache while awake"""
    vllm_tensor_parallel_size: int = 1
    """GPUs per vLLM replica"""
    vllm_cpu_kv_cache_gb: float = 1.0
    """on CPU: KV cache size per rank"""
    sync_probe_sequences: int = 2
    """after each weight sync (which an exact checksum comparison checks), vLLM re-scores this many of the step's
    samples per rank and the run stops if its log-probs differ from the trainer's by more than `sync_probe_bound`
    on average (`train/sync_probe_error`; 0 turns the probe off)"""
    sync_probe_bound: float | None = None
    """largest accepted mean |vLLM - trainer| log-prob on those tokens; None: `PROBE_BOUND` of vLLM's dtype
    (common/vllm_engine.py)"""


class ConfigError(SystemExit):
    """A bad setting: exits with status 1 and a one-line message (no traceback)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def parse_args(args_type: type[T], presets: dict[str, T]) -> T:
    """tyro parsing, where `--preset NAME` first swaps in another set of defaults; every other flag overrides them.

    `python grpo_countdown.py --preset tiny --num-steps 5` = the tiny preset with 5 steps.
    """
    argv = sys.argv[1:]
    flags = [i for i, a in enumerate(argv) if a == "--preset" and i + 1 < len(argv)]
    name = argv[flags[-1] + 1] if flags else "default"  # the last one wins, as for any flag
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(presets)}")
    args = tyro.cli(args_type, default=presets[name], args=argv)
    if hasattr(args, "exp_name") and not args.exp_name:  # derived: a script (or a fork) names its runs after its file
        args.exp_name = Path(sys.argv[0]).stem
    return args


def flag(field: str) -> str:
    """The command-line spelling of an `Args` field: `flag("top_p") == "--top-p"`."""
    return "--" + field.replace("_", "-")


# name -> (holds, what a good value is): the rules `check_ranges` applies, one line each
RANGE_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "probability": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "unit_interval": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "above_one": (lambda v: v > 1, "must be > 1"),
}


def check_ranges(args, **fields_by_rule: tuple[str, ...]) -> None:
    """Check `Args` fields against the rules of `RANGE_RULES`, raising one `error:` line that names the flag.
    A tuple field is checked element by element; an optional field left at None is not checked.

    check_ranges(args, positive=("num_steps", "temperature"), probability=("top_p",))
    with args.top_p = 1.5  ->  error: --top-p 1.5: must be in (0, 1]
    """
    for rule, fields in fields_by_rule.items():
        holds, requirement = RANGE_RULES[rule]
        for field in fields:
            value = getattr(args, field)
            if value is not None and not all(holds(v) for v in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"{flag(field)} {value}: {requirement}")


def check_run_args(args: RunArgs) -> None:
    """The ranges of `RunArgs`' fields, the flags they must not be combined with, and under torchrun the batch
    arithmetic over its ranks (`batch_sizes`; every script's `Args` has its fields): one `error:` line, before
    anything loads. Each script's `check_args` calls it first."""
    check_ranges(args, positive=("logprob_token_budget", "train_token_budget", "vllm_tensor_parallel_size",
                                 "vllm_cpu_kv_cache_gb", "sync_probe_bound"),
                 non_negative=("seed", "eval_samples_logged", "save_every", "max_nonfinite_skips", "sync_probe_sequences"),
                 probability=("vllm_gpu_memory_utilization",))
    check_resume(args.resume)
    if args.eval_only is not None:
        policy_dir(args.eval_only)
        if args.resume is not None:
            raise ConfigError("--eval-only and --resume: choose one (evaluation does not train)")
    if "WORLD_SIZE" in os.environ:  # set by torchrun: a batch that does not divide fails here, not after torch loads
        batch_sizes(args, int(os.environ["WORLD_SIZE"]))


def check_resume(path: str | None) -> None:
    """`--resume` names a complete checkpoint (one with trainer_state.pt), or is `auto`, or is unset."""
    if path is None or path == "auto":
        return
    if not os.path.isdir(path):
        raise ConfigError(f"--resume {path}: no such folder; pass a checkpoint folder <out_dir>/<exp_name>/step_XXXXXX")
    if not os.path.isfile(os.path.join(path, "trainer_state.pt")):
        raise ConfigError(f"--resume {path}: not a complete checkpoint (no trainer_state.pt); "
                          "pass a checkpoint folder <out_dir>/<exp_name>/step_XXXXXX")


def policy_dir(path: str, flag_name: str = "--eval-only") -> str:
    """The model directory to evaluate: a checkpoint folder's `policy/`, or a Hugging Face model directory itself.

    policy_dir("runs/x/step_000080") == "runs/x/step_000080/policy";  policy_dir("tiny_models/countdown") unchanged.
    """
    if not os.path.isdir(path):
        raise ConfigError(f"{flag_name} {path}: no such folder; pass a checkpoint folder (step_XXXXXX) or a model directory")
    for candidate in (os.path.join(path, "policy"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise ConfigError(f"{flag_name} {path}: not a model (no config.json, nor policy/config.json); "
                      "pass a checkpoint folder (step_XXXXXX) or a Hugging Face model directory")


def exact_div(a: int, b: int, what: str) -> int:
    """a / b when b divides a, else a clear error. `exact_div(128, 8, "prompts per rank") == 16`."""
    if b <= 0 or a % b != 0:
        raise ConfigError(f"{what}: {a} is not divisible by {b}")
    return a // b


def batch_sizes(args, world: int) -> tuple[int, int, int]:
    """A script's batch arithmetic over `world` ranks, each an exact division or a one-line error: (prompts per rank,
    mini-batches per rollout, samples per rank and mini-batch). `args`: prompts_per_step, samples_per_prompt,
    mini_batch_size, micro_batch_size.

    prompts 64, samples 8, mini-batch 256, micro-batch 128, 2 ranks -> (32, 2, 128)
    """
    local_prompts = exact_div(args.prompts_per_step, world, "--prompts-per-step over ranks (each rank owns whole groups)")
    num_mini = exact_div(args.prompts_per_step * args.samples_per_prompt, args.mini_batch_size,
                         "rollout samples (prompts_per_step * samples_per_prompt) by --mini-batch-size")
    local_mini = exact_div(args.mini_batch_size, world, "--mini-batch-size over ranks")
    exact_div(local_mini, args.micro_batch_size, "per-rank mini-batch (mini_batch_size / world) by --micro-batch-size")
    return local_prompts, num_mini, local_mini


def check_model_source(name_or_path: str, flag: str = "--model") -> None:
    """Fail early, in one line, when a model can be neither found on disk nor fetched from the hub."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name_or_path)
    except Exception as e:  # OSError, ValueError, HTTP errors: all mean the same to the user
        if not os.path.isdir(name_or_path):
            where = f"no such local directory, and the hub is unreachable or has no such model ({type(e).__name__})"
        elif not os.path.isfile(os.path.join(name_or_path, "config.json")):
            where = "the directory holds no config.json"
        else:
            where = f"its config.json does not load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        raise ConfigError(f"cannot load {flag} {name_or_path!r}: {where}; "
                          f"pass {flag} a local Hugging Face model directory or a reachable hub id") from None


def check_prompt_lengths(checked: list[tuple[list[int], dict]], max_prompt_tokens: int, device) -> None:
    """`checked`: this rank's (prompt token ids, problem) pairs. Collective: every rank learns the longest prompt of
    all ranks; past `max_prompt_tokens` each rank stops with one line, naming the problem where it holds it."""
    from common.dist import all_reduce_max

    ids, problem = max(checked, key=lambda c: len(c[0]))
    longest = all_reduce_max(len(ids), device)
    if longest > max_prompt_tokens:
        which = f"the prompt of {json.dumps(problem)[:300]}" if len(ids) == longest else "a prompt on another rank"
        raise ConfigError(f"{which} has {longest} tokens > --max-prompt-tokens {max_prompt_tokens}: raise it")
