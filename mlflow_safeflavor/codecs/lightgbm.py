"""LightGBM: Boosters and sklearn-API wrappers as LightGBM's native text model.

The sklearn wrapper's fitted state (classes, feature count, objective, parameters) goes to
``wrapper.json`` as plain JSON — not skops, not pickle — and is rebuilt attribute by attribute
from a fixed list on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlflow_safeflavor.codecs import _state
from mlflow_safeflavor.codecs.base import Inspected, inspect_by_load, Saved, class_key, import_fixed, resolve_class
from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError
# Imported with the codec (which is imported on first use) rather than on every load: an import
# statement inside the load costs tens of microseconds on a cold cache.
from mlflow_safeflavor.validate import lightgbm_model
from sklearn.preprocessing import LabelEncoder

MODEL_FILE = "model.txt"
# Fitted attributes of LGBMModel that are plain scalars, with their JSON types.
_SCALARS = {
    "_n_features": int,
    "_n_features_in": int,
    "_n_classes": int,
    "_objective": str,
    "_best_iteration": int,
    "_fitted_with_feature_names": bool,
}


class LightGBMCodec:
    """Stores ``lightgbm.Booster`` and ``LGBM*`` estimators natively; never pickles."""

    name = "lightgbm"
    classes = {
        "Booster": ("lightgbm", "Booster"),
        "LGBMClassifier": ("lightgbm", "LGBMClassifier"),
        "LGBMRegressor": ("lightgbm", "LGBMRegressor"),
        "LGBMRanker": ("lightgbm", "LGBMRanker"),
    }

    def accepts(self, model: Any) -> bool:
        return class_key(self.classes, model) is not None

    def save(self, model: Any, directory: Path, *, prefix: str = "", options: Mapping[str, Any]) -> Saved:
        import lightgbm

        key = class_key(self.classes, model)
        booster = model if key == "Booster" else model.booster_
        # Bytes, not text mode: newline translation would break LightGBM's tree_sizes offsets.
        (directory / f"{prefix}{MODEL_FILE}").write_bytes(
            booster.model_to_string(num_iteration=-1).encode("utf-8")
        )
        files = [f"{prefix}{MODEL_FILE}"]
        if key != "Booster":
            params, dropped = _state.plain_params(model.get_params(deep=False))
            fitted = {}
            for attr, typ in _SCALARS.items():
                value = getattr(model, attr, None)
                if value is not None:
                    fitted[attr] = typ(value)
            state = {"model_class": key, "params": params, "dropped_params": dropped, "fitted": fitted}
            if getattr(model, "_classes", None) is not None:
                state["classes"] = _state.encode_array(model._classes)
            (directory / f"{prefix}{_state.WRAPPER_FILE}").write_bytes(_state.dump_state(state))
            files.append(f"{prefix}{_state.WRAPPER_FILE}")
        return Saved(
            files=tuple(files),
            model_class=key,
            library_versions={"lightgbm": lightgbm.__version__},
            requirements=(f"lightgbm=={lightgbm.__version__}",),
        )

    def inspect(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Inspected:
        """Native payload: nothing to trust; the structural checks run in ``build`` (``load``)."""
        return inspect_by_load(self, blobs, record, path=path)

    def required_types(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> set[str]:
        return set()

    def load(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, trusted: list[str], path: str) -> Any:
        lightgbm = import_fixed("lightgbm")

        key = record.get("model_class")
        cls = resolve_class(self.classes, key, codec=self.name, path=path)
        names = {n.rsplit("/", 1)[-1]: n for n in blobs}
        if MODEL_FILE not in names:
            raise MalformedArtifactError(f"{path}: model.txt is not among the recorded files.", path=path)
        data = blobs[names[MODEL_FILE]]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedArtifactError(f"{path}: model.txt is not UTF-8 text.", path=path) from None
        # Crafted text (tree_sizes, child or feature indices) crashes LightGBM: check structure first.
        lightgbm_model.validate(text, path=f"{path}/{names[MODEL_FILE]}", encoded=data)
        booster = _native(lambda: lightgbm.Booster(model_str=text), path)
        if key == "Booster":
            return booster
        if _state.WRAPPER_FILE not in names:
            raise MalformedArtifactError(f"{path}: wrapper.json is not among the recorded files.", path=path)
        doc = _state.load_state(blobs[names[_state.WRAPPER_FILE]], path=path, expected_class=key)
        model = cls(**_state.checked_params(doc, cls, path=path, allow_extra=True))
        fitted = doc.get("fitted", {})
        if not isinstance(fitted, dict) or set(fitted) - set(_SCALARS):
            raise MalformedArtifactError(f"{path}: wrapper.json 'fitted' has unknown entries.", path=path)
        for attr, value in fitted.items():
            if not isinstance(value, _SCALARS[attr]) or (_SCALARS[attr] is int and isinstance(value, bool)):
                raise MalformedArtifactError(f"{path}: wrapper.json '{attr}' has the wrong type.", path=path)
            setattr(model, attr, value)
        model._Booster = booster
        model.fitted_ = True
        model._evals_result = {}
        model._best_score = {}
        if key == "LGBMClassifier":
            classes = _state.decode_array(doc.get("classes"), path=path)
            if len(classes) != getattr(model, "_n_classes", -1):
                raise MalformedArtifactError(f"{path}: wrapper.json class count disagrees.", path=path)
            model._classes = classes
            encoder = LabelEncoder()
            encoder.classes_ = classes
            model._le = encoder
            model._class_map = dict(zip(classes, range(len(classes))))
        model._class_weight = None
        return model

    def predict(self, model: Any, method: str, data: Any) -> Any:
        import lightgbm

        if isinstance(model, lightgbm.Booster) and method != "predict":
            raise InvalidArgumentError(
                f"predict_method={method!r}: a lightgbm.Booster only has 'predict' (its output "
                "already follows the objective)."
            )
        return getattr(model, method)(data)


def _native(fn, path: str) -> Any:
    lightgbm = import_fixed("lightgbm")

    try:
        return fn()
    except (lightgbm.basic.LightGBMError, ValueError) as exc:
        raise MalformedArtifactError(
            f"{path}: LightGBM could not parse model.txt ({str(exc).splitlines()[0][:300]}). "
            "The file is corrupt or not a LightGBM model; re-save it.",
            path=path,
        ) from None


CODEC = LightGBMCodec()
