"""Command line and start-up checks shared by the scripts: presets, exact batch arithmetic, model sources.

Errors here are one line that names the fix, raised before any model is loaded.
"""

from __future__ import annotations

import os
import sys
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
