"""Exports derived where a model is deployed: from the verified checkpoint, cached by payload digest.

Models here are saved with the default (checkpoint only). ``derived_runner`` gets what the
loader's checks established (``check_local``), converts in the converter worker and caches the
result under ``$MLFLOW_SAFEFLAVOR_CACHE_DIR``; a cache entry is reused only when its bytes match
its digest and pass the ONNX checks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlflow_safeflavor as sf
from mlflow_safeflavor.errors import UnsupportedModelError
from mlflow_safeflavor.export import ATOL, RTOL
from mlflow_safeflavor.export.derive import derived_runner
from mlflow_safeflavor.integrity import sha256_digest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture(scope="module")
def plain(cases, tmp_path_factory):
    """xgb_clf saved with default arguments: no model.onnx, no onnx record."""
    path = tmp_path_factory.mktemp("derive") / "xgb"
    sf.save_model(cases["xgb_clf"].model, path, input_example=cases["xgb_clf"].X[:5])
    assert not (path / "model.onnx").exists()
    return path


def _checked(path):
    from mlflow_safeflavor.loader import Options, check_local

    return check_local(path, Options())


def _entry(cache):
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry, json.loads((entry / "entry.json").read_text())


def _proba_agrees(runner, case):
    got = runner.predict("predict_proba", case.X)
    np.testing.assert_allclose(got, case.model.predict_proba(case.X), rtol=RTOL, atol=ATOL)


def test_derived_once_cached_and_reused(plain, cases, cache):
    before = {p.name: p.read_bytes() for p in plain.iterdir()}
    runner = derived_runner(_checked(plain), strict=False)
    _proba_agrees(runner, cases["xgb_clf"])
    entry, doc = _entry(cache)
    assert doc["sha256"] == sha256_digest((entry / "model.onnx").read_bytes())
    assert doc["record"]["agreed"] is True and "crossover_rows" in doc["record"]
    assert cache.stat().st_mode & 0o077 == 0  # private to the user
    again = derived_runner(_checked(plain), strict=False)
    assert _entry(cache)[1]["created"] == doc["created"]  # reused, not made again
    _proba_agrees(again, cases["xgb_clf"])
    # The model directory is never written to.
    assert {p.name: p.read_bytes() for p in plain.iterdir()} == before


def test_a_changed_cache_file_is_discarded_and_derived_again(plain, cases, cache):
    derived_runner(_checked(plain), strict=False)
    entry, doc = _entry(cache)
    data = bytearray((entry / "model.onnx").read_bytes())
    data[-1] ^= 1
    (entry / "model.onnx").write_bytes(bytes(data))
    runner = derived_runner(_checked(plain), strict=False)
    assert _entry(cache)[1]["created"] != doc["created"]
    _proba_agrees(runner, cases["xgb_clf"])


def test_a_cache_entry_failing_the_onnx_checks_is_not_used(plain, cases, cache):
    """Digest made to match (someone with write access to the cache): the ONNX checks still run."""
    import onnx
    import onnx.helper as h

    derived_runner(_checked(plain), strict=False)
    entry, doc = _entry(cache)
    proto = onnx.load_model_from_string((entry / "model.onnx").read_bytes())
    proto.graph.node[0].domain = "com.attacker.ops"
    proto.opset_import.append(h.make_opsetid("com.attacker.ops", 1))
    data = proto.SerializeToString()
    (entry / "model.onnx").write_bytes(data)
    doc["sha256"] = sha256_digest(data)
    (entry / "entry.json").write_text(json.dumps(doc))
    runner = derived_runner(_checked(plain), strict=False)
    _proba_agrees(runner, cases["xgb_clf"])
    assert _entry(cache)[1]["sha256"] != doc["sha256"]


def test_the_key_follows_the_payload(plain, cases, cache, tmp_path):
    derived_runner(_checked(plain), strict=False)
    sf.save_model(cases["xgb_reg"].model, tmp_path / "other", input_example=cases["xgb_reg"].X[:5])
    derived_runner(_checked(tmp_path / "other"), strict=False)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_a_model_without_an_export_form(cases, cache, tmp_path):
    """CatBoost with a categorical column: auto gets None (the native model serves), onnx refuses."""
    case = cases["cb_clf_cat"]
    sf.save_model(case.model, tmp_path / "m", input_example=case.X[:5])
    assert derived_runner(_checked(tmp_path / "m"), strict=False) is None
    with pytest.raises(UnsupportedModelError, match="no ONNX export can be derived.*numerical features only"):
        derived_runner(_checked(tmp_path / "m"), strict=True)
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]


def test_serving_attaches_the_derived_export(plain, cases, cache):
    from mlflow_safeflavor import serving

    case = cases["xgb_clf"]
    pf = sf.load_pyfunc(str(plain))
    assert pf._model_impl.onnx is None
    serving._with_export(pf, str(plain), "onnx", None, None)
    impl = pf._model_impl
    assert impl.onnx is not None and impl.backend == "onnx"
    got = np.asarray(pf.predict(case.X, params={"predict_method": "predict_proba"}), dtype=np.float64)
    np.testing.assert_allclose(got, case.model.predict_proba(case.X), rtol=RTOL, atol=ATOL)
    assert np.array_equal(got.astype(np.float32).astype(np.float64), got)  # onnxruntime answered
    native = sf.load_pyfunc(str(plain), backend="native")
    serving._with_export(native, str(plain), "native", None, None)
    assert native._model_impl.onnx is None
