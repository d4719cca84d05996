"""Run a pickle scan, or fickling's second opinion on one, in a resource-limited child process.

The in-process scan is bounded by construction (symbolic values, a capped stream, an opcode budget
derived from the memory budget, a deadline); the isolated scan adds hard limits the kernel
enforces — ``RLIMIT_AS`` at ``MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB``, ``RLIMIT_CPU`` and a wall-clock
kill at ``MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT`` — and can be cancelled. fickling is never run in the
calling process: its evaluation of a hostile stream is unbounded, so in-process scans hand it to a
child of its own under the same limits. Every way a child can end becomes a report whose problem
names the limit and the setting that raises it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor.errors import InvalidArgumentError
from mlflow_safeflavor.migrate.budget import ENV_SCAN_MEMORY_MB, ENV_SCAN_TIMEOUT, Budget, ScanLimits
from mlflow_safeflavor.migrate.scanreport import ScanReport

SCAN_CHILD = "mlflow_safeflavor.migrate._scan_child"
FICKLING_CHILD = str(Path(__file__).resolve().parent / "_fickling_child.py")
_OUTPUT_BYTES = 64 * 1024 * 1024


def _limit_problem(what: str, detail: str, limits: ScanLimits) -> str:
    """The refusal text for a child that did not hand back a result, naming the limit it hit."""
    if "cancelled" in detail:
        return f"the {what} was cancelled (the client went away) and its process killed; nothing was decided"
    if "MemoryError" in detail or "SIGKILL" in detail and "timed" not in detail:
        return (f"the {what} ran out of its memory budget of {limits.memory_mb} MB and was stopped; raise "
                f"{ENV_SCAN_MEMORY_MB} if the model is legitimately that large")
    if "did not finish within" in detail or "SIGXCPU" in detail:
        return (f"the {what} did not finish within its time budget of {limits.timeout:g}s and was stopped; raise "
                f"{ENV_SCAN_TIMEOUT} if the model is legitimately that large")
    return f"the {what} did not complete ({detail[:300]}); what it did not examine is refused"


def _private_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="safeflavor-scan-"))  # mode 0700


def fickling_opinion(raw: bytes, budget: Budget, report: ScanReport, *, inline: bool) -> dict[str, Any] | None:
    """fickling's severity for ``raw`` under the scan's budget (None when fickling is absent).

    ``inline`` runs it in this process — only where this process is already the limited child of
    an isolated scan. Running out of the budget adds a problem to ``report`` (a refusal).
    """
    from mlflow_safeflavor.migrate import _fickling_child  # noqa: F401  (the same code, imported)

    if inline:
        try:
            return _fickling_child.opinion(raw)
        except MemoryError:
            report.problem(_limit_problem("fickling second opinion", "MemoryError", budget.limits))
            report.budget_exceeded = True
            return {"severity": "OVER_BUDGET", "summary": "ran out of the scan's memory budget"}
    from mlflow_safeflavor.registry.smoke import run_limited

    tmp = _private_dir()
    try:
        stream = tmp / "stream.pkl"
        fd = os.open(stream, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        outcome = run_limited([FICKLING_CHILD, str(stream)], timeout=budget.remaining(), memory_mb=budget.limits.memory_mb,
                              file_bytes=_OUTPUT_BYTES, timeout_env=ENV_SCAN_TIMEOUT, what="fickling second opinion",
                              cancel=budget.cancel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if outcome.ok:
        try:
            return json.loads(outcome.detail)
        except ValueError:
            return {"severity": "UNANALYZABLE", "summary": outcome.detail[:200]}
    report.problem(_limit_problem("fickling second opinion", outcome.detail, budget.limits))
    report.budget_exceeded = True
    return {"severity": "OVER_BUDGET", "summary": outcome.detail[:300]}


def scan_isolated(
    path: str | os.PathLike | None,
    *,
    data: bytes | None,
    label: str,
    trusted_types: str | Iterable[str] | None,
    second_opinion: bool,
    cap: tuple[int, str],
    limits: ScanLimits,
    cancel: threading.Event | None = None,
) -> ScanReport:
    """:func:`~mlflow_safeflavor.migrate.scan_pickle` in a child with hard memory, CPU and time limits.

    Raises InvalidArgumentError when the child refused the arguments (a missing or linked file);
    every other outcome — a limit hit, a crash, a cancellation — is a report with a problem.
    """
    from mlflow_safeflavor.registry.smoke import run_limited

    tmp = _private_dir()
    try:
        if data is not None:
            stream = tmp / "stream.pkl"
            fd = os.open(stream, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(data))
            path = stream
        types = trusted_types if trusted_types is None or isinstance(trusted_types, str) else list(trusted_types)
        job = {
            "path": os.path.abspath(os.fspath(path)), "label": label, "trusted_types": types, "second_opinion": second_opinion,
            "cap": list(cap), "memory_mb": limits.memory_mb, "out": str(tmp / "report.json"),
            # The child's own deadline comes first, so a slow stream ends with its message, not a kill.
            "timeout": max(0.5, limits.timeout - 1.0),
        }
        (tmp / "job.json").write_text(json.dumps(job), encoding="utf-8")
        outcome = run_limited([SCAN_CHILD, str(tmp / "job.json")], timeout=limits.timeout + 5.0, memory_mb=limits.memory_mb,
                              file_bytes=_OUTPUT_BYTES, timeout_env=ENV_SCAN_TIMEOUT, what="pickle scan", cancel=cancel)
        out = tmp / "report.json"
        doc = json.loads(out.read_text(encoding="utf-8")) if outcome.ok and out.is_file() else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if doc is None:
        report = ScanReport(source=label)
        report.problem(f"{label}: " + _limit_problem("pickle scan", outcome.detail, limits))
        report.budget_exceeded = True
        return report
    if "error" in doc:
        raise InvalidArgumentError(str(doc["message"]), path=label)
    report = ScanReport.from_dict(doc["report"])
    report.budget_exceeded = bool(doc.get("budget_exceeded"))
    return report
