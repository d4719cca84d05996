"""ONNX exports: made at save time, kept only if they agree, verified before onnxruntime serves them.

Saves here pass ``onnx=`` explicitly: the default (``onnx=None``) is the checkpoint only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import iter_blobs, pickle_findings
from hostile import edit_mlmodel, read_section, replace_payload

import mlflow_safeflavor as sf
from mlflow_safeflavor import export
from mlflow_safeflavor.errors import (
    IntegrityError,
    InvalidArgumentError,
    MalformedArtifactError,
    SignatureError,
    UnsupportedModelError,
)
from mlflow_safeflavor.export import OnnxExportWarning

RTOL, ATOL = export.RTOL, export.ATOL


def passthrough_pipeline(step):
    """ColumnTransformer passing numbers through unchanged (+ one-hot colour) before a tree model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    ct = ColumnTransformer([("num", "passthrough", [f"f{i}" for i in range(6)]),
                            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color"])])
    return Pipeline([("ct", ct), ("model", step)])


@pytest.fixture(scope="module")
def extra_cases(cases):
    """Pipelines whose trees see the raw numbers (so a float32 export can agree), per library."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier

    df = cases["sk_pipeline_ct_lr"].X
    y = cases["sk_pipeline_ct_rf"].model.predict(df)  # three string classes
    import catboost as cb

    X = cases["sk_rf_reg"].X
    cb_clf = cb.CatBoostClassifier(iterations=8, depth=3, verbose=0, allow_writing_files=False, thread_count=1)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    y2 = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return {
        "pipe_scaled_rf": (make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=20, random_state=0)).fit(X, y2), X),
        "pipe_minmax_xgb": (make_pipeline(MinMaxScaler(), xgb.XGBClassifier(n_estimators=8, max_depth=3)).fit(X, y2), X),
        "cb_clf": (cb_clf.fit(X, np.array(["low", "mid", "high"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1)]), X),
        "pipe_pass_rf": passthrough_pipeline(RandomForestClassifier(n_estimators=10, random_state=0)).fit(df, y),
        "pipe_pass_xgb": passthrough_pipeline(xgb.XGBClassifier(n_estimators=8, max_depth=3)).fit(df, (y == "mid").astype(int)),
        "pipe_pass_lgbm": passthrough_pipeline(lgb.LGBMClassifier(n_estimators=8, num_leaves=7, verbose=-1)).fit(df, y),
    }


# case name -> converter expected in the record
EXPORTED = {
    "sk_rf_clf": "skl2onnx", "sk_ridge": "skl2onnx", "sk_pipeline_ct_lr": "skl2onnx", "sk_knn_clf": "skl2onnx",
    "xgb_clf": "onnxmltools", "xgb_reg": "onnxmltools",
    "lgb_clf": "onnxmltools", "lgb_reg": "onnxmltools",
    "cb_reg": "catboost", "cb_base": "catboost", "cb_clf": "catboost",
    "pipe_pass_rf": "skl2onnx", "pipe_pass_xgb": "onnxmltools", "pipe_pass_lgbm": "onnxmltools",
    # Scalers in front of trees: transforms in float64, a float32 cast where scikit-learn casts.
    "pipe_scaled_rf": "skl2onnx", "pipe_minmax_xgb": "onnxmltools",
    "sk_pipeline_ct_rf": "skl2onnx", "pipe_ct_xgb": "onnxmltools",
    # LightGBM compares in float64: fed float64, with its own thresholds (tests/test_onnx_scaled.py).
    "pipe_ct_lgbm": "onnxmltools",
}


def _case(name, cases, extra_cases):
    if isinstance(extra_cases.get(name), tuple):
        return extra_cases[name]
    if name in extra_cases:
        return extra_cases[name], cases["sk_pipeline_ct_lr"].X
    return cases[name].model, cases[name].X


@pytest.fixture(scope="module")
def exported(cases, extra_cases, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in EXPORTED:
        model, X = _case(name, cases, extra_cases)
        sf.save_model(model, root / name, input_example=X[:5], onnx=True)
        out[name] = root / name
    return out


def _methods(model):
    return ["predict", "predict_proba"] if hasattr(model, "predict_proba") else ["predict"]


def _assert_agrees(expected, got, method):
    expected, got = np.asarray(expected), np.asarray(got)
    assert got.shape == expected.shape
    if method == "predict" and expected.dtype.kind not in "f":
        assert got.tolist() == expected.tolist()
    else:
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- agreement, per library


@pytest.mark.parametrize("name", ["sk_rf_clf", "xgb_clf", "lgb_clf", "cb_reg", "cb_clf"])
def test_export_without_an_input_example(name, cases, extra_cases, tmp_path):
    """onnx=True with nothing else: the input width comes from the model (a CatBoost model loaded
    from its file reports n_features_in_ == 0, which once made this save fail)."""
    model, X = _case(name, cases, extra_cases)
    sf.save_model(model, tmp_path / "m", onnx=True)
    rec = read_section(tmp_path / "m")["flavors"]["safeflavor"]["onnx"]
    assert rec["agreed"] is True and rec["inputs"]["width"] == np.asarray(X).shape[1]
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    _assert_agrees(model.predict(X), loaded.predict(np.asarray(X), params={"backend": "onnx"}), "predict")


@pytest.mark.parametrize("name", list(EXPORTED))
def test_export_agrees_is_recorded_and_serves(name, cases, extra_cases, exported):
    model, X = _case(name, cases, extra_cases)
    section = read_section(exported[name])["flavors"]["safeflavor"]
    rec = section["onnx"]
    assert rec["file"] == "model.onnx" and rec["agreed"] is True and rec["converter"] == EXPORTED[name]
    assert section["files"]["model.onnx"].startswith("sha256:")
    assert {"onnx", "onnxruntime"} <= set(rec["versions"]) and rec["opset"]
    assert rec["sample_size"] >= 256 and rec["tolerance"] == {"rtol": RTOL, "atol": ATOL}
    assert set(rec["methods"]) == set(_methods(model))
    assert all(0 <= d <= ATOL + RTOL for d in rec["max_abs_diff"].values())
    assert rec["crossover_rows"] is None or rec["crossover_rows"] >= 1  # measured at save

    pf = sf.load_pyfunc(str(exported[name]))
    assert pf._model_impl.onnx is not None
    for method in _methods(model):
        want = getattr(model, method)(X)
        got = pf.predict(X, params={"predict_method": method})
        _assert_agrees(want, got, method)
        # backend="native" is the checkpoint, bit for bit.
        native = pf.predict(X, params={"predict_method": method, "backend": "native"})
        np.testing.assert_array_equal(np.asarray(native), np.asarray(want))
        if np.asarray(want).dtype.kind == "f":
            # backend="onnx" answers from onnxruntime: float32 values, widened.
            got = np.asarray(pf.predict(X, params={"predict_method": method, "backend": "onnx"}), dtype=np.float64)
            _assert_agrees(want, got, method)
            assert np.array_equal(got.astype(np.float32).astype(np.float64), got)


def test_requirements_and_no_pickle_with_an_export(exported):
    reqs = (exported["xgb_clf"] / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("onnxruntime==") for r in reqs) and any(r.startswith("onnx==") for r in reqs)
    findings = [f for n, data in iter_blobs(exported["pipe_pass_xgb"]) for f in pickle_findings(n, data)]
    assert findings == []


def test_coverage_sample_hits_every_threshold_and_both_sides(cases):
    from mlflow_safeflavor.export import sample

    model = cases["sk_rf_reg"].model
    spec = {"kind": "matrix", "columns": None, "types": None, "width": 6}
    X = sample.coverage(model, spec, None)
    edges = sample.thresholds(model, 6)
    for j, t in edges.items():
        col = X[:, j]
        assert set(t[:50]) <= set(col)  # the "<=" edge itself
        f32 = t.astype(np.float32)
        assert set(np.nextafter(f32, np.float32(np.inf)).astype(np.float64)[:50]) <= set(col)


@pytest.mark.parametrize("name", ["pipe_scaled_rf", "pipe_minmax_xgb"])
def test_scaled_pipelines_scale_in_double_and_give_identical_labels(name, extra_cases, exported):
    """The issue's case: make_pipeline(StandardScaler(), forest). The export takes float64 input,
    scales in float64 and casts to float32 in front of the trees, as scikit-learn does: labels are
    identical on 20,000 fresh rows, not just on the agreement sample."""
    model, _ = extra_cases[name]
    pf = sf.load_pyfunc(str(exported[name]))
    assert pf._model_impl.onnx.session.get_inputs()[0].type == "tensor(double)"
    fresh = np.random.default_rng(7).normal(size=(20_000, 6))
    onnx = {"backend": "onnx"}
    np.testing.assert_array_equal(pf._model_impl.predict(fresh, params=onnx), model.predict(fresh))
    np.testing.assert_allclose(pf._model_impl.predict(fresh, params={**onnx, "predict_method": "predict_proba"}),
                               model.predict_proba(fresh), rtol=RTOL, atol=ATOL)


def test_crossover_decision():
    """From medians {rows: [native_s, onnx_s]}: where the export's lead runs out (linear between sizes)."""
    from mlflow_safeflavor.export.timing import decide

    assert decide({1: [1.0, 0.1], 16: [2.0, 0.5], 128: [3.0, 4.0]}) == 83  # lead -1.5 at 16, +1 at 128
    assert decide({1: [2.0, 1.0], 1024: [9.0, 8.0]}) is None  # the export never lost
    assert decide({1: [1.0, 2.0], 16: [1.0, 3.0]}) == 1  # native already faster at one row
    assert decide({1: [1.0, 0.5], 16: [1.0, 1.0 + 1e-9]}) == 16  # lost just at 16: never past it


def _float32_made(values, native):
    values = np.asarray(values, dtype=np.float64)
    return np.array_equal(values.astype(np.float32).astype(np.float64), values) and not np.array_equal(values, native)


@pytest.mark.parametrize("crossover, small_onnx, big_onnx", [
    (10, True, False), (None, True, True), ("absent", True, False), (1, False, False),
])
def test_auto_routes_each_call_by_row_count(crossover, small_onnx, big_onnx, exported, cases, tmp_path):
    """auto uses the export below the recorded crossover and the native model from it on; a
    record without the field (older saves) uses 1000 rows; explicit backends ignore it."""
    import shutil

    path = tmp_path / "m"
    shutil.copytree(exported["sk_ridge"], path)
    if crossover == "absent":
        edit_mlmodel(path, lambda s: s["onnx"].pop("crossover_rows"))
    else:
        edit_mlmodel(path, lambda s: s["onnx"].__setitem__("crossover_rows", crossover))
    model, X = cases["sk_ridge"].model, np.tile(cases["sk_ridge"].X, (5, 1))[:1200]
    small, big = X[:5], X
    impl = sf.load_pyfunc(str(path))._model_impl
    for rows, via_onnx in ((small, small_onnx), (big, big_onnx)):
        got, native = impl.predict(rows), model.predict(rows)
        assert _float32_made(got, native) if via_onnx else np.array_equal(got, native)
    assert _float32_made(impl.predict(big, params={"backend": "onnx"}), model.predict(big))
    assert np.array_equal(impl.predict(small, params={"backend": "native"}), model.predict(small))
    loaded = sf.load_model(str(path), backend="auto")
    assert (_float32_made(loaded.predict(big), model.predict(big)) if big_onnx
            else np.array_equal(loaded.predict(big), model.predict(big)))


# ----------------------------------------------------------------------------- refusals at save


@pytest.mark.parametrize("name, reason", [
    ("cb_clf_cat", "numerical features only"),
    ("xgb_ranker", "XGBRanker has no ONNX converter"),
    ("lgb_booster", "Booster has no ONNX converter"),
    ("sk_hgb_clf", "skl2onnx cannot convert HistGradientBoostingClassifier"),
    ("pipe_ct_cb", "CatBoost step inside a pipeline"),
])
def test_auto_saves_unconvertible_models_without_export_and_warns(name, reason, cases, tmp_path):
    case = cases[name]
    with pytest.warns(OnnxExportWarning, match=reason):
        sf.save_model(case.model, tmp_path / "m", input_example=case.X[:5], onnx="auto")
    section = read_section(tmp_path / "m")["flavors"]["safeflavor"]
    assert "onnx" not in section and not (tmp_path / "m" / "model.onnx").exists()
    assert "model.onnx" not in section["files"]
    pf = sf.load_pyfunc(str(tmp_path / "m"))
    assert pf._model_impl.onnx is None
    np.testing.assert_array_equal(np.asarray(pf.predict(case.X)), np.asarray(case.model.predict(case.X)))


def _linear_tree_lgbm(cases):
    """LightGBM with linear leaves: onnxmltools converts it with the leaves' constants only."""
    import lightgbm as lgb

    X = cases["lgb_reg"].X
    return lgb.LGBMRegressor(n_estimators=8, num_leaves=7, linear_tree=True, verbose=-1).fit(X, 3 * X[:, 0] + X[:, 1]), X


def test_auto_drops_an_export_that_disagrees(cases, tmp_path):
    """The converter writes an export that answers differently (LightGBM's linear leaves become
    constants): the agreement check finds it, and the export goes."""
    model, X = _linear_tree_lgbm(cases)
    with pytest.warns(OnnxExportWarning, match="does not agree with the checkpoint"):
        sf.save_model(model, tmp_path / "m", input_example=X[:5], onnx="auto")
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert "onnx" not in read_section(tmp_path / "m")["flavors"]["safeflavor"]


@pytest.mark.parametrize("name, reason", [("linear_tree_lgbm", "does not agree"), ("cb_clf_cat", "numerical features only")])
def test_onnx_true_refuses_and_writes_nothing(name, reason, cases, tmp_path):
    model, X = _linear_tree_lgbm(cases) if name == "linear_tree_lgbm" else (cases[name].model, cases[name].X)
    with pytest.raises(UnsupportedModelError, match=reason) as err:
        sf.save_model(model, tmp_path / "m", input_example=X[:5], onnx=True)
    assert "Nothing was written" in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_onnx_false_and_default_and_bad_values(cases, tmp_path, monkeypatch):
    """The default is the checkpoint only; MLFLOW_SAFEFLAVOR_ONNX turns the export on fleet-wide."""
    case = cases["xgb_clf"]
    sf.save_model(case.model, tmp_path / "off", onnx=False)
    assert not (tmp_path / "off" / "model.onnx").exists()
    sf.save_model(case.model, tmp_path / "default", input_example=case.X[:5])
    assert not (tmp_path / "default" / "model.onnx").exists()
    assert "onnx" not in read_section(tmp_path / "default")["flavors"]["safeflavor"]
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_ONNX", "auto")
    sf.save_model(case.model, tmp_path / "env-auto", input_example=case.X[:5])
    assert (tmp_path / "env-auto" / "model.onnx").exists()
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_ONNX", "sometimes")
    with pytest.raises(InvalidArgumentError, match="MLFLOW_SAFEFLAVOR_ONNX"):
        sf.save_model(case.model, tmp_path / "bad-env")
    with pytest.raises(InvalidArgumentError, match="onnx="):
        sf.save_model(case.model, tmp_path / "bad-arg", onnx="yes please")
    assert not (tmp_path / "bad-env").exists() and not (tmp_path / "bad-arg").exists()


def test_log_model_passes_onnx_through(cases, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        case = cases["lgb_clf"]
        with mlflow.start_run():
            info = sf.log_model(case.model, name="m", input_example=case.X[:5], onnx=True)
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))
        assert (local / "model.onnx").exists()
        assert mlflow.pyfunc.load_model(info.model_uri)._model_impl.onnx is not None
    finally:
        mlflow.set_tracking_uri(None)


def test_conversion_time_is_bounded_and_the_worker_recovers(cases, tmp_path, monkeypatch):
    """An overrunning conversion gets its worker killed; auto saves without the export, True
    refuses; the next save starts a fresh worker (its start-up has its own limit). 0.001 s is far
    below any conversion."""
    case = cases["sk_rf_clf"]
    sf.save_model(case.model, tmp_path / "warm", onnx=True)  # the worker is up
    old = export._WORKER.proc
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_ONNX_TIMEOUT", "0.001")
    with pytest.warns(OnnxExportWarning, match="did not finish within 0.001 s"):
        sf.save_model(case.model, tmp_path / "auto", onnx="auto")
    assert old.poll() is not None and export._WORKER.proc is None  # killed, not left running
    assert not (tmp_path / "auto" / "model.onnx").exists()
    with pytest.raises(UnsupportedModelError, match="did not finish"):
        sf.save_model(case.model, tmp_path / "strict", onnx=True)
    assert not (tmp_path / "strict").exists()
    monkeypatch.delenv("MLFLOW_SAFEFLAVOR_ONNX_TIMEOUT")
    sf.save_model(case.model, tmp_path / "after", onnx=True)
    assert (tmp_path / "after" / "model.onnx").exists()


def test_a_dead_worker_is_replaced(cases, tmp_path):
    case = cases["sk_ridge"]
    sf.save_model(case.model, tmp_path / "a", onnx=True)
    export._WORKER.proc.kill()
    export._WORKER.proc.wait()
    sf.save_model(case.model, tmp_path / "b", onnx=True)
    assert (tmp_path / "b" / "model.onnx").exists()


def test_without_the_extra_auto_logs_and_true_refuses(tmp_path):
    """In a process where the onnx packages cannot be imported (as without the extra)."""
    code = f"""
import sys
for name in ("onnx", "onnxruntime", "skl2onnx", "onnxmltools"):
    sys.modules[name] = None  # import raises ModuleNotFoundError, find_spec says "not there"
import numpy as np
from sklearn.linear_model import Ridge
import mlflow_safeflavor as sf
m = Ridge().fit(np.eye(3), [1.0, 2.0, 3.0])
sf.save_model(m, {str(tmp_path / 'auto')!r}, onnx="auto")
try:
    sf.save_model(m, {str(tmp_path / 'strict')!r}, onnx=True)
except sf.UnsupportedModelError as exc:
    print("REFUSED", exc.message)
print("PREDICT", sf.load_pyfunc({str(tmp_path / 'auto')!r}).predict(np.eye(3)).tolist())
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SAFEFLAVOR_ONNX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the onnx extra is not installed" in out.stderr
    assert "REFUSED onnx=True: the onnx extra is not installed" in out.stdout
    assert "PREDICT [1.5, 2.0, 2.5]" in out.stdout  # Ridge(alpha=1) on the identity
    assert not (tmp_path / "auto" / "model.onnx").exists() and not (tmp_path / "strict").exists()


# --------------------------------------------------------------------------------- load and predict


def test_signature_declares_backend_and_mlflow_passes_it(exported, cases):
    case = cases["sk_pipeline_ct_lr"]
    pf = mlflow.pyfunc.load_model(str(exported["sk_pipeline_ct_lr"]))
    params = {p.name: p for p in pf.metadata.get_params_schema().params}
    assert params["backend"].default == "auto"
    want = case.model.predict_proba(case.X)
    native = pf.predict(case.X, params={"predict_method": "predict_proba", "backend": "native"})
    np.testing.assert_array_equal(np.asarray(native), want)
    # MLflow's schema enforcement reorders columns to the signature: the export still answers.
    shuffled = case.X[list(reversed(case.X.columns))]
    via_onnx = pf.predict(shuffled, params={"predict_method": "predict_proba", "backend": "onnx"})
    _assert_agrees(want, via_onnx, "predict_proba")


def test_load_model_backends(exported, cases):
    from mlflow_safeflavor.export.runtime import OnnxModel

    case = cases["sk_pipeline_ct_lr"]
    path = str(exported["sk_pipeline_ct_lr"])
    assert type(sf.load_model(path)) is type(case.model)
    onnx_model = sf.load_model(path, backend="onnx")
    assert isinstance(onnx_model, OnnxModel) and type(onnx_model.native) is type(case.model)
    assert onnx_model.predict(case.X).tolist() == case.model.predict(case.X).tolist()
    _assert_agrees(case.model.predict_proba(case.X), onnx_model.predict_proba(case.X), "predict_proba")
    # What the export does not cover is the native model's.
    np.testing.assert_array_equal(onnx_model.predict_log_proba(case.X), case.model.predict_log_proba(case.X))
    assert list(onnx_model.classes_) == list(case.model.classes_)
    assert isinstance(sf.load_model(path, backend="auto"), OnnxModel)
    with pytest.raises(InvalidArgumentError, match="backend="):
        sf.load_model(path, backend="fastest")


def test_backend_onnx_without_export_is_a_clear_error(cases, tmp_path):
    case = cases["cb_clf_cat"]
    sf.save_model(case.model, tmp_path / "m", onnx=False, input_example=case.X[:3])
    with pytest.raises(InvalidArgumentError, match="no agreed ONNX export"):
        sf.load_model(str(tmp_path / "m"), backend="onnx")
    pf = sf.load_pyfunc(str(tmp_path / "m"))
    with pytest.raises(InvalidArgumentError, match="no usable ONNX export"):
        pf.predict(case.X, params={"backend": "onnx"})
    with pytest.raises(InvalidArgumentError, match="backend="):
        pf.predict(case.X, params={"backend": "gpu"})


def test_input_the_export_cannot_take_goes_to_the_native_model(exported, cases):
    case = cases["sk_pipeline_ct_lr"]
    pf = sf.load_pyfunc(str(exported["sk_pipeline_ct_lr"]))
    X = case.X.copy()
    X.loc[3, "f0"] = np.nan  # missing value: the native model's business (here it raises)
    with pytest.raises(ValueError):
        case.model.predict_proba(X)
    with pytest.raises(ValueError):
        pf.predict(X, params={"predict_method": "predict_proba"})
    with pytest.raises(InvalidArgumentError, match="NaN"):
        pf.predict(X, params={"predict_method": "predict_proba", "backend": "onnx"})
    # A categorical dtype (MLflow's schema enforcement refuses it; our implementation, called
    # directly as Spark or a custom server might, hands it to the native model: exact).
    cat = case.X.astype({"color": "category"})
    np.testing.assert_array_equal(pf._model_impl.predict(cat, params={"predict_method": "predict_proba"}),
                                  case.model.predict_proba(cat))
    unseen = case.X.copy()
    unseen["color"] = "purple"  # unknown category, ignored by the encoder on both paths
    _assert_agrees(case.model.predict_proba(unseen), pf.predict(unseen, params={"predict_method": "predict_proba"}),
                   "predict_proba")
    with pytest.raises(InvalidArgumentError, match="covers"):
        pf.predict(case.X, params={"predict_method": "predict_log_proba", "backend": "onnx"})


def test_numpy_input_and_column_order_for_a_matrix_model(exported, cases):
    case = cases["xgb_clf"]
    pf = sf.load_pyfunc(str(exported["xgb_clf"]))
    impl = pf._model_impl  # a bare array: MLflow's schema enforcement would refuse it (named columns)
    _assert_agrees(case.model.predict_proba(case.X),
                   impl.predict(case.X.to_numpy(), params={"predict_method": "predict_proba", "backend": "onnx"}),
                   "predict_proba")
    # Without MLflow's schema enforcement (which reorders to the signature), reordered columns are
    # never fed to the export by position: explicit onnx refuses, auto lets the native model
    # answer — and XGBoost refuses mismatched feature names, as it always does.
    reordered = case.X[list(reversed(case.X.columns))]
    with pytest.raises(InvalidArgumentError, match="columns differ"):
        impl.predict(reordered, params={"backend": "onnx"})
    with pytest.raises(ValueError, match="feature_names mismatch"):
        impl.predict(reordered)
    assert pf.predict(reordered).tolist() == case.model.predict(case.X).tolist()  # via MLflow: reordered back


def test_default_backend_from_environment_and_model_config(exported, monkeypatch):
    path = str(exported["lgb_clf"])
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_BACKEND", "native")
    assert sf.load_pyfunc(path)._model_impl.onnx is None
    assert mlflow.pyfunc.load_model(path)._model_impl.onnx is None
    assert mlflow.pyfunc.load_model(path, model_config={"backend": "onnx"})._model_impl.onnx is not None
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_BACKEND", "turbo")
    with pytest.raises(InvalidArgumentError, match="MLFLOW_SAFEFLAVOR_BACKEND"):
        sf.load_pyfunc(path)


def test_session_threads_are_bounded(exported, monkeypatch):
    pf = sf.load_pyfunc(str(exported["sk_rf_clf"]))
    opts = pf._model_impl.onnx.session.get_session_options()
    assert 1 <= opts.intra_op_num_threads <= 4 and opts.inter_op_num_threads == 1
    assert pf._model_impl.onnx.session.get_providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_ORT_THREADS", "1")
    assert sf.load_pyfunc(str(exported["sk_rf_clf"]))._model_impl.onnx.session.get_session_options().intra_op_num_threads == 1


def test_verify_reports_the_export(exported):
    from mlflow_safeflavor.verify import verify_local

    result = verify_local(exported["cb_reg"])
    assert result.ok, result.failures
    assert any(c.name == "onnx" and c.ok and "agreed at save" in c.detail for c in result.checks)


# ------------------------------------------------------------------------------- hostile exports


def _onnx_proto(path):
    import onnx

    return onnx.load_model_from_string((path / "model.onnx").read_bytes())


@pytest.fixture
def victim(exported, tmp_path):
    import shutil

    path = tmp_path / "victim"
    shutil.copytree(exported["sk_ridge"], path)
    return path


def _add_initializer(model, dims, raw):
    """An (unused) float initializer: every tensor is checked, used or not."""
    from onnx import TensorProto

    init = model.graph.initializer.add()
    init.name, init.data_type = "attacker_tensor", TensorProto.FLOAT
    init.dims.extend(dims)
    init.raw_data = raw
    return init


def _external_data(model, target):
    from onnx import TensorProto

    init = _add_initializer(model, [4], b"")
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", str(target)


def _custom_domain(model):
    import onnx.helper as h

    node = model.graph.node[0]
    node.domain = "com.attacker.ops"
    model.opset_import.append(h.make_opsetid("com.attacker.ops", 1))


def _huge_tensor(model):
    _add_initializer(model, [1 << 20, 1 << 20], b"\0" * 4)


def _local_function(model):
    import onnx.helper as h

    model.functions.append(h.make_function("ai.onnx", "Evil", ["x"], ["y"], [h.make_node("Identity", ["x"], ["y"])],
                                           [h.make_opsetid("", 18)]))


def _dangling_input(model):
    model.graph.node[0].input[0] = "no_such_tensor"


HOSTILE = {
    "external-data-escaping": (_external_data, "external file"),
    "custom-domain": (_custom_domain, "custom operator"),
    "huge-declared-tensor": (_huge_tensor, "declares more than"),
    "local-function": (_local_function, "local function"),
    "checker": (_dangling_input, "onnx.checker"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_export_is_refused_before_onnxruntime(kind, victim, worker, tmp_path):
    """Digest recomputed (the attacker's), so only the ONNX checks stand in the way; loaded in a
    separate process so a crash would show as one. The external path is a FIFO: opening it would
    hang the loader, so a refusal proves it was never opened."""
    edit, needle = HOSTILE[kind]
    model = _onnx_proto(victim)
    if kind == "external-data-escaping":
        fifo = tmp_path / "outside.fifo"
        os.mkfifo(fifo)
        edit(model, os.path.relpath(fifo, victim))
    else:
        edit(model)
    replace_payload(victim, "model.onnx", model.SerializeToString())
    for loader in ("load_pyfunc", "mlflow.pyfunc"):
        res = worker.load(victim, loader)
        assert res["outcome"] == "refused" and res["type"] == "MalformedArtifactError", res
        assert needle in res["message"] and "model.onnx" in res["message"], res["message"]
    res = worker.load(victim, "load_model", kwargs={"backend": "onnx"})
    assert res["outcome"] == "refused" and needle in res["message"], res
    # The checkpoint is untouched: asking for it explicitly still works.
    assert worker.load(victim, "load_model")["outcome"] == "loaded"


def test_corrupted_protobuf_is_refused(victim):
    replace_payload(victim, "model.onnx", b"\x08\x07\x12\xff\xff\xff\xff\x0f" + os.urandom(64))
    with pytest.raises(MalformedArtifactError, match="not a valid ONNX protobuf"):
        sf.load_pyfunc(str(victim))
    from mlflow_safeflavor.verify import verify_local

    result = verify_local(victim)
    assert not result.ok and [c.name for c in result.failures] == ["onnx"]


def test_declared_size_must_match_the_bytes(victim):
    from mlflow_safeflavor.validate import onnx_model

    model = _onnx_proto(victim)
    _add_initializer(model, [1000], b"\0" * 16)
    with pytest.raises(MalformedArtifactError, match="declares 1000 elements but carries"):
        onnx_model.parse(model.SerializeToString(), path="model.onnx")


def test_export_is_covered_by_digest_and_signature(victim, keys):
    data = bytearray((victim / "model.onnx").read_bytes())
    data[-1] ^= 1
    replace_payload(victim, "model.onnx", bytes(data), fix_digest=False)
    with pytest.raises(IntegrityError, match="model.onnx: digest mismatch"):
        sf.load_model(str(victim))  # even the native API checks every recorded file


def test_signed_model_with_a_replaced_export_is_refused(exported, keys, tmp_path):
    import shutil

    path = tmp_path / "signed"
    shutil.copytree(exported["xgb_clf"], path)
    sf.sign_model(path, keys["good"][0])
    sf.load_pyfunc(str(path), public_key=str(keys["good"][1]))
    other = (exported["xgb_reg"] / "model.onnx").read_bytes()
    replace_payload(path, "model.onnx", other)  # digest recomputed by the attacker
    with pytest.raises(SignatureError):
        sf.load_pyfunc(str(path), public_key=str(keys["good"][1]))


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s["onnx"].__setitem__("file", "../model.onnx"), "safeflavor.onnx.file"),
    (lambda s: s["files"].pop("model.onnx"), "safeflavor.onnx.file"),
    (lambda s: s["onnx"].__setitem__("runtime_library", "/tmp/evil.so"), "exactly the keys"),
    (lambda s: s["onnx"]["inputs"].__setitem__("width", -1), "safeflavor.onnx.inputs"),
    (lambda s: s["onnx"]["methods"].__setitem__("decision_function", {"output": "x", "kind": "value", "ndim": 1}), "safeflavor.onnx.methods"),
    (lambda s: s["onnx"].__setitem__("converter", "pickle"), "safeflavor.onnx.converter"),
    (lambda s: s["onnx"].__setitem__("crossover_rows", 0), "safeflavor.onnx.crossover_rows"),
    (lambda s: s["onnx"].__setitem__("crossover_rows", True), "safeflavor.onnx.crossover_rows"),
    (lambda s: s["onnx"].__setitem__("crossover_rows", "many"), "safeflavor.onnx.crossover_rows"),
])
def test_onnx_record_is_parsed_strictly(edit, needle, victim):
    edit_mlmodel(victim, edit)
    with pytest.raises(MalformedArtifactError, match=needle.replace(".", r"\.")):
        sf.load_model(str(victim))


def test_an_export_claimed_as_disagreeing_is_not_served(victim, cases):
    edit_mlmodel(victim, lambda s: s["onnx"].__setitem__("agreed", False))
    pf = sf.load_pyfunc(str(victim))
    assert pf._model_impl.onnx is None
    with pytest.raises(InvalidArgumentError, match="no agreed ONNX export"):
        sf.load_model(str(victim), backend="onnx")
    np.testing.assert_array_equal(pf.predict(cases["sk_ridge"].X), cases["sk_ridge"].model.predict(cases["sk_ridge"].X))


def test_tied_class_probabilities_are_left_to_the_native_model(tmp_path):
    """40 fully grown trees often vote 20:20. scikit-learn sums the votes in float64 (an exact tie:
    the first class wins); the export sums in float32 (0.49999994 vs 0.50000006: the second wins).
    Rows whose top two probabilities are that close get the native label, so the export agrees."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 3))
    y = (X[:, 0] + rng.normal(scale=1.0, size=2000) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=40, random_state=0).fit(X, y)
    sf.save_model(model, tmp_path / "m", input_example=X[:5], onnx=True)
    pf = sf.load_pyfunc(str(tmp_path / "m"))
    Xt = rng.normal(size=(2000, 3))
    ties = np.flatnonzero(np.diff(model.predict_proba(Xt), axis=1).ravel() == 0)
    assert len(ties) > 20
    raw_labels = pf._model_impl.onnx.session.run(["label"], {"input": Xt.astype(np.float32)})[0]
    assert (raw_labels[ties] != model.predict(Xt)[ties]).sum() > 10  # the export alone differs there
    onnx = {"backend": "onnx"}  # not left to auto's routing: this is about the export's labels
    np.testing.assert_array_equal(pf.predict(Xt, params=onnx), model.predict(Xt))
    np.testing.assert_array_equal(pf.predict(Xt[ties[:3]], params=onnx), model.predict(Xt[ties[:3]]))


def test_small_and_large_batches_are_fed_alike(exported, cases):
    case = cases["sk_pipeline_ct_lr"]
    impl = sf.load_pyfunc(str(exported["sk_pipeline_ct_lr"]))._model_impl
    whole = impl.predict(case.X, params={"predict_method": "predict_proba", "backend": "onnx"})
    parts = np.vstack([impl.predict(case.X.iloc[i:i + 7], params={"predict_method": "predict_proba", "backend": "onnx"})
                       for i in range(0, len(case.X), 7)])
    np.testing.assert_array_equal(whole, parts)
    mixed = case.X.iloc[:3].astype({"f1": object})
    mixed.iloc[1, 1] = "1.5"  # a string in a numeric column: never converted behind the model's back
    with pytest.raises(InvalidArgumentError, match="'f1': expected numbers"):
        impl.predict(mixed, params={"backend": "onnx"})
