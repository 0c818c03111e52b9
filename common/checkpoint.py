"""Checkpoints that are either complete or absent.

    save_checkpoint(out_dir / f"step_{step:06d}", dist, models={"policy": policy}, optimizers={"policy": opt},
                    schedulers={"policy": sched}, tokenizer=tok, state={"step": step, "data_position": pos})
    resume = resume_path(args.resume, run_dir, dist)   # --resume auto: the newest complete checkpoint, or None
    state = load_checkpoint(resume, dist, models=..., optimizers=..., schedulers=...)

Layout of <path>:
  policy/           Hugging Face format (config, safetensors, tokenizer): `from_pretrained` and vLLM load it
  train_state/      sharded model + optimizer state (torch.distributed.checkpoint: each rank writes its shard)
  trainer_state.pt  schedulers and the script's own state (step, data position), written by rank 0
  rng_rank{r}.pt    every rank's RNG states
Everything is written under <path>.tmp and renamed to <path> at the end: a run killed mid-save leaves a
`.tmp` folder, never a checkpoint that looks complete but is not: `--resume auto` (`latest_checkpoint`) only
ever picks a `step_XXXXXX` folder, so an interrupted save is skipped and the run goes on from the one before.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from common.dist import DistInfo, print0

# torch.distributed.checkpoint is imported inside the functions: it takes ~1 s, and `--help` should not wait for it.


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_hf(model: torch.nn.Module, path: Path, dist_info: DistInfo, tokenizer=None) -> None:
    """Gather the full weights to rank 0's CPU memory and write them in Hugging Face format (collective).
    `model` wraps a Hugging Face model as `model.lm` (see common.model); the `lm.` prefix is dropped."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist_info.is_main:
        model.lm.save_pretrained(path, state_dict={k.removeprefix("lm."): v for k, v in full.items()})
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    del full


def save_checkpoint(path: Path, dist_info: DistInfo, *, models: dict, optimizers: dict, schedulers: dict,
                    state: dict, tokenizer=None) -> None:
    """Write a complete checkpoint at `path` (collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    for name, model in models.items():
        save_hf(model, tmp / name, dist_info, tokenizer)
    sharded = {}
    for name, model in models.items():
        model_sd, optim_sd = get_state_dict(model, optimizers[name])
        sharded[f"model.{name}"], sharded[f"optim.{name}"] = model_sd, optim_sd
    dcp.save(sharded, checkpoint_id=tmp / "train_state")
    torch.save(_rng_state(), tmp / f"rng_rank{dist_info.rank}.pt")
    if dist_info.is_main:
        torch.save({"schedulers": {k: s.state_dict() for k, s in schedulers.items()}, "state": state},
                   tmp / "trainer_state.pt")
    dist.barrier()
    if dist_info.is_main:
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)  # atomic on one file system: the checkpoint appears complete or not at all
    dist.barrier()


def load_checkpoint(path: Path, dist_info: DistInfo, *, models: dict, optimizers: dict, schedulers: dict) -> dict:
    """Restore models, optimizers, schedulers and this rank's RNG from `path`; return the script's saved state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.pt): pass a step_XXXXXX folder")
    sharded = {}
    for name, model in models.items():
        sharded[f"model.{name}"], sharded[f"optim.{name}"] = get_state_dict(model, optimizers[name])
    dcp.load(sharded, checkpoint_id=path / "train_state")
    for name, model in models.items():
        set_state_dict(model, optimizers[name], model_state_dict=sharded[f"model.{name}"],
                       optim_state_dict=sharded[f"optim.{name}"])
    saved = torch.load(path / "trainer_state.pt", weights_only=False)
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(saved["schedulers"][name])
    rng = path / f"rng_rank{dist_info.rank}.pt"
    if rng.is_file():  # absent when resuming with another world size: then only the seeds differ
        _set_rng_state(torch.load(rng, weights_only=False))
    return saved["state"]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under `run_dir`: the `step_XXXXXX` folder with the highest step, or None.
    An interrupted save left `step_XXXXXX.tmp` (`save_checkpoint` renames only a complete folder): never picked."""
    complete = [p for p in Path(run_dir).glob("step_*")
                if re.fullmatch(r"step_\d+", p.name) and (p / "trainer_state.pt").is_file()]
    return max(complete, key=lambda p: int(p.name.removeprefix("step_")), default=None)


def resume_path(resume: str | None, run_dir: Path, dist_info: DistInfo) -> Path | None:
    """What `--resume` means: None -> a fresh start; "auto" -> the newest complete checkpoint under `run_dir`, or a
    fresh start when there is none (one command line, re-submitted after a preemption, continues the run); any
    other value -> that folder. Collective: rank 0 looks, and every rank gets its answer, so all agree even if
    another node's view of the file system lags."""
    if resume != "auto":
        return Path(resume) if resume else None
    found = [str(latest_checkpoint(run_dir) or "") if dist_info.is_main else None]
    dist.broadcast_object_list(found, src=0)
    return Path(found[0]) if found[0] else None


def resume_state(resume: str | None, run_dir: Path, dist_info: DistInfo, **trained) -> dict:
    """Continue where `--resume` says (`resume_path`): load that checkpoint into `trained` (models, optimizers,
    schedulers, as `save_checkpoint` takes them) and return its saved state, or {"step": 0} for a fresh start.
    Collective."""
    path = resume_path(resume, run_dir, dist_info)
    if path is None:
        return {"step": 0}
    state = load_checkpoint(path, dist_info, **trained)
    print0(f"resumed from {path} at step {state['step']}")
    return state
