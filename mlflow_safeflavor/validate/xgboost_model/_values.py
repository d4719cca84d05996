"""Typed reads of decoded values (the output of ``json.loads`` and of the UBJ decoder), each refusing
with a sentence that names the value."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mlflow_safeflavor.validate._common import Refused

# Typed UBJ arrays by NumPy dtype string.
I32 = (">i4",)
I64 = (">i8",)
U8 = ("|u1",)
F32 = (">f4",)

_DIGITS = re.compile(r"[0-9]{1,12}", re.ASCII)


def obj(value: Any, what: str) -> dict:
    if type(value) is not dict:
        raise Refused(f"{what} is not an object")
    return value


def get(d: dict, key: str, what: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise Refused(f"{what} has no {key!r}") from None


def string(value: Any, what: str) -> str:
    if type(value) is not str:
        raise Refused(f"{what} is not a string")
    return value


def integer(value: Any, what: str) -> int:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise Refused(f"{what} is not a 64-bit integer")
    return value


def decimal(value: Any, what: str, lo: int, hi: int) -> int:
    """XGBoost keeps numeric parameters as strings and parses them with stoi/dmlc: plain digits only."""
    text = string(value, what)
    if not _DIGITS.fullmatch(text):
        raise Refused(f"{what} is {text[:30]!r}, not a plain decimal number")
    number = int(text)
    if not lo <= number <= hi:
        raise Refused(f"{what} is {number}, outside [{lo}, {hi}]")
    return number


def ints(value: Any, what: str, dtypes: tuple[str, ...] | None) -> np.ndarray:
    """An integer array: a typed UBJ array of one of ``dtypes``, or a generic array of integers."""
    if type(value) is np.ndarray:
        if dtypes is None or value.dtype.str not in dtypes:
            raise Refused(f"{what} is a typed array of the wrong type ({value.dtype.str})")
        return value
    if type(value) is not list:
        raise Refused(f"{what} is not an array")
    return int_list(value, what)


def int_list(value: list, what: str) -> np.ndarray:
    if not value:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError):
        raise Refused(f"{what} holds values that are not integers") from None
    if arr.dtype.kind != "i" or arr.ndim != 1:
        raise Refused(f"{what} holds values that are not 64-bit integers")
    return arr


def length(value: Any, what: str, dtypes: tuple[str, ...] | None) -> int:
    """Length of an array whose values XGBoost reads but that cannot misdirect it (floats, flags)."""
    if type(value) is np.ndarray:
        if dtypes is None or value.dtype.str not in dtypes:
            raise Refused(f"{what} is a typed array of the wrong type ({value.dtype.str})")
        return len(value)
    if type(value) is not list:
        raise Refused(f"{what} is not an array")
    return len(value)
