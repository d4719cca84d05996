"""Plain-JSON state for sklearn-API wrappers of native models (``wrapper.json``).

Only JSON scalars, lists and dicts cross this boundary, and on load every key and value is checked
against the constructor's own parameter names and a fixed set of fitted attributes: the file can
describe a model, never name code.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Any, Mapping

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

_logger = logging.getLogger(__name__)
WRAPPER_FILE = "wrapper.json"
WRAPPER_MAX_BYTES = 16 * 1024**2
_FLOAT_KEY = "$float"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ARRAY_KINDS = {"i": "int64", "u": "uint64", "f": "float64", "b": "bool", "U": "str", "O": "str"}


def _plain(value: Any) -> Any:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not representable."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        # JSON has no NaN/inf; XGBoost's default ``missing`` is NaN.
        return float(value) if math.isfinite(float(value)) else {_FLOAT_KEY: repr(float(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("non-string key")
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def plain_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split constructor params into JSON-representable ones and the names of the rest.

    The rest (callables such as custom objectives or callbacks) only matter for training; the
    caller records their names so a reader of wrapper.json sees what was left out.
    """
    kept, dropped = {}, []
    for key, value in params.items():
        try:
            kept[key] = _plain(value)
        except TypeError:
            dropped.append(key)
    if dropped:
        _logger.warning(
            "mlflow-safeflavor: not storing constructor parameters %s (not plain data; they "
            "affect training only, the fitted trees are stored in full).",
            dropped,
        )
    return kept, sorted(dropped)


def encode_array(values: Any) -> dict[str, Any]:
    """Encode a 1-D label array (ints, floats, bools or strings) as plain JSON."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"cannot store labels of dtype {arr.dtype} and shape {arr.shape}")
    kind = _ARRAY_KINDS[arr.dtype.kind]
    if kind == "str" and not all(isinstance(v, str) for v in arr.tolist()):
        raise TypeError("object labels that are not all strings")
    return {"dtype": kind, "values": arr.tolist(), "numpy_dtype": arr.dtype.str if kind != "str" else None}


def decode_array(doc: Any, *, path: str) -> np.ndarray:
    """Decode :func:`encode_array` output, refusing anything but the plain kinds it writes."""
    if not isinstance(doc, dict) or doc.get("dtype") not in set(_ARRAY_KINDS.values()):
        raise MalformedArtifactError(f"{path}: label array has an unknown encoding.", path=path)
    values = doc.get("values")
    if not isinstance(values, list) or len(values) > 10_000_000:
        raise MalformedArtifactError(f"{path}: label array values are not a list.", path=path)
    kind = doc["dtype"]
    check = {"int64": int, "uint64": int, "float64": (int, float), "bool": bool, "str": str}[kind]
    if not all(isinstance(v, check) for v in values):
        raise MalformedArtifactError(f"{path}: label array holds values of the wrong type.", path=path)
    if kind == "str":
        return np.asarray(values, dtype=object) if doc.get("object", False) else np.asarray(values)
    np_dtype = doc.get("numpy_dtype")
    try:
        dtype = np.dtype(np_dtype) if isinstance(np_dtype, str) else np.dtype(kind)
    except TypeError:
        raise MalformedArtifactError(f"{path}: label array has a bad dtype.", path=path) from None
    if dtype.kind not in "iufb":
        raise MalformedArtifactError(f"{path}: label array has a bad dtype.", path=path)
    return np.asarray(values, dtype=dtype)


def dump_state(state: Mapping[str, Any]) -> bytes:
    """Serialize wrapper state as canonical JSON bytes."""
    return json.dumps(state, sort_keys=True, indent=1, allow_nan=False).encode("utf-8")


def load_state(data: bytes, *, path: str, expected_class: str) -> dict[str, Any]:
    """Parse wrapper.json bytes and check the class key matches MLmodel's ``model_class``."""
    if len(data) > WRAPPER_MAX_BYTES:
        raise MalformedArtifactError(f"{path}: wrapper.json is larger than its cap.", path=path)
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedArtifactError(
            f"{path}: wrapper.json is not valid JSON ({exc.__class__.__name__}). Re-save the model.",
            path=path,
        ) from None
    if not isinstance(doc, dict) or doc.get("model_class") != expected_class:
        raise MalformedArtifactError(
            f"{path}: wrapper.json does not describe a {expected_class}; the files do not belong "
            "together. Re-save the model.",
            path=path,
        )
    return doc


def _refuse_constant(name: str) -> None:
    raise ValueError(f"non-finite constant {name}")


def checked_params(
    doc: Mapping[str, Any], cls: type, *, path: str, allow_extra: bool = False
) -> dict[str, Any]:
    """Return constructor params from wrapper.json as plain data.

    Names must be ones ``cls`` accepts, unless ``allow_extra`` (LightGBM and CatBoost forward
    extra keyword arguments to the native library as plain settings).
    """
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise MalformedArtifactError(f"{path}: wrapper.json 'params' is not an object.", path=path)
    known = _param_names(cls)
    unknown = sorted(set(params) - known)
    if unknown and not allow_extra:
        raise MalformedArtifactError(
            f"{path}: wrapper.json sets parameters {unknown} that {cls.__name__} does not have. "
            "The file was altered or written for another library version; re-save the model.",
            path=path,
        )
    try:
        return {k: _from_plain(_plain(v)) for k, v in params.items()}
    except (TypeError, KeyError):
        raise MalformedArtifactError(f"{path}: wrapper.json params are not plain data.", path=path) from None


@functools.lru_cache(maxsize=64)
def _param_names(cls: type) -> frozenset[str]:
    """The constructor parameter names of ``cls`` (a class from a codec's fixed table).

    Cached per class: building a default instance and letting sklearn inspect its signature costs
    about 0.4 ms, on every load otherwise, and the answer cannot change within a process.
    """
    return frozenset(cls().get_params(deep=False))


def _from_plain(value: Any) -> Any:
    """Undo the non-finite float encoding of :func:`_plain`."""
    if isinstance(value, dict):
        if set(value) == {_FLOAT_KEY}:
            return _NON_FINITE[value[_FLOAT_KEY]]
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_plain(v) for v in value]
    return value
