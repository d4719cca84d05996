"""The pure-Python unpickler both the scan and the restricted load run, with our ``find_class``.

In *symbolic* mode (the scan) nothing the pickle names is constructed: every import becomes a
:class:`_Sym` placeholder and every call on one a :class:`_SymObj` that only records its arguments
— plain builtins such as ``bytes``, ``bytearray``, ``list`` or ``range`` included, whose arguments
are checked instead (``bytearray(2**30)`` or ``list(range(10**8))`` would allocate what the stream
does not carry: a problem, never an allocation). What the evaluation holds is therefore bounded by
the opcodes it evaluated, and :class:`~mlflow_safeflavor.migrate.budget.Budget` bounds those. The
only real objects built are plain values from the stream and ``numpy.dtype`` (needed to size
joblib's raw array data; it parses a description and allocates nothing of the declared size).

In *restricted* mode (the load) ``find_class`` returns the real object for allowed names only.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from typing import Any, Iterable

from mlflow_safeflavor.errors import PickleRefusedError
from mlflow_safeflavor.migrate.allow import JOBLIB_ARRAY_WRAPPER, PicklePolicy, Verdict
from mlflow_safeflavor.migrate.budget import Budget, ScanLimits
from mlflow_safeflavor.migrate.scanreport import ScanReport

MAX_NESTING = 6  # pickles inside bytes inside pickles, and joblib object arrays, examined this deep


class _Sym:
    """A placeholder for an imported name during the symbolic scan; calling it builds a _SymObj."""

    __slots__ = ("name", "reader", "state")

    def __new__(klass, *args: Any, **kwargs: Any) -> Any:
        # NEWOBJ does ``cls.__new__(cls, *args)``; with a placeholder as cls that lands here.
        if isinstance(klass, _Sym):
            return klass._make(args, kwargs)
        return object.__new__(klass)

    def __init__(self, name: str, reader: "_Reader | None" = None) -> None:
        self.name, self.reader, self.state = name, reader, None

    def __call__(self, *args: Any, **kwargs: Any) -> "_SymObj":
        return self._make(args, kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state  # BUILD on an imported object: kept so the nested-pickle walk sees it

    def _make(self, args: tuple, kwargs: dict) -> "_SymObj":
        if self.reader is not None:
            problem = _argument_problem(self.name, args, kwargs)
            if problem is not None and self.reader.report is not None:
                self.reader.report.problem(f"{self.reader.where}: {problem}")
        return _SymObj(self.name, args, kwargs)


class _SymObj:
    """The result of calling a placeholder: records arguments, state and items, nothing else."""

    __slots__ = ("name", "args", "kwargs", "state", "items")

    def __init__(self, name: str, args: tuple, kwargs: dict) -> None:
        self.name, self.args, self.kwargs = name, args, kwargs
        self.state: Any = None
        self.items: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_SymObj":
        # One "(...)" however often the result is called again: a name that grew per call would
        # make a chain of memoised calls quadratic in time and memory.
        return _SymObj(self.name if self.name.endswith("(...)") else f"{self.name}(...)", args, kwargs)

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
_HELD = (bytes, bytearray, str, list, tuple, set, frozenset, dict)


def _argument_problem(name: str, args: tuple, kwargs: dict) -> str | None:
    """Why calling ``name`` (a plain builtin or ``_codecs.encode``) with these arguments is refused.

    Each accepted call builds a value no larger than arguments the stream itself carries; a size
    given as a number, or an iterable the stream does not hold (a ``range``, another call), would
    let a few bytes of pickle allocate gigabytes when the model is rebuilt.
    """
    if name == "_codecs.encode":
        text, rest = (args[:1] or (None,))[0], args[1:]
        if not isinstance(text, str) or kwargs or rest[:1] not in ((), ("latin1",), ("latin-1",)) or rest[1:] not in ((), ("strict",)):
            return "_codecs.encode is only accepted as encode(text, 'latin1')"
        return None
    if name not in _PLAIN_BUILTINS:
        return None
    short = name.rsplit(".", 1)[1]
    first = args[0] if args else None
    if short in ("bytes", "bytearray") and args:
        if isinstance(first, int):
            return f"{short}({first}) allocates memory the pickle does not carry; model pickles never do this"
        if not isinstance(first, _HELD) and not (isinstance(first, _SymObj) and first.name == "_codecs.encode"):
            return f"{short}(...) of an object the stream does not hold; model pickles never do this"
    if short in ("list", "tuple", "set", "frozenset", "dict") and args and not isinstance(first, _HELD):
        return (f"{short}(...) of a {type(first).__name__ if not isinstance(first, (_Sym, _SymObj)) else first.name} "
                "iterates an object of unbounded size the stream does not hold; model pickles never do this")
    return None


class _Reader(pickle._Unpickler):  # type: ignore[name-defined]
    """The standard library's pure-Python unpickler with our find_class, EXT, persid, BUILD and a budget."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, fh: io.BytesIO, judge: PicklePolicy, *, symbolic: bool, where: str, report: ScanReport | None,
                 depth: int = 0, budget: Budget | None = None) -> None:
        super().__init__(fh, fix_imports=True, encoding="ASCII", errors="strict")
        self.fh = fh
        self.judge = judge
        self.symbolic = symbolic
        self.where = where
        self.report = report
        self.depth = depth
        self.budget = budget or Budget(ScanLimits.from_env(), label=where)
        self.seen_joblib = False

    def load(self) -> Any:
        """``pickle._Unpickler.load`` with one budget tick per opcode."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch, tick = self.read, self.dispatch, self.budget.tick
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                tick()
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    # -- imports ------------------------------------------------------------------------------
    def _name(self, module: str, name: str) -> str:
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return f"{module}.{name}"

    def _record(self, verdict: Verdict) -> None:
        if self.report is not None:
            self.report.note(verdict.name, verdict.allowed, verdict.reason, self.where)

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
        if self.symbolic:
            if full == "numpy.dtype":
                import numpy

                return numpy.dtype  # needed to size joblib's raw array data; parses a dtype only
            return _Sym(full, self)  # plain builtins too: their arguments are checked, nothing is built
        if full in _INERT_REAL:
            return _INERT_REAL[full]
        if full in _PLAIN_BUILTINS:
            return _PLAIN_BUILTINS[full]
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
            if self.depth >= MAX_NESTING:
                # Not examined is not ok: the scan refuses what it did not look into.
                raise pickle.UnpicklingError(f"joblib object arrays nested more than {MAX_NESTING} deep; not examined")
            # The data is a nested pickle: read it with the same rules (joblib would use a plain one).
            nested = _Reader(self.fh, self.judge, symbolic=self.symbolic, where=f"{self.where} > joblib object array",
                             report=self.report, depth=self.depth + 1, budget=self.budget)
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
