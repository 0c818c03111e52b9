"""The policy under FSDP2: loading, sharding, optimizer and schedule, and memory-light token log-probs.

    policy = load_policy(args.model, dist, bf16=True, activation_checkpointing=True)   # rank 0 reads, others receive
    optimizer = build_optimizer(policy, lr=1e-6)
    scheduler = build_scheduler(optimizer, "constant", warmup_steps=0, total_steps=n)
    batch = pad_batch(prompt_ids, response_ids, pad_id)          # (B, L) tensors
    old_logprobs, _ = logprobs_in_micro_batches(policy, batch, temperature=1.0, max_tokens=16384)
    logprobs, entropy = policy(ids, attention_mask, response_mask, temperature=1.0)   # with grad
    grad_norm = clip_grad_norm(policy, 1.0)

Why a wrapper module (`TokenLogprobLM`) around the Hugging Face model: FSDP2 gathers the root's parameters
(embeddings, final norm, output head) only inside the root module's `forward`. The log-prob computation must
use the output head chunk by chunk, so it has to live inside that `forward`, not after it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from common.dist import DistInfo, all_reduce_max

# transformers and torch's FSDP/DTensor modules are imported inside the functions that use them: together they
# take seconds, and `--help` and bad settings answer before that.

LOGPROB_CHUNK_TOKENS = 512  # rows per output-head chunk: (512, 151936) float32 logits = 0.3 GB, not the 2.5 GB of (4, 1024, V)


# ---------------------------------------------------------------------------------------------------
# Token log-probs without a float32 (B, T, V) tensor
# ---------------------------------------------------------------------------------------------------
class _ChunkedLogprobs(torch.autograd.Function):
    """log p(target) and entropy under softmax(hidden @ weight.T / T), one chunk of rows at a time, forward and
    backward, so no (N, V) tensor ever exists: peak extra memory is a few (chunk, V) buffers.

    Backward recomputes each chunk's logits (one extra matmul, as activation checkpointing would) and uses
    d log p(y) / d logits = (onehot(y) - softmax) / T, the cross-entropy gradient. Entropy gets no gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int):
        n = hidden.shape[0]
        logprobs = torch.empty(n, dtype=torch.float32, device=hidden.device)       # (N,)
        entropy = torch.empty(n, dtype=torch.float32, device=hidden.device)        # (N,)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)            # (N,)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = (hidden[s:e] @ weight.T).float().div_(temperature)            # (c, V)
            target_logits = logits.gather(-1, targets[s:e, None]).squeeze(-1)      # (c,)
            shift = logits.amax(dim=-1, keepdim=True)                               # (c, 1)
            logits.sub_(shift)                                                      # (c, V), in place: <= 0
            exp = logits.exp()                                                      # (c, V): the only other buffer
            sum_exp = exp.sum(-1)                                                   # (c,)
            lse[s:e] = shift.squeeze(-1) + sum_exp.log()
            logprobs[s:e] = target_logits - lse[s:e]
            # H = log(sum_exp) - sum(exp * shifted) / sum_exp, the sum as a batched dot product
            entropy[s:e] = sum_exp.log() - (exp[:, None, :] @ logits[:, :, None]).view(-1) / sum_exp
            del logits, exp  # before the next chunk allocates: else three (c, V) buffers coexist
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # summed in the weight's dtype: in bf16 that is one rounding per chunk, no (V, H) float32 buffer
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, g_out = hidden[s: s + ctx.chunk], grad_logprobs[s: s + ctx.chunk, None].float()   # (c, H), (c, 1)
            logits = (h @ weight.T).float().div_(ctx.temperature)                                # (c, V)
            grad = logits.sub_(lse[s: s + ctx.chunk, None]).exp_().mul_(-g_out)                  # (c, V): -softmax * g
            grad.scatter_add_(-1, targets[s: s + ctx.chunk, None], g_out)                        # + onehot * g
            grad = grad.div_(ctx.temperature).to(hidden.dtype)                                   # (c, V)
            if grad_hidden is not None:
                grad_hidden[s: s + ctx.chunk] = grad @ weight                                    # (c, H)
            if grad_weight is not None:
                grad_weight.addmm_(grad.T, h)                                                    # (V, H)
            del logits, grad
        return grad_hidden, grad_weight, None, None, None


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           temperature: float = 1.0, chunk: int = LOGPROB_CHUNK_TOKENS):
    """Log-probs of `targets` under softmax(hidden @ weight.T / temperature), and the entropies, `chunk` rows at a
    time in forward and backward (`_ChunkedLogprobs`): peak memory holds a few (chunk, V) buffers whatever N is.
    hidden (N, H), weight (V, H), targets (N,) -> logprobs (N,) float32, entropy (N,) float32 (no gradient).

    Example: hidden = [[1, 0]], weight = [[1, 0], [0, 1]], targets = [0]  ->  logits [1, 0],
    logprobs = [1 - log(e + 1)] = [-0.3133].
    """
    return _ChunkedLogprobs.apply(hidden, weight, targets, temperature, chunk)


class TokenLogprobLM(nn.Module):
    """A Hugging Face causal LM whose forward returns per-token log-probs instead of logits.

    forward(input_ids (B, L), attention_mask (B, L), response_mask (B, L), temperature)
      -> logprobs (B, L), entropy (B, L): position t holds log p(input_ids[t] | input_ids[:t]) at
         temperature T where response_mask[t] is True, and 0 elsewhere (response_mask[:, 0] must be False).
    Only the masked positions go through the output head.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.config = lm.config

    def forward(self, input_ids, attention_mask, response_mask, temperature: float = 1.0):
        hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        predict = response_mask[:, 1:]                                        # (B, L-1): token t+1 from hidden t
        lp, ent = chunked_token_logprobs(hidden[:, :-1][predict], self.lm.lm_head.weight,
                                         input_ids[:, 1:][predict], temperature)  # (N,), (N,)
        logprobs = hidden.new_zeros(input_ids.shape, dtype=torch.float32)      # (B, L)
        entropy = torch.zeros_like(logprobs)                                   # (B, L)
        logprobs[:, 1:][predict] = lp
        entropy[:, 1:][predict] = ent
        return logprobs, entropy


class TokenValueModel(nn.Module):
    """A critic: the policy's backbone with a scalar head (Hugging Face `...ForTokenClassification`, 1 label).

    forward(input_ids (B, L), attention_mask (B, L)) -> values (B, L), float32: values[:, t] estimates the return
    of the state *before* token t (it reads the hidden state at t - 1), aligned with the log-probs of
    `TokenLogprobLM`: position t of both describes the choice of token t. values[:, 0] is 0.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.config = lm.config

    def forward(self, input_ids, attention_mask):
        v = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()  # (B, L): V(prefix <= t)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)                     # (B, L): V(prefix < t)


def hf_named_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters under their Hugging Face names (drops our wrapper's `lm.` prefix)."""
    for name, param in model.named_parameters():
        yield name.removeprefix("lm."), param


# ---------------------------------------------------------------------------------------------------
# Loading and FSDP2
# ---------------------------------------------------------------------------------------------------
def fsdp_shard(model: nn.Module, layers: nn.ModuleList, dist_info: DistInfo, *, bf16: bool, cpu_offload: bool = False,
               reshard_after_forward: bool = True) -> nn.Module:
    """`fully_shard` each decoder layer, then the root (FSDP2: https://pytorch.org/docs/stable/distributed.fsdp.fully_shard.html).

    bf16: compute in bfloat16 with float32 master weights and float32 gradient reduction.
    cpu_offload: keep the shards in CPU memory between uses (for a frozen reference model on GPU).
    reshard_after_forward: free each layer's gathered weights after its forward and gather them again in backward
      (the least memory); False keeps them until backward: one all-gather fewer per layer and optimizer step,
      for a full copy of the weights in memory (small models, and gloo on CPU, where collectives are slow).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(dist_info.device.type, (dist_info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    # pinned host memory speeds up copies to a GPU; without one there is nothing to pin (and pinning raises)
    offload = CPUOffloadPolicy(pin_memory=dist_info.device.type == "cuda") if cpu_offload else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload, reshard_after_forward=reshard_after_forward)
    return model


def load_on_rank0(model_class, name_or_path: str, config, dist_info: DistInfo) -> nn.Module:
    """Rank 0 reads the checkpoint (`from_pretrained`, float32); every other rank builds the same model on the meta
    device (`from_config`: no memory, no weights). `shard_from_rank0` then gives every rank its shards."""
    if dist_info.is_main:
        return model_class.from_pretrained(name_or_path, config=config, dtype=torch.float32)
    with torch.device("meta"):
        return model_class.from_config(config, dtype=torch.float32)


@torch.no_grad()
def shard_from_rank0(model: nn.Module, layers: nn.ModuleList, dist_info: DistInfo, *, bf16: bool,
                     cpu_offload: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """Shard a model built by `load_on_rank0` with FSDP2 and fill every rank's shards from rank 0's weights.

    Collective. For each parameter, rank 0 cuts its full tensor into FSDP2's dim-0 shards (`torch.chunk` sizes,
    padded to equal length) and scatters them: each rank receives only its own rows, so a rank other than 0 never
    holds more than its shards plus one padded shard in flight. (`set_model_state_dict(..., broadcast_from_rank0=True)`
    also works, but every rank receives each full tensor: one whole embedding matrix in flight.)
    `bench_rank0_loading.py` measures the peak host memory of both against every rank reading the checkpoint.
    Weights the checkpoint lacks (a critic's new head) are thus initialised once, on rank 0: every rank starts from
    the same model. Buffers (rotary tables, computed in `__init__`, not sharded by FSDP2) are broadcast.
    """
    from torch.distributed.tensor import DTensor, Shard

    full = dict(model.named_parameters()) if dist_info.is_main else {}  # rank 0's full tensors, until scattered
    fsdp_shard(model, layers, dist_info, bf16=bf16, cpu_offload=cpu_offload, reshard_after_forward=reshard_after_forward)
    if not dist_info.is_main:  # allocate the (uninitialised) shards and buffers; the scatter fills them
        materialize(model, dist_info.device, cpu_offload)
    world, device = dist_info.world_size, dist_info.device
    for name, param in model.named_parameters():  # the same names in the same order on every rank
        assert isinstance(param, DTensor) and param.placements == (Shard(0),), f"{name}: not an FSDP2 dim-0 shard"
        rows = -(-param.shape[0] // world)                                          # ceil: rows of a full shard
        received = torch.empty((rows, *param.shape[1:]), dtype=param.dtype, device=device)
        pieces = None
        if dist_info.is_main:  # views of the full tensor; only a short last shard is padded (a copy)
            pieces = [chunk if len(chunk) == rows else torch.cat([chunk, chunk.new_zeros(rows - len(chunk), *chunk.shape[1:])])
                      for chunk in full.pop(name).detach().to(device).split(rows)]
            pieces += [torch.zeros_like(received) for _ in range(world - len(pieces))]  # ranks left with no rows
        dist.scatter(received, pieces, src=0)
        local = param.to_local()                                                    # this rank's rows (maybe 0)
        local.copy_(received[: local.shape[0]])
        del received, pieces
    for buffer in model.buffers():  # on the group's device (NCCL takes no CPU tensor), as FSDP2 placed rank 0's
        dist.broadcast(buffer, src=0)
    return model


def materialize(model: nn.Module, device: torch.device, cpu_offload: bool) -> None:
    """Allocate a meta-device model sharded by `fsdp_shard` where FSDP2 keeps its states: parameters on `device`, or in
    CPU memory with `cpu_offload` (FSDP2 requires them there), and buffers on `device` in both cases, as
    `fully_shard` moved rank 0's. (`to_empty(device="cpu")` alone left an offloaded model's rotary tables on the CPU:
    NCCL then refused to broadcast them and the forward pass would have mixed devices.)"""
    model.to_empty(device=torch.device("cpu") if cpu_offload else device)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)  # as nn.Module._apply moves buffers


def use_bf16(requested: bool, device: torch.device) -> bool:
    """Whether `--bf16` computes in bfloat16 here: always on CUDA; on CPU only with AMX, the bf16 matrix units of
    recent Xeons (4-6x float32's matmul speed on the tiny models' shapes), as bf16 is slower than float32 without them."""
    return requested and (device.type == "cuda" or torch.cpu._is_amx_tile_supported())


def attention_kernel(bf16: bool, device: torch.device) -> str | None:
    """Hugging Face attention for the trainer: its default (SDPA) except in bf16 on CPU, where torch's flash-attention
    backward is ~6x slower than in float32 (56 against 10 ms, a 32 x 46-token micro-batch of the tiny model) and
    eager attention's batched matmuls run on AMX (tiny PPO step: train phase 6.2 s with SDPA, 4.2 s eager)."""
    return "eager" if bf16 and device.type == "cpu" else None


def load_policy(name_or_path: str, dist_info: DistInfo, *, bf16: bool = False, activation_checkpointing: bool = False,
                trainable: bool = True, cpu_offload: bool = False, reshard_after_forward: bool = True) -> TokenLogprobLM:
    """Load a causal LM (local directory or hub id), wrap it as `TokenLogprobLM` and shard it with FSDP2.

    Only rank 0 reads the float32 weights; the other ranks get their shards from it (`shard_from_rank0`).
    trainable=False gives a frozen model in eval mode (the reference policy for the KL term).
    reshard_after_forward: see `fsdp_shard`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name_or_path, attn_implementation=attention_kernel(bf16, dist_info.device))
    lm = load_on_rank0(AutoModelForCausalLM, name_or_path, config, dist_info)
    lm.config.use_cache = False
    if activation_checkpointing and trainable:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = TokenLogprobLM(lm)
    model.train(trainable)  # Qwen2 has no dropout; eval mode for the reference anyway
    model.requires_grad_(trainable)
    return shard_from_rank0(model, lm.model.layers, dist_info, bf16=bf16, cpu_offload=cpu_offload,
                            reshard_after_forward=reshard_after_forward)


def load_tokenizer(name_or_path: str):
    """The tokenizer of a local Hugging Face directory or hub id (`AutoTokenizer`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def load_critic(name_or_path: str, dist_info: DistInfo, *, bf16: bool = False, activation_checkpointing: bool = False,
                reshard_after_forward: bool = True) -> TokenValueModel:
    """The value model for PPO: the backbone of `name_or_path` plus a new scalar head (Hugging Face's default
    init for it, normal(0, initializer_range = 0.02): small, so early values are near 0), sharded with FSDP2.
    Read on rank 0 only, like the policy; the new head is initialised there and scattered with the rest."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(name_or_path, num_labels=1, attn_implementation=attention_kernel(bf16, dist_info.device))
    config.classifier_dropout = 0.0  # Hugging Face's default is 0.1: values must not be noisy
    lm = load_on_rank0(AutoModelForTokenClassification, name_or_path, config, dist_info)
    lm.config.use_cache = False
    if activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = TokenValueModel(lm)
    return shard_from_rank0(model, lm.model.layers, dist_info, bf16=bf16, reshard_after_forward=reshard_after_forward)


# ---------------------------------------------------------------------------------------------------
# Optimizer, schedule, clipping
# ---------------------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    # foreach: a few multi-tensor ops per step instead of ~10 per parameter: torch's default on CUDA but not on CPU,
    # where the per-parameter DTensor ops made the tiny model's AdamW step 29 ms instead of 14 (2 ranks)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, eps=eps,
                             weight_decay=weight_decay, foreach=True)


def lr_multiplier(step: int, *, kind: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, power: float = 1.0) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warm-up, then constant, cosine or polynomial decay
    to `min_ratio` at `total_steps`.

    >>> lr_multiplier(5, kind="constant", warmup_steps=10, total_steps=100)
    0.6
    >>> lr_multiplier(100, kind="cosine", warmup_steps=0, total_steps=100, min_ratio=0.1)
    0.1
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "polynomial":
        decay = (1.0 - progress) ** power
    else:
        raise ValueError(f"unknown lr schedule {kind!r}: use constant, cosine or polynomial")
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer, kind: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, power: float = 1.0):
    lr_multiplier(0, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps)  # fail early on a bad `kind`
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio, power=power))


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over all shards) and return it, before clipping, as a float."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


class NonFiniteGuard:
    """Skip an optimizer step on every rank when the loss or the gradient norm is not finite on any rank, count the
    skips, and stop the run after `max_consecutive` skips in a row (0: never stop).

        guard = NonFiniteGuard(args.max_nonfinite_skips, dist)
        grad_norm = clip_grad_norm(policy, args.max_grad_norm)
        if guard.all_finite(step, mini_batch_loss, grad_norm):   # one all-reduce: every rank gets the same answer
            optimizer.step()                                     # (the zero_grad that follows drops a skipped step's grads)
        metrics.update(guard.pop())                              # {"train/nonfinite_skips": skips since the last pop}

    All ranks decide together because FSDP ranks must take the same optimizer steps (a NaN in one rank's loss also
    reaches every rank's gradient shards through the reduce-scatter). A skipped step leaves the weights untouched,
    so no NaN reaches them, nor vLLM's copy at the next sync.
    Test hook: the environment variable R1_INJECT_NONFINITE=3,5 makes the last rank report a NaN at every check
    of training steps 3 and 5 (tests/test_scale.py).
    """

    def __init__(self, max_consecutive: int, dist_info: DistInfo):
        self.max_consecutive = max_consecutive
        self.dist_info = dist_info
        injected = os.environ.get("R1_INJECT_NONFINITE", "")
        self.injected = ({int(s) for s in injected.split(",") if s.strip()}
                         if dist_info.rank == dist_info.world_size - 1 else set())
        self.consecutive = 0
        self.skipped = 0

    def all_finite(self, step: int, *values: float) -> bool:
        """True when every value is finite on every rank (collective). Otherwise count a skip, and raise
        SystemExit with a one-line error after `max_consecutive` skips in a row."""
        bad = step in self.injected or not all(math.isfinite(float(v)) for v in values)
        if not all_reduce_max(int(bad), self.dist_info.device):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            message = (f"error: {self.consecutive} optimizer steps in a row had a non-finite loss or gradient norm, the "
                       f"last at training step {step}; the weights are those before them: lower --learning-rate, or "
                       f"raise --max-nonfinite-skips")
            raise SystemExit(message if self.dist_info.is_main else 1)  # every rank stops; rank 0 says why
        return False

    def pop(self) -> dict[str, float]:
        """Skips since the last call, as a metric."""
        skipped, self.skipped = self.skipped, 0
        return {"train/nonfinite_skips": float(skipped)}


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------
def pad_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
              response_masks: list[list[bool]] | None = None) -> dict[str, torch.Tensor]:
    """Right-pad prompt + response sequences into (B, L) tensors.

    Example: prompts [[5, 6], [7]], responses [[8], [9, 10]], pad 0 ->
      input_ids      [[5, 6, 8], [7, 9, 10]]
      attention_mask [[1, 1, 1], [1, 1, 1]]
      response_mask  [[0, 0, 1], [0, 1, 1]]
    `response_masks` (one bool per response token) narrows response_mask to the True tokens, e.g. the tokens a
    multi-turn rollout sampled, leaving a tool's output as context: with [[True], [False, True]] above,
    response_mask [[0, 0, 1], [0, 0, 1]].
    """
    assert len(prompts) == len(responses), f"{len(prompts)} prompts but {len(responses)} responses"
    assert response_masks is None or [len(m) for m in response_masks] == [len(r) for r in responses], \
        "one response_masks entry per response token"
    length = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)   # (B, L)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)     # (B, L)
    response_mask = torch.zeros((len(prompts), length), dtype=torch.bool)      # (B, L)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        assert len(p) > 0, "every sequence needs at least one prompt token"
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        response_mask[i, len(p): len(p) + len(r)] = (True if response_masks is None
                                                     else torch.tensor(response_masks[i], dtype=torch.bool))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def select_rows(batch: dict[str, torch.Tensor], rows: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Rows of a padded batch, cut to their longest sequence, moved to `device`."""
    index = torch.tensor(rows, dtype=torch.long)
    length = max(int(batch["attention_mask"][index].sum(-1).max()), 1) if rows else 1
    return {k: v[index, :length].to(device) for k, v in batch.items()}


def token_budget_micro_batches(lengths: list[int], max_tokens: int, device: torch.device) -> list[list[int]]:
    """Group sample indices into micro-batches of at most `max_tokens` padded tokens, longest first, so padding
    stays small. Every rank gets the same number of micro-batches (the shorter lists end with empty ones):
    FSDP ranks must run the same number of forward passes or the all-gathers deadlock. There is always at least
    one micro-batch (empty when no rank has a sample), so a caller always gets outputs of the right shape.

    Example (one rank): lengths [3, 9, 4, 8], max_tokens 18 -> [[1, 3], [2, 0]]  (2 x 9 <= 18, 2 x 4 <= 18)
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    count = max(1, all_reduce_max(len(batches), device) if dist.is_initialized() else len(batches))
    return batches + [[] for _ in range(count - len(batches))]


def lockstep_micro_batches(rows: list[int], lengths: list[int], *, size: int, token_budget: int | None,
                           device: torch.device) -> list[list[int]]:
    """Cut `rows` (sample indices, in the order given: longest first keeps padding small) into the micro-batches of a
    training pass: at most `size` samples each, or, with `token_budget`, as many as fit in that many padded tokens
    (count x longest `lengths[row]`; a longer sample goes alone). FSDP lockstep: every rank gets the same number of
    micro-batches (an all-reduce of the largest count), a rank with fewer gets empty ones at the end, which the
    caller runs on a stand-in sample at zero weight; none at all when no rank has a row. Collective.

    Example (one rank): rows [4, 1, 7], lengths {4: 9, 1: 8, 7: 3}, size 2 -> [[4, 1], [7]];
    token_budget 17 -> [[4], [1, 7]] (2 x 9 > 17; 2 x 8 <= 17).
    """
    batches: list[list[int]] = []
    longest = 0
    for row in rows:
        fits = (len(batches[-1]) < size if token_budget is None else
                (len(batches[-1]) + 1) * max(longest, lengths[row]) <= token_budget) if batches else False
        if fits:
            batches[-1].append(row)
            longest = max(longest, lengths[row])
        else:
            batches.append([row])
            longest = lengths[row]
    count = all_reduce_max(len(batches), device) if dist.is_initialized() else len(batches)
    return batches + [[] for _ in range(count - len(batches))]


@torch.no_grad()
def _in_micro_batches(forward, batch: dict[str, torch.Tensor], max_tokens: int, device: torch.device,
                      rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Run `forward(micro_batch) -> tuple of (b, l) tensors` over a padded batch in token-budget micro-batches and
    return the outputs as (B, L) float32 CPU tensors. `rows` (B,) bool: only those samples are computed, the other
    rows of the outputs stay 0 (default: all). Collective: every rank calls it, each with its own batch."""
    outs: list[torch.Tensor] = []
    lengths = batch["attention_mask"].sum(-1).tolist()
    index = list(range(len(lengths))) if rows is None else rows.nonzero().flatten().tolist()  # the samples to compute
    for micro in token_budget_micro_batches([lengths[i] for i in index], max_tokens, device):
        micro = [index[i] for i in micro]
        mb = select_rows(batch, micro, device) if micro else {  # an empty micro-batch still runs the all-gathers
            "input_ids": batch["input_ids"][:1, :1].to(device), "attention_mask": batch["attention_mask"][:1, :1].to(device),
            "response_mask": torch.zeros((1, 1), dtype=torch.bool, device=device)}
        results = forward(mb)
        if not outs:
            outs = [torch.zeros(batch["input_ids"].shape, dtype=torch.float32) for _ in results]  # (B, L) each
        if micro:
            for out, r in zip(outs, results):
                out[micro, : r.shape[1]] = r.float().cpu()
    return outs


def reshard(model: nn.Module) -> None:
    """Free the weights FSDP2 gathered for forward passes that no backward follows. With `reshard_after_forward=False`
    they stay gathered until a backward reshards them, and until then the model's parameters are plain full tensors,
    not its shards: a checkpoint or the next all-gather must not see that state. A no-op for other models."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # FSDPModule.reshard is not recursive
        if isinstance(module, FSDPModule):
            module.reshard()


def logprobs_in_micro_batches(model: TokenLogprobLM, batch: dict[str, torch.Tensor], *, temperature: float,
                              max_tokens: int, device: torch.device, rows: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies (B, L), no grad, on CPU (see `TokenLogprobLM`); only `rows` (B,) bool if
    given, 0 elsewhere. Collective."""
    logprobs, entropy = _in_micro_batches(
        lambda mb: model(mb["input_ids"], mb["attention_mask"], mb["response_mask"], temperature), batch, max_tokens,
        device, rows)
    reshard(model)
    return logprobs, entropy


def values_in_micro_batches(model: TokenValueModel, batch: dict[str, torch.Tensor], *, max_tokens: int,
                            device: torch.device) -> torch.Tensor:
    """Per-token values (B, L), no grad, on CPU (see `TokenValueModel`). Collective."""
    values = _in_micro_batches(lambda mb: (model(mb["input_ids"], mb["attention_mask"]),), batch, max_tokens, device)[0]
    reshard(model)
    return values
