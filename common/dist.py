"""Distributed setup, seeding and shutdown: the first and last lines of every script.

    dist = init_distributed()            # torchrun, or plain `python` as a world of one
    seed_everything(args.seed)           # identical model init on every rank
    ...
    shutdown_distributed()               # after the vLLM engine and the FSDP model are deleted
    exit_process()                       # in `if __name__ == "__main__"`, after main() returns

Backends: NCCL on CUDA, gloo on CPU. vLLM's `external_launcher` reads the same torchrun environment
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so a plain `python` launch fills them in
for a world of one and both sides see one consistent setup.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join torchrun's process group, or make a world of one when started with plain `python`."""
    if "RANK" not in os.environ:  # plain `python script.py`: pretend torchrun started one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call with the same seed on every rank so that model
    initialisation and data order agree; per-rank randomness (vLLM sampling) gets its own seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


SEED_STREAMS = {"rollout": 0, "eval": 1, "probe": 2}  # the vLLM calls of one step; each gets its own seeds


TURN_STRIDE = 2**14  # multi-turn rollouts: turn t's completions take [t * 2**14, (t + 1) * 2**14) of a rank's 2**20


def sampling_seed(seed: int, step: int, rank: int, request: int, n: int = 1, stream: str = "rollout",
                  turn: int | None = None) -> int:
    """The vLLM seed of request `request` (an `n`-sample request) of `rank` at `step`, in a layout where no two
    completions of one step share a random stream.

    Two constraints shape it. vLLM seeds child j of an n-sample request with `seed + j`
    (vllm/v1/engine/parallel_sampling.py), so request seeds spaced by less than n share streams (the same prompt
    twice in a batch drew copies shifted by one). And torch's CPU generator (vLLM on CPU) keeps only the low 32
    bits of a seed, CUDA's keeps all 64. So the step's layout lives in the low 32 bits and the step in the high ones:
        low  = (offset(seed, step) + (stream * 2**10 + rank) * 2**20 + request * n) mod 2**32
        seed = ((mix(seed) + step) mod 2**30) * 2**33 + low               (vLLM adds j: low + j < 2**33)
    Within a step, all ranks (< 1024), streams (rollout, eval, probe) and completions (< 2**20 per call and rank)
    differ in the low 32 bits; across steps the full seeds differ too (on CPU the per-step offset makes a shared
    stream between two steps rare, not impossible). It depends on nothing else, so a resumed run draws the same.

    Multi-turn rollouts (`turn` given; `request` = the trajectory's index, whatever else is still running) split a
    rank's 2**20 completions of a stream into 64 turns of 2**14: turn t adds t * 2**14. Turn 0 is the single-turn
    layout itself, so a trajectory's first turn draws what a one-turn rollout of the same request would.

    >>> sampling_seed(1, 0, 0, request=1, n=4) - sampling_seed(1, 0, 0, request=0, n=4)
    4
    >>> sampling_seed(1, 0, 0, request=3, turn=2) - sampling_seed(1, 0, 0, request=3, turn=0)
    32768
    """
    assert 0 <= rank < 2**10, f"rank {rank}: at most 1024 ranks have disjoint seeds"
    assert n >= 1 and request >= 0 and (request + 1) * n <= 2**20, f"request {request} x n={n}: over 2**20 completions"
    if turn is not None:
        assert 0 <= turn < 2**20 // TURN_STRIDE, f"turn {turn}: at most {2**20 // TURN_STRIDE} turns have disjoint seeds"
        assert (request + 1) * n <= TURN_STRIDE, f"request {request} x n={n}: over {TURN_STRIDE} completions in one turn"
    first = request * n + (turn or 0) * TURN_STRIDE  # index of the request's first completion in the rank's stream
    offset = (seed * 0x85EBCA6B + step * 0x9E3779B9) % 2**32  # odd multipliers: consecutive steps land far apart
    low = (offset + (SEED_STREAMS[stream] * 2**10 + rank) * 2**20 + first) % 2**32
    return ((seed * 0xC2B2AE35 + step) % 2**30) * 2**33 + low


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (and always when no process group exists)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum a flat list of numbers over all ranks (one collective) and return them as a float64 CPU tensor."""
    t = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_reduce_max(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_to_main(items: list) -> list:
    """Every rank's list, concatenated in rank order, on rank 0; other ranks get []. Collective (objects are pickled)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(items)
    lists = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(items, lists, dst=0)
    return [x for part in lists for x in part] if lists is not None else []


def shutdown_distributed() -> None:
    """Destroy the process group. Delete the vLLM engine and the FSDP model(s) first: with them still
    alive, gloo aborted at exit in about 1 run in 6 ('terminate called without an active exception'), and
    vLLM printed 'Invalid process group specified' (seen on CPU with gloo)."""
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """End the process now, skipping Python's own teardown, which frees torch's, vLLM's and transformers' objects
    and modules one by one: ~2.5 s per process on CPU, a tenth of a one-step tiny run (os._exit: no atexit
    handlers, no finalizers). Call it last, when every file is closed and the process group is gone; the output
    streams and log handlers are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def global_means(totals: dict[str, tuple[float, float]], device: torch.device) -> dict[str, float]:
    """{key: (sum, count)} on each rank -> {key: sum over ranks / count over ranks}, in one collective.
    Keys with a zero global count are dropped. Every rank must pass the same keys."""
    keys = sorted(totals)
    summed = all_reduce_sum([x for k in keys for x in totals[k]], device).view(-1, 2)
    return {k: (s / n).item() for k, (s, n) in zip(keys, summed) if n > 0}
