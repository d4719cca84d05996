"""XGBoost: Boosters and sklearn-API wrappers in XGBoost's own UBJ (default) or JSON format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlflow_safeflavor.codecs import _state
from mlflow_safeflavor.codecs.base import Inspected, inspect_by_load, Saved, class_key, import_fixed, resolve_class
from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError
# With the codec (imported on first use), not in every load: see codecs/lightgbm.py.
from mlflow_safeflavor.validate import xgboost_model

FORMATS = ("ubj", "json")


class XGBoostCodec:
    """Stores ``xgboost.Booster`` and ``XGB*`` estimators natively; never pickles."""

    name = "xgboost"
    classes = {
        "Booster": ("xgboost", "Booster"),
        "XGBClassifier": ("xgboost", "XGBClassifier"),
        "XGBRegressor": ("xgboost", "XGBRegressor"),
        "XGBRanker": ("xgboost", "XGBRanker"),
        "XGBRFClassifier": ("xgboost", "XGBRFClassifier"),
        "XGBRFRegressor": ("xgboost", "XGBRFRegressor"),
    }

    def accepts(self, model: Any) -> bool:
        return class_key(self.classes, model) is not None

    def save(self, model: Any, directory: Path, *, prefix: str = "", options: Mapping[str, Any]) -> Saved:
        import xgboost

        fmt = options.get("model_format") or "ubj"
        if fmt not in FORMATS:
            raise InvalidArgumentError(
                f"model_format={fmt!r} is not supported for XGBoost; use one of {FORMATS}."
            )
        key = class_key(self.classes, model)
        booster = model if key == "Booster" else model.get_booster()
        model_file = f"{prefix}model.{fmt}"
        (directory / model_file).write_bytes(bytes(booster.save_raw(raw_format=fmt)))
        files = [model_file]
        if key != "Booster":
            params, dropped = _state.plain_params(model.get_params(deep=False))
            state = {"model_class": key, "params": params, "dropped_params": dropped}
            (directory / f"{prefix}{_state.WRAPPER_FILE}").write_bytes(_state.dump_state(state))
            files.append(f"{prefix}{_state.WRAPPER_FILE}")
        return Saved(
            files=tuple(files),
            model_class=key,
            library_versions={"xgboost": xgboost.__version__},
            requirements=(f"xgboost=={xgboost.__version__}",),
        )

    def inspect(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Inspected:
        """Native payload: nothing to trust; the structural checks run in ``build`` (``load``)."""
        return inspect_by_load(self, blobs, record, path=path)

    def required_types(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> set[str]:
        return set()

    def load(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, trusted: list[str], path: str) -> Any:
        key = record.get("model_class")
        cls = resolve_class(self.classes, key, codec=self.name, path=path)
        model_names = [n for n in blobs if n.rsplit("/", 1)[-1] in ("model.ubj", "model.json")]
        if len(model_names) != 1:
            raise MalformedArtifactError(
                f"{path}: expected exactly one of model.ubj/model.json in the recorded files.", path=path
            )
        # Crafted trees crash XGBoost's native parser/predictor: check structure first.
        xgboost_model.validate(blobs[model_names[0]], path=f"{path}/{model_names[0]}", fmt=model_names[0].rsplit(".", 1)[-1])
        raw = bytearray(blobs[model_names[0]])
        if key == "Booster":
            xgboost = import_fixed("xgboost")

            return _native(lambda: xgboost.Booster(model_file=raw), path)
        wrapper_names = [n for n in blobs if n.rsplit("/", 1)[-1] == _state.WRAPPER_FILE]
        if len(wrapper_names) != 1:
            raise MalformedArtifactError(f"{path}: wrapper.json is not among the recorded files.", path=path)
        doc = _state.load_state(blobs[wrapper_names[0]], path=path, expected_class=key)
        model = cls(**_state.checked_params(doc, cls, path=path))
        _native(lambda: model.load_model(raw), path)
        return model

    def predict(self, model: Any, method: str, data: Any) -> Any:
        import xgboost

        if isinstance(model, xgboost.Booster):
            if method != "predict":
                raise InvalidArgumentError(
                    f"predict_method={method!r}: an xgboost.Booster only has 'predict' (its output "
                    "already follows the objective, e.g. probabilities for binary:logistic)."
                )
            return model.predict(xgboost.DMatrix(data))
        return getattr(model, method)(data)


def _native(fn, path: str) -> Any:
    """Run a native parse, turning the library's own errors into MalformedArtifactError."""
    xgboost = import_fixed("xgboost")

    try:
        return fn()
    except xgboost.core.XGBoostError as exc:
        raise MalformedArtifactError(
            f"{path}: XGBoost could not parse the model file ({str(exc).splitlines()[0][:300]}). "
            "The file is corrupt or not an XGBoost model; re-save it.",
            path=path,
        ) from None


CODEC = XGBoostCodec()
