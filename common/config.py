"""Command line and start-up checks shared by the scripts: presets, exact batch arithmetic, model sources.

Errors here are one line that names the fix, raised before any model is loaded.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import tyro

T = TypeVar("T")


class ConfigError(SystemExit):
    """A bad setting: exits with status 1 and a one-line message (no traceback)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def parse_args(args_type: type[T], presets: dict[str, T]) -> T:
    """tyro parsing, where `--preset NAME` first swaps in another set of defaults; every other flag overrides them.

    `python grpo_countdown.py --preset tiny --num-steps 5` = the tiny preset with 5 steps.
    """
    argv = sys.argv[1:]
    flags = [i for i, a in enumerate(argv) if a == "--preset" and i + 1 < len(argv)]
    name = argv[flags[-1] + 1] if flags else "default"  # the last one wins, as for any flag
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(presets)}")
    return tyro.cli(args_type, default=presets[name], args=argv)


def flag(field: str) -> str:
    """The command-line spelling of an `Args` field: `flag("top_p") == "--top-p"`."""
    return "--" + field.replace("_", "-")


# name -> (holds, what a good value is): the rules `check_ranges` applies, one line each
RANGE_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "probability": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "unit_interval": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
}


def check_ranges(args, **fields_by_rule: tuple[str, ...]) -> None:
    """Check `Args` fields against the rules of `RANGE_RULES`, raising one `error:` line that names the flag.
    A tuple field is checked element by element; an optional field left at None is not checked.

    check_ranges(args, positive=("num_steps", "temperature"), probability=("top_p",))
    with args.top_p = 1.5  ->  error: --top-p 1.5: must be in (0, 1]
    """
    for rule, fields in fields_by_rule.items():
        holds, requirement = RANGE_RULES[rule]
        for field in fields:
            value = getattr(args, field)
            if value is not None and not all(holds(v) for v in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"{flag(field)} {value}: {requirement}")


def check_resume(path: str | None) -> None:
    """`--resume` names a complete checkpoint (one with trainer_state.pt), or is `auto`, or is unset."""
    if path is None or path == "auto":
        return
    if not os.path.isdir(path):
        raise ConfigError(f"--resume {path}: no such folder; pass a checkpoint folder <out_dir>/<exp_name>/step_XXXXXX")
    if not os.path.isfile(os.path.join(path, "trainer_state.pt")):
        raise ConfigError(f"--resume {path}: not a complete checkpoint (no trainer_state.pt); "
                          "pass a checkpoint folder <out_dir>/<exp_name>/step_XXXXXX")


def policy_dir(path: str, flag_name: str = "--eval-only") -> str:
    """The model directory to evaluate: a checkpoint folder's `policy/`, or a Hugging Face model directory itself.

    policy_dir("runs/x/step_000080") == "runs/x/step_000080/policy";  policy_dir("tiny_models/countdown") unchanged.
    """
    if not os.path.isdir(path):
        raise ConfigError(f"{flag_name} {path}: no such folder; pass a checkpoint folder (step_XXXXXX) or a model directory")
    for candidate in (os.path.join(path, "policy"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise ConfigError(f"{flag_name} {path}: not a model (no config.json, nor policy/config.json); "
                      "pass a checkpoint folder (step_XXXXXX) or a Hugging Face model directory")


def exact_div(a: int, b: int, what: str) -> int:
    """a / b when b divides a, else a clear error. `exact_div(128, 8, "prompts per rank") == 16`."""
    if b <= 0 or a % b != 0:
        raise ConfigError(f"{what}: {a} is not divisible by {b}")
    return a // b


def check_model_source(name_or_path: str, flag: str = "--model") -> None:
    """Fail early, in one line, when a model can be neither found on disk nor fetched from the hub."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name_or_path)
    except Exception as e:  # OSError, ValueError, HTTP errors: all mean the same to the user
        if not os.path.isdir(name_or_path):
            where = f"no such local directory, and the hub is unreachable or has no such model ({type(e).__name__})"
        elif not os.path.isfile(os.path.join(name_or_path, "config.json")):
            where = "the directory holds no config.json"
        else:
            where = f"its config.json does not load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        raise ConfigError(f"cannot load {flag} {name_or_path!r}: {where}; "
                          f"pass {flag} a local Hugging Face model directory or a reachable hub id") from None


def check_prompt_lengths(checked: list[tuple[list[int], dict]], max_prompt_tokens: int, device) -> None:
    """`checked`: this rank's (prompt token ids, problem) pairs. Collective: every rank learns the longest prompt of
    all ranks; past `max_prompt_tokens` each rank stops with one line, naming the problem where it holds it."""
    from common.dist import all_reduce_max

    ids, problem = max(checked, key=lambda c: len(c[0]))
    longest = all_reduce_max(len(ids), device)
    if longest > max_prompt_tokens:
        which = f"the prompt of {json.dumps(problem)[:300]}" if len(ids) == longest else "a prompt on another rank"
        raise ConfigError(f"{which} has {longest} tokens > --max-prompt-tokens {max_prompt_tokens}: raise it")
