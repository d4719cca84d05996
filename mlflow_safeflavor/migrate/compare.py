"""Prediction comparison for conversions: plain arrays, exact equality, a readable difference."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_plain_array(value: Any) -> np.ndarray:
    """Turn a prediction (array, list, Series, DataFrame) into an array ``np.save`` writes without pickle.

    Object arrays of strings become unicode arrays; object arrays of numbers become numeric ones.
    Anything else cannot be compared faithfully and raises TypeError.
    """
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    arr = np.asarray(value)
    if arr.dtype != object:
        return arr
    flat = arr.ravel().tolist()
    if all(isinstance(v, str) for v in flat):
        return arr.astype(str)
    if all(isinstance(v, (bool, int, float, np.generic)) and not isinstance(v, (str, bytes)) for v in flat):
        return np.asarray(flat).reshape(arr.shape)
    raise TypeError(f"predictions of mixed Python types ({sorted({type(v).__name__ for v in flat})}) cannot be compared")


def difference(expected: np.ndarray, actual: np.ndarray) -> str | None:
    """None when the two arrays are identical (shape, kind and every value, NaN equal to NaN)."""
    if expected.shape != actual.shape:
        return f"shapes differ: {expected.shape} vs {actual.shape}"
    if expected.dtype.kind in "US" or actual.dtype.kind in "US":
        if expected.dtype.kind != actual.dtype.kind and not (expected.dtype.kind in "US" and actual.dtype.kind in "US"):
            return f"kinds differ: {expected.dtype} vs {actual.dtype}"
        bad = int(np.sum(expected.astype(str) != actual.astype(str)))
        return None if bad == 0 else f"{bad} of {expected.size} labels differ"
    if expected.dtype.kind in "fc" or actual.dtype.kind in "fc":
        same = np.array_equal(expected, actual, equal_nan=True)
        if same:
            return None
        diff = np.abs(expected.astype(float) - actual.astype(float))
        return f"{int(np.sum(diff > 0))} of {expected.size} values differ (largest absolute difference {np.nanmax(diff):.3g})"
    bad = int(np.sum(expected != actual))
    return None if bad == 0 else f"{bad} of {expected.size} values differ"
