"""common.console (quiet mode), common.metrics.plot_metrics and common.dist.exit_process, without launching a model."""

import json
import os
import subprocess
import sys

from common.metrics import PLOT_PANELS, plot_metrics
from tests.run_utils import ROOT

FILTER_CHECK = r"""
import os, sys
from common.console import quiet_console, native_stderr_filter
quiet_console(verbose=%s)
try:
    with native_stderr_filter():
        os.write(2, b"[rank0]:[W1126 utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy (function init_cpu_memory_env)\n")
        os.write(2, b"native: something unexpected\n")
        print("python: to stderr", file=sys.stderr)
        raise RuntimeError("the engine failed")
except RuntimeError as e:
    print("caught:", e)
"""


EXIT_CHECK = r"""
import logging, logging.handlers, sys
from common.dist import exit_process
target = logging.FileHandler(sys.argv[1])
logging.getLogger().addHandler(logging.handlers.MemoryHandler(capacity=100, target=target))  # flushed only when closed
logging.warning("logged")
print("to stdout")              # a pipe: block-buffered
sys.stderr.write("to stderr")   # no newline: still buffered
exit_process(3)
"""


def run_filter_check(verbose: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FILTER_CHECK % verbose], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_quiet_mode_drops_routine_native_lines_and_keeps_the_rest():
    proc = run_filter_check(verbose=False)
    assert "NUMA binding" not in proc.stderr
    assert "native: something unexpected" in proc.stderr and "python: to stderr" in proc.stderr
    assert "caught: the engine failed" in proc.stdout, "an exception inside the filter still propagates"


def test_verbose_mode_keeps_everything():
    proc = run_filter_check(verbose=True)
    assert "NUMA binding" in proc.stderr and "native: something unexpected" in proc.stderr


def test_plot_has_one_panel_per_quantity_and_marks_evaluations(tmp_path):
    rows = [{"step": s, "reward/mean": s / 10, "reward/accuracy": s / 20, "rollout/response_len_mean": 30 - s,
             "train/entropy": 1.0, "train/kl": 0.01 * s, "time/step_s": 2.0, **({"eval/accuracy": s / 10} if s % 5 == 0 else {})}
            for s in range(11)]
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_metrics(jsonl, tmp_path / "metrics.png")
    assert 1_000 < (tmp_path / "metrics.png").stat().st_size < 200_000
    titles = [title for title, _, _ in PLOT_PANELS]
    assert titles == ["training reward", "held-out accuracy", "response length (tokens)", "entropy and KL", "seconds per step"]


def test_exit_process_flushes_output_and_log_handlers_then_exits_with_its_code(tmp_path):
    """os._exit alone would drop all three: the scripts' last line must lose nothing that was printed or logged."""
    log = tmp_path / "log.txt"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user's shell has it
    proc = subprocess.run([sys.executable, "-c", EXIT_CHECK, str(log)], cwd=ROOT, capture_output=True, text=True,
                          env=buffered, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "to stdout\n", "to stderr")
    assert log.read_text() == "logged\n"
