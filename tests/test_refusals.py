"""Refusals: each hostile artifact raises a SafeFlavorError subclass and runs no code.

Every payload here is live — a sanity check shows skops (or pickle) *would* run it — so "no marker
file" is evidence, not decoration.
"""

from __future__ import annotations

import os
import shutil

import mlflow
import pytest
import skops.io as sio
from hostile import edit_mlmodel, pickle_that_touches, replace_payload, skops_calling

import mlflow_safeflavor as sf
from mlflow_safeflavor.errors import (
    IntegrityError,
    MalformedArtifactError,
    SafeFlavorError,
    UntrustedTypesError,
)

LOADERS = {
    "load_model": lambda p, **kw: sf.load_model(str(p), **kw),
    "load_pyfunc": lambda p, **kw: sf.load_pyfunc(str(p), **kw),
    "mlflow.pyfunc": lambda p, **kw: mlflow.pyfunc.load_model(str(p)),
}


@pytest.fixture
def sk_model(cases, tmp_path):
    path = tmp_path / "sk"
    sf.save_model(cases["sk_pipeline_ct_lr"].model, path)
    return path


@pytest.fixture
def open_payload(tmp_path):
    """A skops FunctionTransformer(func=builtins.open): transform(path) creates path."""
    data = skops_calling("builtins", "open")
    sanity = tmp_path / "sanity-marker"
    sio.loads(data, trusted=["builtins.open"]).transform(str(sanity))
    assert sanity.exists(), "the payload must be live for the refusal test to mean anything"
    return data


@pytest.mark.parametrize("loader", LOADERS)
def test_trust_list_widened_to_builtins_open_is_refused(loader, sk_model, open_payload, tmp_path):
    marker = tmp_path / "marker"
    replace_payload(sk_model, "model.skops", open_payload)
    edit_mlmodel(sk_model, lambda s: s.__setitem__("trusted_types", ["builtins.open"]))
    with pytest.raises(UntrustedTypesError) as err:
        model = LOADERS[loader](sk_model)
        model.transform(str(marker))  # pragma: no cover - only reached if the loader failed open
    assert "builtins.open" in str(err.value) and "hard-deny" in str(err.value)
    assert err.value.types == ["builtins.open"]
    assert not marker.exists()


def test_operator_cannot_re_allow_a_hard_denied_type(sk_model, open_payload, tmp_path, monkeypatch):
    replace_payload(sk_model, "model.skops", open_payload)
    edit_mlmodel(sk_model, lambda s: s.__setitem__("trusted_types", ["builtins.open"]))
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "builtins.open")
    with pytest.raises(UntrustedTypesError, match="hard-deny"):
        sf.load_model(str(sk_model), trusted_types=["builtins.open"])


def test_payload_needing_more_than_mlmodel_declares_is_refused(sk_model, tmp_path):
    """The claim must cover the need: a payload with io.open under an empty trust list."""
    replace_payload(sk_model, "model.skops", skops_calling("io", "open"))
    with pytest.raises(UntrustedTypesError, match="not declared in MLmodel") as err:
        sf.load_model(str(sk_model))
    assert "io.open" in err.value.types


@pytest.mark.parametrize("loader", LOADERS)
def test_changed_byte_in_model_file_is_refused(loader, cases, tmp_path):
    for name, fname in [("sk_rf_clf", "model.skops"), ("xgb_clf", "model.ubj"), ("lgb_clf", "model.txt"), ("cb_clf_cat", "model.cbm")]:
        path = tmp_path / name
        sf.save_model(cases[name].model, path)
        data = bytearray((path / fname).read_bytes())
        data[len(data) // 2] ^= 0x01
        (path / fname).write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match="digest mismatch"):
            LOADERS[loader](path)


def test_changed_wrapper_json_is_refused(cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["lgb_clf"].model, path)
    (path / "wrapper.json").write_text((path / "wrapper.json").read_text().replace('"_n_classes": 3', '"_n_classes": 2'))
    with pytest.raises(IntegrityError):
        sf.load_model(str(path))


@pytest.mark.parametrize("model_class", ["os.system", "system", "posix.system", "xgboost.core.Booster", ""])
def test_model_class_pointing_at_a_module_is_refused(model_class, cases, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "m"
    sf.save_model(cases["xgb_clf"].model, path)
    edit_mlmodel(path, lambda s: s.__setitem__("model_class", model_class))
    with pytest.raises(MalformedArtifactError, match="model_class"):
        sf.load_model(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("codec", ["pickle", "cloudpickle", "os", "mlflow_safeflavor.codecs.sklearn", None, 3])
def test_unknown_codec_is_refused(codec, cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    edit_mlmodel(path, lambda s: s.__setitem__("codec", codec))
    with pytest.raises(MalformedArtifactError, match="unknown codec"):
        sf.load_model(str(path))


@pytest.mark.parametrize("fname", ["model.skops", "model.ubj", "model.txt", "model.cbm"])
def test_payload_swapped_for_a_pickle_is_refused(fname, cases, tmp_path):
    """The attacker recomputes the digest: the bytes still never reach an unpickler."""
    name = {"model.skops": "sk_rf_clf", "model.ubj": "xgb_clf", "model.txt": "lgb_clf", "model.cbm": "cb_clf_cat"}[fname]
    marker = tmp_path / "marker"
    path = tmp_path / "m"
    sf.save_model(cases[name].model, path)
    replace_payload(path, fname, pickle_that_touches(marker))
    with pytest.raises(MalformedArtifactError):
        sf.load_model(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "files",
    [{"../outside": "sha256:" + "0" * 64}, {"/etc/passwd": "sha256:" + "0" * 64}, {"a\\b": "sha256:" + "0" * 64}],
)
def test_path_escapes_in_mlmodel_are_refused(files, cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    edit_mlmodel(path, lambda s: s.__setitem__("files", files))
    with pytest.raises(IntegrityError, match="not a plain relative file name"):
        sf.load_model(str(path))


def test_symlinked_payload_is_refused(cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    shutil.move(path / "model.skops", tmp_path / "elsewhere.skops")
    os.symlink(tmp_path / "elsewhere.skops", path / "model.skops")
    with pytest.raises(IntegrityError, match="symlink"):
        sf.load_model(str(path))


def test_missing_payload_is_refused(cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["cb_reg"].model, path)
    (path / "model.cbm").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        sf.load_model(str(path))


def test_model_without_safeflavor_section_is_refused(tmp_path, cases):
    import mlflow.sklearn

    mlflow.sklearn.save_model(cases["sk_ridge"].model, tmp_path / "builtin")
    with pytest.raises(MalformedArtifactError, match="no 'safeflavor' flavor"):
        sf.load_model(str(tmp_path / "builtin"))


def test_wrapper_json_with_unknown_param_is_refused(cases, tmp_path):
    import json

    path = tmp_path / "m"
    sf.save_model(cases["xgb_clf"].model, path)
    doc = json.loads((path / "wrapper.json").read_text())
    doc["params"]["__class__"] = "os.system"
    replace_payload(path, "wrapper.json", json.dumps(doc).encode())
    with pytest.raises(MalformedArtifactError, match="does not have"):
        sf.load_model(str(path))


def test_every_refusal_is_an_mlflow_exception():
    from mlflow.exceptions import MlflowException

    for cls in (IntegrityError, MalformedArtifactError, UntrustedTypesError, sf.UnsupportedModelError, sf.SignatureError):
        assert issubclass(cls, SafeFlavorError) and issubclass(cls, MlflowException)


def test_unknown_record_keys_are_refused(tmp_path, cases):
    """A renamed ``components`` record must not load a pipeline without its boosted step (found by
    make fuzz; tests/fuzz_corpus/pipe_ct_xgb.jsonl). MLmodel is not digested, so removing the key
    outright is an attacker's edit like any other: signatures cover MLmodel."""
    from hostile import edit_mlmodel

    path = tmp_path / "m"
    sf.save_model(cases["pipe_ct_xgb"].model, path)
    edit_mlmodel(path, lambda s: s.__setitem__("c0mponents", s.pop("components")))
    with pytest.raises(MalformedArtifactError, match="c0mponents"):
        sf.load_model(str(path))


@pytest.mark.parametrize("loader", ["load_model", "load_pyfunc"])
@pytest.mark.parametrize("value", ["2001-13-45", "1" * 5000])
def test_mlmodel_scalar_python_cannot_build_is_refused(loader, value, cases, tmp_path):
    """YAML resolves these (a timestamp, an int) but Python cannot build them (month 13; an int
    past the 4,300-digit conversion limit): SafeConstructor raises ValueError, which used to
    leave the loaders untyped."""
    path = tmp_path / "m"
    sf.save_model(cases["lgb_clf"].model, path)
    text = (path / "MLmodel").read_text()
    assert "\nmlflow_version: " in text
    (path / "MLmodel").write_text(text.replace("\nmlflow_version: ", f"\nmlflow_version: {value}\nx_old: ", 1))
    with pytest.raises(MalformedArtifactError, match="MLmodel is not valid YAML"):
        LOADERS[loader](path)
