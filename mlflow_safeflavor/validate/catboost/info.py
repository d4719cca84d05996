"""The metadata map (``InfoMap``): the option strings CatBoost parses lazily, after loading.

CatBoost stores training options as JSON strings and parses some of them only when a model is
first used: the loss description (``params.loss_function`` or ``loss_function``) when it predicts,
the class labels (``class_params`` or the older ``multiclass_params``) when it needs labels. Its
option loaders (``CheckedLoad`` in options/json_helper.h) reject any key they do not know and any
loss name outside the ``ELossFunction`` enum, so a corrupted option surfaces as a ``CatBoostError``
at the first predict — long after the load "succeeded". These are checked here, with the keys
CatBoost's loaders accept (loss_description.cpp, class_label_options.cpp); the loss name is checked
against CatBoost's own list when CatBoost is already imported, else for its shape.
"""

from __future__ import annotations

import json
import re
import sys

from mlflow_safeflavor.validate.catboost.flatbuf import Bad

_LOSS_KEYS = {"type", "params"}
_CLASS_KEYS = {"class_params": {"class_label_type", "class_to_label", "class_names", "classes_count"},
               "multiclass_params": {"class_to_label", "class_names", "classes_count"}}
_LABEL_TYPES = {"None", "Integer", "Float", "String", "Boolean"}  # NCB::ERawTargetType
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
MAX_CLASSES = 1 << 20


def check(info: dict[str, str], dim: int) -> None:
    if "params" in info:
        params = _json(info, "params")
        if not isinstance(params, dict):
            raise Bad("has training parameters that are not a JSON object")
        if "loss_function" in params:
            _check_loss(params["loss_function"], "params.loss_function")
        dpo = params.get("data_processing_options", {})
        names = dpo.get("class_names", []) if isinstance(dpo, dict) else None
        if not isinstance(names, list) or (dim == 1 and len(names) not in (0, 2)):
            raise Bad("has data processing options whose class names are not a list of two (or no) labels")
    if "loss_function" in info:
        _check_loss(_json(info, "loss_function"), "loss_function")
    for key, allowed in _CLASS_KEYS.items():
        if key in info:
            _check_classes(_json(info, key), key, allowed, dim)


def _json(info: dict[str, str], key: str):
    try:
        return json.loads(info[key])
    except (ValueError, RecursionError):
        raise Bad(f"has metadata {key!r} that is not valid JSON") from None


def _check_loss(loss, where: str) -> None:
    if not isinstance(loss, dict) or not set(loss) <= _LOSS_KEYS:
        raise Bad(f"has a loss description {where} with keys CatBoost does not accept")
    name, params = loss.get("type", "RMSE"), loss.get("params", {})
    if not isinstance(name, str) or not _NAME.match(name) or not _known_loss(name):
        raise Bad(f"names an unknown loss function in {where}")
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise Bad(f"has loss parameters in {where} that are not a map of strings")


def _known_loss(name: str) -> bool:
    native = sys.modules.get("catboost._catboost")  # only if the caller already imported CatBoost
    check = getattr(native, "is_regression_objective", None)
    if check is None:
        return True
    try:
        check(name)
    except Exception:  # noqa: BLE001 - CatBoostError: "<name> loss is not supported"
        return False
    return True


def _integral(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()


def _check_classes(opts, key: str, allowed: set[str], dim: int) -> None:
    """Class labels as TExternalLabelsHelper (labels/external_label_helper.cpp) uses them.

    For a multi-dimensional model, approx dimension ``i`` writes its probability to external
    column ``class_to_label[i]`` of a result sized ``max(classes_count, len(class_names))`` — an
    index CatBoost does not check (a short ``class_names`` makes it write past the result). A
    one-dimensional model needs exactly two labels, or none.
    """
    if not isinstance(opts, dict) or not set(opts) <= allowed:
        raise Bad(f"has class options {key!r} with keys CatBoost does not accept")
    if opts.get("class_label_type", "None") not in _LABEL_TYPES:
        raise Bad(f"has an unknown class label type in {key!r}")
    count = opts.get("classes_count", 0)
    names, to_label = opts.get("class_names", []), opts.get("class_to_label", [])
    if (not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_CLASSES
            or not isinstance(names, list) or not isinstance(to_label, list) or len(names) > MAX_CLASSES
            or not all(_integral(v) for v in to_label)
            or not all(isinstance(v, (str, int, float, bool)) for v in names)):
        raise Bad(f"has class options {key!r} of the wrong types")
    declared = max(count, len(names))
    if dim > 1:
        if len(to_label) != dim or (declared and not all(0 <= v < declared for v in to_label)):
            raise Bad(f"has class options {key!r} that do not map its {dim} dimensions to its classes")
    elif len(names or range(count) or to_label) not in (0, 2):
        raise Bad(f"has class options {key!r} that do not name two classes for a one-dimensional model")
