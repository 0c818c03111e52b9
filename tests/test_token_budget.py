"""--train-token-budget: cutting the update's micro-batches by padded tokens instead of by samples changes how the
work is split, not the gradient (float32, 2 ranks whose samples have unequal lengths, padded in lockstep)."""

import json

import pytest

from tests.run_utils import run_script


@pytest.mark.e2e
def test_token_budget_micro_batches_give_the_fixed_size_gradient_on_two_ranks(tiny_models, tmp_path):
    run_script(["tests/dist_token_budget_check.py", str(tiny_models["untied"]), str(tmp_path)], nproc=2, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for budget in ("40", "100", "400"):
        for r in ranks:
            assert r[budget]["rel"] < 1e-6, (budget, r[budget])
        assert ranks[0][budget]["after_lockstep"] == ranks[1][budget]["after_lockstep"], "ranks run the same count"
    # the case the lockstep padding exists for: under some budget the ranks need different numbers of micro-batches
    assert any(ranks[0][b]["micro_batches"] != ranks[1][b]["micro_batches"] for b in ("40", "100", "400")), ranks
