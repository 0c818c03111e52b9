"""Checkpoints under torchrun (2 ranks, FSDP2): exact resume and a Hugging Face export that loads."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.run_utils import run_script


@pytest.mark.e2e
def test_checkpoint_resume_is_exact_and_hf_export_loads(tiny_models, tmp_path):
    run_script(["tests/dist_checkpoint_check.py", str(tiny_models["tied"]), str(tmp_path)], nproc=2)
    for r in range(2):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert res["sharded_after_no_grad_pass"], "a no-grad pass left FSDP2's gathered weights in place of the shards"
        assert res["state"] == {"step": 1, "data_position": 17}
        assert res["resume_diff"] == 0.0, "a resumed step must equal the uninterrupted one"
        assert res["rng_equal"] and res["lr"] == res["expected_lr"]
    ckpt = tmp_path / "step_000001"
    assert not (tmp_path / "step_000001.tmp").exists(), "the temporary folder is renamed when complete"
    expected = torch.load(tmp_path / "step1_params.pt")
    loaded = dict(AutoModelForCausalLM.from_pretrained(ckpt / "policy").named_parameters())
    assert set(expected) == set(loaded)
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, atol=0, rtol=0, msg=name)
