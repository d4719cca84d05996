"""The budget every pickle scan runs under: stream size, opcodes, wall clock, memory, cancellation.

Settings (environment variables, read when a scan starts):

* ``MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT`` — seconds of wall-clock (and CPU) time for one scan, ours and
  fickling's second opinion together (default 60).
* ``MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB`` — the address-space limit of an isolated scan's process and
  of fickling's; in-process it caps the opcodes evaluated at one per ``BYTES_PER_OP`` bytes of it,
  which bounds what the symbolic evaluation can hold (default 2048).
* ``MLFLOW_SAFEFLAVOR_SCAN_MAX_MB`` — the largest pickle stream scanned, measured *after*
  decompression (default 512); a caller such as the web page may lower it to its upload cap.

Exceeding any of them is a refusal that names the limit and the setting that raises it: a scan that
did not finish examined less than the whole stream, so it never says "ok".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from mlflow_safeflavor.errors import PickleRefusedError
from mlflow_safeflavor.settings import env_number

ENV_SCAN_TIMEOUT = "MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT"
ENV_SCAN_MEMORY_MB = "MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB"
ENV_SCAN_MAX_MB = "MLFLOW_SAFEFLAVOR_SCAN_MAX_MB"
DEFAULT_SCAN_TIMEOUT = 60.0
DEFAULT_SCAN_MEMORY_MB = 2048.0
DEFAULT_SCAN_MAX_MB = 512.0
# Upper bound of what evaluating one opcode symbolically can keep alive (an empty set, the largest
# container one opcode creates, is 216 bytes; a placeholder call with its argument tuple ~200).
BYTES_PER_OP = 256
_CHECK_EVERY = 4096


class ScanBudgetExceeded(PickleRefusedError):
    """A scan stopped because it reached one of its limits (or was cancelled); it is a refusal."""

    def __init__(self, message: str, *, limit: str, **kwargs: object) -> None:
        self.limit = limit
        super().__init__(message, findings=[limit], **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScanLimits:
    """The numbers one scan runs under; build with :meth:`from_env`."""

    timeout: float = DEFAULT_SCAN_TIMEOUT
    memory_mb: int = int(DEFAULT_SCAN_MEMORY_MB)
    max_bytes: int = int(DEFAULT_SCAN_MAX_MB * 1024 * 1024)

    @classmethod
    def from_env(cls) -> "ScanLimits":
        """The limits from the environment variables above (InvalidArgumentError for a bad value)."""
        return cls(
            timeout=env_number(ENV_SCAN_TIMEOUT, DEFAULT_SCAN_TIMEOUT),
            memory_mb=int(env_number(ENV_SCAN_MEMORY_MB, DEFAULT_SCAN_MEMORY_MB, minimum=64)),
            max_bytes=int(env_number(ENV_SCAN_MAX_MB, DEFAULT_SCAN_MAX_MB) * 1024 * 1024),
        )

    @property
    def max_ops(self) -> int:
        """Opcodes (and walked objects) one in-process scan may evaluate within its memory budget."""
        return self.memory_mb * 1024 * 1024 // BYTES_PER_OP


class Budget:
    """Counts opcodes and walked objects of one scan and stops it at a limit or on cancellation.

    ``tick`` is called once per opcode; every few thousand ticks it compares the clock and the
    count with the limits, so the check costs nothing measurable per opcode.
    """

    def __init__(self, limits: ScanLimits, *, cancel: threading.Event | None = None, label: str = "pickle") -> None:
        self.limits, self.cancel, self.label = limits, cancel, label
        self.started = time.monotonic()
        self.deadline = self.started + limits.timeout
        self.ops = 0
        self._next = _CHECK_EVERY

    def tick(self) -> None:
        """Count one step; raise ScanBudgetExceeded when a limit is reached."""
        self.ops += 1
        if self.ops >= self._next:
            self._next = self.ops + _CHECK_EVERY
            self.check()

    def check(self) -> None:
        """Compare the clock, the step count and the cancel flag with the limits now."""
        if self.cancel is not None and self.cancel.is_set():
            raise ScanBudgetExceeded(f"{self.label}: the scan was cancelled (the client went away); nothing was decided.",
                                     limit="cancelled", path=self.label)
        if self.ops > self.limits.max_ops:
            raise ScanBudgetExceeded(
                f"{self.label}: the scan stopped after {self.limits.max_ops} pickle opcodes, the most its memory "
                f"budget of {self.limits.memory_mb} MB allows; it did not see the rest, so it refuses. Raise "
                f"{ENV_SCAN_MEMORY_MB} if the model is legitimately that large.",
                limit="memory", path=self.label)
        if time.monotonic() > self.deadline:
            raise ScanBudgetExceeded(
                f"{self.label}: the scan did not finish within its time budget of {self.limits.timeout:g}s; it did "
                f"not see the rest, so it refuses. Raise {ENV_SCAN_TIMEOUT} if the model is legitimately that "
                "large.", limit="time", path=self.label)

    def remaining(self) -> float:
        """Seconds left before the deadline (at least a small positive number)."""
        return max(0.5, self.deadline - time.monotonic())
