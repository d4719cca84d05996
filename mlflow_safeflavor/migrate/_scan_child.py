"""The isolated half of ``scan_pickle(isolated=True)``: ``<bootstrap> mlflow_safeflavor.migrate._scan_child JOB.json``.

Started by :func:`mlflow_safeflavor.migrate.isolated.scan_isolated` with the scan's memory
(``RLIMIT_AS``), CPU and wall-clock limits already set. Runs the same in-process scan, fickling's
second opinion included, and writes the report as JSON to the job's ``out`` file; a refusal of the
arguments (a missing or linked file) goes back as ``{"error": ..., "message": ...}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run one scan job and print the verdict line; return the exit code."""
    from mlflow_safeflavor.errors import SafeFlavorError
    from mlflow_safeflavor.migrate.budget import Budget, ScanLimits
    from mlflow_safeflavor.migrate.pickles import _scan_in_process
    from mlflow_safeflavor.registry.smoke import report

    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out = Path(job["out"])
    limits = ScanLimits(timeout=float(job["timeout"]), memory_mb=int(job["memory_mb"]), max_bytes=int(job["cap"][0]))
    try:
        scan = _scan_in_process(job.get("path"), None, job["label"], job.get("trusted_types"), bool(job["second_opinion"]),
                                (int(job["cap"][0]), str(job["cap"][1])), Budget(limits, label=job["label"]), fickling_inline=True)
        doc = {"report": scan.to_dict(), "budget_exceeded": scan.budget_exceeded}
    except SafeFlavorError as exc:
        doc = {"error": type(exc).__name__, "message": exc.message}
    except MemoryError:
        report(False, "MemoryError")
        return 3
    out.write_text(json.dumps(doc), encoding="utf-8")
    report(True, "scanned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
