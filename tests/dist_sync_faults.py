"""Run under torchrun by test_weight_sync.py: every way a weight sync can go wrong, against the exact check
(`ColocatedVLLM.check_weights`) and the log-prob probe (`probe_sync`), in one vLLM dtype.

    torchrun --standalone --nproc_per_node 2 tests/dist_sync_faults.py MODEL_DIR OUT_DIR float32|bfloat16

The trainer computes in the same dtype as vLLM (bf16 mixed precision for bfloat16, as on GPU). After two AdamW steps,
each case pushes weights (or not), then runs the check and the probe. Writes <out>/rank<r>.json with, per case,
{"error": the check's message ("" when it passed), "probe": the probe's error}, and the seconds of a sync and of
a check. Cases:
  correct     a full push of the current weights
  skipped     one more optimizer step, no push
  stale       a push of the weights one optimizer step old
  ulp         a push with one element of one tensor moved by one bf16 ulp (a relative 2^-7)
  left_out    after one more optimizer step, a push without one decoder layer's tensors
  wiped       a push of zeros (what undefined memory after a level-2 wake without a push may hold)
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.console import quiet_console  # noqa: E402
from common.dist import exit_process, init_distributed, seed_everything, shutdown_distributed  # noqa: E402
from common.model import build_optimizer, hf_named_parameters, load_policy, pad_batch  # noqa: E402
from common.vllm_engine import ColocatedVLLM, WeightSyncError  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def full(named):
    """Gathered copies of every parameter (a collective), as a push of that moment's weights would send them."""
    return [(n, (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()) for n, p in named]


def one_ulp(named, target: str):
    for name, tensor in named:
        if name == target:
            tensor = tensor.clone()
            tensor.view(-1)[7] *= 1 + 2**-7  # one bf16 ulp at [1, 2): the smallest change a bf16 push can carry
        yield name, tensor


def fault_matrix(engine, policy, train_step, sequences) -> dict:
    """Every case of the module's docstring, in order, on an engine and a policy whose weights vLLM may not hold yet:
    {case: {"error": the exact check's message ("" when it passed), "probe": the probe's mean gap}}, and the seconds
    of a push and of a check. `train_step()` takes one optimizer step. Also run by dist_sync_check.py (float32)."""
    named = lambda: list(hf_named_parameters(policy))
    result = {}

    def case(name, push):
        if push is not None:
            engine.sync_weights(policy, push)
        try:
            engine.check_weights(policy, named(), step=5)
            error = ""
        except WeightSyncError as e:
            error = str(e)
        result[name] = {"error": error, "probe": engine.probe_sync(policy, sequences, bound=float("inf"))}

    case("correct", named())
    start = time.perf_counter()
    engine.sync_weights(policy, named())
    result["sync_s"] = time.perf_counter() - start
    start = time.perf_counter()
    engine.check_weights(policy, named())
    result["check_s"] = time.perf_counter() - start
    old = full(named())
    train_step()
    case("skipped", None)
    case("stale", old)
    case("correct_again", named())
    case("ulp", list(one_ulp(full(named()), "model.layers.1.mlp.down_proj.weight")))
    train_step()  # so that the layer left out is one optimizer step stale
    case("left_out", [(n, p) for n, p in named() if ".layers.0." not in n])
    engine.sync_weights(policy, named())
    case("wiped", [(n, torch.zeros(p.shape, dtype=p.dtype)) for n, p in named()])
    engine.sync_weights(policy, named())  # leave vLLM with the trainer's weights
    return result


def main():
    model_dir, out_dir, dtype = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    quiet_console(False)
    dist = init_distributed()
    seed_everything(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    bf16 = dtype == "bfloat16"
    policy = load_policy(model_dir, dist, bf16=bf16)
    engine = ColocatedVLLM(model_dir, dist, max_model_len=128, cpu_kv_cache_bytes=32 * 2**20, dtype=dtype)
    optimizer = build_optimizer(policy, lr=1e-2)
    prompts = [tok.encode(s) for s in ["Numbers: 3 5 7\n", "The answer is", "<think>"]]
    batch = pad_batch(prompts, [tok.encode(" 42" * (dist.rank + 1))] * len(prompts), tok.pad_token_id)
    sequences = [p + tok.encode(" 12 34 + 5") for p in prompts]

    def train_step():
        logprobs, _ = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        (-logprobs.sum() / batch["response_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        train_step()
    result = {"dtype": engine.dtype, **fault_matrix(engine, policy, train_step, sequences)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(result))
    engine.shutdown()
    del policy, optimizer
    shutdown_distributed()


if __name__ == "__main__":
    main()
    exit_process()
