"""The serving tests with the ONNX backend on: real ``mlflow models serve`` and the hardened
``mlflow-safeflavor serve``, on models saved with ``onnx="auto"`` — and, at the end, exports that
``mlflow-safeflavor serve --backend auto|onnx`` derives for models saved with default arguments.

The zoo's pipeline, XGBoost and LightGBM classifiers get an export that agreed at save time, so
the servers answer with onnxruntime; the CatBoost classifier has a categorical column, gets no
export (CatBoost's exporter takes numbers only) and is served natively. Labels must equal the
in-memory model's exactly; probabilities from the export are float32 values (widened to float64
in the JSON), within the recorded tolerance of the native ones — and exactly the native ones
with ``params={"backend": "native"}``, which proves the per-call switch survives MLflow's
parameter handling. Helpers (payloads, process control) are those of test_serving.py.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml
from serverproc import free_port as _free_port  # noqa: E402
from serverproc import stop_group as _stop  # noqa: E402
from test_serving import (
    FORMATS,
    SAFE_ENV,
    Server,
    _env,
    _launch,
    _ping,
    _rows,
    _safeflavor_cmd,
    assert_mlflow_error,
    assert_predictions,
    expected,
    payload,
    post,
)

import mlflow_safeflavor
from mlflow_safeflavor.export import ATOL, RTOL

LIBS = ("sklearn_pipeline", "xgboost", "lightgbm", "catboost")  # keys of conftest.SELECTED_CASES
EXPORTED = ("sklearn_pipeline", "xgboost", "lightgbm")
SERVERS: dict[str, tuple[str, str]] = {
    **{f"mlflow-{lib}": ("mlflow", lib) for lib in LIBS},
    "safe-sklearn_pipeline": ("safe", "sklearn_pipeline"),
    "safe-lightgbm": ("safe", "lightgbm"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("serving-onnx")


@pytest.fixture(scope="module")
def saved(zoo_cases, workdir):
    """Each model saved with onnx="auto" and an input example."""
    out = {}
    for lib in LIBS:
        case = zoo_cases[lib]
        path = workdir / "models" / lib
        mlflow_safeflavor.save_model(case.model, path, input_example=case.X[:5], onnx="auto")
        section = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["safeflavor"]
        assert ("onnx" in section) == (lib in EXPORTED), (lib, section.get("onnx"))
        out[lib] = path
    return out


@pytest.fixture(scope="module")
def fleet(saved, workdir):
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    servers: dict[str, Server] = {}
    try:
        for name, (kind, lib) in SERVERS.items():
            port = _free_port()
            if kind == "mlflow":
                cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(saved[lib]),
                       "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
                env = _env()
            else:
                cmd = [*_safeflavor_cmd(), "serve", str(saved[lib]), "--host", "127.0.0.1", "--port", str(port)]
                env = _env(**SAFE_ENV)
            servers[name] = Server(name, port, _launch(cmd, env, logs / f"{name}.log", cwd=workdir), logs / f"{name}.log")
        yield servers
    finally:
        for server in servers.values():
            _stop(server.proc)


@pytest.fixture
def server(fleet, request) -> Server:
    return fleet[request.param].wait()


def _servers(libs=LIBS):
    return [pytest.param(n, id=n) for n, (_, lib) in SERVERS.items() if lib in libs]


def _lib(server: Server) -> str:
    return SERVERS[server.name][1]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("server", _servers(), indirect=True)
def test_labels_identical_in_every_format(server, fmt, zoo_cases):
    case = zoo_cases[_lib(server)]
    body, ctype = payload(_rows(case.X), fmt)
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, f"{server.name} {fmt}: {status} {text[:500]}"
    assert_predictions(expected(case), json.loads(text)["predictions"], f"{server.name} {fmt}")


@pytest.mark.parametrize("server", _servers(), indirect=True)
def test_probabilities_from_the_export_and_from_the_checkpoint(server, zoo_cases):
    case = zoo_cases[_lib(server)]
    want = expected(case, "predict_proba")
    body, ctype = payload(_rows(case.X), "dataframe_split", params={"predict_method": "predict_proba"})
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, text[:500]
    got = np.asarray(json.loads(text)["predictions"], dtype=np.float64)
    if _lib(server) in EXPORTED:
        # auto: the export or the native model, whichever the recorded crossover picks for this batch.
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        body, ctype = payload(_rows(case.X), "dataframe_split", params={"predict_method": "predict_proba", "backend": "onnx"})
        status, text, _ = post(server.url, body, ctype)
        got = np.asarray(json.loads(text)["predictions"], dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        assert np.array_equal(got.astype(np.float32).astype(np.float64), got), "not onnxruntime's float32 output"
        assert not np.array_equal(got, want)
    else:
        assert_predictions(want, got, server.name)
    body, ctype = payload(_rows(case.X), "dataframe_split", params={"predict_method": "predict_proba", "backend": "native"})
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, text[:500]
    assert_predictions(want, json.loads(text)["predictions"], f"{server.name} backend=native")


@pytest.mark.parametrize("server", _servers(), indirect=True)
def test_backend_errors_are_mlflow_400s(server, zoo_cases):
    case = zoo_cases[_lib(server)]
    X = _rows(case.X)
    body, ctype = payload(X, "dataframe_split", params={"backend": "tensorrt"})
    assert_mlflow_error(*post(server.url, body, ctype), "backend")
    body, ctype = payload(X, "dataframe_split", params={"backend": "onnx", "predict_method": "predict_log_proba"})
    status, text, ctype_out = post(server.url, body, ctype)
    if _lib(server) == "catboost":
        assert_mlflow_error(status, text, ctype_out, "backend='onnx'", "no usable ONNX export")
    elif hasattr(case.model, "predict_log_proba"):
        assert_mlflow_error(status, text, ctype_out, "backend='onnx'", "covers")
    else:  # the XGBoost/LightGBM wrappers have no predict_log_proba at all
        assert_mlflow_error(status, text, ctype_out, "has no such method")
    # A column missing is still MLflow's schema error, whichever backend would have answered.
    body, ctype = payload(X.drop(columns=[X.columns[0]]), "dataframe_split")
    assert_mlflow_error(*post(server.url, body, ctype), str(X.columns[0]))
    assert _ping(server.url)


@pytest.mark.parametrize("server", _servers(EXPORTED), indirect=True)
def test_backend_onnx_explicitly(server, zoo_cases):
    case = zoo_cases[_lib(server)]
    body, ctype = payload(_rows(case.X), "inputs_records", params={"backend": "onnx"})
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, text[:500]
    assert_predictions(expected(case), json.loads(text)["predictions"], f"{server.name} backend=onnx")


# ------------------------------------------------------------------ exports derived at serve time


@pytest.fixture(scope="module")
def derived(zoo_cases, workdir):
    """``serve --backend auto`` twice on an XGBoost model saved with default arguments (no
    export), one cache: the first server derives the export, the second (two uvicorn workers,
    each loading the model) finds it cached."""
    case = zoo_cases["xgboost"]
    path = workdir / "models" / "xgboost-plain"
    mlflow_safeflavor.save_model(case.model, path, input_example=case.X[:5])
    assert not (path / "model.onnx").exists()
    env = _env(**SAFE_ENV, MLFLOW_SAFEFLAVOR_CACHE_DIR=str(workdir / "cache"))
    servers = []
    try:
        for name, workers in (("derives", "1"), ("reuses", "2")):
            port = _free_port()
            log = workdir / "logs" / f"derived-{name}.log"
            log.parent.mkdir(exist_ok=True)
            cmd = [*_safeflavor_cmd(), "serve", str(path), "--backend", "auto", "--workers", workers,
                   "--host", "127.0.0.1", "--port", str(port)]
            servers.append(Server(name, port, _launch(cmd, env, log, cwd=workdir), log).wait())
        yield servers
    finally:
        for server in servers:
            _stop(server.proc)


def test_serve_derives_an_export_for_a_model_saved_without_one(derived, zoo_cases, workdir):
    case = zoo_cases["xgboost"]
    want = expected(case, "predict_proba")
    for server in derived:
        for _ in range(4):  # the second server's requests go to either of its workers
            body, ctype = payload(_rows(case.X), "dataframe_split", params={"predict_method": "predict_proba", "backend": "onnx"})
            status, text, _ = post(server.url, body, ctype)
            assert status == 200, text[:500]
            got = np.asarray(json.loads(text)["predictions"], dtype=np.float64)
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
            assert np.array_equal(got.astype(np.float32).astype(np.float64), got), "not onnxruntime's float32 output"
        body, ctype = payload(_rows(case.X), "dataframe_split")
        status, text, _ = post(server.url, body, ctype)
        assert_predictions(expected(case), json.loads(text)["predictions"], f"{server.name} labels")
    first, second = (s.log.read_text(errors="replace") for s in derived)
    assert "derived an ONNX export" in first and "derived an ONNX export" not in second, second[-2000:]
    assert len(list((workdir / "cache" / "onnx").iterdir())) == 1


def test_serve_backend_onnx_refuses_to_start_without_an_export_form(zoo_cases, workdir):
    """CatBoost with a categorical column has no ONNX form: --backend onnx exits 1 before listening."""
    import subprocess

    case = zoo_cases["catboost"]
    path = workdir / "models" / "catboost-plain"
    mlflow_safeflavor.save_model(case.model, path, input_example=case.X[:5])
    port = _free_port()
    cmd = [*_safeflavor_cmd(), "serve", str(path), "--backend", "onnx", "--host", "127.0.0.1", "--port", str(port)]
    out = subprocess.run(cmd, env=_env(**SAFE_ENV, MLFLOW_SAFEFLAVOR_CACHE_DIR=str(workdir / "cache-cb")),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "no ONNX export can be derived" in out.stderr and "numerical features only" in out.stderr
    assert str(path) in out.stderr  # the model the user named, not the private copy
