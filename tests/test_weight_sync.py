"""The colocated engine end to end on CPU: real vLLM, real FSDP2, torchrun with 2 ranks (gloo)."""

import json

import pytest
import torch

from tests.run_utils import run_script


@pytest.mark.e2e
def test_vllm_matches_trainer_after_updates_and_sync(tiny_models, tmp_path):
    """Tied embeddings, as the shipped models have; untied ones (their own head to map) are checked exactly in bf16
    below, and every push of the scripts' end-to-end runs is checked exactly in float32."""
    run_script(["tests/dist_sync_check.py", str(tiny_models["tied"]), str(tmp_path)], nproc=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        # before the sync, vLLM still has the initial weights: the check can tell synced from stale weights
        assert r["pre_gap"] > 0.1
        # after two AdamW steps and a sync, vLLM's greedy logprobs equal the trainer's
        assert r["max_gap"] < 1e-4, f"vLLM/trainer logprob gap {r['max_gap']}"
        assert r["samples_a"] == r["samples_b"], "same seed and step must reproduce the same samples"
        assert r["samples_a"] != r["samples_c"], "another step must draw other samples"
        assert r["big_batch_completions"] == 64 * 8
        assert r["max_num_seqs"] == 160, "on CPU a rank's whole rollout must be decoded in one batch (vLLM's default: 128)"
        # the weight-sync probe: float32 vLLM equals the trainer; one perturbed tensor or a skipped push stops the run
        assert r["probe_ok"] < 1e-4 and r["probe_raised_ok"] == "", r
        for broken in ("perturbed", "skipped"):
            assert r[f"probe_{broken}"] > 1e-2, (broken, r[f"probe_{broken}"])
            assert r[f"probe_raised_{broken}"].startswith("error: vLLM is generating from weights other than the trainer's")
    assert ranks[0]["samples_a"] != ranks[1]["samples_a"], "ranks must sample different completions"
    assert_every_fault_is_caught([r["faults"] for r in ranks])  # the exact check in float32


@pytest.fixture(scope="module")
def single_process(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("world1")
    run_script(["tests/dist_sync_check.py", str(tiny_models["tied"]), str(out)], nproc=None)
    return json.loads((out / "rank0.json").read_text())


@pytest.mark.e2e
def test_world_size_one_with_plain_python(single_process):
    r = single_process
    assert r["max_gap"] < 1e-4 and r["pre_gap"] > 0.1
    assert r["probe_ok"] < 1e-4 and r["probe_perturbed"] > 1e-2 and r["probe_skipped"] > 1e-2


@pytest.mark.e2e
def test_sampling_seeds_same_prompt_twice_draws_independent_samples(single_process):
    """Regression: request seeds one apart made child j+1 of one request replay child j of the next, so the same
    prompt sent twice came back with 3 of its 4 samples copied (shifted by one)."""
    a, b = single_process["dup_a"], single_process["dup_b"]
    shared = sum(x == y for x in a for y in b)
    assert shared == 0, f"{shared} of 4 samples of the second copy replay the first's: {a} / {b}"


FAULTS = ("skipped", "stale", "ulp", "left_out", "wiped")


def assert_every_fault_is_caught(ranks: list[dict]) -> None:
    """The exact check (`ColocatedVLLM.check_weights`) after a weight sync: a correct push passes; a skipped push, a
    push one optimizer step stale, one element moved by one bf16 ulp, a decoder layer left out and wiped weights each
    stop the run with one line naming the first tensor that differs (rank 0; the others stop silently). The probe
    misses some of them (one ulp; in bf16 a left-out layer can hide under the noise): the check does not."""
    r = ranks[0]
    for case in ("correct", "correct_again"):
        assert all(rank[case]["error"] == "" for rank in ranks), (case, ranks)
    prefix = "error: vLLM's weights are not the trainer's after the weight sync at step 5: "
    first = {"skipped": "model.embed_tokens.weight", "stale": "model.embed_tokens.weight", "wiped": "model.embed_tokens.weight",
             "ulp": "model.layers.1.mlp.down_proj.weight", "left_out": "model.layers.0.self_attn.q_proj.weight"}
    for case in FAULTS:
        assert r[case]["error"].startswith(prefix + first[case] + " differs"), (case, r[case]["error"])
        assert "\n" not in r[case]["error"]
        assert ranks[1][case]["error"] == "1", "the other ranks stop too, silently (rank 0 says why)"
    assert "Failed to load weights" in r["left_out"]["error"], "vLLM's own warning is named too"
    assert "1 of " in r["ulp"]["error"], "one tensor, no other"
    assert r["check_s"] > 0 and r["sync_s"] > 0


@pytest.mark.e2e
def test_exact_weight_check_in_bf16_catches_every_faulty_sync_and_passes_correct_ones(tiny_models, tmp_path):
    """bf16, vLLM and the trainer both, as on GPU (on a CPU without AMX it runs, slowly), untied embeddings; float32
    (tied) runs within test_vllm_matches_trainer_after_updates_and_sync."""
    run_script(["tests/dist_sync_faults.py", str(tiny_models["untied"]), str(tmp_path), "bfloat16"], nproc=2, timeout=600)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["dtype"] == "bfloat16"
    assert_every_fault_is_caught(ranks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tensor_checksum_is_exact_additive_over_shards_and_sees_one_bit(dtype):
    """The checksum the exact check compares: row shards at their offsets add up to the whole (as FSDP2's shards do,
    over ranks), chunking does not matter, and changing any one element by its smallest step changes it."""
    from common.vllm_engine import CHECKSUM_MODULUS, tensor_checksum

    assert tensor_checksum(torch.tensor([1.0, 2.0])) == 1065353217  # the docstring's example, by hand
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 7, generator=g).to(dtype)
    whole = tensor_checksum(x)
    assert tensor_checksum(x, chunk=64) == whole
    shards = [(x[:150], 0), (x[150:299], 150 * 7), (x[299:], 299 * 7), (x[300:], 300 * 7)]  # the last one empty
    assert sum(tensor_checksum(t, offset=o) for t, o in shards) % CHECKSUM_MODULUS == whole
    for i in (0, 1000, 2099):
        y = x.clone().view(-1)
        y[i] = torch.nextafter(y[i].float(), torch.tensor(float("inf"))).to(dtype) if dtype == torch.float32 else \
            (y[i].view(torch.int16) + 1).view(dtype)  # the next bf16 value
        assert tensor_checksum(y.view(300, 7)) != whole, i
    swapped = x.clone().view(-1)
    swapped[[3, 4]] = swapped[[4, 3]]
    assert tensor_checksum(swapped.view(300, 7)) != whole or swapped[3] == swapped[4], "a move changes it too"
