"""common.config: presets, batch arithmetic and model checks fail early with one clear line."""

import sys
from dataclasses import dataclass

import pytest

from common.config import ConfigError, check_model_source, exact_div, parse_args


@dataclass
class Toy:
    preset: str = "default"
    """which defaults"""
    steps: int = 10
    """steps"""
    lr: float = 1e-6
    """learning rate"""


PRESETS = {"default": Toy(), "tiny": Toy(preset="tiny", steps=3, lr=1e-3)}


@pytest.mark.parametrize("argv,expected", [
    ([], Toy()),
    (["--preset", "tiny"], Toy("tiny", 3, 1e-3)),
    (["--preset", "tiny", "--steps", "7"], Toy("tiny", 7, 1e-3)),
    (["--steps", "7", "--preset", "tiny"], Toy("tiny", 7, 1e-3)),
    (["--lr", "0.5"], Toy(lr=0.5)),
    (["--preset", "tiny", "--preset", "default"], Toy()),
])
def test_presets_then_flags(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    assert parse_args(Toy, PRESETS) == expected


def test_unknown_preset(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--preset", "huge"])
    with pytest.raises(ConfigError, match="unknown preset 'huge': choose one of default, tiny"):
        parse_args(Toy, PRESETS)


def test_exact_div():
    assert exact_div(128, 8, "prompts") == 16
    with pytest.raises(ConfigError, match="prompts: 10 is not divisible by 4"):
        exact_div(10, 4, "prompts")
    with pytest.raises(ConfigError):
        exact_div(10, 0, "zero")


def test_check_model_source(tmp_path, tiny_models):
    check_model_source(str(tiny_models["tied"]))
    with pytest.raises(ConfigError, match="holds no config.json"):
        check_model_source(str(tmp_path))
    with pytest.raises(ConfigError, match="no such local directory"):
        check_model_source(str(tmp_path / "missing"))
