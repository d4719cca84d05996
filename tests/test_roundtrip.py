"""Every supported model class saves and loads back with identical predictions, natively and as pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import zoo
from helpers import assert_same, iter_blobs, native_predict, pickle_findings

import mlflow_safeflavor as sf

CASE_NAMES = [c.name for c in zoo.all_cases()]


@pytest.fixture(scope="module")
def saved(cases, tmp_path_factory):
    """Each case saved once (with an input example, so a signature is inferred)."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for name, case in cases.items():
        path = root / name
        sf.save_model(case.model, path, input_example=case.X[:5])
        out[name] = path
    return out


@pytest.mark.parametrize("name", CASE_NAMES)
def test_native_load_predicts_identically(name, cases, saved):
    case = cases[name]
    loaded = sf.load_model(str(saved[name]))
    assert type(loaded) is type(case.model)
    for method in case.methods:
        assert_same(native_predict(case.model, method, case.X), native_predict(loaded, method, case.X))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_pyfunc_predicts_identically_with_every_method(name, cases, saved):
    case = cases[name]
    for loader in (mlflow.pyfunc.load_model, sf.load_pyfunc):
        pf = loader(str(saved[name]))
        assert_same(native_predict(case.model, "predict", case.X), pf.predict(case.X))
        for method in case.methods:
            out = pf.predict(case.X, params={"predict_method": method})
            assert_same(native_predict(case.model, method, case.X), out)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_file_or_zip_member_is_a_pickle(name, saved):
    findings = [f for blob_name, data in iter_blobs(saved[name]) for f in pickle_findings(blob_name, data)]
    assert findings == []


def test_pickle_scanner_detects_pickles(tmp_path):
    """The scan above must be able to fail: it flags a pickle stream and an object array."""
    import io
    import pickle

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert pickle_findings("x.pkl", pickle.dumps({"a": 1}, protocol=4))
    assert pickle_findings("x.npy", buf.getvalue())


def test_mlmodel_records_codec_digests_and_trust_list(saved):
    from hostile import read_section

    section = read_section(saved["sk_rf_clf"])["flavors"]["safeflavor"]
    assert section["codec"] == "sklearn"
    assert section["model_class"] == "RandomForestClassifier"
    # Format 2: the trees live in trees.safetensors, so the skops skeleton needs no Tree trusted.
    assert section["format_version"] == 2 and section["trusted_types"] == []
    assert set(section["files"]) == {"model.skops", "trees.safetensors"} and section["columnar"] == "trees.safetensors"
    assert all(v.startswith("sha256:") and len(v) == 71 for v in section["files"].values())
    xgb = read_section(saved["xgb_clf"])["flavors"]["safeflavor"]
    assert (xgb["codec"], xgb["model_class"], xgb["trusted_types"]) == ("xgboost", "XGBClassifier", [])
    assert set(xgb["files"]) == {"model.ubj", "wrapper.json"}
    doc = read_section(saved["xgb_clf"])
    assert doc["flavors"]["python_function"]["loader_module"] == "mlflow_safeflavor"


def test_signature_declares_predict_method_param(saved):
    from mlflow.models import Model

    sig = Model.load(str(saved["sk_pipeline_ct_lr"])).signature
    params = {p.name: p for p in sig.params.params}
    assert params["predict_method"].default == "predict"
    assert [c.name for c in sig.inputs.inputs][:2] == ["f0", "f1"]


def test_xgboost_json_format_on_request(cases, tmp_path):
    case = cases["xgb_clf"]
    sf.save_model(case.model, tmp_path / "m", model_format="json")
    assert (tmp_path / "m" / "model.json").exists() and not (tmp_path / "m" / "model.ubj").exists()
    assert_same(case.model.predict_proba(case.X), sf.load_model(str(tmp_path / "m")).predict_proba(case.X))


def test_pipeline_gbdt_step_stored_natively(cases, saved):
    from hostile import read_section

    section = read_section(saved["pipe_ct_xgb"])["flavors"]["safeflavor"]
    assert section["components"] == [
        {"step": [1], "codec": "xgboost", "model_class": "XGBClassifier", "files": ["components/0/model.ubj", "components/0/wrapper.json"]}
    ]
    # The skops skeleton needs no xgboost type trusted: the step is a placeholder there.
    assert section["trusted_types"] == []
    nested = read_section(saved["pipe_nested_lgbm"])["flavors"]["safeflavor"]["components"]
    assert nested[0]["step"] == [1, 1] and nested[0]["codec"] == "lightgbm"


def test_save_does_not_modify_the_users_pipeline(cases, tmp_path):
    case = cases["pipe_ct_xgb"]
    step = case.model.steps[1][1]
    sf.save_model(case.model, tmp_path / "m")
    assert case.model.steps[1][1] is step


def test_numpy_and_pandas_input_without_signature(cases, tmp_path):
    """A model trained on numpy, saved without an example, accepts both numpy and pandas."""
    case = cases["sk_rf_reg"]
    sf.save_model(case.model, tmp_path / "m")
    pf = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    assert_same(case.model.predict(case.X), pf.predict(case.X))
    assert_same(case.model.predict(case.X), pf.predict(pd.DataFrame(case.X)))


def test_default_predict_method_recorded_at_save(cases, tmp_path):
    case = cases["sk_pipeline_ct_lr"]
    sf.save_model(case.model, tmp_path / "m", predict_method="predict_proba", input_example=case.X[:3])
    pf = sf.load_pyfunc(str(tmp_path / "m"))
    assert_same(case.model.predict_proba(case.X), pf.predict(case.X))
    assert_same(case.model.predict(case.X), pf.predict(case.X, params={"predict_method": "predict"}))


def test_pyfunc_path_may_be_a_file_inside_the_model(cases, saved):
    impl = sf._load_pyfunc(str(saved["lgb_reg"] / "model.txt"))
    assert_same(cases["lgb_reg"].model.predict(cases["lgb_reg"].X), impl.predict(cases["lgb_reg"].X))
