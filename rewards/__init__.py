"""Rule-based rewards: pure functions of (response, problem), bounded time on any input. countdown.py and gsm8k.py use
the standard library only; math.py uses math-verify (and sympy through it)."""
