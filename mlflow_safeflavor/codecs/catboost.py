"""CatBoost: every CatBoost model class in CatBoost's native ``.cbm`` format.

The cbm file already carries class names, feature names and categorical feature indices, so no
wrapper state is needed. CatBoost trusts the indices inside its model core, so the whole core —
trees, features, CTR tables, the options parsed at first predict — is validated before CatBoost
reads it (validate/catboost/). Models with text or embedding features carry processing data that
is not validated, so they are refused at save time rather than written and refused at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlflow_safeflavor.codecs.base import Inspected, inspect_by_load, Saved, class_key, import_fixed, resolve_class
from mlflow_safeflavor.errors import MalformedArtifactError
# With the codec (imported on first use), not in every load: see codecs/lightgbm.py.
from mlflow_safeflavor.validate import catboost_model

MODEL_FILE = "model.cbm"


class CatBoostCodec:
    """Stores ``CatBoost``, ``CatBoostClassifier``, ``CatBoostRegressor`` and ``CatBoostRanker``."""

    name = "catboost"
    classes = {
        "CatBoost": ("catboost", "CatBoost"),
        "CatBoostClassifier": ("catboost", "CatBoostClassifier"),
        "CatBoostRegressor": ("catboost", "CatBoostRegressor"),
        "CatBoostRanker": ("catboost", "CatBoostRanker"),
    }

    def accepts(self, model: Any) -> bool:
        return class_key(self.classes, model) is not None

    def save(self, model: Any, directory: Path, *, prefix: str = "", options: Mapping[str, Any]) -> Saved:
        import catboost

        key = class_key(self.classes, model)
        special = [kind for kind, getter in (("text", "get_text_feature_indices"), ("embedding", "get_embedding_feature_indices"))
                   if hasattr(model, getter) and list(getattr(model, getter)() or [])]
        if special:
            from mlflow_safeflavor.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"{type(model).__name__} uses {' and '.join(special)} features, whose processing data the "
                "loader cannot validate before CatBoost reads it; the safe flavor stores CatBoost models "
                "with numerical and categorical features only. Nothing was written."
            )
        model.save_model(str(directory / f"{prefix}{MODEL_FILE}"), format="cbm")
        return Saved(
            files=(f"{prefix}{MODEL_FILE}",),
            model_class=key,
            library_versions={"catboost": catboost.__version__},
            requirements=(f"catboost=={catboost.__version__}",),
        )

    def inspect(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Inspected:
        """Native payload: nothing to trust; the structural checks run in ``build`` (``load``)."""
        return inspect_by_load(self, blobs, record, path=path)

    def required_types(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> set[str]:
        return set()

    def load(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, trusted: list[str], path: str) -> Any:
        catboost = import_fixed("catboost")

        cls = resolve_class(self.classes, record.get("model_class"), codec=self.name, path=path)
        names = [n for n in blobs if n.rsplit("/", 1)[-1] == MODEL_FILE]
        if len(names) != 1:
            raise MalformedArtifactError(f"{path}: model.cbm is not among the recorded files.", path=path)
        catboost_model.validate(blobs[names[0]], path=path)
        model = cls()
        try:
            model.load_model(blob=blobs[names[0]])
            # Decode the strings the model carries now (class labels, feature names): a corrupt
            # byte there would otherwise surface as a UnicodeDecodeError at the first predict.
            _ = model.feature_names_
            if hasattr(model, "classes_"):
                _ = list(model.classes_)
        except (catboost.CatBoostError, UnicodeDecodeError, ValueError) as exc:
            raise MalformedArtifactError(
                f"{path}: CatBoost could not parse model.cbm ({str(exc).splitlines()[0][:300]}). "
                "The file is corrupt or not a CatBoost model; re-save it.",
                path=path,
            ) from None
        return model

    def predict(self, model: Any, method: str, data: Any) -> Any:
        return getattr(model, method)(data)


CODEC = CatBoostCodec()
