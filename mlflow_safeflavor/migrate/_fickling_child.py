"""fickling's second opinion on one pickle stream, run by path (so only fickling is imported).

``<bootstrap> .../_fickling_child.py STREAM_FILE``, started by
:func:`mlflow_safeflavor.migrate.isolated.fickling_opinion` under the scan's memory, CPU and
wall-clock limits: fickling evaluates the whole stream and its cost grows with the opcodes
(~3.4 s of CPU per MB of them), so it never runs in the calling process. Prints one
``SAFEFLAVOR-SMOKE {json}`` line whose detail is the opinion as JSON (``null`` without fickling).
Standard library and fickling only: no mlflow, no mlflow_safeflavor.
"""

import json
import sys


def opinion(data: bytes):
    """fickling's severity and summary for ``data``, or None when fickling is not installed."""
    try:
        from fickling.analysis import check_safety
        from fickling.fickle import Pickled
    except ImportError:
        return None
    try:
        result = check_safety(Pickled.load(data))
        return {"severity": str(getattr(result.severity, "name", result.severity)), "summary": str(result)[:2000]}
    except MemoryError:
        raise
    except Exception as exc:  # fickling's own parse errors: reported, never raised
        return {"severity": "UNANALYZABLE", "summary": f"{type(exc).__name__}: {str(exc)[:200]}"}


def main() -> int:
    """Read the stream named on the command line and print the verdict line."""
    with open(sys.argv[1], "rb") as fh:
        data = fh.read()
    try:
        detail, ok = json.dumps(opinion(data)), True
    except MemoryError:
        detail, ok = "MemoryError", False
    sys.stdout.write("SAFEFLAVOR-SMOKE " + json.dumps({"ok": ok, "detail": detail}) + "\n")
    sys.stdout.flush()
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
