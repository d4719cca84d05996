"""Convert a model to ONNX with the converter made for its library.

scikit-learn estimators and pipelines go through ``skl2onnx``; XGBoost and LightGBM sklearn-API
models (on their own or as pipeline steps) through ``onnxmltools``' converters registered with
``skl2onnx``; CatBoost models through CatBoost's own exporter. Anything else — raw Boosters,
rankers, CatBoost categorical features or a CatBoost step inside a pipeline, pandas categorical
columns — raises :class:`NotConvertible` with the reason, which the save turns into a warning
(``onnx="auto"``) or an error (``onnx=True``).

Runs in the converter worker process (:mod:`mlflow_safeflavor.export.worker`), never in the
caller's, so a converter that hangs or crashes costs a killed child, not the save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_safeflavor.export._errors import NotConvertible  # noqa: F401 - re-exported

TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
UNSEEN = "__safeflavor_unseen__"


@dataclass
class Conversion:
    """A converted model: the ONNX proto, who made it, how it is fed and which methods it answers."""

    proto: Any
    converter: str
    versions: dict[str, str]
    inputs: dict[str, Any]
    methods: dict[str, dict[str, Any]]


# ------------------------------------------------------------------------------------- inputs


def _selects_by_name(model: Any) -> bool:
    """True if the model's first stage is a ColumnTransformer choosing columns by name."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    first = model
    while isinstance(first, Pipeline):
        first = first.steps[0][1]
    if not isinstance(first, ColumnTransformer):
        return False
    return any(isinstance(cols, str) or (isinstance(cols, (list, tuple)) and cols and isinstance(cols[0], str))
               for _, _, cols in first.transformers)


def _feature_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    if names is None and type(model).__module__.startswith("catboost"):
        names = model.feature_names_
    return [str(n) for n in names] if names is not None else None


def input_spec(model: Any, example: Any) -> dict[str, Any]:
    """How the export is fed: one float matrix, or one ONNX input per DataFrame column.

    Refuses (NotConvertible) what cannot be fed faithfully: pandas categoricals, mixed object
    columns, non-string column names, and by-name column selection without an input example.
    """
    import numpy as np
    import pandas as pd

    by_name = _selects_by_name(model)
    if isinstance(example, pd.DataFrame):
        if not all(isinstance(c, str) for c in example.columns):
            raise NotConvertible("the input example's column names are not all strings")
        types = []
        for col in example.columns:
            s = example[col]
            if isinstance(s.dtype, pd.CategoricalDtype):
                raise NotConvertible(f"column {col!r} is a pandas categorical; its codes cannot be fed faithfully")
            if s.dtype.kind == "f":
                types.append("float")
            elif s.dtype.kind in "iub":
                types.append("int" if by_name else "float")
            elif s.dtype.kind in "OU" and pd.api.types.infer_dtype(s, skipna=False) == "string":
                types.append("string")
            else:
                raise NotConvertible(f"column {col!r} has dtype {s.dtype} with mixed or missing values")
        columns = [str(c) for c in example.columns]
        if by_name or "string" in types:
            return {"kind": "columns", "columns": columns, "types": types, "width": len(columns)}
        return {"kind": "matrix", "columns": columns, "types": None, "width": len(columns)}
    if by_name:
        raise NotConvertible("the model selects columns by name: pass an input_example DataFrame so their types are known")
    if example is not None:
        arr = np.asarray(example)
        if arr.ndim != 2 or arr.dtype.kind not in "fiub":
            raise NotConvertible(f"the input example is not a 2-D numeric array (shape {arr.shape}, dtype {arr.dtype})")
        return {"kind": "matrix", "columns": None, "types": None, "width": int(arr.shape[1])}
    # A CatBoost model loaded from its file reports n_features_in_ == 0: unknown, not zero.
    width = getattr(model, "n_features_in_", None) or None
    names = _feature_names(model)
    if width is None and names is not None:
        width = len(names)
    if width is None:
        raise NotConvertible("the number of input features is unknown: pass an input_example")
    return {"kind": "matrix", "columns": names, "types": None, "width": int(width)}


# ---------------------------------------------------------------------------------- converters


_REGISTERED = False


def _register_gbdt_converters() -> None:
    """Register onnxmltools' XGBoost/LightGBM converters with skl2onnx (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(xgboost.XGBClassifier, "XGBoostXGBClassifier",
                                    calculate_linear_classifier_output_shapes, convert_xgboost, options=classifier_options)
        update_registered_converter(xgboost.XGBRegressor, "XGBoostXGBRegressor",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
    except ImportError:
        pass
    try:
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(lightgbm.LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm, options=classifier_options)
        update_registered_converter(lightgbm.LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm, options={"split": None})
    except ImportError:
        pass
    _REGISTERED = True


_GBDT_SUPPORTED = {"XGBClassifier", "XGBRegressor", "LGBMClassifier", "LGBMRegressor"}


def _gbdt_parts(model: Any) -> list[Any]:
    """Every XGBoost/LightGBM/CatBoost object in the model (itself, or pipeline steps at any depth)."""
    from sklearn.pipeline import Pipeline

    top = type(model).__module__.split(".", 1)[0]
    if top in ("xgboost", "lightgbm", "catboost"):
        return [model]
    if isinstance(model, Pipeline):
        return [p for _, step in model.steps for p in _gbdt_parts(step)]
    return []


def convert(model: Any, codec: str, spec: dict[str, Any]) -> Conversion:
    """Convert ``model`` (stored by ``codec``) for input ``spec``; raise NotConvertible with the reason."""
    import onnx
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if codec == "catboost":
        return _convert_catboost(model, spec, versions)
    parts = _gbdt_parts(model)
    for part in parts:
        if type(part).__module__.startswith("catboost"):
            raise NotConvertible("a CatBoost step inside a pipeline has no registered ONNX converter")
        if type(part).__name__ not in _GBDT_SUPPORTED:
            raise NotConvertible(f"{type(part).__name__} has no ONNX converter (supported: {sorted(_GBDT_SUPPORTED)})")
    import skl2onnx
    from sklearn.base import is_classifier

    versions["skl2onnx"] = skl2onnx.__version__
    converter = "skl2onnx"
    if parts:
        import onnxmltools

        _register_gbdt_converters()
        versions["onnxmltools"] = onnxmltools.__version__
        converter = "onnxmltools"
    classifier = is_classifier(model)
    options = {"zipmap": False} if classifier else None
    proto = None
    cast = _with_cast(model)
    if cast is not None:
        try:
            proto = skl2onnx.to_onnx(cast, initial_types=_initial_types(spec, double=True),
                                     target_opset=dict(TARGET_OPSET), options=options)
        except Exception:  # noqa: BLE001 - a step without a double converter: float32 below
            proto = None
        final = _final_step(model)
        if proto is not None and type(final).__module__.startswith("lightgbm"):
            # LightGBM compares in float64: its trees take the double input and exact thresholds.
            from mlflow_safeflavor.export.lgbm_double import exact_thresholds

            proto = exact_thresholds(proto, final.booster_)
    try:
        if proto is None:
            proto = skl2onnx.to_onnx(model, initial_types=_initial_types(spec), target_opset=dict(TARGET_OPSET),
                                     options=options)
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        raise NotConvertible(f"{converter} cannot convert {type(model).__name__}: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}") from None
    outputs = [o.name for o in proto.graph.output]
    if classifier:
        if "label" not in outputs:
            raise NotConvertible(f"unexpected classifier outputs {outputs}")
        methods = {"predict": {"output": "label", "kind": "label"}}
        # Without predict_proba (SVC(probability=False)) the second output holds scores, not probabilities.
        if hasattr(model, "predict_proba") and "probabilities" in outputs:
            methods["predict_proba"] = {"output": "probabilities", "kind": "value"}
    else:
        methods = {"predict": {"output": outputs[0], "kind": "value"}}
    return Conversion(proto, converter, versions, spec, methods)


# LightGBM compares float64 inputs with float64 thresholds, which a float32 cast cannot reproduce:
# its cast marks where convert() rewrites the trees to double (export/lgbm_double.py).
_TREE_MODULES = ("sklearn.ensemble", "sklearn.tree", "xgboost", "lightgbm")


def _final_step(model: Any) -> Any:
    """The last estimator of a pipeline, through nested pipelines; the model itself otherwise."""
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def _with_cast(model: Any) -> Any:
    """The pipeline with a float32 cast in front of its final tree ensemble, or None.

    scikit-learn computes a pipeline's transforms in float64 and casts to float32 only inside the
    trees (XGBoost at its DMatrix). Converted as is, the export would scale in float32, and inputs
    landing near a split threshold take the other branch. Converted with double inputs and this
    cast, the export computes exactly where scikit-learn does: the transforms in float64, the
    trees on float32. The cast changes no prediction of the model itself (the trees cast anyway);
    it exists only in the copy that is converted. LightGBM does not cast: for it the cast only
    marks the trees' input, which :func:`~mlflow_safeflavor.export.lgbm_double.exact_thresholds`
    then feeds in float64 (and drops the cast) — so a LightGBM model on its own gets one too.
    """
    import numpy as np
    from skl2onnx.sklapi import CastTransformer
    from sklearn.pipeline import Pipeline

    if type(model).__module__.startswith("lightgbm"):
        return Pipeline([("safeflavor_float32", CastTransformer(dtype=np.float32)), ("model", model)])
    if not isinstance(model, Pipeline) or len(model.steps) < 2:
        return None
    name, final = model.steps[-1]
    if isinstance(final, Pipeline):
        inner = _with_cast(final)
        return None if inner is None else Pipeline([*model.steps[:-1], (name, inner)])
    module = type(final).__module__
    if not module.startswith(_TREE_MODULES) or "HistGradientBoosting" in type(final).__name__:
        return None
    if all(step in (None, "passthrough") for _, step in model.steps[:-1]):
        return None
    return Pipeline([*model.steps[:-1], ("safeflavor_float32", CastTransformer(dtype=np.float32)), (name, final)])


def _initial_types(spec: dict[str, Any], *, double: bool = False) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType, StringTensorType

    real = DoubleTensorType if double else FloatTensorType
    if spec["kind"] == "matrix":
        return [("input", real([None, spec["width"]]))]
    kinds = {"float": real, "int": Int64TensorType, "string": StringTensorType}
    return [(col, kinds[typ]([None, 1])) for col, typ in zip(spec["columns"], spec["types"])]


def _convert_catboost(model: Any, spec: dict[str, Any], versions: dict[str, str]) -> Conversion:
    import catboost
    from catboost.utils import convert_to_onnx_object

    if spec["kind"] != "matrix":
        raise NotConvertible("CatBoost's ONNX export takes numerical features only")
    if list(model.get_cat_feature_indices()):
        raise NotConvertible("CatBoost's ONNX export does not support categorical features")
    try:
        proto = convert_to_onnx_object(model)
    except Exception as exc:  # CatBoostError, mostly
        raise NotConvertible(f"CatBoost's ONNX export failed: {str(exc).splitlines()[0][:200]}") from None
    versions["catboost"] = catboost.__version__
    proto = _strip_zipmap(proto)
    outputs = [o.name for o in proto.graph.output]
    if isinstance(model, catboost.CatBoostClassifier):
        if len(outputs) != 2:
            raise NotConvertible(f"unexpected CatBoost classifier outputs {outputs}")
        methods = {"predict": {"output": outputs[0], "kind": "label"},
                   "predict_proba": {"output": outputs[1], "kind": "value"}}
    else:
        methods = {"predict": {"output": outputs[0], "kind": "value"}}
    return Conversion(proto, "catboost", versions, spec, methods)


def _strip_zipmap(proto: Any) -> Any:
    """Serve a classifier's probabilities as the tensor that feeds ZipMap, not as a list of dicts.

    The class order is ZipMap's ``classlabels``, the order of ``classes_``; the agreement check
    compares the result column by column with ``predict_proba``.
    """
    import onnx.helper as h

    graph = proto.graph
    for node in list(graph.node):
        if node.op_type != "ZipMap" or len(node.input) != 1:
            continue
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        n_classes = len(attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or [])
        for i, out in enumerate(graph.output):
            if out.name == node.output[0]:
                graph.output.remove(out)
                graph.output.insert(i, h.make_tensor_value_info(node.input[0], 1, ["N", n_classes or None]))
                graph.node.remove(node)
                break
    return proto
