"""The colocated engine's guards for the GPU path, checked without a GPU: what `ColocatedVLLM` asks of vLLM and torch,
in which order (a recording stand-in for the engine; the real engine on CPU runs in test_weight_sync.py)."""

import gc
import os

import pytest
import torch

from common.vllm_engine import ColocatedVLLM, _mirror_alloc_conf, device_kwargs


class RecordingLLM:
    """Records the calls `wake_and_sync` makes on vLLM's `LLM`, consuming the weights it is handed."""

    def __init__(self, log: list):
        self.log = log

    def wake_up(self, tags):
        self.log.append(f"wake_up {tags[0]}")

    def collective_rpc(self, method, kwargs):
        list(kwargs["weights_iterator"])
        self.log.append(method)

    def reset_prefix_cache(self):
        self.log.append("reset_prefix_cache")


def test_torch_cache_is_emptied_after_garbage_collection_before_each_wake(monkeypatch):
    """vLLM 0.26 maps its memory at a wake without emptying torch's cache (0.33 collects garbage and empties it first):
    after training, the freed activations stay reserved by torch and the first wake ran out of memory. The engine
    does it before every wake, in 0.33's order."""
    log: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: log.append("gc.collect"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    engine = object.__new__(ColocatedVLLM)  # a GPU engine's state, without vLLM: sleep mode on, no exact check
    engine.sleep_enabled, engine.check_enabled, engine.sync_dtype = True, False, None
    engine.llm = RecordingLLM(log)
    model = torch.nn.Linear(2, 2)
    engine.wake_and_sync(model, model.named_parameters())
    assert log == ["gc.collect", "empty_cache", "wake_up weights", "reload_weights", "reset_prefix_cache",
                   "gc.collect", "empty_cache", "wake_up kv_cache"], log


def test_cuda_graphs_are_captured_up_to_the_rollout_batch_on_gpu_only():
    assert device_kwargs(True, 128, 0) == {"compilation_config": {"max_cudagraph_capture_size": 128}}
    assert device_kwargs(True, 130, 0) == {"compilation_config": {"max_cudagraph_capture_size": 136}}  # multiples of 8
    assert device_kwargs(True, 0, 0) == {}, "unknown rollout size: vLLM's default"
    cpu = device_kwargs(False, 256, 2**20)
    assert cpu["max_num_seqs"] == 256 and cpu["kv_cache_memory_bytes"] == 2**20 and "compilation_config" not in cpu


@pytest.mark.parametrize("env, expected", [
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:True"}, "expandable_segments:True"),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, "max_split_size_mb:512"),
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF": "x:1"}, "expandable_segments:True"),
    ({}, ""),
])
def test_the_users_allocator_settings_are_where_vllm_026_reads_them(monkeypatch, env, expected):
    """torch reads PYTORCH_ALLOC_CONF first; vLLM 0.26 reads only PYTORCH_CUDA_ALLOC_CONF (to turn expandable segments
    off around its sleep pool): the engine copies the user's settings there, and restores them after building."""
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _mirror_alloc_conf() == expected
    assert os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") == (expected or env.get("PYTORCH_CUDA_ALLOC_CONF", ""))

