"""The closed registry of codecs: one module per library behind one small protocol.

A codec name in MLmodel is only ever a key of :data:`CODEC_MODULES`; the module it maps to is a
fixed string in this file, so nothing an artifact says decides what gets imported.
"""

from __future__ import annotations

from typing import Any

from mlflow_safeflavor.codecs.base import Codec, import_fixed
from mlflow_safeflavor.errors import MalformedArtifactError, UnsupportedModelError

CODEC_MODULES: dict[str, str] = {
    "sklearn": "mlflow_safeflavor.codecs.sklearn",
    "xgboost": "mlflow_safeflavor.codecs.xgboost",
    "lightgbm": "mlflow_safeflavor.codecs.lightgbm",
    "catboost": "mlflow_safeflavor.codecs.catboost",
}

# Checked in this order at save time: the GBDT libraries first, because their sklearn-API
# wrappers are also scikit-learn estimators.
_SAVE_ORDER = ("xgboost", "lightgbm", "catboost", "sklearn")


def get_codec(name: object, *, path: str = "MLmodel") -> Codec:
    """Return the codec registered under ``name`` or raise MalformedArtifactError."""
    if not isinstance(name, str) or name not in CODEC_MODULES:
        raise MalformedArtifactError(
            f"{path}: unknown codec {name!r}; this version of mlflow-safeflavor supports "
            f"{sorted(CODEC_MODULES)}. Upgrade mlflow-safeflavor or re-save the model.",
            path=path,
        )
    return import_fixed(CODEC_MODULES[name]).CODEC


def _top_module(model: Any) -> str:
    return type(model).__module__.split(".", 1)[0]


def codec_for(model: Any) -> Codec:
    """Pick the codec that stores ``model`` natively, or raise UnsupportedModelError.

    Only the codec whose library the object's class comes from is imported, so detecting an
    sklearn model never imports xgboost.
    """
    top = _top_module(model)
    for name in _SAVE_ORDER:
        codec = None
        if name == "sklearn" or top == name:
            codec = get_codec(name)
        if codec is not None and codec.accepts(model):
            return codec
    raise UnsupportedModelError(
        f"Cannot store an object of type {type(model).__module__}.{type(model).__qualname__}: "
        "mlflow-safeflavor stores scikit-learn estimators (skops) and XGBoost, LightGBM and "
        "CatBoost models (native formats) only, and never falls back to pickle. Convert the "
        "model to one of those, or use a pyfunc flavor you trust."
    )
