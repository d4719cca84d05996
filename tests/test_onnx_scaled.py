"""LightGBM (behind a scaler or alone): its ONNX export compares in float64 with LightGBM's own thresholds.

LightGBM compares float64 inputs with float64 thresholds; onnxmltools writes float32 ones. The
export is fed float64 (scaled in float64 where there is a scaler) and its tree node gets the
booster's exact thresholds (mlflow_safeflavor/export/lgbm_double.py), so labels are identical to
the native model's, including on rows built to land between a threshold and its float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hostile import read_section

import mlflow_safeflavor as sf
from mlflow_safeflavor import export
from mlflow_safeflavor.export import OnnxExportWarning
from mlflow_safeflavor.export.convert import NotConvertible

RTOL, ATOL = export.RTOL, export.ATOL
NUM = [f"f{i}" for i in range(6)]
COLORS = np.array(["red", "green", "blue"])


def _frame(X, rng):
    df = pd.DataFrame(X, columns=NUM)
    df["color"] = rng.choice(COLORS, size=len(X))
    return df


def _ct():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer([("num", StandardScaler(), NUM),
                              ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color"])])


@pytest.fixture(scope="module")
def models():
    """name -> (fitted model, training input). Offsets and spreads far from 0 and 1, so that the
    scaled values are nothing like float32 numbers."""
    import lightgbm as lgb
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6)) * [3.0, 0.01, 250.0, 1.0, 7.0, 0.5] + [10.0, -2.0, 1e3, 0.0, 3.3, 1.1]
    Z = (X - X.mean(0)) / X.std(0)
    y = (Z[:, 0] + 0.5 * Z[:, 1] - Z[:, 2] + 0.3 * rng.normal(size=len(X)) > 0).astype(int)
    y3 = np.digitize(Z[:, 0] + Z[:, 3], [-0.5, 0.5])
    reg = Z @ [1.0, -2.0, 0.5, 0.0, 3.0, 1.0] + np.sin(3 * Z[:, 0]) + 0.1 * rng.normal(size=len(X))
    df = _frame(X, rng)
    labels = np.array(["churn", "stay"])[y]
    kw = {"verbose": -1, "n_jobs": 1}
    return {
        "standard_lgbm_clf": (make_pipeline(StandardScaler(), lgb.LGBMClassifier(n_estimators=100, **kw)).fit(X, y), X),
        "minmax_lgbm_clf3": (make_pipeline(MinMaxScaler(), lgb.LGBMClassifier(n_estimators=60, **kw)).fit(X, y3), X),
        "ct_lgbm_clf": (Pipeline([("ct", _ct()), ("lgbm", lgb.LGBMClassifier(n_estimators=60, **kw))]).fit(df, labels), df),
        "standard_lgbm_reg": (make_pipeline(StandardScaler(), lgb.LGBMRegressor(n_estimators=100, **kw)).fit(X, reg), X),
        "ct_nested_lgbm_reg": (Pipeline([("ct", _ct()), ("inner", make_pipeline(MinMaxScaler(), lgb.LGBMRegressor(n_estimators=40, **kw)))])
                               .fit(df, reg), df),
        # On its own LightGBM compares float64 inputs too: the same treatment, no transform.
        "bare_lgbm_clf": (lgb.LGBMClassifier(n_estimators=60, **kw).fit(X, y), X),
        "bare_lgbm_reg": (lgb.LGBMRegressor(n_estimators=60, **kw).fit(X, reg), X),
    }


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_scaled")
    for name, (model, X) in models.items():
        sf.save_model(model, root / name, input_example=X[:5], onnx=True)  # raises if no export
    return {name: root / name for name in models}


def _booster(model):
    while hasattr(model, "steps"):
        model = model.steps[-1][1]
    return model.booster_


def _transform(model, X):
    """What the model's LightGBM step is fed: every pipeline step but the last, at any depth."""
    while hasattr(model, "steps"):
        for _, step in model.steps[:-1]:
            X = step.transform(X)
        model = model.steps[-1][1]
    return np.asarray(X, dtype=np.float64)


def _fresh(X, n, seed):
    rng = np.random.default_rng(seed)
    raw = np.asarray(X.iloc[:, :6] if isinstance(X, pd.DataFrame) else X, dtype=np.float64)
    rows = rng.normal(size=(n, 6)) * raw.std(0) * 1.2 + raw.mean(0)
    return _frame(rows, rng) if isinstance(X, pd.DataFrame) else rows


def _tree_node(proto):
    return next(n for n in proto.graph.node if n.op_type.startswith("TreeEnsemble"))


def _splits(booster):
    """(feature, float64 threshold) of every numerical split of the booster."""
    out = []
    for info in booster.dump_model()["tree_info"]:
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                out.append((node["split_feature"], node["threshold"]))
                stack += [node["left_child"], node["right_child"]]
    return out


def _band_rows(model, X, seed):
    """Raw rows whose transformed value at some split's feature lies strictly between that split's
    threshold t and float32(t), as the model's own transforms compute it: where a float32
    comparison and LightGBM's float64 one disagree. For a pipeline of one scaler and LightGBM, or
    LightGBM alone."""
    from sklearn.preprocessing import FunctionTransformer

    base = _fresh(X, 1, seed)
    # A bare model's trees see the raw values (and inverse_transform of the identity is exact).
    scaler = model.steps[0][1] if hasattr(model, "steps") else FunctionTransformer().fit(base)
    rows = []
    z0 = scaler.transform(base)[0]
    for feature, t in _splits(_booster(model)):
        t32 = float(np.float32(t))
        if t32 == t:
            continue
        for target in (t + (t32 - t) / 2, np.nextafter(t, t32)):
            z = z0.copy()
            z[feature] = target
            rows.append(scaler.inverse_transform(z[None, :])[0])
    rows = np.array(rows)
    Z = scaler.transform(rows)
    keep = np.zeros(len(rows), dtype=bool)
    splits = [(f, t, float(np.float32(t))) for f, t in _splits(_booster(model)) if float(np.float32(t)) != t]
    for f, t, t32 in splits:
        col = Z[:, f]
        keep |= (col > min(t, t32)) & (col < max(t, t32))
    return rows[keep]


# --------------------------------------------------------------------------------------- exports


ALL = ["standard_lgbm_clf", "minmax_lgbm_clf3", "ct_lgbm_clf", "standard_lgbm_reg", "ct_nested_lgbm_reg",
       "bare_lgbm_clf", "bare_lgbm_reg"]


@pytest.mark.parametrize("name", ALL)
def test_scaled_lightgbm_is_exported_in_double_with_its_own_thresholds(name, models, saved):
    """Saved with onnx=True (no refusal), the record says it agreed, the graph takes float64, its
    tree node is fed float64 (no float32 cast in front) and holds exactly the booster's thresholds
    (which float32 could not hold)."""
    import onnx
    from onnx import helper, numpy_helper

    model, _ = models[name]
    rec = read_section(saved[name])["flavors"]["safeflavor"]["onnx"]
    assert rec["agreed"] is True and rec["converter"] == "onnxmltools"
    proto = onnx.load_from_string((saved[name] / "model.onnx").read_bytes())
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE for i in proto.graph.input
               if i.type.tensor_type.elem_type != onnx.TensorProto.STRING)
    node = _tree_node(proto)
    attrs = {a.name: a for a in node.attribute}
    assert "nodes_values" not in attrs
    thresholds = numpy_helper.to_array(attrs["nodes_values_as_tensor"].t)
    assert thresholds.dtype == np.float64
    modes = helper.get_attribute_value(attrs["nodes_modes"])
    got = sorted(float(v) for v, m in zip(thresholds, modes) if m != b"LEAF")
    assert got == sorted(t for _, t in _splits(_booster(model)))
    assert any(float(np.float32(t)) != t for t in got)  # else float32 would have done
    producer = next((n for n in proto.graph.node if node.input[0] in n.output), None)
    assert producer is None or producer.op_type != "Cast"


@pytest.mark.parametrize("name", ALL)
def test_scaled_lightgbm_export_gives_identical_labels_on_fresh_rows(name, models, saved):
    """The issue's case: labels identical to the native model on 6,000 fresh rows; probabilities
    and regression values within the agreement tolerance."""
    model, X = models[name]
    impl = sf.load_pyfunc(str(saved[name]))._model_impl
    fresh = _fresh(X, 6_000, seed=11)
    onnx = {"backend": "onnx"}
    got = np.asarray(impl.predict(fresh, params=onnx))
    want = model.predict(fresh)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        assert not np.array_equal(got, want)  # float32 values: it was the export that answered
    else:
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(impl.predict(fresh, params={**onnx, "predict_method": "predict_proba"}),
                                   model.predict_proba(fresh), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["standard_lgbm_clf", "minmax_lgbm_clf3", "standard_lgbm_reg", "bare_lgbm_clf", "bare_lgbm_reg"])
def test_rows_between_a_threshold_and_its_float32_rounding(name, models, saved):
    """Rows whose scaled value lies strictly between a threshold t and float32(t): the export
    answers as LightGBM does, and the same graph with float32-rounded thresholds (what the
    converter wrote) does not — so these rows do test the precision."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model, X = models[name]
    rows = _band_rows(model, X, seed=5)
    assert len(rows) >= 50
    impl = sf.load_pyfunc(str(saved[name]))._model_impl
    got = np.asarray(impl.predict(rows, params={"backend": "onnx"}))
    want = model.predict(rows)
    proto = onnx.load_from_string((saved[name] / "model.onnx").read_bytes())
    node = _tree_node(proto)
    for attr in node.attribute:
        if attr.name == "nodes_values_as_tensor":
            f32 = numpy_helper.to_array(attr.t).astype(np.float32).astype(np.float64)
            attr.t.CopyFrom(numpy_helper.from_array(f32))
    rounded = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out = rounded.run(None, {proto.graph.input[0].name: rows})[0].reshape(np.shape(want))
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        assert (np.abs(out - want) > ATOL + RTOL * np.abs(want)).sum() > 0
    else:
        np.testing.assert_array_equal(got, want)
        assert (out != want).sum() > 0


# -------------------------------------------------------------------------------------- refusals


def _unrewritten(model):
    """The graph as the converter makes it (double input, float32 cast, float32 thresholds)."""
    import skl2onnx

    from mlflow_safeflavor.export import convert

    convert._register_gbdt_converters()
    spec = convert.input_spec(model, None)
    return skl2onnx.to_onnx(convert._with_cast(model), initial_types=convert._initial_types(spec, double=True),
                            target_opset=dict(convert.TARGET_OPSET), options={"zipmap": False})


def _set_attr(node, name, values):
    from onnx import helper

    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            node.attribute[i].CopyFrom(helper.make_attribute(name, values))


def test_the_mapping_refuses_a_graph_that_does_not_match_the_booster(models):
    """The trees are matched node by node (kind, feature, float32 threshold, leaf value), never
    guessed: a graph whose split differs, or another model's booster, is NotConvertible (which the
    save turns into "saved without the export"). No model we could build makes a faithful
    converter's graph differ from its booster, so the refusal is tested on altered graphs."""
    from onnx import helper

    from mlflow_safeflavor.export.lgbm_double import exact_thresholds

    model, _ = models["standard_lgbm_clf"]
    exact_thresholds(_unrewritten(model), _booster(model))  # the unmodified graph maps

    proto = _unrewritten(model)
    node = _tree_node(proto)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    split = next(i for i, m in enumerate(attrs["nodes_modes"]) if m != b"LEAF")
    values = list(attrs["nodes_values"])
    values[split] = float(np.nextafter(np.float32(values[split]), np.float32(np.inf)))
    _set_attr(node, "nodes_values", values)
    with pytest.raises(NotConvertible, match="feature or threshold"):
        exact_thresholds(proto, _booster(model))

    proto = _unrewritten(model)
    node = _tree_node(proto)
    features = list(attrs["nodes_featureids"])
    features[split] = (features[split] + 1) % 6
    _set_attr(node, "nodes_featureids", features)
    with pytest.raises(NotConvertible, match="feature or threshold"):
        exact_thresholds(proto, _booster(model))

    with pytest.raises(NotConvertible, match="does not match|do not match"):
        exact_thresholds(_unrewritten(model), _booster(models["minmax_lgbm_clf3"][0]))


def test_categorical_splits_map_but_the_agreement_check_keeps_no_export(tmp_path):
    """A LightGBM categorical split ("1||4") is unfolded by the converter into a chain of ==
    nodes, which the walk follows (the double rewrite succeeds, and on integer categories the
    export's labels are LightGBM's). But LightGBM truncates a category value to an integer and the
    export compares it as a number, so the coverage sample's non-integer probes disagree: saved
    without the export (a warning under onnx="auto"), the checkpoint served natively."""
    import lightgbm as lgb
    import onnxruntime as ort
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlflow_safeflavor.export.lgbm_double import exact_thresholds

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=(2000, 3)) * 40 + 7, rng.integers(0, 6, size=2000)])
    y = ((X[:, 0] > 7) ^ np.isin(X[:, 3], [1, 4])).astype(int)
    ct = ColumnTransformer([("num", StandardScaler(), [0, 1, 2]), ("cat", "passthrough", [3])])
    model = Pipeline([("ct", ct), ("lgbm", lgb.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1))])
    model.fit(X, y, lgbm__categorical_feature=[3])
    assert any(n.get("decision_type") == "==" and "||" in str(n["threshold"]) for n in _walk_dump(_booster(model)))

    proto = exact_thresholds(_unrewritten(model), _booster(model))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    fresh = np.column_stack([rng.normal(size=(6000, 3)) * 40 + 7, rng.integers(0, 8, size=6000)])
    np.testing.assert_array_equal(session.run(None, {"input": fresh})[0], model.predict(fresh))

    with pytest.warns(OnnxExportWarning, match="does not agree with the checkpoint"):
        sf.save_model(model, tmp_path / "m", input_example=X[:5], onnx="auto")
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert "onnx" not in read_section(tmp_path / "m")["flavors"]["safeflavor"]
    pf = sf.load_pyfunc(str(tmp_path / "m"))
    assert pf._model_impl.onnx is None
    np.testing.assert_array_equal(np.asarray(pf.predict(fresh)), model.predict(fresh))


def _walk_dump(booster):
    for info in booster.dump_model()["tree_info"]:
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                yield node
                stack += [node["left_child"], node["right_child"]]
