"""Static scan and restricted loading of pickle and joblib files, under one allowlist and a budget.

Both are driven by the pure-Python unpickler from the standard library with our own ``find_class``
(:mod:`mlflow_safeflavor.migrate.unpickler`):

* :func:`scan_pickle` runs it *symbolically*: every import becomes a placeholder that records the
  name and every call on it another placeholder, so the whole stream is evaluated — ``STACK_GLOBAL``
  operands resolved through the memo exactly as a real load would, ``EXT`` codes, persistent ids,
  joblib's array wrappers and the raw or pickled array data behind them, nested pickles hidden in
  bytes — without constructing anything but plain values from the stream and numpy dtypes. It runs
  under a budget (:mod:`mlflow_safeflavor.migrate.budget`); with ``isolated=True`` in a child
  process with hard memory, CPU and wall-clock limits (:mod:`mlflow_safeflavor.migrate.isolated`).
* :func:`restricted_load` runs it for real, but ``find_class`` refuses every name the allowlist
  does not name, and joblib arrays are read by our reader (joblib's own reader hands object
  arrays to a plain unpickler).

Whatever the scan does not examine — a nesting level past the limit, a nested pickle it cannot
parse, a stream past a budget — is a refusal, never silence. Nothing here calls ``pickle.load``,
``joblib.load`` or ``cloudpickle.load``.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, Iterable

from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError, PickleRefusedError, SafeFlavorError
from mlflow_safeflavor.migrate.allow import PicklePolicy, pickle_policy
from mlflow_safeflavor.migrate.budget import ENV_SCAN_MEMORY_MB, Budget, ScanBudgetExceeded, ScanLimits
from mlflow_safeflavor.migrate.scanreport import Finding, ScanReport
from mlflow_safeflavor.migrate.streams import decompress, read_pickle_bytes, stream_cap
from mlflow_safeflavor.migrate.unpickler import MAX_NESTING, _JoblibArray, _Reader, _Sym, _SymObj

__all__ = ["Finding", "ScanReport", "read_pickle_bytes", "restricted_load", "scan_pickle"]


def _looks_pickled(value: bytes) -> bool:
    return len(value) >= 4 and value[-1:] == b"." and (value[:1] == b"\x80" and 2 <= value[1] <= 5 or value[:1] in (b"c", b"(", b"]", b"}"))


def _well_formed(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _merge_nested(report: ScanReport, sub: ScanReport, blob: bytes, where: str, failed: Exception | None) -> None:
    """Fold a nested scan into ``report``; a nested pickle that could not be fully scanned refuses.

    A binary-protocol blob (``\\x80`` 2–5 … ``.``) that fails to parse is a refusal: what follows
    the failure was not examined. Text that merely starts like protocol 0 (``c``, ``(``) and fails
    is data — a feature name such as ``"cost."`` — but any import it names that a real unpickler
    could resolve (a well-formed dotted name) still counts.
    """
    binary = blob[:1] == b"\x80"
    for f in sub.findings:
        if failed is None or binary or _well_formed(f.name):
            report.note(f.name, f.allowed, f.reason, f.where, f.count)
    if failed is None or binary:
        for p in sub.problems:
            report.problem(p)
    if failed is not None and binary:
        report.problem(f"{where} > nested pickle: could not be fully scanned ({type(failed).__name__}: "
                       f"{str(failed)[:200]}); what the scan did not examine is refused")


def _walk_for_nested(root: Any, judge: PicklePolicy, report: ScanReport, where: str, depth: int, budget: Budget) -> None:
    """Look through the symbolic result for bytes that are themselves pickles, and scan those."""
    stack, seen = [root], set()
    while stack:
        budget.tick()
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray)) or isinstance(obj, str) and obj[:1] in ("c", "(", "]", "}", "\x80") and obj[-1:] == ".":
            blob = obj.encode("latin1", "replace") if isinstance(obj, str) else bytes(obj)
            if not _looks_pickled(blob):
                continue
            if depth + 1 > MAX_NESTING:
                report.problem(f"{where}: holds a pickle nested more than {MAX_NESTING} levels deep inside bytes; "
                               "the scan does not look that deep, and what it did not examine is refused")
                continue
            sub = ScanReport(source=report.source)
            failed: Exception | None = None
            try:
                _scan_stream(blob, report=sub, where=f"{where} > nested pickle", judge=judge, depth=depth + 1, budget=budget)
            except ScanBudgetExceeded:
                raise
            except (Exception, RecursionError) as exc:
                failed = exc
            _merge_nested(report, sub, blob, where, failed)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, _SymObj):
            stack.extend((obj.args, obj.kwargs, obj.state, obj.items))
        elif isinstance(obj, _Sym):
            stack.append(obj.state)
        elif isinstance(obj, _JoblibArray):
            stack.append(getattr(obj, "state", None))


def _scan_stream(data: bytes, *, report: ScanReport, where: str, judge: PicklePolicy, depth: int, budget: Budget) -> Any:
    fh = io.BytesIO(data)
    reader = _Reader(fh, judge, symbolic=True, where=where, report=report, depth=depth, budget=budget)
    result = reader.load()
    if depth == 0:
        report.protocol = reader.proto
        if reader.seen_joblib and report.container == "pickle":
            report.container = "joblib"
        trailing = len(data) - fh.tell()
        if trailing:
            report.problem(f"{trailing} bytes after the end of the pickle stream (not a single pickle)")
    _walk_for_nested(result, judge, report, where, depth, budget)
    return result


def scan_pickle(
    path: str | os.PathLike | None = None,
    *,
    data: bytes | None = None,
    label: str | None = None,
    trusted_types: str | Iterable[str] | None = None,
    second_opinion: bool = True,
    isolated: bool = False,
    max_bytes: int | None = None,
    max_bytes_setting: str | None = None,
    cancel: threading.Event | None = None,
) -> ScanReport:
    """Statically scan a pickle or joblib file and judge every import against the allowlist.

    Pass a ``path`` or the file's ``data``. Nothing is unpickled: imports become placeholders, so
    the report lists every ``GLOBAL``/``STACK_GLOBAL``/``INST``/``OBJ``/``REDUCE``/``BUILD``
    target, ``EXT`` code, persistent id, joblib array wrapper and nested pickle. With
    ``second_opinion`` the fickling scanner's severity is attached for reference (it runs in its
    own resource-limited process); the decision is ours. The scan runs under the budget of
    :mod:`~mlflow_safeflavor.migrate.budget` (``max_bytes`` lowers the stream cap, named in
    messages as ``max_bytes_setting``); with ``isolated`` the whole scan runs in a child process
    with hard memory, CPU and wall-clock limits, and ``cancel`` (an Event) stops it early. A budget
    exceeded, a nesting level not examined or a malformed stream is a problem in the report, never
    ``ok`` (see ``raise_if_refused``). Raises only SafeFlavorError (InvalidArgumentError for a
    missing or linked file, or bad arguments).
    """
    if (path is None) == (data is None):
        raise InvalidArgumentError("scan_pickle needs exactly one of path= or data=.")
    label = label or (str(path) if path is not None else "<bytes>")
    limits = ScanLimits.from_env()
    cap = stream_cap(max_bytes, max_bytes_setting, limits)
    try:
        if isolated:
            from mlflow_safeflavor.migrate.isolated import scan_isolated

            return scan_isolated(path, data=data, label=label, trusted_types=trusted_types, second_opinion=second_opinion,
                                 cap=cap, limits=limits, cancel=cancel)
        return _scan_in_process(path, data, label, trusted_types, second_opinion, cap,
                                Budget(limits, cancel=cancel, label=label), fickling_inline=False)
    except SafeFlavorError:
        raise
    except (Exception, MemoryError) as exc:  # the machinery around the scan (temp files, a child): still a refusal
        report = ScanReport(source=label)
        report.problem(f"{label}: the scan could not run to the end ({type(exc).__name__}: {str(exc)[:200]}); "
                       "what it did not examine is refused")
        report.budget_exceeded = isinstance(exc, MemoryError)
        return report


def _scan_in_process(path: Any, data: bytes | None, label: str, trusted_types: Any, second_opinion: bool,
                     cap: tuple[int, str], budget: Budget, *, fickling_inline: bool) -> ScanReport:
    report = ScanReport(source=label)
    judge = pickle_policy(trusted_types)
    try:
        if path is not None:
            raw, container = read_pickle_bytes(path, label=label, cap=cap)
        else:
            raw, container = decompress(bytes(data), label=label, cap=cap)  # type: ignore[arg-type]
    except MalformedArtifactError as exc:
        report.problem(exc.message)
        return report
    except MemoryError:
        report.problem(f"{label}: reading and decompressing the stream ran out of memory; refused (the scan budget is "
                       f"{budget.limits.memory_mb} MB: raise {ENV_SCAN_MEMORY_MB} if the model is legitimately that large)")
        report.budget_exceeded = True
        return report
    _scan_raw(raw, container, report, judge, budget)
    if second_opinion and report.protocol is not None and not report.budget_exceeded:
        from mlflow_safeflavor.migrate.isolated import fickling_opinion

        report.fickling = fickling_opinion(raw, budget, report, inline=fickling_inline)
    return report


def _scan_raw(raw: bytes, container: str, report: ScanReport, judge: PicklePolicy, budget: Budget) -> None:
    """Scan an already read and decompressed stream into ``report`` (never raises for its bytes)."""
    report.container, report.size = container, len(raw)
    try:
        _scan_stream(raw, report=report, where="pickle", judge=judge, depth=0, budget=budget)
    except ScanBudgetExceeded as exc:
        report.problem(exc.message)
        report.budget_exceeded = True
    except RecursionError:
        report.problem("the pickle nests too deeply to scan")
    except MemoryError:
        report.problem(f"the scan ran out of memory; refused (the scan budget is {budget.limits.memory_mb} MB: "
                       f"raise {ENV_SCAN_MEMORY_MB} if the model is legitimately that large)")
        report.budget_exceeded = True
    except SafeFlavorError as exc:
        report.problem(exc.message)
    except Exception as exc:  # hostile bytes: any parse error is a refusal, never a crash
        report.problem(f"not a well-formed pickle stream ({type(exc).__name__}: {str(exc)[:200]})")


def restricted_load(path: str | os.PathLike, *, trusted_types: str | Iterable[str] | None = None, label: str | None = None) -> Any:
    """Scan, then unpickle ``path`` with a find_class that enforces the same allowlist.

    Raises PickleRefusedError if the scan refuses anything (listing all of it) or if the load meets
    a name the scan did not (it cannot, but the check is enforced at both places), and
    MalformedArtifactError for a stream the unpickler cannot read.
    """
    label = label or str(path)
    report = ScanReport(source=label)
    judge = pickle_policy(trusted_types)
    limits = ScanLimits.from_env()
    try:
        raw, container = read_pickle_bytes(path, label=label, cap=stream_cap(limits=limits))  # read once: the bytes scanned are the bytes loaded
    except MalformedArtifactError as exc:
        report.problem(exc.message)
    else:
        _scan_raw(raw, container, report, judge, Budget(limits, label=label))
    report.raise_if_refused()
    fh = io.BytesIO(raw)
    reader = _Reader(fh, judge, symbolic=False, where=label, report=None, budget=Budget(limits, label=label))
    try:
        return reader.load()
    except (PickleRefusedError, MalformedArtifactError):
        raise
    except Exception as exc:
        raise MalformedArtifactError(
            f"{label}: the pickle could not be rebuilt ({type(exc).__name__}: {str(exc)[:300]}). It "
            "may be corrupt or need library versions other than the installed ones.",
            path=label,
        ) from None
