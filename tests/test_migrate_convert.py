"""convert(): benign pickles and MLflow built-in flavor models become safe-flavor models that predict
identically; crashes and timeouts in the isolated rebuild leave nothing behind.

The identical-predictions check here is independent of convert's own: the converted directory is
loaded again with ``mlflow_safeflavor.load_model`` and compared with the *original in-memory*
model, and it must pass ``verify_model`` (digests, trust, no pickle).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import pickle_corpus as pc
from mlflow_safeflavor import load_model
from mlflow_safeflavor.cli import main
from mlflow_safeflavor.codecs import codec_for
from mlflow_safeflavor.errors import ConversionError, InvalidArgumentError, SafeFlavorError, UntrustedTypesError
from mlflow_safeflavor.migrate import convert
from mlflow_safeflavor.verify import verify_model


def _same_predictions(converted_dir, original, sample):
    safe = load_model(str(converted_dir))
    assert type(safe) is type(original)
    codec = codec_for(original)
    for method in ("predict", "predict_proba"):
        if method == "predict" or hasattr(original, method):
            expected = codec.predict(original, method, sample)
            actual = codec.predict(safe, method, sample)
            np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


@pytest.mark.parametrize("case", pc.BENIGN, ids=[c.name for c in pc.BENIGN])
def test_benign_pickle_converts_with_identical_predictions(tmp_path, case):
    path, model, sample = pc.dump_benign(case, tmp_path)
    dest = tmp_path / "safe"
    result = convert(path, dest_path=dest, sample_input=sample)
    assert result.path == str(dest.resolve())
    assert "predict" in result.methods and result.rows_compared == len(sample)
    assert result.scan is not None and result.scan.ok
    _same_predictions(dest, model, sample)
    check = verify_model(str(dest))
    assert check.ok, [c.detail for c in check.failures]
    assert not list(dest.rglob("*.pkl")) and not list(dest.rglob("*.joblib"))


def _mlflow_sources(tmp_path):
    import catboost
    import lightgbm
    import mlflow
    import xgboost
    from mlflow.models import infer_signature

    out = {}
    model, sample = pc._column_pipeline()
    for fmt in ("pickle", "cloudpickle"):
        d = tmp_path / f"sklearn-{fmt}"
        mlflow.sklearn.save_model(model, d, serialization_format=fmt, input_example=sample.head(5),
                                  signature=infer_signature(sample, model.predict(sample)))
        out[f"sklearn-{fmt}"] = (d, model, sample)
    lgbm, X = pc._lgbm_clf()
    d = tmp_path / "lightgbm-pickle"
    mlflow.lightgbm.save_model(lgbm, d, serialization_format="pickle", input_example=X[:5])
    out["lightgbm-sklearn-pickle"] = (d, lgbm, X)
    d = tmp_path / "lightgbm-skops"  # MLflow 3.17's default for sklearn-API LightGBM models
    mlflow.lightgbm.save_model(lgbm, d, input_example=X[:5], pip_requirements=["lightgbm"])
    out["lightgbm-sklearn-skops"] = (d, lgbm, X)
    booster, X = pc._lgbm_booster()
    d = tmp_path / "lightgbm-booster"
    mlflow.lightgbm.save_model(booster, d, input_example=X[:5])
    out["lightgbm-booster-native"] = (d, booster, X)
    xgb, X = pc._xgb_clf()
    d = tmp_path / "xgboost"
    mlflow.xgboost.save_model(xgb, d, input_example=X[:5])
    out["xgboost-native"] = (d, xgb, X)
    cb, X = pc._cb_reg()
    d = tmp_path / "catboost"
    mlflow.catboost.save_model(cb, d, input_example=X[:5])
    out["catboost-native"] = (d, cb, X)
    del catboost, lightgbm, xgboost
    return out


@pytest.fixture(scope="module")
def mlflow_sources(tmp_path_factory):
    return _mlflow_sources(tmp_path_factory.mktemp("mlflow-sources"))


@pytest.mark.parametrize("key", ["sklearn-pickle", "sklearn-cloudpickle", "lightgbm-sklearn-pickle",
                                 "lightgbm-sklearn-skops", "lightgbm-booster-native", "xgboost-native", "catboost-native"])
def test_mlflow_builtin_flavor_model_converts_using_its_input_example(tmp_path, mlflow_sources, key):
    from mlflow.models import Model

    src, model, sample = mlflow_sources[key]
    dest = tmp_path / "safe"
    result = convert(str(src), dest_path=dest)  # no sample: the source's input example is used
    assert result.rows_compared == 5
    _same_predictions(dest, model, sample[:40])
    source_meta, converted = Model.load(str(src)), Model.load(str(dest))
    assert "safeflavor" in converted.flavors
    assert converted.saved_input_example_info is not None
    if source_meta.signature is not None:
        assert converted.signature.inputs == source_meta.signature.inputs


def test_scan_source_looks_inside_mlflow_models(mlflow_sources, tmp_path):
    from mlflow_safeflavor.migrate import scan_source

    pickled = scan_source(str(mlflow_sources["sklearn-cloudpickle"][0]))
    assert pickled.ok and "sklearn flavor, cloudpickle" in pickled.container
    assert "sklearn.linear_model._logistic.LogisticRegression" in {f.name for f in pickled.findings}
    native = scan_source(str(mlflow_sources["xgboost-native"][0]))
    assert native.ok and not native.findings and "nothing to unpickle" in native.format()
    evil = tmp_path / "evil"
    shutil.copytree(mlflow_sources["sklearn-pickle"][0], evil)
    (evil / "model.pkl").write_bytes(pc.MALICIOUS["timeit"][0](tmp_path / "MARKER"))
    res = CliRunner().invoke(main, ["scan", str(evil)])
    assert res.exit_code == 1 and "timeit.timeit" in res.output and "REFUSED" in res.output
    assert not (tmp_path / "MARKER").exists()


def test_crafted_lightgbm_text_in_a_pickle_is_refused_before_native_code(tmp_path):
    """A LightGBM Booster pickle whose model text is corrupt (the raw library aborts: SIGABRT)."""
    booster, X = pc._lgbm_booster()
    data = pickle.dumps(booster, protocol=4)
    m = re.search(rb"tree_sizes=(\d)", data)
    bad = data[: m.start(1)] + (b"9" if m.group(1) != b"9" else b"1") + data[m.end(1):]
    path = tmp_path / "booster.pkl"
    path.write_bytes(bad)
    dest = tmp_path / "out"
    with pytest.raises(ConversionError) as err:
        convert(path, dest_path=dest, sample_input=X[:5])
    assert "LightGBM Booster model text" in err.value.message and "crashed" not in err.value.message
    assert not dest.exists()


def test_native_crash_inside_an_allowed_class_is_contained(tmp_path):
    """A pickled XGBoost Booster with one corrupted tree byte: the raw library segfaults at predict."""
    booster, X = pc._xgb_booster()
    data = bytearray(pickle.dumps(booster, protocol=4))
    data[data.find(b"left_children") + 40] = 0x7F
    path = tmp_path / "booster.pkl"
    path.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ConversionError) as err:
        convert(path, dest_path=dest, sample_input=X[:5])
    assert "SIGSEGV" in err.value.message or "crashed" in err.value.message
    assert not dest.exists()


def test_conversion_time_is_bounded(tmp_path):
    path, _, sample = pc.dump_benign(pc.BENIGN[0], tmp_path)
    with pytest.raises(ConversionError, match="did not finish within"):
        convert(path, dest_path=tmp_path / "out", sample_input=sample, timeout=0.5)
    assert not (tmp_path / "out").exists()


def test_bare_pickle_needs_a_sample_or_synthetic(tmp_path):
    path, model, _ = pc.dump_benign(pc.BENIGN[7], tmp_path)  # xgb_classifier, no example anywhere
    with pytest.raises(InvalidArgumentError, match="no sample input"):
        convert(path, dest_path=tmp_path / "out")
    result = convert(path, dest_path=tmp_path / "out", sample_input="synthetic")
    assert result.rows_compared == 64
    rows = np.random.default_rng(1).standard_normal((20, 6))
    _same_predictions(tmp_path / "out", model, rows)


def test_existing_destination_is_refused_before_any_work(tmp_path):
    path, _, sample = pc.dump_benign(pc.BENIGN[0], tmp_path)
    (tmp_path / "taken").mkdir()
    with pytest.raises(InvalidArgumentError, match="already exists"):
        convert(path, dest_path=tmp_path / "taken", sample_input=sample)


def test_already_safe_model_is_not_converted(tmp_path):
    import mlflow_safeflavor

    model, sample = pc._svc()
    mlflow_safeflavor.save_model(model, tmp_path / "safe", input_example=sample[:3])
    with pytest.raises(InvalidArgumentError, match="already stored with mlflow-safeflavor"):
        convert(str(tmp_path / "safe"), dest_path=tmp_path / "again")


def test_cli_convert_file_with_sample_csv(tmp_path):
    path, model, sample = pc.dump_benign(pc.BENIGN[3], tmp_path)  # column pipeline with strings
    sample.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "converted"
    res = CliRunner().invoke(main, ["convert", str(path), "--output", str(out), "--sample", str(tmp_path / "sample.csv")])
    assert res.exit_code == 0, res.output
    assert "identical predict" in res.output and str(out) in res.output
    _same_predictions(out, model, pd.read_csv(tmp_path / "sample.csv"))


def test_cli_convert_refusal_is_one_clear_error(tmp_path):
    evil = tmp_path / "evil.pkl"
    marker = tmp_path / "MARKER"
    evil.write_bytes(pc.MALICIOUS["os_system_reduce"][0](marker))
    res = CliRunner().invoke(main, ["convert", str(evil), "--output", str(tmp_path / "o"), "--sample", __file__])
    assert res.exit_code == 1
    assert "posix.system" in res.output and "refused before unpickling" in res.output
    assert "Traceback" not in res.output and not marker.exists() and not (tmp_path / "o").exists()


# ------------------------------------------------------------ MLflow's default LightGBM format: skops

def test_mlflow_default_lightgbm_skops_model_is_skops_and_converts(tmp_path, mlflow_sources):
    """``mlflow.lightgbm.save_model(LGBMClassifier)`` writes skops; it converts under the converter's allowlist."""
    src, model, sample = mlflow_sources["lightgbm-sklearn-skops"]
    assert "serialization_format: skops" in (src / "MLmodel").read_text()
    dest = tmp_path / "safe"
    result = convert(str(src), dest_path=dest, sample_input=sample[:40])
    assert result.source_format == "lightgbm flavor, skops" and result.rows_compared == 40
    assert {"predict", "predict_proba"} <= set(result.methods)
    _same_predictions(dest, model, sample[:40])
    check = verify_model(str(dest))
    assert check.ok, [c.detail for c in check.failures]
    assert not list(dest.rglob("*.skops"))  # stored natively (model.txt), no skops left


def test_scan_of_a_lightgbm_skops_model_says_what_it_judged(mlflow_sources):
    src = mlflow_sources["lightgbm-sklearn-skops"][0]
    res = CliRunner().invoke(main, ["scan", str(src)])
    assert res.exit_code == 0, res.output
    assert "nothing to unpickle" not in res.output and "skops" in res.output
    assert "lightgbm.sklearn.LGBMClassifier" in res.output and "model class the lightgbm codec stores natively" in res.output
    assert "model text(s) pass the LightGBM structure check" in res.output
    assert "verdict: every type is allowed" in res.output


def _skops_variant(src, tmp_path, edit):
    import hostile

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "model.skops").write_bytes(hostile._rewrite_schema((bad / "model.skops").read_bytes(), edit))
    return bad


def _booster_state(schema):
    return schema["content"]["content"]["_Booster"]["content"]["content"]


def test_crafted_lightgbm_text_in_a_skops_source_is_refused_before_native_code(tmp_path, mlflow_sources):
    """``tree_sizes`` off by one: LightGBM aborts the process (SIGABRT); the validator refuses first."""
    src, _, sample = mlflow_sources["lightgbm-sklearn-skops"]

    def corrupt(schema):
        handle = _booster_state(schema)["_handle"]
        text = json.loads(handle["content"])
        m = re.search(r"tree_sizes=(\d)", text)
        handle["content"] = json.dumps(text[: m.start(1)] + ("9" if m.group(1) != "9" else "1") + text[m.end(1):])
        return schema

    bad = _skops_variant(src, tmp_path, corrupt)
    scan = CliRunner().invoke(main, ["scan", str(bad)])
    assert scan.exit_code == 1 and "LightGBM Booster model text" in scan.output and "PROBLEM" in scan.output
    with pytest.raises(ConversionError) as err:
        convert(str(bad), dest_path=tmp_path / "out", sample_input=sample[:5])
    assert "LightGBM Booster model text" in err.value.message and "crashed" not in err.value.message
    assert not (tmp_path / "out").exists()


def test_booster_text_hidden_behind_another_node_kind_is_refused(tmp_path, mlflow_sources):
    """The model text must be a plain JSON string: any other node would reach LightGBM unchecked."""
    src, _, sample = mlflow_sources["lightgbm-sklearn-skops"]

    def wrap(schema):
        state = _booster_state(schema)
        state["_handle"] = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                            "content": [state["_handle"]]}
        return schema

    bad = _skops_variant(src, tmp_path, wrap)
    with pytest.raises(ConversionError, match="is not the model text as a string"):
        convert(str(bad), dest_path=tmp_path / "out", sample_input=sample[:5])


def test_skops_source_types_are_judged_by_the_converter_not_mlmodel(tmp_path, mlflow_sources, monkeypatch):
    """A type outside the converter's allowlist is refused before anything is imported (marker file),
    whatever MLmodel's ``skops_trusted_types`` claims; trusting it explicitly does run its module."""
    src, _, sample = mlflow_sources["lightgbm-sklearn-skops"]
    marker = tmp_path / "MARKER"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil(dict):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))

    def retarget(schema):
        factory = _booster_state(schema)["best_score"]["content"]["default_factory"]
        factory["__module__"], factory["__class__"] = "evilmod", "Evil"
        return schema

    bad = _skops_variant(src, tmp_path, retarget)
    mlmodel = (bad / "MLmodel").read_text().replace("- collections.OrderedDict", "- collections.OrderedDict\n    - evilmod.Evil")
    (bad / "MLmodel").write_text(mlmodel)
    scan = CliRunner().invoke(main, ["scan", str(bad)])
    assert scan.exit_code == 1 and "REFUSED  evilmod.Evil" in scan.output
    with pytest.raises(UntrustedTypesError) as err:
        convert(str(bad), dest_path=tmp_path / "out", sample_input=sample[:5])
    assert "evilmod.Evil" in err.value.message and err.value.types == ["evilmod.Evil"]
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The same file with the type trusted by the operator: skops imports the module (the marker
    # appears), which is what the refusal above prevented.
    try:
        convert(str(bad), dest_path=tmp_path / "out2", sample_input=sample[:5], trusted_types=["evilmod.Evil"])
    except SafeFlavorError:
        pass  # whether the rest converts does not matter here; that the module ran does
    assert marker.exists()
