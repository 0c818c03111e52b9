"""Tools a model can call during a multi-turn rollout: pure functions beside the graders of `rewards/`."""
