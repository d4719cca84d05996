"""The loading policy (allowed set, hard-deny, operator additions) and save-time errors."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from sklearn.preprocessing import FunctionTransformer

import mlflow_safeflavor as sf
from mlflow_safeflavor import policy
from mlflow_safeflavor.errors import InvalidArgumentError, UnsupportedModelError, UntrustedTypesError


@pytest.mark.parametrize(
    "name",
    ["builtins.eval", "builtins.exec", "builtins.open", "builtins.__import__", "builtins.getattr", "os.system",
     "posix.system", "subprocess.Popen", "sys.modules", "importlib.import_module", "pickle.loads", "marshal.loads",
     "operator.attrgetter", "operator.methodcaller", "runpy.run_path", "ctypes.CDLL", "skops.io.loads", "io.open",
     "functools.partial", "__main__.Evil", "pydoc.locate", "timeit.timeit", "not a name", "a..b", "x"],
)
def test_hard_deny(name):
    assert policy.is_hard_denied(name)


@pytest.mark.parametrize("name", ["sklearn.tree._tree.Tree", "builtins.int", "math.fabs", "numpy.float64"])
def test_not_hard_denied(name):
    assert not policy.is_hard_denied(name)


def test_decision_requires_required_within_declared_within_allowed():
    p = policy.loading_policy(["math.fabs"])
    assert policy.decide(["math.fabs"], ["math.fabs"], p).ok
    assert policy.decide([], ["sklearn.tree._tree.Tree"], p).ok
    undeclared = policy.decide(["math.fabs"], [], p)
    assert not undeclared.ok and undeclared.undeclared == ("math.fabs",)
    not_allowed = policy.decide(["math.exp"], ["math.exp"], p)
    assert not not_allowed.ok and not_allowed.not_allowed == ("math.exp",)
    assert "MLFLOW_SAFEFLAVOR_TRUSTED_TYPES=math.exp" in not_allowed.explain()


def test_environment_additions_and_refused_additions(monkeypatch):
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "math.fabs, os.system ,")
    p = policy.loading_policy()
    assert p.allows("math.fabs") and not p.allows("os.system")
    assert p.refused_additions == {"os.system": "MLFLOW_SAFEFLAVOR_TRUSTED_TYPES"}


@pytest.fixture
def fabs_model():
    return FunctionTransformer(func=math.fabs).fit(np.ones((3, 1)))


def test_model_needing_an_unlisted_type_must_declare_it_at_save(fabs_model, tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"trusted_types=\['math.fabs'\]"):
        sf.save_model(fabs_model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert os.listdir(tmp_path) == []  # no temporary directory left behind


def test_loading_side_decides_what_is_allowed(fabs_model, tmp_path, monkeypatch):
    sf.save_model(fabs_model, tmp_path / "m", trusted_types=["math.fabs"])
    with pytest.raises(UntrustedTypesError) as err:
        sf.load_model(str(tmp_path / "m"))
    assert "export MLFLOW_SAFEFLAVOR_TRUSTED_TYPES=math.fabs" in str(err.value)
    assert sf.load_model(str(tmp_path / "m"), trusted_types=["math.fabs"]).func is math.fabs
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "math.fabs")
    assert sf.load_model(str(tmp_path / "m")).func is math.fabs


def test_main_module_classes_and_lambdas_are_refused_at_save(tmp_path):
    with pytest.raises(UnsupportedModelError, match="__main__|cannot be imported"):
        sf.save_model(FunctionTransformer(func=lambda x: x).fit(np.ones((2, 1))), tmp_path / "m")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("obj", [{"a": 1}, object(), np.ones(3), "model.pkl"])
def test_unsupported_objects_are_refused(obj, tmp_path):
    with pytest.raises(UnsupportedModelError, match="never falls back to pickle"):
        sf.save_model(obj, tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_gbdt_inside_meta_estimator_is_refused_with_advice(cases, tmp_path):
    from sklearn.ensemble import BaggingRegressor
    from xgboost import XGBRegressor

    c = cases["xgb_reg"]
    model = BaggingRegressor(XGBRegressor(n_estimators=2), n_estimators=2).fit(c.X, c.model.predict(c.X))
    with pytest.raises(UnsupportedModelError, match="Pipeline step"):
        sf.save_model(model, tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_existing_non_empty_path_is_refused(cases, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        sf.save_model(cases["sk_ridge"].model, tmp_path / "m")
    assert os.listdir(tmp_path / "m") == ["keep.txt"]


def test_existing_empty_directory_is_used(cases, tmp_path):
    (tmp_path / "m").mkdir()
    sf.save_model(cases["sk_ridge"].model, tmp_path / "m")
    assert (tmp_path / "m" / "MLmodel").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": 3}, "path must be"),
        ({"predict_method": "transform"}, "predict_method"),
        ({"predict_method": "predict_proba"}, "has no such method"),
        ({"signature": "x:double"}, "signature must be"),
        ({"metadata": ["x"]}, "metadata must be"),
        ({"trusted_types": [1]}, "must be strings"),
        ({"model_format": "pickle"}, "model_format"),
    ],
)
def test_wrong_argument_types(kwargs, match, cases, tmp_path):
    model = cases["xgb_reg"].model if "model_format" in kwargs else cases["sk_ridge"].model
    kwargs.setdefault("path", tmp_path / "m")
    with pytest.raises(InvalidArgumentError, match=match):
        sf.save_model(model, **kwargs)
    assert os.listdir(tmp_path) == []


def test_load_argument_errors():
    with pytest.raises(InvalidArgumentError):
        sf.load_model(42)


def test_requirements_are_pinned_without_inference(cases, tmp_path):
    import catboost
    import mlflow
    import skops
    import sklearn
    import xgboost

    sf.save_model(cases["pipe_ct_xgb"].model, tmp_path / "m")
    reqs = (tmp_path / "m" / "requirements.txt").read_text().splitlines()
    assert f"mlflow=={mlflow.__version__}" in reqs
    assert f"mlflow-safeflavor=={sf.__version__}" in reqs
    assert f"scikit-learn=={sklearn.__version__}" in reqs and f"skops=={skops.__version__}" in reqs
    assert f"xgboost=={xgboost.__version__}" in reqs
    assert not any(r.startswith("catboost") for r in reqs)
    sf.save_model(cases["cb_reg"].model, tmp_path / "cb")
    cb_reqs = (tmp_path / "cb" / "requirements.txt").read_text().splitlines()
    assert f"catboost=={catboost.__version__}" in cb_reqs and not any(r.startswith("skops") for r in cb_reqs)
    for f in ("python_env.yaml", "conda.yaml"):
        assert (tmp_path / "m" / f).exists()


def test_user_requirements_win(cases, tmp_path):
    sf.save_model(cases["sk_ridge"].model, tmp_path / "a", pip_requirements=["scikit-learn", "mlflow-safeflavor"])
    assert (tmp_path / "a" / "requirements.txt").read_text().splitlines()[1:] == ["scikit-learn", "mlflow-safeflavor"]
    sf.save_model(cases["sk_ridge"].model, tmp_path / "b", extra_pip_requirements=["pyarrow"])
    assert "pyarrow" in (tmp_path / "b" / "requirements.txt").read_text().splitlines()


def test_unknown_predict_method_at_predict_time_is_a_clear_error(cases, tmp_path):
    sf.save_model(cases["sk_ridge"].model, tmp_path / "m")
    pf = sf.load_pyfunc(str(tmp_path / "m"))
    with pytest.raises(InvalidArgumentError, match="predict_proba"):
        pf.predict(cases["sk_ridge"].X, params={"predict_method": "predict_proba"})
