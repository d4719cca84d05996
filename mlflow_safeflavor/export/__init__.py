"""ONNX exports beside the checkpoint: made at save time, kept only if they agree.

``save_model(..., onnx="auto" | True)`` asks :func:`export` to convert the checkpoint it just
wrote (the default is the checkpoint only; ``mlflow-safeflavor serve`` derives an export where a
model is deployed, see :mod:`mlflow_safeflavor.export.derive`). Conversion and the agreement check run in a converter worker — a child interpreter
started on first use and reused by later saves — and each request has a time limit after which
the worker is killed (``SIGKILL`` to its process group). A child, not a thread: a thread cannot be
stopped, so a runaway converter would keep burning the CPU (or crash the caller) after the save
gave up on it. The price is the child's start-up (an interpreter importing MLflow, scikit-learn,
skl2onnx and onnxruntime: ~3-5 s) on the first save of a process; later saves pay only the
conversion (tens of ms for the models in our tests). Nothing crosses the process boundary but
JSON and files we wrote: the worker rebuilds the model from the checkpoint with our own codecs.

This module imports nothing heavy; ``import mlflow_safeflavor`` stays cheap without the ``onnx``
extra.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from mlflow_safeflavor.errors import InvalidArgumentError, UnsupportedModelError

FILE = "model.onnx"
ENV_MODE = "MLFLOW_SAFEFLAVOR_ONNX"
ENV_TIMEOUT = "MLFLOW_SAFEFLAVOR_ONNX_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
STARTUP_TIMEOUT = 120.0
# Agreement: labels identical; values within ATOL + RTOL·|native|. float32 carries ~7 significant
# digits; sums over hundreds of trees lose one or two more, which RTOL leaves room for.
RTOL = 1e-4
ATOL = 1e-5
EXTRA_MODULES = ("onnx", "onnxruntime", "skl2onnx", "onnxmltools")
RUNTIME_PACKAGES = ("onnx", "onnxruntime")

_logger = logging.getLogger(__name__)


class OnnxExportWarning(UserWarning):
    """A model was saved without its ONNX export (``onnx="auto"``); the message says why."""


def resolve_mode(value: Any) -> str:
    """``"auto"``, ``"on"`` or ``"off"`` for ``save_model(onnx=value)``.

    None (the default) reads ``$MLFLOW_SAFEFLAVOR_ONNX`` and is ``"off"`` when that is unset or
    empty: an export costs 0.1-9 s per save and matters only for the model that is deployed, where
    ``mlflow-safeflavor serve`` derives it from the checkpoint (:mod:`mlflow_safeflavor.export.derive`).
    """
    source = "onnx="
    if value is None:
        value, source = os.environ.get(ENV_MODE) or "off", f"{ENV_MODE}="
    if isinstance(value, str):
        low = value.strip().lower()
        if low == "auto":
            return "auto"
        if low in ("true", "1", "yes", "on"):
            return "on"
        if low in ("false", "0", "no", "off", ""):
            return "off"
    elif isinstance(value, bool):
        return "on" if value else "off"
    raise InvalidArgumentError(f"{source}{value!r} is not one of 'auto', True, False.")


def missing_extra() -> list[str]:
    """The modules of the ``onnx`` extra that are not installed (found without importing them)."""
    return [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]


def runtime_requirements() -> list[str]:
    """Pinned requirements a serving environment needs to use the export."""
    return [f"{p}=={importlib.metadata.version(p)}" for p in RUNTIME_PACKAGES]


def timeout_seconds() -> float:
    """The per-conversion time limit: ``$MLFLOW_SAFEFLAVOR_ONNX_TIMEOUT`` or 60 s."""
    from mlflow_safeflavor.settings import env_number

    return env_number(ENV_TIMEOUT, DEFAULT_TIMEOUT)


_warned_missing = False


def export(directory: Path, record: dict[str, Any], example: Any, *, mode: str, target: Path) -> dict[str, Any] | None:
    """Convert the checkpoint saved in ``directory``; return ``{"record", "data", "requirements"}``.

    ``record`` is the checkpoint's codec record (codec, model_class, files, trusted_types,
    components). With ``mode="auto"`` a model that does not convert, does not agree, overruns
    the time limit or lacks the ``onnx`` extra gets None and an :class:`OnnxExportWarning` (a log
    line for the missing extra); with ``mode="on"`` each of those raises UnsupportedModelError.
    """
    global _warned_missing
    missing = missing_extra()
    if missing:
        if mode == "on":
            raise UnsupportedModelError(
                f"onnx=True: the onnx extra is not installed (missing {', '.join(missing)}). "
                "Install mlflow-safeflavor[onnx], or save with onnx='auto' or onnx=False. Nothing was written."
            )
        if not _warned_missing:
            _logger.warning("mlflow_safeflavor: saving without ONNX exports: the onnx extra is not installed "
                            "(missing %s); pip install 'mlflow-safeflavor[onnx]' to enable them.", ", ".join(missing))
            _warned_missing = True
        return None
    scratch = Path(tempfile.mkdtemp(prefix="safeflavor-onnx-"))
    try:
        request = {"dir": str(directory), "record": record, "example": _write_example(example, scratch)}
        reply = _WORKER.call(request, timeout_seconds())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reply.get("ok"):
        data = (directory / FILE).read_bytes()
        return {"record": reply["record"], "data": data, "requirements": runtime_requirements()}
    (directory / FILE).unlink(missing_ok=True)
    stage = reply.get("stage", "convert")
    what = "does not agree with the checkpoint" if stage == "agree" else "could not be made"
    reason = f"the ONNX export {what}: {reply.get('reason', 'unknown reason')}"
    if mode == "on":
        raise UnsupportedModelError(
            f"onnx=True: {reason}. Nothing was written. Save with onnx='auto' to keep the checkpoint "
            "without the export (served natively), or onnx=False."
        )
    warnings.warn(OnnxExportWarning(f"{target}: saved without an ONNX export; {reason}. It is served by the native model."),
                  stacklevel=3)
    return None


def _write_example(example: Any, scratch: Path) -> dict[str, str] | None:
    """Hand the input example to the worker as Parquet (DataFrame) or pickle-free .npy (array)."""
    import numpy as np
    import pandas as pd

    try:
        if isinstance(example, pd.DataFrame):
            path = scratch / "example.parquet"
            example.to_parquet(path)
            return {"kind": "parquet", "path": str(path)}
        if isinstance(example, np.ndarray):
            path = scratch / "example.npy"
            np.save(path, example, allow_pickle=False)
            return {"kind": "npy", "path": str(path)}
    except (ValueError, TypeError, ImportError, OSError) as exc:
        _logger.info("mlflow_safeflavor: the input example cannot be handed to the ONNX converter (%s)", exc)
    return None


class _Worker:
    """One converter child per parent process, started on first use and killed on overrun."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.owner = 0
        self.buf = b""

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self.lock:
            try:
                if self.proc is None or self.owner != os.getpid() or self.proc.poll() is not None:
                    self._start()
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
                return json.loads(self._readline(time.monotonic() + timeout, f"did not finish within {timeout:g} s "
                                                 f"(the limit is {ENV_TIMEOUT})"))
            except _WorkerFailed as exc:
                self.stop(kill=True)
                return {"ok": False, "stage": "convert", "reason": f"the converter {exc}"}
            except (OSError, ValueError) as exc:
                self.stop(kill=True)
                return {"ok": False, "stage": "convert", "reason": f"the converter process failed ({exc})"}

    def _start(self) -> None:
        # A child forked from a parent that had a worker must not share the parent's pipes.
        self.proc, self.buf = None, b""
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow_safeflavor.export.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0, start_new_session=True,
        )
        self.owner = os.getpid()
        ready = json.loads(self._readline(time.monotonic() + STARTUP_TIMEOUT, f"did not start within {STARTUP_TIMEOUT:g} s"))
        if not ready.get("ready"):
            raise _WorkerFailed("did not start")

    def _readline(self, deadline: float, overrun: str) -> str:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _WorkerFailed(overrun)
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self.proc.wait(timeout=5)
                raise _WorkerFailed(f"process exited with status {code}" + (" (killed by a signal)" if code < 0 else ""))
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc, self.buf = self.proc, None, b""
        if proc is None or self.owner != os.getpid():
            return
        try:
            if not kill:
                proc.stdin.close()
                proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            kill = True
        if kill or proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _WorkerFailed(Exception):
    pass


_WORKER = _Worker()
atexit.register(_WORKER.stop)
