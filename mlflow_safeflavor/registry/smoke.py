"""Load a model and predict on its saved input example in a resource-limited child process.

The structural validators are the first line of defence against payloads that crash native code;
this is the second. The child sets ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` and
``RLIMIT_CORE`` on itself before importing anything heavy, runs single-threaded, and is killed
(with its whole process group) after a wall-clock timeout. Whatever happens in it — a refusal, an
exception, a signal, a timeout — comes back as a :class:`SmokeResult`; the calling gate process
never loads the model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from mlflow_safeflavor.settings import env_number

ENV_SMOKE_TIMEOUT = "MLFLOW_SAFEFLAVOR_SMOKE_TIMEOUT"
ENV_SMOKE_MEMORY_MB = "MLFLOW_SAFEFLAVOR_SMOKE_MEMORY_MB"
DEFAULT_TIMEOUT = 120.0
# Measured: interpreter + mlflow + sklearn/xgboost/lightgbm/catboost single-threaded stays under
# 800 MB of address space; 2 GiB leaves room for the model and its input example.
DEFAULT_MEMORY_MB = 2048
RESULT_MARKER = "SAFEFLAVOR-SMOKE "
CHILD_MODULE = "mlflow_safeflavor.registry.smoke_child"
_OUTPUT_TAIL = 2000
MAX_CHILD_FILE_BYTES = 64 * 1024 * 1024

# Runs first in the child, stdlib only: limits are in place before mlflow, numpy or any model
# library is imported. The limits come through the environment so the same bootstrap can run any
# module (``-m``-style name) or script path.
_BOOTSTRAP = """\
import os, resource, runpy, sys
def _limit(which, soft, hard):
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
mem = int(os.environ.get("_SAFEFLAVOR_SMOKE_AS_BYTES", "0"))
if mem > 0:
    _limit(resource.RLIMIT_AS, mem, mem)
cpu = int(os.environ.get("_SAFEFLAVOR_SMOKE_CPU_SECONDS", "0"))
if cpu > 0:
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)
fsize = int(os.environ.get("_SAFEFLAVOR_SMOKE_FSIZE_BYTES", "0"))
if fsize > 0:
    _limit(resource.RLIMIT_FSIZE, fsize, fsize)
target = sys.argv[1]
sys.argv = sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class SmokeResult:
    """What the child did: ``ok`` only when it loaded the model and predicted on the example."""

    ok: bool
    detail: str
    returncode: int | None = None


def smoke_test(
    root: str | os.PathLike,
    *,
    trusted_types: Iterable[str] | str | None = None,
    timeout: float | None = None,
    memory_mb: int | None = None,
) -> SmokeResult:
    """Load the model at ``root`` with our loader and predict on its saved input example, isolated.

    Runs :mod:`mlflow_safeflavor.registry.smoke_child` under :func:`run_limited` with the gate's
    ``trusted_types``; ``timeout`` (seconds) and ``memory_mb`` default to
    ``MLFLOW_SAFEFLAVOR_SMOKE_TIMEOUT`` (120) and ``MLFLOW_SAFEFLAVOR_SMOKE_MEMORY_MB`` (2048). A
    model saved without an input example is refused: there is nothing to predict on.
    """
    from mlflow_safeflavor.policy import parse_type_list

    types = parse_type_list(trusted_types, source="trusted_types=")
    args = [CHILD_MODULE, os.path.abspath(os.fspath(root))]
    if types:
        args += ["--trusted-types", ",".join(types)]
    return run_limited(args, timeout=timeout, memory_mb=memory_mb)


def run_limited(
    child_args: Sequence[str],
    *,
    timeout: float | None = None,
    memory_mb: int | None = None,
    file_bytes: int = MAX_CHILD_FILE_BYTES,
    timeout_env: str = ENV_SMOKE_TIMEOUT,
    what: str = "smoke test",
    cancel: threading.Event | None = None,
) -> SmokeResult:
    """Run ``python <bootstrap> *child_args`` with memory, CPU and time limits and classify the outcome.

    ``child_args[0]`` is a module name or a ``.py`` path, the rest its arguments. The child's last
    ``SAFEFLAVOR-SMOKE {json}`` line on stdout carries its own verdict; otherwise the outcome is
    read from how it ended: killed by a signal (a native crash, or the CPU limit), killed by us at
    the timeout, or a non-zero exit. Output goes to temporary files capped by ``RLIMIT_FSIZE``, so
    a child that prints without end exhausts neither the gate's memory nor the disk; the child's
    whole process group is killed when it ends. ``file_bytes`` caps every file the child writes;
    ``timeout_env`` and ``what`` only shape the messages. When ``cancel`` is set the child is
    killed at once (a caller whose client went away).
    """
    timeout = timeout if timeout is not None else env_number(ENV_SMOKE_TIMEOUT, DEFAULT_TIMEOUT)
    memory_mb = int(memory_mb if memory_mb is not None else env_number(ENV_SMOKE_MEMORY_MB, DEFAULT_MEMORY_MB))
    env = dict(os.environ)
    memory_bytes = memory_mb * 1024 * 1024
    # integrity.read_file asks for cap+1 bytes in one read() and CPython reserves that much address
    # space up front (4 GiB with the default cap), which RLIMIT_AS refuses. A file over a quarter of
    # the limit could not be loaded inside it anyway, so the child's per-file cap is lowered to that.
    try:
        file_cap = int(env.get("MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES") or 4 * 1024**3)
        env["MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES"] = str(max(1, min(file_cap, memory_bytes // 4)))
    except ValueError:
        pass  # left as is: the child's loader refuses it with a clear error
    env.update({
        "_SAFEFLAVOR_SMOKE_AS_BYTES": str(memory_bytes),
        # Output and any file the child writes: enough for tracebacks, not for filling the disk.
        "_SAFEFLAVOR_SMOKE_FSIZE_BYTES": str(file_bytes),
        # CPU time only backs up the wall-clock timeout (a busy child cannot outlive it for long).
        "_SAFEFLAVOR_SMOKE_CPU_SECONDS": str(max(1, int(timeout) + 1)),
        # One thread each: predictable address space under RLIMIT_AS and no oversubscription.
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    argv = [sys.executable, "-c", _BOOTSTRAP, *child_args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                start_new_session=True, cwd=tempfile.gettempdir())
        timed_out = cancelled = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                proc.wait(timeout=max(0.01, min(0.2, deadline - time.monotonic())) if cancel is not None else timeout)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                if cancel is None or time.monotonic() >= deadline:
                    timed_out = True
                    break
        # Also reaps anything the child left running in its process group.
        _kill_group(proc)
        stdout, stderr = _tail(out), _tail(err)
    if cancelled:
        return SmokeResult(False, f"the {what} was cancelled and its process killed", None)
    if timed_out:
        return SmokeResult(False, f"the {what} did not finish within {timeout:g}s and was killed "
                                  f"(raise {timeout_env} if the model is legitimately that slow)", None)
    rc = proc.returncode
    reported = _reported(stdout)
    if rc < 0:
        name = _signal_name(-rc)
        hint = " (CPU-time limit)" if -rc == signal.SIGXCPU else ""
        return SmokeResult(False, f"the model crashed the {what} process: killed by {name}{hint} "
                                  f"while loading or predicting; stderr: {_last_line(stderr)}", rc)
    if reported is not None:
        ok = bool(reported.get("ok")) and rc == 0
        return SmokeResult(ok, str(reported.get("detail", "")), rc)
    return SmokeResult(False, f"the {what} process exited with status {rc} without a result; "
                              f"stderr: {_last_line(stderr)}", rc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(fh) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - 64 * 1024))
    return fh.read().decode("utf-8", errors="replace")


def _reported(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                data = json.loads(line[len(RESULT_MARKER):])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "<empty>")[-_OUTPUT_TAIL:]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def report(ok: bool, detail: str) -> None:
    """Print the child's verdict in the form :func:`run_limited` reads (used by the child)."""
    sys.stdout.write(RESULT_MARKER + json.dumps({"ok": ok, "detail": detail}) + "\n")
    sys.stdout.flush()
