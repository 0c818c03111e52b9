"""vLLM sampling seeds: every completion of a step draws from its own random stream (`common.dist.sampling_seed`)."""

import itertools

import pytest

from common.dist import SEED_STREAMS, sampling_seed


def child_seeds(seed: int, step: int, ranks: int, requests: int, n: int) -> list[tuple]:
    """(seed of child j of each request) as vLLM derives it: request seed + j (v1/engine/parallel_sampling.py)."""
    return [(rank, stream, i, j, sampling_seed(seed, step, rank, i, n=n, stream=stream) + j)
            for rank, stream, i, j in itertools.product(range(ranks), SEED_STREAMS, range(requests), range(n))]


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("step", [0, 1, 199])
def test_sampling_seeds_no_two_completions_of_a_step_share_a_stream(step, n):
    """Regression: consecutive requests got seeds 1 apart, so child j+1 of request i was child j of request i+1."""
    seeds = child_seeds(seed=1, step=step, ranks=8, requests=16, n=n)
    full = [s for *_, s in seeds]
    low = [s % 2**32 for s in full]  # torch's CPU generator keeps only these bits
    assert len(set(full)) == len(full), "two completions of one step share a seed"
    assert len(set(low)) == len(low), "two completions of one step share the low 32 bits (same stream on CPU)"
    assert all(0 <= s < 2**63 for s in full), "seeds must fit vLLM's int64"


def test_sampling_seeds_differ_across_steps_and_repeat_for_the_same_step():
    by_step = [{s for *_, s in child_seeds(seed=3, step=t, ranks=4, requests=16, n=8)} for t in range(50)]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(by_step, 2)), "two steps share a seed"
    assert by_step[7] == {s for *_, s in child_seeds(seed=3, step=7, ranks=4, requests=16, n=8)}, "not reproducible"
    other_run = {s for *_, s in child_seeds(seed=4, step=7, ranks=4, requests=16, n=8)}
    assert other_run.isdisjoint(by_step[7]), "another run seed must draw other samples"


def test_sampling_seed_rejects_what_its_layout_cannot_hold():
    with pytest.raises(AssertionError):
        sampling_seed(1, 0, rank=1024, request=0)
    with pytest.raises(AssertionError):
        sampling_seed(1, 0, rank=0, request=2**17, n=8)
