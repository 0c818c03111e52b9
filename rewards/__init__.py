"""Rule-based rewards: pure functions of (response, problem), standard library only, bounded time on any input."""
