"""common.model helpers against slow, obvious reference computations (CPU, no process group)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.model import (TokenLogprobLM, attention_kernel, build_optimizer, chunked_token_logprobs,
                          logprobs_in_micro_batches, lr_multiplier, materialize, pad_batch, select_rows,
                          token_budget_micro_batches, use_bf16)
from tests.run_utils import run_script


def naive_logprobs(hidden, weight, targets, temperature):
    logp = torch.log_softmax((hidden @ weight.T).double() / temperature, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_logprobs_equal_log_softmax_gather(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(37, 16, generator=g), torch.randn(101, 16, generator=g)
    targets = torch.randint(0, 101, (37,), generator=g)
    lp, ent = chunked_token_logprobs(hidden, weight, targets, temperature, chunk=chunk)
    ref_lp, ref_ent = naive_logprobs(hidden, weight, targets, temperature)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-4, rtol=0)


def test_chunked_logprobs_gradient_equals_naive():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(20, 8, generator=g, requires_grad=True), torch.randn(30, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 30, (20,), generator=g)
    chunked_token_logprobs(hidden, weight, targets, 0.9, chunk=3)[0].sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    torch.log_softmax(hidden @ weight.T / 0.9, -1).gather(-1, targets[:, None]).sum().backward()
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # eager: the trainer's kernel in bf16 on CPU (attention_kernel)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprob_lm_equals_full_logits_on_padded_batch(tiny_models, temperature, attention):
    lm = AutoModelForCausalLM.from_pretrained(tiny_models["untied"], dtype=torch.float32, attn_implementation=attention)
    assert lm.config._attn_implementation == attention
    model = TokenLogprobLM(lm).eval()
    prompts, responses = [[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15, 16], [17]]
    batch = pad_batch(prompts, responses, pad_id=0)
    with torch.no_grad():
        lp, ent = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"], temperature)
        for i, (p, r) in enumerate(zip(prompts, responses)):  # one unpadded sequence at a time, full logits
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(lm(ids).logits[0].double() / temperature, -1)  # (L, V)
            expected = torch.tensor([logp[len(p) + j - 1, t] for j, t in enumerate(r)])
            torch.testing.assert_close(lp[i][batch["response_mask"][i]].double(), expected, atol=1e-5, rtol=0)
    assert (lp[~batch["response_mask"]] == 0).all() and (ent[~batch["response_mask"]] == 0).all()


@pytest.mark.parametrize("requested, device, amx, expected", [
    (True, "cuda", False, True), (False, "cuda", True, False),
    (True, "cpu", True, True), (True, "cpu", False, False), (False, "cpu", True, False)])
def test_bf16_on_cuda_and_on_cpus_with_amx_only(monkeypatch, requested, device, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    bf16 = use_bf16(requested, torch.device(device))
    assert bf16 is expected
    assert attention_kernel(bf16, torch.device(device)) == ("eager" if bf16 and device == "cpu" else None)


def test_pad_batch_layout():
    b = pad_batch([[5, 6], [7]], [[8], [9, 10]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 8], [7, 9, 10]]
    assert b["response_mask"].int().tolist() == [[0, 0, 1], [0, 1, 1]]
    b = pad_batch([[5], [7, 7, 7]], [[8], [9]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 8, 0, 0], [7, 7, 7, 9]] and b["attention_mask"][0].tolist() == [1, 1, 0, 0]
    mb = select_rows(b, [0], torch.device("cpu"))
    assert mb["input_ids"].tolist() == [[5, 8]], "select_rows cuts the padding of the selected rows"


def test_token_budget_micro_batches():
    cpu = torch.device("cpu")
    assert token_budget_micro_batches([3, 9, 4, 8], 18, cpu) == [[1, 3], [2, 0]]
    assert token_budget_micro_batches([3, 9, 4, 8], 16, cpu) == [[1], [3, 2], [0]]
    lengths = [7, 1, 30, 12, 12, 5, 9, 2, 40, 3]
    batches = token_budget_micro_batches(lengths, 48, cpu)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths))), "every sample exactly once"
    for b in batches:  # padded size within budget (a single over-long sample gets a batch of its own)
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 48
    assert token_budget_micro_batches([], 48, cpu) == [[]], "always one micro-batch: callers get outputs of the right shape"


def test_logprobs_of_selected_rows_equal_the_full_pass_and_leave_the_rest_zero(tiny_models):
    model = TokenLogprobLM(AutoModelForCausalLM.from_pretrained(tiny_models["untied"], dtype=torch.float32)).eval()
    batch = pad_batch([[5, 6, 7], [8], [9, 10], [4]], [[11, 12], [13, 14, 15, 16], [17], [18, 19]], pad_id=0)
    cpu = torch.device("cpu")
    full, _ = logprobs_in_micro_batches(model, batch, temperature=0.8, max_tokens=8, device=cpu)  # (4, L)
    rows = torch.tensor([False, True, False, True])
    part, _ = logprobs_in_micro_batches(model, batch, rows=rows, temperature=0.8, max_tokens=8, device=cpu)  # (4, L)
    assert part.shape == full.shape and (part[~rows] == 0).all()
    torch.testing.assert_close(part[rows], full[rows], atol=1e-5, rtol=0)  # other padding: float rounding only
    assert full[rows].abs().sum() > 0
    none, _ = logprobs_in_micro_batches(model, batch, rows=torch.zeros(4, dtype=torch.bool), temperature=0.8,
                                        max_tokens=8, device=cpu)
    assert none.shape == full.shape and (none == 0).all(), "no row selected: zeros, not an error"


def test_optimizer_uses_multi_tensor_adamw(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["untied"], dtype=torch.float32)
    assert build_optimizer(model, lr=1e-3).defaults["foreach"] is True  # torch's CPU default is one op per tensor


def test_lr_schedules():
    kw = dict(warmup_steps=4, total_steps=104)
    assert [lr_multiplier(s, kind="constant", **kw) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_multiplier(4, kind="cosine", **kw) == 1.0
    assert lr_multiplier(54, kind="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(104, kind="cosine", **kw, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(54, kind="polynomial", **kw, power=2.0) == pytest.approx(0.25)
    assert lr_multiplier(500, kind="polynomial", **kw) == 0.0
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_multiplier(10, kind="linear-ish", **kw)
    assert not math.isnan(lr_multiplier(0, kind="cosine", warmup_steps=0, total_steps=0))


@pytest.mark.parametrize("cpu_offload", [True, False])
def test_materialize_puts_buffers_on_the_group_device_and_offloaded_parameters_in_cpu_memory(tiny_models, cpu_offload):
    """Ranks other than 0 build the model on the meta device and allocate it here. The group's device stands in as
    "meta" (no GPU here): buffers must follow it, as FSDP2 moves rank 0's, even when the parameters are offloaded
    (they went to the CPU with them before, and NCCL refused to broadcast them)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_models["tied"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    materialize(model, torch.device("meta"), cpu_offload)
    assert {b.device.type for b in model.buffers()} == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"cpu" if cpu_offload else "meta"}


@pytest.mark.e2e
def test_reference_with_cpu_offload_on_two_ranks_equals_the_reference_without(tiny_models, tmp_path):
    """--ref-cpu-offload's loading path (rank 0 reads, the others receive their shards into CPU memory) on 2 ranks:
    the frozen reference's log-probs are the ones without offload, bit for bit."""
    import json

    run_script(["tests/dist_offload_check.py", str(tiny_models["untied"]), str(tmp_path)], nproc=2, timeout=300)
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["gap"] == 0.0 and r["nonzero"] > 0, r
        assert r["buffer_devices"] == [r["group_device"]] and r["param_devices"] == ["cpu"], r
