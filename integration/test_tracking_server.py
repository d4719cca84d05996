"""End-to-end tests against a real MLflow tracking server with a model registry and proxied artifacts.

Each selected model (one per library, see ``conftest.SELECTED_CASES``) is logged and registered
through the server, then loaded back by ``models:/<name>/1`` and by ``info.model_uri`` with all
three loaders; the registered artifacts are scanned for pickle; tampered copies are refused; and a
fresh consumer process loads every model from the registry.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from helpers import as_array, iter_blobs, pickle_findings  # tests/helpers.py, on sys.path via conftest

import mlflow_safeflavor
from mlflow_safeflavor import IntegrityError, SafeFlavorError, UntrustedTypesError

# ---------------------------------------------------------------------------------- helpers


def assert_identical(expected: Any, actual: Any, what: str) -> None:
    """Same shape and exactly equal values (class labels or floats, no tolerance)."""
    e, a = as_array(expected), as_array(actual)
    assert e.shape == a.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if e.dtype.kind in "fc" or a.dtype.kind in "fc":
        np.testing.assert_array_equal(a.astype(float), e.astype(float), err_msg=what)
    else:
        assert a.tolist() == e.tolist(), f"{what}: predictions differ"


def expected_predictions(case) -> dict[str, np.ndarray]:
    return {m: as_array(getattr(case.model, m)(case.X)) for m in ("predict", "predict_proba")}


def scan_for_pickle(root: Path) -> tuple[list[str], list[str]]:
    names, findings = [], []
    for name, data in iter_blobs(root):
        names.append(name)
        findings += pickle_findings(name, data)
    return names, findings


def safeflavor_section(model_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["safeflavor"]


def rewrite_mlmodel(model_dir: Path, edit) -> None:
    path = model_dir / "MLmodel"
    doc = yaml.safe_load(path.read_text())
    edit(doc["flavors"]["safeflavor"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def craft_skops_opening(skops_bytes: bytes, marker: Path) -> bytes:
    """Return ``skops_bytes`` with one extra estimator attribute whose *construction* runs
    ``builtins.open(marker, "w")`` (a LossNode, which calls its constructor with the stored args).

    Loading this with skops while trusting ``builtins.open`` creates ``marker``, so the marker's
    absence shows that nothing of the payload was built.
    """

    def text(s: str) -> dict:
        return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
                "content": json.dumps(s), "is_json": True}

    node = {
        "__class__": "open",
        "__module__": "builtins",
        "__loader__": "LossNode",
        "__reduce__": {"args": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                                "content": [text(str(marker)), text("w")]}},
        "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {},
                    "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                                  "content": []}},
    }
    src = zipfile.ZipFile(io.BytesIO(skops_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "schema.json":
                schema = json.loads(content)
                attrs = schema["content"]  # the estimator's __dict__ (a DictNode)
                attrs["content"]["_opened"] = node
                attrs["key_types"]["content"].append(
                    {"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode"}
                )
                content = json.dumps(schema).encode()
            dst.writestr(info.filename, content)
    return out.getvalue()


# ------------------------------------------------------------------ 1. log, register, load back


def test_log_register_and_load_back_through_server(registry, key, mlflow_server):
    # Logs inside mlflow.start_run() and registers as version 1 (see conftest.Registry.get).
    registered = registry.get(key)
    info, case = registered.info, registered.case

    # Registered as version 1, artifacts stored through the server's proxy.
    assert int(info.registered_model_version) == 1
    version = mlflow.MlflowClient().get_model_version(registered.name, "1")
    assert version.status == "READY"
    artifact_location = mlflow.get_logged_model(info.model_id).artifact_location
    assert artifact_location.startswith("mlflow-artifacts:/"), artifact_location
    assert mlflow.get_run(registered.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    on_server = [p for p in mlflow_server.artifacts.rglob("MLmodel") if info.model_id in p.parts]
    assert on_server, f"no MLmodel for {info.model_id} under --artifacts-destination {mlflow_server.artifacts}"
    assert "safeflavor" in info.flavors and info.flavors["python_function"]["loader_module"] == "mlflow_safeflavor"

    expected = expected_predictions(case)
    for uri in (registered.registry_uri, info.model_uri):
        native = mlflow_safeflavor.load_model(uri)
        assert type(native) is type(case.model)
        for method, want in expected.items():
            assert_identical(want, getattr(native, method)(case.X), f"load_model({uri}).{method}")

        for loader in (mlflow_safeflavor.load_pyfunc, mlflow.pyfunc.load_model):
            pf = loader(uri)
            what = f"{loader.__module__}.{loader.__name__}({uri})"
            assert isinstance(pf._model_impl, mlflow_safeflavor.SafeFlavorPyfunc), what
            assert_identical(expected["predict"], pf.predict(case.X), f"{what}.predict")
            assert_identical(
                expected["predict_proba"],
                pf.predict(case.X, params={"predict_method": "predict_proba"}),
                f"{what}.predict(predict_method=predict_proba)",
            )


# ------------------------------------------------------------------------ 2. no pickle anywhere


def test_pickle_scanner_detects_pickles(tmp_path):
    """The scanner used below is not vacuous: it finds raw pickles, pickles in zips, object .npy."""
    import pickle

    for proto in range(2, 6):
        assert pickle_findings("x", pickle.dumps({"a": 1}, protocol=proto))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert pickle_findings("x.npy", buf.getvalue())
    with zipfile.ZipFile(tmp_path / "m.skops", "w") as zf:
        zf.writestr("schema.json", "{}")
        zf.writestr("arr.npy", buf.getvalue())
        zf.writestr("blob.bin", pickle.dumps([1], protocol=4))
    _, findings = scan_for_pickle(tmp_path)
    assert len(findings) == 2, findings
    clean = io.BytesIO()
    np.save(clean, np.arange(3.0))
    assert not pickle_findings("ok.npy", clean.getvalue())


def test_registered_version_contains_no_pickle(registered, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(registered.registry_uri, dst_path=str(tmp_path)))
    section = safeflavor_section(local)
    names, findings = scan_for_pickle(local)
    assert not findings, findings
    # The scan covered the payload (and the skops zip members, for the sklearn codec).
    for payload in section["files"]:
        assert payload in names, (payload, names)
    if section["codec"] == "sklearn":
        assert any(n.startswith("model.skops!") for n in names), names
    assert "MLmodel" in names


# ---------------------------------------------------------------- 3. tampering is refused


def test_flipped_payload_byte_is_refused(registered, tmp_path):
    pristine = Path(mlflow.artifacts.download_artifacts(registered.registry_uri, dst_path=str(tmp_path / "dl")))
    files = list(safeflavor_section(pristine)["files"])
    assert files
    for name in files:
        model_dir = tmp_path / f"tampered-{name.replace('/', '_')}"
        shutil.copytree(pristine, model_dir)
        target = model_dir / name
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))

        with pytest.raises(IntegrityError, match="digest mismatch"):
            mlflow_safeflavor.load_model(str(model_dir))
        with pytest.raises(IntegrityError):
            mlflow_safeflavor.load_pyfunc(str(model_dir))
        with pytest.raises(SafeFlavorError) as exc_info:
            mlflow.pyfunc.load_model(str(model_dir))
        assert isinstance(exc_info.value, MlflowException)
        assert isinstance(exc_info.value, IntegrityError), repr(exc_info.value)

    # The untouched download still loads: the refusals above are due to the flipped byte.
    mlflow_safeflavor.load_model(str(pristine))


def _assert_untrusted_everywhere(model_dir: Path, *, loading_trusts: list[str] | None = None) -> None:
    for load in (mlflow_safeflavor.load_model, mlflow_safeflavor.load_pyfunc):
        with pytest.raises(UntrustedTypesError) as exc_info:
            load(str(model_dir), trusted_types=loading_trusts)
        assert "builtins.open" in exc_info.value.types, exc_info.value.types
    with pytest.raises(SafeFlavorError) as exc_info:
        mlflow.pyfunc.load_model(str(model_dir))
    assert isinstance(exc_info.value, UntrustedTypesError), repr(exc_info.value)
    assert isinstance(exc_info.value, MlflowException)


def test_mlmodel_widened_with_builtins_open_is_refused(registry, tmp_path):
    reg = registry.get("sklearn_pipeline")
    model_dir = Path(mlflow.artifacts.download_artifacts(reg.registry_uri, dst_path=str(tmp_path)))
    assert safeflavor_section(model_dir)["codec"] == "sklearn"
    rewrite_mlmodel(model_dir, lambda s: s["trusted_types"].append("builtins.open"))

    _assert_untrusted_everywhere(model_dir)
    # An operator allowing it on the loading side does not help: builtins.open is hard-denied.
    _assert_untrusted_everywhere(model_dir, loading_trusts=["builtins.open"])


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
def test_crafted_skops_payload_with_fixed_digest_never_runs(registry, tmp_path, monkeypatch, declare):
    """An attacker who controls the whole directory: live payload, matching digest, widened MLmodel."""
    import skops.io as sio

    from mlflow_safeflavor.integrity import sha256_digest

    reg = registry.get("sklearn_pipeline")
    model_dir = Path(mlflow.artifacts.download_artifacts(reg.registry_uri, dst_path=str(tmp_path / "model")))
    original = (model_dir / "model.skops").read_bytes()

    # Positive control: the crafted payload is live — skops, told to trust it, creates the marker.
    control_marker = tmp_path / "control-marker"
    control = craft_skops_opening(original, control_marker)
    needed = sio.get_untrusted_types(data=control)
    assert "builtins.open" in needed
    opened = sio.loads(control, trusted=needed)._opened
    opened.close()
    assert control_marker.exists(), "the crafted payload is not live; the refusal below would prove nothing"

    marker = tmp_path / "marker-must-not-exist"
    crafted = craft_skops_opening(original, marker)
    (model_dir / "model.skops").write_bytes(crafted)

    def edit(section):
        section["files"]["model.skops"] = sha256_digest(crafted)
        if declare:
            section["trusted_types"].append("builtins.open")

    rewrite_mlmodel(model_dir, edit)
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "builtins.open")  # operator mistake: still denied

    _assert_untrusted_everywhere(model_dir, loading_trusts=["builtins.open"])
    assert not marker.exists(), "the crafted payload was constructed: builtins.open ran"


# ---------------------------------------------------------------- 4. a fresh consumer process

_CONSUMER = r"""
import json, sys
import numpy as np
import pandas as pd
import mlflow.pyfunc

out = {}
for name, data in json.loads(sys.argv[1]).items():
    pf = mlflow.pyfunc.load_model(f"models:/{name}/1")
    X = pd.read_parquet(data)
    impl = type(pf._model_impl)
    out[name] = {
        "loader_module": pf.metadata.flavors["python_function"]["loader_module"],
        "impl": impl.__module__ + "." + impl.__qualname__,
        "predict": np.asarray(pf.predict(X)).tolist(),
        "predict_proba": np.asarray(pf.predict(X, params={"predict_method": "predict_proba"})).tolist(),
    }
print("RESULT=" + json.dumps(out))
"""


def test_fresh_process_loads_from_registry(registry, mlflow_server, tmp_path):
    regs = [registry.get(key) for key in registry.cases]  # every selected model
    inputs = {}
    for reg in regs:
        X = reg.case.X
        assert isinstance(X, pd.DataFrame)
        path = tmp_path / f"{reg.key}.parquet"
        X.to_parquet(path)
        inputs[reg.name] = str(path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    env["MLFLOW_TRACKING_URI"] = mlflow_server.url
    proc = subprocess.run(
        [sys.executable, "-c", _CONSUMER, json.dumps(inputs)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"consumer failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT="))
    results = json.loads(line[len("RESULT="):])

    for reg in regs:
        got = results[reg.name]
        assert got["loader_module"] == "mlflow_safeflavor"
        assert got["impl"] == "mlflow_safeflavor.flavor.SafeFlavorPyfunc"
        for method, want in expected_predictions(reg.case).items():
            assert_identical(want, np.asarray(got[method]), f"consumer {reg.key}.{method}")
