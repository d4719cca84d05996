"""Decoding an XGBoost model file the way XGBoost 3.2 reads it: its format sniffing, its JSON reader
(``\\uXXXX`` kept literally) and its UBJ dialect, with every length checked before it is trusted.

UBJ trees go through the cheapest exact reader of :mod:`._ubj_trees` first; the generic decoder
here takes whatever they do not.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np

from mlflow_safeflavor.validate._common import Refused
from mlflow_safeflavor.validate.xgboost_model._caps import MAX_NESTING, MAX_UBJ_VALUES
from mlflow_safeflavor.validate.xgboost_model._ubj_trees import INT64, fast_trees, scan_trees

# --------------------------------------------------------------------------------------------------
# Format sniffing and JSON
# --------------------------------------------------------------------------------------------------

_C_SPACE = b" \t\n\v\f\r"


def sniff(data: bytes, fmt: str) -> None:
    """Require that XGBoost's own format sniffing (c_api.cc DispatchModelType) agrees with ``fmt``."""
    if len(data) < 2 or data[0] != 0x7B:  # '{'
        raise Refused(f"the file does not start with an XGBoost {fmt.upper()} object")
    rest = data[1:65].lstrip(_C_SPACE)
    first = rest[:1]
    if fmt == "json":
        if first != b'"':
            raise Refused("the file is not an XGBoost JSON model (XGBoost would not read it as JSON)")
    elif not first.isalpha():
        raise Refused("the file is not an XGBoost UBJ model (XGBoost would not read it as UBJ)")


# A real \u escape: a backslash-u preceded by an even number of backslashes.
_ESCAPE_U = re.compile(rb"(?<!\\)((?:\\\\)*)\\u")


def load_json(data: bytes) -> Any:
    if b"\\u" in data:
        # XGBoost's JSON reader keeps "\uXXXX" literally; make Python read it the same way.
        data = _ESCAPE_U.sub(rb"\1\\\\u", data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"the JSON model is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise
    except ValueError as exc:
        raise Refused(f"the JSON model does not parse ({str(exc)[:120]})") from None


# --------------------------------------------------------------------------------------------------
# UBJ (XGBoost's dialect, src/common/json.cc UBJReader)
# --------------------------------------------------------------------------------------------------

_TYPED = {  # typed-array element marker -> NumPy dtype (XGBoost F32/F64/I8/U8/I16/I32/I64 arrays)
    0x64: np.dtype(">f4"),
    0x44: np.dtype(">f8"),
    0x69: np.dtype("i1"),
    0x55: np.dtype("u1"),
    0x49: np.dtype(">i2"),
    0x6C: np.dtype(">i4"),
    0x4C: np.dtype(">i8"),
}
_SCALARS = {  # scalar marker -> (struct, size)
    0x69: struct.Struct(">b"),
    0x55: struct.Struct(">B"),
    0x49: struct.Struct(">h"),
    0x6C: struct.Struct(">i"),
    0x4C: struct.Struct(">q"),
    0x43: struct.Struct(">b"),  # 'C': XGBoost reads a (signed) char as an integer
    0x64: struct.Struct(">f"),
    0x44: struct.Struct(">d"),
}


class UBJDecoder:
    """Decode XGBoost's UBJ into dict / list / int / float / str / bool / None / NumPy arrays.

    Typed arrays become read-only big-endian NumPy views (their dtype records the UBJ type, which
    XGBoost's loaders care about); generic arrays become lists.
    """

    __slots__ = ("buf", "end", "values")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.end = len(buf)
        self.values = 0

    def decode(self) -> Any:
        value, pos = self._value(0, 0, None)
        if pos != self.end:
            raise Refused(f"the UBJ model has {self.end - pos} unexpected bytes after its end")
        return value

    def _need(self, pos: int, n: int) -> None:
        if n < 0 or pos + n > self.end:
            raise Refused(f"the UBJ model is truncated at byte {pos}")

    def _count(self, pos: int, what: str) -> int:
        """Read XGBoost's 'L' int64 length at ``pos`` (the marker itself is at ``pos``)."""
        self._need(pos, 9)
        if self.buf[pos] != 0x4C:
            raise Refused(f"a UBJ {what} length at byte {pos} is not an int64 ('L'), which XGBoost requires")
        n = INT64.unpack_from(self.buf, pos + 1)[0]
        if n < 0:
            raise Refused(f"a UBJ {what} at byte {pos} declares a negative length")
        return n

    def _value(self, pos: int, depth: int, key: str | None) -> tuple[Any, int]:
        buf = self.buf
        if pos >= self.end:
            raise Refused(f"the UBJ model is truncated at byte {pos}")
        m = buf[pos]
        if m == 0x7B:  # '{'
            return self._object(pos + 1, depth + 1)
        if m == 0x5B:  # '['
            return self._array(pos + 1, depth + 1, key)
        scalar = _SCALARS.get(m)
        if scalar is not None:
            self._need(pos + 1, scalar.size)
            return scalar.unpack_from(buf, pos + 1)[0], pos + 1 + scalar.size
        if m == 0x53:  # 'S'
            n = self._count(pos + 1, "string")
            start = pos + 10
            self._need(start, n)
            return buf[start : start + n].decode("latin-1"), start + n
        if m == 0x5A:  # 'Z'
            return None, pos + 1
        if m == 0x54:  # 'T'
            return True, pos + 1
        if m == 0x46:  # 'F'
            return False, pos + 1
        raise Refused(f"the UBJ model has marker {chr(m)!r} at byte {pos}, which XGBoost's reader does not accept")

    def _object(self, pos: int, depth: int) -> tuple[dict, int]:
        if depth > MAX_NESTING:
            raise Refused(f"the UBJ model nests deeper than {MAX_NESTING} levels")
        buf = self.buf
        out: dict = {}
        while True:
            if pos >= self.end:
                raise Refused(f"the UBJ model is truncated at byte {pos} (unterminated object)")
            if buf[pos] == 0x7D:  # '}'
                return out, pos + 1
            n = self._count(pos, "object key")
            start = pos + 9
            self._need(start, n)
            key = buf[start : start + n].decode("latin-1")
            if key in out:
                raise Refused(f"the UBJ model repeats the key {key[:40]!r} in one object")
            self.values += 1
            if self.values > MAX_UBJ_VALUES:
                raise Refused("the UBJ model holds too many values")
            out[key], pos = self._value(start + n, depth, key)

    def _array(self, pos: int, depth: int, key: str | None) -> tuple[Any, int]:
        if depth > MAX_NESTING:
            raise Refused(f"the UBJ model nests deeper than {MAX_NESTING} levels")
        buf = self.buf
        if pos >= self.end:
            raise Refused(f"the UBJ model is truncated at byte {pos} (unterminated array)")
        m = buf[pos]
        if m == 0x24:  # '$': typed array, XGBoost requires '#L' count after the type
            self._need(pos, 2)
            dtype = _TYPED.get(buf[pos + 1])
            if dtype is None:
                raise Refused(f"the UBJ model has a typed array of type {chr(buf[pos + 1])!r} at byte {pos}, "
                              "which XGBoost does not support")
            self._need(pos, 3)
            if buf[pos + 2] != 0x23:
                raise Refused(f"a UBJ typed array at byte {pos} has no '#' count")
            n = self._count(pos + 3, "typed array")
            start = pos + 12
            if n > (self.end - start) // dtype.itemsize:
                raise Refused(f"a UBJ typed array at byte {pos} declares {n} elements but only "
                              f"{self.end - start} bytes remain")
            return np.frombuffer(buf, dtype, n, start), start + n * dtype.itemsize
        if m == 0x23:  # '#': counted generic array
            n = self._count(pos + 1, "array")
            start = pos + 10
            if n > self.end - start:
                raise Refused(f"a UBJ array at byte {pos} declares {n} elements but only "
                              f"{self.end - start} bytes remain")
            self.values += n
            if self.values > MAX_UBJ_VALUES:
                raise Refused("the UBJ model holds too many values")
            if key == "trees" and n:
                fast = fast_trees(self, start, n, depth) or scan_trees(self, start, n, depth)
                if fast is not None:
                    return fast
            ints = _int_runs(buf, start, n)
            if ints is not None:
                return ints
            out = []
            append = out.append
            value = self._value
            for _ in range(n):
                item, start = value(start, depth, None)
                append(item)
            return out, start
        out = []
        while True:  # plain array up to ']'
            if pos >= self.end:
                raise Refused(f"the UBJ model is truncated at byte {pos} (unterminated array)")
            if buf[pos] == 0x5D:
                return out, pos + 1
            self.values += 1
            if self.values > MAX_UBJ_VALUES:
                raise Refused("the UBJ model holds too many values")
            item, pos = self._value(pos, depth, None)
            out.append(item)


_INT_WIDTH = {0x69: ("i1", 1), 0x49: (">i2", 2), 0x6C: (">i4", 4), 0x4C: (">i8", 8)}


def _int_runs(buf: bytes, start: int, n: int) -> tuple[list, int] | None:
    """Fast path for a counted generic array of integer scalars (``tree_info``, ``iteration_indptr``).

    Decodes runs of equally-marked integers with NumPy; returns (list of int, end) or None when the
    array is anything else (it is then decoded one value at a time).
    """
    out: list = []
    pos = start
    left = n
    end = len(buf)
    for _ in range(8):
        if not left:
            return out, pos
        if pos >= end:
            return None
        width = _INT_WIDTH.get(buf[pos])
        if width is None:
            return None
        dtype, size = width
        step = size + 1
        markers = buf[pos : pos + step * left : step]
        run = len(markers) - len(markers.lstrip(markers[:1]))
        if pos + step * run > end:
            run = (end - pos) // step
            if run == 0:
                return None
        block = np.frombuffer(buf, np.uint8, step * run, pos).reshape(run, step)[:, 1:]
        out.extend(np.ascontiguousarray(block).view(dtype).ravel().tolist())
        pos += step * run
        left -= run
    return (out, pos) if not left else None
