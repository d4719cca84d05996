"""Static scan and restricted loading of pickle and joblib files, under one allowlist.

Both are driven by the pure-Python unpickler from the standard library with our own ``find_class``:

* :func:`scan_pickle` runs it *symbolically*: every import becomes a placeholder that records the
  name and every call on it another placeholder, so the whole stream is evaluated — ``STACK_GLOBAL``
  operands resolved through the memo exactly as a real load would, ``EXT`` codes, persistent ids,
  joblib's array wrappers and the raw or pickled array data behind them, nested pickles hidden in
  bytes — without constructing anything but plain values and numpy dtypes.
* :func:`restricted_load` runs it for real, but ``find_class`` refuses every name the allowlist
  does not name, and joblib arrays are read by our reader (joblib's own reader hands object
  arrays to a plain unpickler).

Nothing here calls ``pickle.load``, ``joblib.load`` or ``cloudpickle.load``.
"""

from __future__ import annotations

import _compat_pickle
import bz2
import importlib
import io
import lzma
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError, PickleRefusedError
from mlflow_safeflavor.integrity import DEFAULT_MAX_FILE_BYTES, ENV_MAX_FILE_BYTES, _cap
from mlflow_safeflavor.migrate.allow import JOBLIB_ARRAY_WRAPPER, PicklePolicy, Verdict, pickle_policy

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pck", ".pcl")
_MAX_NESTING = 3
_MAX_WALK = 2_000_000

# joblib's compressors, by the magic bytes their streams start with.
_COMPRESSION = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x78", "zlib"),
)


@dataclass
class Finding:
    """One import (or construct) the pickle would make, with the allowlist's verdict."""

    name: str
    allowed: bool
    reason: str
    where: str = "pickle"
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON reports."""
        return {"name": self.name, "allowed": self.allowed, "reason": self.reason, "where": self.where, "count": self.count}


@dataclass
class ScanReport:
    """Everything the static scan learned about one pickle file, before anything was unpickled."""

    source: str
    container: str = "pickle"
    protocol: int | None = None
    size: int = 0
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fickling: dict[str, Any] | None = None

    @property
    def refused(self) -> list[Finding]:
        """The findings the allowlist refuses."""
        return [f for f in self.findings if not f.allowed]

    @property
    def ok(self) -> bool:
        """True when every import is allowed and nothing else was found wrong."""
        return not self.refused and not self.problems

    def reasons(self) -> list[str]:
        """One line per refusal: the refused imports first, then the other problems."""
        return [f"{f.name} ({f.where}): {f.reason}" for f in self.refused] + list(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON reports and the web page."""
        return {
            "source": self.source,
            "container": self.container,
            "protocol": self.protocol,
            "size": self.size,
            "ok": self.ok,
            "imports": [f.to_dict() for f in self.findings],
            "problems": list(self.problems),
            "fickling": self.fickling,
        }

    def raise_if_refused(self) -> None:
        """Raise PickleRefusedError listing every refused import and problem, if there are any."""
        if self.ok:
            return
        names = [f.name for f in self.refused]
        listed = "\n  - ".join(self.reasons())
        raise PickleRefusedError(
            f"{self.source}: refused before unpickling; the pickle would import or do:\n  - {listed}\n"
            "Nothing was loaded. Re-export the model from its training code with "
            "mlflow_safeflavor.save_model, or, if you trust a named type, pass it in trusted_types=.",
            findings=names + [p for p in self.problems],
            path=self.source,
        )

    def format(self) -> str:
        """A human-readable table of the scan."""
        proto = f", protocol {self.protocol}, {self.size} bytes" if self.protocol is not None else ""
        lines = [f"{self.source}: {self.container}{proto}"]
        for f in self.findings:
            mark = "allowed" if f.allowed else "REFUSED"
            lines.append(f"  {mark:8} {f.name}  [{f.where}, x{f.count}]  {f.reason}")
        lines += [f"  PROBLEM  {p}" for p in self.problems]
        if self.fickling:
            lines.append(f"  fickling (second opinion): {self.fickling.get('severity')}")
        if self.ok and not self.findings:
            lines.append("verdict: nothing to unpickle" if self.protocol is None else "verdict: the pickle imports nothing")
        else:
            lines.append("verdict: " + ("every import is allowed" if self.ok else "refused"))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading the bytes

def read_pickle_bytes(path: str | os.PathLike, *, label: str | None = None) -> tuple[bytes, str]:
    """Read a pickle/joblib file (decompressing joblib's compressors) under the size cap.

    Returns the raw pickle stream and a container label; raises MalformedArtifactError for a file
    that is too large, a decompression bomb, or a compressor we do not read.
    """
    p = Path(path)
    label = label or str(p)
    cap = _cap(ENV_MAX_FILE_BYTES, DEFAULT_MAX_FILE_BYTES)
    try:
        st = p.lstat()
    except OSError as exc:
        raise InvalidArgumentError(f"{label}: cannot read the file ({exc.strerror}).", path=label) from None
    if not p.is_file() or p.is_symlink():
        raise InvalidArgumentError(f"{label}: not a regular file.", path=label)
    if st.st_size > cap:
        raise MalformedArtifactError(
            f"{label}: {st.st_size} bytes is over the {cap}-byte cap ({ENV_MAX_FILE_BYTES}).", path=label
        )
    data = p.read_bytes()
    return decompress(data, label=label, cap=cap)


def decompress(data: bytes, *, label: str, cap: int | None = None) -> tuple[bytes, str]:
    """Undo joblib's compression (if any) with a bound on the decompressed size."""
    cap = cap or _cap(ENV_MAX_FILE_BYTES, DEFAULT_MAX_FILE_BYTES)
    if data[:1] == b"\x80" or not data:
        return data, "pickle"
    if data[:2] == b"ZF":
        raise MalformedArtifactError(
            f"{label}: a joblib < 0.10 compressed file; this legacy format is not read. Load and "
            "re-dump it with a current joblib in an isolated environment you trust.",
            path=label,
        )
    for magic, kind in _COMPRESSION:
        if data.startswith(magic):
            break
    else:
        return data, "pickle"
    if kind == "lz4":
        raise MalformedArtifactError(
            f"{label}: lz4-compressed joblib files are not read (no lz4 decoder is installed "
            "with mlflow-safeflavor); re-dump with compress=('zlib', 3).",
            path=label,
        )
    if kind == "zlib":
        dec: Any = zlib.decompressobj()
    elif kind == "gzip":
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif kind == "bz2":
        dec = bz2.BZ2Decompressor()
    else:
        dec = lzma.LZMADecompressor()
    try:
        out = dec.decompress(data, cap + 1) if kind != "bz2" else dec.decompress(data, max_length=cap + 1)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise MalformedArtifactError(f"{label}: corrupt {kind} stream ({exc}).", path=label) from None
    if len(out) > cap:
        raise MalformedArtifactError(
            f"{label}: decompresses to more than {cap} bytes ({ENV_MAX_FILE_BYTES}); refused as a "
            "possible decompression bomb.",
            path=label,
        )
    return out, f"joblib ({kind})"


# --------------------------------------------------------------------------------------------
# The unpickler

class _Sym:
    """A placeholder for an imported name during the symbolic scan; calling it builds a _SymObj."""

    __slots__ = ("name",)

    def __new__(klass, *args: Any, **kwargs: Any) -> Any:
        # NEWOBJ does ``cls.__new__(cls, *args)``; with a placeholder as cls that lands here.
        if isinstance(klass, _Sym):
            return _SymObj(klass.name, args, kwargs)
        return object.__new__(klass)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> "_SymObj":
        return _SymObj(self.name, args, kwargs)


class _SymObj:
    """The result of calling a placeholder: records arguments, state and items, nothing else."""

    def __init__(self, name: str, args: tuple, kwargs: dict) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_SymObj":
        return _SymObj(f"{self.name}(...)", args, kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.items.extend(values)

    def add(self, value: Any) -> None:
        self.items.append(value)


class _JoblibArray:
    """Stands in for joblib's NumpyArrayWrapper; its state tells our reader what bytes follow."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it, and only that way."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is only accepted as encode(text, 'latin1')")
    return text.encode("latin1")


_INERT_REAL = {"_codecs.encode": _latin1_encode}
_PLAIN_BUILTINS = {
    "builtins.bytes": bytes, "builtins.bytearray": bytearray, "builtins.set": set,
    "builtins.frozenset": frozenset, "builtins.list": list, "builtins.tuple": tuple,
    "builtins.dict": dict, "builtins.int": int, "builtins.float": float, "builtins.str": str,
    "builtins.bool": bool, "builtins.complex": complex, "builtins.slice": slice, "builtins.range": range,
}


class _Reader(pickle._Unpickler):  # type: ignore[name-defined]
    """The standard library's pure-Python unpickler with our find_class, EXT, persid and BUILD."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, fh: io.BytesIO, judge: PicklePolicy, *, symbolic: bool, where: str, report: ScanReport | None, depth: int = 0) -> None:
        super().__init__(fh, fix_imports=True, encoding="ASCII", errors="strict")
        self.fh = fh
        self.judge = judge
        self.symbolic = symbolic
        self.where = where
        self.report = report
        self.depth = depth
        self.seen_joblib = False

    # -- imports ------------------------------------------------------------------------------
    def _name(self, module: str, name: str) -> str:
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return f"{module}.{name}"

    def _record(self, verdict: Verdict) -> None:
        if self.report is None:
            return
        for f in self.report.findings:
            if f.name == verdict.name and f.where == self.where:
                f.count += 1
                return
        self.report.findings.append(Finding(verdict.name, verdict.allowed, verdict.reason, self.where))

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("import names must be strings")
        full = self._name(module, name)
        verdict = self.judge.judge(full)
        self._record(verdict)
        if not verdict.allowed:
            if self.symbolic:
                return _Sym(full)
            raise PickleRefusedError(
                f"{self.where}: refused the import {full!r} while unpickling ({verdict.reason}).",
                findings=[full],
            )
        if full == JOBLIB_ARRAY_WRAPPER:
            self.seen_joblib = True
            return _JoblibArray
        if full in _INERT_REAL:
            return _INERT_REAL[full]
        if full in _PLAIN_BUILTINS:
            return _PLAIN_BUILTINS[full]
        if self.symbolic:
            if full == "numpy.dtype":
                import numpy

                return numpy.dtype  # needed to size joblib's raw array data; parses a dtype only
            return _Sym(full)
        # ``full`` comes from the stream, but only a name the allowlist just accepted gets here: one of
        # our fixed tables, skops' trusted list, or a type the operator added (never the artifact).
        module_name, _, attr = full.rpartition(".")
        obj: Any = importlib.import_module(module_name)
        return getattr(obj, attr)

    def persistent_load(self, pid: Any) -> Any:
        return self._refuse_construct("persistent id", "persistent ids reach outside the stream (pickle.Unpickler.persistent_load)")

    def _refuse_construct(self, name: str, reason: str) -> Any:
        self._record(Verdict(name, False, reason))
        if self.symbolic:
            return _SymObj(name, (), {})
        raise PickleRefusedError(f"{self.where}: refused {name} ({reason}).", findings=[name])

    def _ext(self, nbytes: int) -> None:
        code = int.from_bytes(self.read(nbytes), "little")
        self.append(self._refuse_construct(f"EXT code {code}", "copyreg extension codes import whatever a process registered; never used by model pickles"))

    dispatch[pickle.EXT1[0]] = lambda self: self._ext(1)
    dispatch[pickle.EXT2[0]] = lambda self: self._ext(2)
    dispatch[pickle.EXT4[0]] = lambda self: self._ext(4)

    # -- joblib arrays ------------------------------------------------------------------------
    def _load_build(self) -> None:
        if not self.symbolic and len(self.stack) >= 2:
            _check_native_state(self.stack[-2], self.stack[-1], self.where)
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        top = self.stack[-1]
        if isinstance(top, _JoblibArray):
            self.stack[-1] = self._read_joblib_array(top)

    dispatch[pickle.BUILD[0]] = _load_build

    def _read_joblib_array(self, wrapper: _JoblibArray) -> Any:
        import numpy as np

        state = getattr(wrapper, "state", None)
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("joblib array wrapper without a state dict")
        dtype, shape, order = state.get("dtype"), state.get("shape"), state.get("order", "C")
        align = state.get("numpy_array_alignment_bytes")
        subclass = state.get("subclass")
        sub_name = subclass.name if isinstance(subclass, _Sym) else getattr(subclass, "__name__", None)
        if sub_name not in ("numpy.ndarray", "ndarray"):
            self._record(Verdict(f"joblib array subclass {sub_name!r}", False, "only plain numpy.ndarray arrays are read"))
            if not self.symbolic:
                raise PickleRefusedError(f"{self.where}: joblib array of a subclass is refused.", findings=[str(sub_name)])
        if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple) or order not in ("C", "F"):
            raise pickle.UnpicklingError("joblib array wrapper with a malformed dtype, shape or order")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
            raise pickle.UnpicklingError("joblib array wrapper with a malformed shape")
        if align is not None and not (isinstance(align, int) and 0 < align <= 4096):
            raise pickle.UnpicklingError("joblib array wrapper with a malformed alignment")
        frame = getattr(self._unframer, "current_frame", None)
        if frame is not None and frame.tell() != len(frame.getbuffer()):
            raise pickle.UnpicklingError("joblib array data inside a pickle frame")
        self._unframer.current_frame = None
        count = 1
        for d in shape:
            count *= d
        if dtype.hasobject:
            # The data is a nested pickle: read it with the same rules (joblib would use a plain one).
            nested = _Reader(self.fh, self.judge, symbolic=self.symbolic, where=f"{self.where} > joblib object array", report=self.report, depth=self.depth + 1)
            arr = nested.load()
            if self.symbolic:
                return arr
            if not isinstance(arr, np.ndarray) or arr.size != count:
                raise pickle.UnpicklingError("joblib object array does not match its wrapper")
            return arr.reshape(shape, order=order)
        if align is not None:
            pad = self.fh.read(1)
            if len(pad) != 1:
                raise pickle.UnpicklingError("joblib array data truncated")
            if len(self.fh.read(pad[0])) != pad[0]:
                raise pickle.UnpicklingError("joblib array data truncated")
        nbytes = count * dtype.itemsize
        remaining = len(self.fh.getbuffer()) - self.fh.tell()
        if nbytes > remaining:
            raise pickle.UnpicklingError(f"joblib array declares {nbytes} bytes but only {remaining} remain")
        raw = self.fh.read(nbytes)
        if self.symbolic:
            return raw  # scanned for nested pickles like any other bytes
        arr = np.frombuffer(raw, dtype=dtype, count=count).copy()
        return arr.reshape(shape[::-1]).transpose() if order == "F" else arr.reshape(shape)


def _check_native_state(inst: Any, state: Any, where: str) -> None:
    """Validate the model text a pickled LightGBM Booster is about to hand to native code.

    ``Booster.__setstate__`` parses it with LightGBM's C++ loader, which aborts or reads out of
    bounds on crafted text; the same structural validator the loader uses turns that into a clear
    refusal. (XGBoost's pickled state is its internal serialization, not the model format our
    validator reads: that one relies on the conversion running in an isolated process.)
    """
    cls = type(inst)
    if cls.__name__ != "Booster" or cls.__module__ != "lightgbm.basic" or not isinstance(state, dict):
        return
    text = state.get("_handle", state.get("handle"))
    if isinstance(text, str):
        from mlflow_safeflavor.validate import lightgbm_model

        lightgbm_model.validate(text, path=f"{where} (LightGBM Booster model text)")


# --------------------------------------------------------------------------------------------
# Public entry points

def _looks_pickled(value: bytes) -> bool:
    return len(value) >= 4 and value[-1:] == b"." and (value[:1] == b"\x80" and 2 <= value[1] <= 5 or value[:1] in (b"c", b"(", b"]", b"}"))


def _walk_for_nested(root: Any, reader_factory: Any, report: ScanReport, where: str, depth: int) -> None:
    """Look through the symbolic result for bytes that are themselves pickles, and scan those."""
    stack, seen, budget = [root], set(), _MAX_WALK
    while stack and budget > 0:
        budget -= 1
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray)) or isinstance(obj, str) and obj[:1] in ("c", "\x80"):
            blob = obj.encode("latin1", "replace") if isinstance(obj, str) else bytes(obj)
            if _looks_pickled(blob) and depth < _MAX_NESTING:
                sub = ScanReport(source=report.source)
                try:
                    _scan_stream(blob, report=sub, where=f"{where} > nested pickle", judge=reader_factory, depth=depth + 1)
                except Exception:
                    continue  # bytes that merely look like a pickle: data, not a finding
                if sub.findings:
                    report.findings.extend(sub.findings)
                    report.problems.extend(sub.problems)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, _SymObj):
            stack.extend((obj.args, obj.kwargs, obj.state, obj.items))
        elif isinstance(obj, _JoblibArray):
            stack.append(getattr(obj, "state", None))


def _scan_stream(data: bytes, *, report: ScanReport, where: str, judge: PicklePolicy, depth: int) -> Any:
    fh = io.BytesIO(data)
    reader = _Reader(fh, judge, symbolic=True, where=where, report=report, depth=depth)
    result = reader.load()
    if depth == 0:
        report.protocol = reader.proto
        if reader.seen_joblib and report.container == "pickle":
            report.container = "joblib"
        trailing = len(data) - fh.tell()
        if trailing:
            report.problems.append(f"{trailing} bytes after the end of the pickle stream (not a single pickle)")
    _walk_for_nested(result, judge, report, where, depth)
    return result


def scan_pickle(
    path: str | os.PathLike | None = None,
    *,
    data: bytes | None = None,
    label: str | None = None,
    trusted_types: str | Iterable[str] | None = None,
    second_opinion: bool = True,
) -> ScanReport:
    """Statically scan a pickle or joblib file and judge every import against the allowlist.

    Pass a ``path`` or the file's ``data``. Nothing is unpickled: imports become placeholders, so
    the report lists every ``GLOBAL``/``STACK_GLOBAL``/``INST``/``OBJ``/``REDUCE``/``BUILD``
    target, ``EXT`` code, persistent id, joblib array wrapper and nested pickle. With
    ``second_opinion`` the fickling scanner's severity is attached for reference; the decision is
    ours. Never raises for a hostile file: problems are in the report (see ``raise_if_refused``).
    """
    if (path is None) == (data is None):
        raise InvalidArgumentError("scan_pickle needs exactly one of path= or data=.")
    label = label or (str(path) if path is not None else "<bytes>")
    report = ScanReport(source=label)
    try:
        if path is not None:
            raw, container = read_pickle_bytes(path, label=label)
        else:
            raw, container = decompress(bytes(data), label=label)  # type: ignore[arg-type]
    except MalformedArtifactError as exc:
        report.problems.append(exc.message)
        return report
    _scan_raw(raw, container, report, pickle_policy(trusted_types))
    if second_opinion and report.protocol is not None:
        report.fickling = _fickling_opinion(raw)
    return report


def _scan_raw(raw: bytes, container: str, report: ScanReport, judge: PicklePolicy) -> None:
    """Scan an already read and decompressed stream into ``report`` (never raises for its bytes)."""
    report.container, report.size = container, len(raw)
    try:
        _scan_stream(raw, report=report, where="pickle", judge=judge, depth=0)
    except RecursionError:
        report.problems.append("the pickle nests too deeply to scan")
    except Exception as exc:  # hostile bytes: any parse error is a refusal, never a crash
        report.problems.append(f"not a well-formed pickle stream ({type(exc).__name__}: {str(exc)[:200]})")


def _fickling_opinion(raw: bytes) -> dict[str, Any] | None:
    """fickling's severity for the same stream (reference only; None if fickling is absent)."""
    try:
        from fickling.analysis import check_safety
        from fickling.fickle import Pickled
    except ImportError:
        return None
    try:
        result = check_safety(Pickled.load(raw))
        return {"severity": str(getattr(result.severity, "name", result.severity)), "summary": str(result)[:2000]}
    except Exception as exc:
        return {"severity": "UNANALYZABLE", "summary": f"{type(exc).__name__}: {str(exc)[:200]}"}


def restricted_load(path: str | os.PathLike, *, trusted_types: str | Iterable[str] | None = None, label: str | None = None) -> Any:
    """Scan, then unpickle ``path`` with a find_class that enforces the same allowlist.

    Raises PickleRefusedError if the scan refuses anything (listing all of it) or if the load meets
    a name the scan did not (it cannot, but the check is enforced at both places), and
    MalformedArtifactError for a stream the unpickler cannot read.
    """
    label = label or str(path)
    report = ScanReport(source=label)
    judge = pickle_policy(trusted_types)
    try:
        raw, container = read_pickle_bytes(path, label=label)  # read once: the bytes scanned are the bytes loaded
    except MalformedArtifactError as exc:
        report.problems.append(exc.message)
    else:
        _scan_raw(raw, container, report, judge)
    report.raise_if_refused()
    fh = io.BytesIO(raw)
    reader = _Reader(fh, judge, symbolic=False, where=label, report=None)
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
