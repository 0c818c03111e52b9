"""What reaches the console: our progress bar, our per-step line and real problems, nothing else.

    quiet_console(args.verbose)      # right after the arguments are checked, before torch's and vLLM's heavy work

vLLM, torch and transformers each print routine start-up chatter (chunked prefill, Triton, LD_PRELOAD hints,
`set_num_threads`, NUMA binding, deprecations, loading bars) and vLLM one line per rank at every weight sync.
None of it asks the user to do anything, and it hides the numbers. Quiet mode (the default) silences it at the
source: vLLM's own log level (read when vLLM is imported: `common.vllm_engine` imports it lazily, after this
call), transformers' verbosity and progress bars, Python warning filters for deprecations, and, for the few
native lines printed by C++ while the vLLM engine starts, `native_stderr_filter` (used by `common.vllm_engine`).
Errors still show: vLLM's and transformers' ERROR level, exceptions and their tracebacks, our `error:` lines.
`--verbose` leaves every library at its own defaults (then VLLM_LOGGING_LEVEL, TRANSFORMERS_VERBOSITY, ... apply).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager

# Native (C++) start-up lines that are routine on CPU; anything else printed to stderr passes through.
ROUTINE_NATIVE_LINES = re.compile(r"Warning: NUMA binding:")


def quiet_console(verbose: bool) -> bool:
    """Silence the libraries' routine messages unless `verbose`. Returns whether quiet mode is on."""
    os.environ["R1_CLEAN_QUIET"] = "0" if verbose else "1"  # read by common.vllm_engine, also in this process's children
    if verbose:
        return False
    os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"        # vLLM reads it once, at import
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # hub downloads; transformers' own bars: below
    for name in ("vllm", "transformers", "torch", "huggingface_hub"):  # in case one was imported already
        logging.getLogger(name).setLevel(logging.ERROR)
    # library deprecations (e.g. vLLM touching `torch.distributed.reduce_op`) are for their authors, not our users
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*(TypedStorage is deprecated|`torch_dtype` is deprecated)")
    try:
        from transformers.utils import logging as hf_logging  # after the checks: the scripts load transformers next
    except ImportError:
        return True
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    return True


def is_quiet() -> bool:
    return os.environ.get("R1_CLEAN_QUIET", "0") == "1"


@contextmanager
def native_stderr_filter(routine: re.Pattern = ROUTINE_NATIVE_LINES):
    """Send file descriptor 2 (where C++ code writes) to a temporary file while the block runs, then replay every
    line that does not match `routine`, also when the block raises. A no-op unless quiet mode is on.

    Example: around vLLM's engine start-up, torch's C++ `Warning: NUMA binding: ...` disappears and a Python
    traceback or an unexpected native message still reaches the console, in order.
    """
    if not is_quiet():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not routine.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
