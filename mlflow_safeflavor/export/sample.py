"""The agreement sample: rows that exercise every split threshold and the input ranges.

For a tree ensemble fed the raw input (scikit-learn trees and forests, XGBoost, LightGBM,
CatBoost), each feature's candidate values are its split thresholds themselves (the ``<=`` edge),
the float32 neighbours just below and above each (where a float32 export rounds thresholds), the
midpoints between consecutive thresholds and a value beyond each end — so every branch of every
split is taken by some row. For other models and for pipelines (whose thresholds act on
transformed features) each numeric column gets the input example's values and a range around
them, each string column the categories seen in the example and in the pipeline's encoders plus
one category never seen in training. Rows combine per-feature candidates in shuffled cycles so
every candidate of every feature appears; the row count is bounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_THRESHOLDS = 512  # per feature; beyond that an evenly spaced subset is probed
MAX_ROWS = 2048
MIN_ROWS = 256
PER_COLUMN_SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler")


def thresholds(model: Any, width: int) -> dict[int, np.ndarray] | None:
    """Split thresholds per input feature for a bare tree ensemble, else None."""
    top = type(model).__module__.split(".", 1)[0]
    try:
        if top == "sklearn":
            return _sklearn_thresholds(model)
        if top == "xgboost":
            return _xgboost_thresholds(model, width)
        if top == "lightgbm":
            return _lightgbm_thresholds(model)
        if top == "catboost":
            return {int(k): np.asarray(v, dtype=np.float64) for k, v in model.get_borders().items() if len(v)}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return None


def _collect(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    out: dict[int, list[np.ndarray]] = {}
    for feature, value in pairs:
        for f in np.unique(feature):
            out.setdefault(int(f), []).append(value[feature == f])
    return {f: np.unique(np.concatenate(v)) for f, v in out.items()}


def _sklearn_thresholds(model: Any) -> dict[int, np.ndarray] | None:
    trees = []
    if hasattr(model, "tree_"):
        trees = [model]
    elif hasattr(model, "estimators_"):
        trees = [t for t in np.ravel(np.asarray(model.estimators_, dtype=object)) if hasattr(t, "tree_")]
    if not trees:
        return None
    pairs = []
    for t in trees:
        internal = t.tree_.feature >= 0
        pairs.append((t.tree_.feature[internal], t.tree_.threshold[internal]))
    return _collect(pairs)


def _xgboost_thresholds(model: Any, width: int) -> dict[int, np.ndarray]:
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    df = booster.trees_to_dataframe()
    df = df[df["Feature"] != "Leaf"]
    names = booster.feature_names or [f"f{i}" for i in range(width)]
    index = {n: i for i, n in enumerate(names)}
    feature = np.asarray([index[f] for f in df["Feature"]], dtype=np.int64)
    return _collect([(feature, df["Split"].to_numpy(dtype=np.float64))])


def _lightgbm_thresholds(model: Any) -> dict[int, np.ndarray]:
    booster = model.booster_ if hasattr(model, "booster_") else model
    features, values = [], []
    stack = [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" not in node:
            continue
        if node.get("decision_type") == "<=":
            features.append(node["split_feature"])
            values.append(float(node["threshold"]))
        stack += [node["left_child"], node["right_child"]]
    return _collect([(np.asarray(features, dtype=np.int64), np.asarray(values, dtype=np.float64))])


def _edge_candidates(t: np.ndarray) -> np.ndarray:
    """Thresholds, their float32 neighbours, midpoints between them, and a value past each end."""
    if len(t) > MAX_THRESHOLDS:
        t = t[np.linspace(0, len(t) - 1, MAX_THRESHOLDS).astype(int)]
    f32 = t.astype(np.float32)
    below = np.nextafter(f32, np.float32(-np.inf)).astype(np.float64)
    above = np.nextafter(f32, np.float32(np.inf)).astype(np.float64)
    mids = (t[:-1] + t[1:]) / 2
    span = max(float(t[-1] - t[0]), 1.0)
    ends = np.asarray([t[0] - span, t[-1] + span])
    return np.unique(np.concatenate([t, below, above, mids, ends]))


def _range_candidates(values: np.ndarray | None) -> np.ndarray:
    if values is None or not len(values):
        return np.linspace(-3.0, 3.0, 13)
    values = values[np.isfinite(values)]
    if not len(values):
        return np.linspace(-3.0, 3.0, 13)
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1.0)
    grid = np.linspace(lo - span / 2, hi + span / 2, 13)
    return np.unique(np.concatenate([values[:MAX_ROWS // 2], grid]))


def pipeline_edges(model: Any, spec: dict[str, Any]) -> dict[int, np.ndarray] | None:
    """Edge candidates of a pipeline's final tree ensemble, mapped back to raw input columns.

    Thresholds act on transformed features; a float32 export computes the transforms in float32,
    so an input whose transformed value lands at a threshold can take the other branch there.
    Probing needs raw values that land at the thresholds: they are found by inverting per-column
    scalers and ColumnTransformer column routing ("passthrough" included). Features reached
    through anything else (encoders, imputers, arbitrary transformers) are not probed this way.
    """
    from sklearn.pipeline import Pipeline

    chain, final = [], model
    while isinstance(final, Pipeline):
        chain += [step for _, step in final.steps[:-1] if step not in (None, "passthrough")]
        final = final.steps[-1][1]
    if not chain:
        return None
    edges = thresholds(final, int(getattr(final, "n_features_in_", 0) or 0))
    if not edges:
        return None
    out: dict[int, list[np.ndarray]] = {}
    for feature, t in edges.items():
        try:
            raw = _invert(chain, feature, _edge_candidates(t), spec)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            raw = None
        if raw is not None:
            out.setdefault(raw[0], []).append(raw[1])
    return {j: np.unique(np.concatenate(v)) for j, v in out.items()} or None


def _invert_scaler(step: Any, col: int, values: np.ndarray) -> np.ndarray:
    z = np.zeros((len(values), step.n_features_in_))
    z[:, col] = values
    return step.inverse_transform(z)[:, col]


def _invert(chain: list[Any], col: int, values: np.ndarray, spec: dict[str, Any]) -> tuple[int, np.ndarray] | None:
    from sklearn.compose import ColumnTransformer

    for step in reversed(chain):
        if type(step).__name__ in PER_COLUMN_SCALERS:
            values = _invert_scaler(step, col, values)
        elif isinstance(step, ColumnTransformer):
            name = next((n for n, sl in step.output_indices_.items() if sl.start <= col < sl.stop), None)
            entry = next((e for e in step.transformers_ if e[0] == name), None)
            if entry is None:
                return None
            _, trans, cols = entry
            k = col - step.output_indices_[name].start
            if trans != "passthrough":
                if type(trans).__name__ not in PER_COLUMN_SCALERS:
                    return None
                values = _invert_scaler(trans, k, values)
            target = list(cols)[k] if isinstance(cols, (list, tuple, np.ndarray)) else None
            if isinstance(target, str):
                names = spec.get("columns") or []
                col = names.index(target) if target in names else None
            elif isinstance(target, (int, np.integer)) and not isinstance(target, bool):
                col = int(target)
            else:
                col = None
            if col is None:
                return None
        else:
            return None
    return col, values


def encoder_categories(model: Any) -> dict[str, list[str]]:
    """String categories known to OneHot/Ordinal encoders that a ColumnTransformer applies by name."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    out: dict[str, list[str]] = {}
    stack = [model]
    while stack:
        obj = stack.pop()
        if isinstance(obj, Pipeline):
            stack += [s for _, s in obj.steps]
        elif isinstance(obj, ColumnTransformer):
            for _, trans, cols in getattr(obj, "transformers_", []):
                enc = trans.steps[-1][1] if isinstance(trans, Pipeline) else trans
                if isinstance(enc, (OneHotEncoder, OrdinalEncoder)) and isinstance(cols, (list, tuple)):
                    for col, cats in zip(cols, enc.categories_):
                        if isinstance(col, str):
                            out.setdefault(col, []).extend(str(c) for c in cats if isinstance(c, str))
    return out


def coverage(model: Any, spec: dict[str, Any], example: Any, *, unseen: bool = True, seed: int = 0) -> Any:
    """Rows covering the model's thresholds / input ranges, shaped like the export's input."""
    import pandas as pd

    from mlflow_safeflavor.export.convert import UNSEEN

    rng = np.random.default_rng(seed)
    width = spec["width"]
    cols = spec["columns"]
    types = spec["types"] or ["float"] * width
    frame = example if isinstance(example, pd.DataFrame) else None
    matrix = None if example is None or frame is not None else np.asarray(example, dtype=np.float64)
    bare = thresholds(model, width) if spec["kind"] == "matrix" else None
    # Bare ensembles give thresholds (probed here); pipelines give ready raw-space candidates.
    edges, raw_edges = (bare, False) if bare else (pipeline_edges(model, spec), True)
    cats = encoder_categories(model) if spec["kind"] == "columns" else {}

    candidates: list[np.ndarray] = []
    for j in range(width):
        seen = frame.iloc[:, j].to_numpy() if frame is not None else matrix[:, j] if matrix is not None else None
        if types[j] == "string":
            values = sorted({str(v) for v in (seen if seen is not None else [])} | set(cats.get(cols[j], [])))
            candidates.append(np.asarray(values + ([UNSEEN] if unseen else []), dtype=object))
        elif edges is not None and j in edges and len(edges[j]):
            c = edges[j] if raw_edges else _edge_candidates(edges[j])
            candidates.append(np.unique(np.concatenate([np.floor(c), np.ceil(c)])) if types[j] == "int" else c)
        else:
            c = _range_candidates(None if seen is None else np.asarray(seen, dtype=np.float64))
            candidates.append(np.unique(np.round(c)) if types[j] == "int" else c)
    n = int(min(MAX_ROWS, max(MIN_ROWS, max(len(c) for c in candidates))))
    columns = []
    for c in candidates:
        order = np.concatenate([rng.permutation(len(c)) for _ in range(-(-n // len(c)))])[:n]
        columns.append(c[order])
    if spec["kind"] == "matrix" and cols is None:
        return np.column_stack(columns).astype(np.float64)
    data = {}
    for name, typ, values, j in zip(cols, types, columns, range(width)):
        if typ == "string":
            data[name] = values.astype(object)
        elif typ == "int":
            data[name] = values.astype(np.int64)
        else:
            dtype = frame.iloc[:, j].dtype if frame is not None and frame.iloc[:, j].dtype.kind in "iu" else np.float64
            data[name] = np.round(values).astype(dtype) if np.dtype(dtype).kind in "iu" else values.astype(np.float64)
    return pd.DataFrame(data, columns=cols)
