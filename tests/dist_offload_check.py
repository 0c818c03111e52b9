"""Run under torchrun by test_model_helpers.py: the frozen reference model loaded with CPU offload (`--ref-cpu-offload`)
computes the same log-probs as without it, on every rank.

Rank 0 reads the checkpoint and the others receive their shards (`common.model.shard_from_rank0`); with offload their
parameters live in CPU memory and their buffers (rotary tables) where FSDP2 computes. Writes <out>/rank<r>.json:
  gap            max |log-prob with offload - without| over the batch's response tokens
  buffer_devices the device types of the offloaded model's buffers on this rank
  param_devices  the device types of its parameters' local shards
  group_device   the device type of the process group's collectives
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.dist import exit_process, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import load_policy, logprobs_in_micro_batches, pad_batch  # noqa: E402


def main():
    model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    dist = init_distributed()
    seed_everything(0)
    batch = pad_batch([[3, 4, 5], [6, 7]], [[8, 9, 10, 11], [12, 13]], pad_id=0)
    result = {"group_device": dist.device.type}
    logprobs = {}
    for offload in (False, True):
        reference = load_policy(model_dir, dist, trainable=False, cpu_offload=offload)
        logprobs[offload], _ = logprobs_in_micro_batches(reference, batch, temperature=1.0, max_tokens=64, device=dist.device)
        if offload:
            result["buffer_devices"] = sorted({b.device.type for b in reference.buffers()})
            result["param_devices"] = sorted({p.to_local().device.type for p in reference.parameters()})
        del reference
    mask = batch["response_mask"]
    result["gap"] = float((logprobs[True] - logprobs[False])[mask].abs().max())
    result["nonzero"] = float(logprobs[False][mask].abs().min())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))
    shutdown_distributed()


if __name__ == "__main__":
    main()
    exit_process()
