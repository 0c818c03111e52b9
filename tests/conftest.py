import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# One thread per process: on 2 shared cores, torch's default thread count made timings swing 10-200x
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Two tiny random Qwen2 models on disk: {"tied": path, "untied": path}."""
    from tests.tiny_lm import save_tiny_qwen2

    root = tmp_path_factory.mktemp("tiny_models")
    return {name: save_tiny_qwen2(root / name, tie_word_embeddings=(name == "tied")) for name in ("tied", "untied")}
