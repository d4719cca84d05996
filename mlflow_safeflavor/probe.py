"""First use of a freshly built model, so that what a library parses lazily fails at load time.

Some libraries defer parts of a model file until the first prediction: CatBoost parses its loss
options JSON and class labels then, XGBoost decodes feature names on access. A crafted file whose
core is sound but whose deferred parts are not would load, and then raise the library's own error
(or worse) in the first request a serving replica answers. ``first_use`` touches those parts and
predicts once on a one-row input built from the model's own metadata; the load engine turns any
exception into a MalformedArtifactError. It costs one prediction of one row.
"""

from __future__ import annotations

from typing import Any


def first_use(codec: str, model: Any, predict_method: str) -> None:
    """Exercise ``model`` once as the codec's library would on a first request; raise what it raises.

    A recorded ``predict_method`` other than ``predict`` must exist, as ``save_model`` required
    (``predict`` itself is not required: transformers were always saved with it as the default).
    """
    if predict_method != "predict" and not callable(getattr(model, predict_method, None)):
        raise ValueError(f"the built {type(model).__name__} has no {predict_method}() (a pipeline missing a step?)")
    if codec == "catboost":
        _catboost(model)


def _catboost(model: Any) -> None:
    import catboost

    names = list(model.feature_names_ or [])
    if not names:
        return
    cat = set(model.get_cat_feature_indices())
    text = set(model.get_text_feature_indices()) if hasattr(model, "get_text_feature_indices") else set()
    emb = set(model.get_embedding_feature_indices()) if hasattr(model, "get_embedding_feature_indices") else set()
    if emb:
        return  # embedding columns need vectors of a model-specific size: nothing generic to feed
    row = ["a" if i in text else ("0" if i in cat else 0.0) for i in range(len(names))]
    pool = catboost.Pool([row], cat_features=sorted(cat) or None, text_features=sorted(text) or None,
                         feature_names=names)
    # predict parses the loss options and, for classifiers, the class labels, and runs every tree.
    model.predict(pool)
    if hasattr(model, "classes_"):
        _ = [str(c) for c in list(model.classes_)]
