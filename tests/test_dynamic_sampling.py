"""--dynamic-sampling (DAPO §3.2) end to end on 2 ranks: extra generation rounds when a rank lacks groups with
signal, ranks in lockstep, and a resume from the middle that continues exactly (the data position is saved)."""

import json

import pytest
import torch

from tests.run_utils import run_script
from tests.test_grpo_e2e import FLOAT32, SMALL, read_metrics
from tests.test_scale import comparable

DYNAMIC = ["grpo_countdown.py", *SMALL, *FLOAT32, "--dynamic-sampling", "--max-generation-rounds", "3",
           "--num-steps", "4", "--save-every", "2", "--eval-every", "8"]


@pytest.mark.e2e
def test_dynamic_sampling_draws_more_rounds_and_resumes_exactly(tmp_path):
    run_script([*DYNAMIC, "--out-dir", str(tmp_path), "--exp-name", "whole"], nproc=2)
    whole = read_metrics(tmp_path / "whole")
    assert [r["step"] for r in whole] == [0, 1, 2, 3, 4]
    prompts = 8  # SMALL's --prompts-per-step
    for r in whole[:4]:
        rounds = r["rollout/generation_rounds"]
        assert rounds in (1, 2, 3) and r["rollout/prompts_drawn"] == rounds * prompts, r
        assert r["rollout/groups_kept"] <= prompts
        if rounds < 3:  # stopped early: every rank had found its share of groups with signal
            assert r["rollout/groups_kept"] == prompts, r
    assert any(r["rollout/generation_rounds"] > 1 for r in whole[:4]), "the tiny model leaves some groups without signal"
    saved = torch.load(tmp_path / "whole" / "step_000002" / "trainer_state.pt", weights_only=False)["state"]
    assert saved["data_position"] == sum(r["rollout/prompts_drawn"] for r in whole[:2]), saved

    run_script([*DYNAMIC, "--out-dir", str(tmp_path), "--exp-name", "resumed",
                "--resume", str(tmp_path / "whole" / "step_000002")], nproc=2)
    resumed = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [2, 3, 4]
    for mine, reference in zip(resumed, whole[2:]):
        assert comparable(mine) == comparable(reference), f"step {mine['step']} differs after resuming"
