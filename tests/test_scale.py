"""Scale and faults: rank-0 loading, the bf16 cast of the sync, the non-finite guard, `--resume auto` after a
SIGKILL, an interrupted checkpoint save, and multi-node launch (two torchrun "nodes" on this machine)."""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.run_utils import ROOT, TORCHRUN, run_script
from tests.test_grpo_e2e import SMALL, read_metrics

# 3 steps, a checkpoint after each: the SIGKILL comes after step_000001 is complete
FAULT = ["grpo_countdown.py", *SMALL, "--num-steps", "3", "--save-every", "1", "--resume", "auto"]
NOT_COMPARED = ("time/", "perf/")  # wall-clock figures differ from run to run


def script_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "VLLM_LOGGING_LEVEL": "WARNING"}


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(NOT_COMPARED)}


@pytest.mark.e2e
def test_rank0_loading_nonfinite_guard_and_bf16_cast(tiny_models, tmp_path):
    run_script(["tests/dist_scale_check.py", str(tiny_models["tied"]), str(tmp_path)], nproc=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(ranks):
        # rank 1 built its model on the meta device and got every weight and buffer from rank 0
        assert res["policy_equal"] and res["critic_equal"], f"rank {r}: rank-0 loading changed the initial model"
        assert res["cast_then_gather_equal"], "bf16 cast before the all-gather must equal the cast after it"
        g = res["guard"]
        # a NaN loss on the last rank only: every rank skips, the weights stay as they were and finite
        assert g["nan_step_ok"] is False and g["nan_norm_finite"] is False and g["unchanged_after_skip"]
        assert g["good_step_ok"] and g["changed_after_good"] and g["all_finite"]
        assert g["metric"] == {"train/nonfinite_skips": 1.0} and g["metric_after"] == {"train/nonfinite_skips": 2.0}
    message = ranks[0]["guard"]["stopped"]
    assert message.startswith("error: ") and "training step 3" in message and "\n" not in message, message
    assert ranks[1]["guard"]["stopped"] == "1", "the other ranks stop too, silently"


def test_interrupted_save_is_never_resumed_from(tiny_models, tmp_path, monkeypatch):
    """A save killed before its rename leaves step_XXXXXX.tmp: `--resume auto` takes the checkpoint before it."""
    import torch.distributed as dist
    import torch.distributed.checkpoint

    from common import checkpoint
    from common.dist import DistInfo
    from common.model import build_optimizer, build_scheduler, load_policy

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        assert checkpoint.resume_path("auto", tmp_path, info) is None, "no checkpoint yet: a fresh start"
        policy = load_policy(str(tiny_models["tied"]), info)
        optimizer = build_optimizer(policy, lr=1e-3)
        trained = dict(models={"policy": policy}, optimizers={"policy": optimizer},
                       schedulers={"policy": build_scheduler(optimizer, "constant", 0, 10)})
        checkpoint.save_checkpoint(tmp_path / "step_000002", info, **trained, state={"step": 2})

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed mid-write")

        monkeypatch.setattr(torch.distributed.checkpoint, "save", killed)  # dies after the policy's HF export was written
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_checkpoint(tmp_path / "step_000004", info, **trained, state={"step": 4})
        assert (tmp_path / "step_000004.tmp" / "policy" / "config.json").is_file() and not (tmp_path / "step_000004").exists()
        (tmp_path / "step_000010").mkdir()  # a stray folder without trainer_state.pt is not a checkpoint either
        assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "step_000002"
        assert checkpoint.resume_path("auto", tmp_path, info) == tmp_path / "step_000002"
        assert checkpoint.resume_path(None, tmp_path, info) is None
        assert checkpoint.resume_path(str(tmp_path / "x"), tmp_path, info) == tmp_path / "x"
        del policy, optimizer, trained
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    """grpo_countdown.py as two "nodes" of one process each, c10d rendezvous on 127.0.0.1: the launch of a
    multi-node job, on one machine. Uninterrupted, with the flags of FAULT."""
    out = tmp_path_factory.mktemp("two_nodes")
    port = free_port()
    procs = [subprocess.Popen([TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
                               *FAULT, "--out-dir", str(out), "--exp-name", "run"],
                              cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for node, (p, output) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0 and "Traceback" not in output, f"node {node}: exit {p.returncode}\n{output[-6000:]}"
    return out / "run"


def kill_rank_after(proc: subprocess.Popen, ready: Path, rank: int, timeout: float = 600) -> None:
    """SIGKILL torchrun's worker of `rank` as soon as `ready` exists (a complete checkpoint: the rename is atomic)."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {ready.name} appeared"
        assert time.monotonic() < deadline, f"no {ready.name} after {timeout} s"
        time.sleep(0.02)
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and child.environ().get("LOCAL_RANK") is not None:
                child.send_signal(signal.SIGKILL)
                return
        except psutil.Error:
            continue
    raise AssertionError(f"no worker process with RANK={rank}")


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """FAULT on one node (2 processes), rank 1 SIGKILLed once step_000001 is complete, then the same command again."""
    out = tmp_path_factory.mktemp("fault")
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", *FAULT, "--out-dir", str(out), "--exp-name", "run"]
    first = subprocess.Popen(command, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_rank_after(first, out / "run" / "step_000001", rank=1)
    first_output = first.communicate(timeout=300)[0]
    assert first.returncode != 0, f"the run was not interrupted:\n{first_output[-3000:]}"
    interrupted_rows = read_metrics(out / "run")
    second = subprocess.run(command, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0 and "Traceback" not in output, f"exit {second.returncode}\n{output[-6000:]}"
    return out / "run", interrupted_rows, output


@pytest.mark.e2e
@pytest.mark.slow
def test_two_nodes_equal_one_node(two_node_run, killed_then_resumed):
    """Step 0 of the two-"node" run equals step 0 of the one-node two-process run (logged before the SIGKILL)."""
    _, interrupted_rows, _ = killed_then_resumed
    one_node = comparable(interrupted_rows[0])
    two_nodes = comparable(read_metrics(two_node_run)[0])
    assert one_node["step"] == 0 and one_node == two_nodes
    assert (two_node_run / "step_000003" / "trainer_state.pt").is_file()


@pytest.mark.e2e
@pytest.mark.slow
def test_sigkill_then_resume_auto_equals_uninterrupted_run(two_node_run, killed_then_resumed):
    run_dir, interrupted_rows, output = killed_then_resumed
    found = re.search(r"resumed from (\S+) at step (\d+)", output)
    assert found, "the second launch found the checkpoint by itself"
    resumed_from = int(found[2])
    assert Path(found[1]) == run_dir / f"step_{resumed_from:06d}" and resumed_from in (1, 2)
    assert [r["step"] for r in interrupted_rows][:resumed_from] == list(range(resumed_from)), "logged before the kill"
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3], "the redone steps replace what the killed run logged"
    uninterrupted = read_metrics(two_node_run)
    for mine, reference in zip(rows[resumed_from:], uninterrupted[resumed_from:]):
        assert comparable(mine) == comparable(reference), f"step {mine['step']} differs after resuming"


@pytest.mark.e2e
@pytest.mark.slow
def test_injected_nonfinite_skips_then_stops_with_one_line(tmp_path):
    """R1_INJECT_NONFINITE=1,2: the last rank reports NaN at every optimizer step of steps 1 and 2 (2 per step):
    step 1 is logged with 2 skips, and the third skip in a row, in step 2, stops the run naming the step."""
    env = {**script_env(), "R1_INJECT_NONFINITE": "1,2"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "grpo_countdown.py", *SMALL, "--num-steps", "4",
                           "--max-nonfinite-skips", "3", "--out-dir", str(tmp_path), "--exp-name", "nan"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training step 2" in errors[0], output[-3000:]
    rows = read_metrics(tmp_path / "nan")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["train/nonfinite_skips"] == 0 and rows[1]["train/nonfinite_skips"] == 2
    assert rows[1]["train/grad_norm"] > 0, "the real gradients were finite: only the guard's view was poisoned"
