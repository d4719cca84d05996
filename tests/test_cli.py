"""The mlflow-safeflavor command line (run in-process through click's runner, and once for real)."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

import mlflow_safeflavor as sf
from mlflow_safeflavor.cli import main


def test_inspect_reports_codec_digests_and_decision(cases, tmp_path):
    sf.save_model(cases["sk_rf_clf"].model, tmp_path / "m")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "codec:          sklearn (RandomForestClassifier)" in out
    assert "[ok      ] model.skops  sha256:" in out
    assert "[ok      ] trees.safetensors  sha256:" in out  # format 2: the trees, so no Tree to trust
    assert "declared trust: (nothing beyond skops defaults)" in out
    assert "verdict:        would load" in out


def test_inspect_json_and_tampered_model_exit_1(cases, tmp_path):
    sf.save_model(cases["xgb_clf"].model, tmp_path / "m")
    payload = tmp_path / "m" / "model.ubj"
    payload.write_bytes(payload.read_bytes()[:-1] + b"\x00")
    result = CliRunner().invoke(main, ["inspect", "--json", str(tmp_path / "m")])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    status = {f["name"]: f["status"] for f in doc["files"]}
    assert status == {"model.ubj": "mismatch", "wrapper.json": "ok"} and doc["would_load"] is False


def test_inspect_shows_what_the_local_policy_would_need(tmp_path):
    import math

    import numpy as np
    from sklearn.preprocessing import FunctionTransformer

    sf.save_model(FunctionTransformer(func=math.fabs).fit(np.ones((2, 1))), tmp_path / "m", trusted_types=["math.fabs"])
    refused = CliRunner().invoke(main, ["inspect", str(tmp_path / "m")])
    assert refused.exit_code == 1 and "MLFLOW_SAFEFLAVOR_TRUSTED_TYPES=math.fabs" in refused.output
    allowed = CliRunner().invoke(main, ["inspect", "--trusted-types", "math.fabs", str(tmp_path / "m")])
    assert allowed.exit_code == 0, allowed.output


def test_inspect_of_a_non_safeflavor_model(cases, tmp_path):
    import mlflow.sklearn

    mlflow.sklearn.save_model(cases["sk_ridge"].model, tmp_path / "builtin")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "builtin")])
    assert result.exit_code == 1 and "no 'safeflavor' flavor" in result.output


def test_console_script_is_installed_and_reports_version():
    out = subprocess.run([sys.executable, "-m", "mlflow_safeflavor.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and sf.__version__ in out.stdout


def test_import_is_cheap_and_lazy():
    """Importing the package adds none of the model libraries, skops, pyspark, model-signing or ONNX.

    (``import mlflow`` itself may import pyspark when it is installed; only what we add counts.)
    """
    code = (
        "import sys, mlflow, mlflow.exceptions, mlflow.models; before = set(sys.modules); "
        "import mlflow_safeflavor; added = set(sys.modules) - before; "
        "print(sorted(m for m in ('xgboost','lightgbm','catboost','skops','sklearn','pyspark','model_signing', "
        "'onnx','onnxruntime','skl2onnx','onnxmltools') "
        "if any(a == m or a.startswith(m + '.') for a in added)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------- errors: one line, the fix, no traceback (issue 19)

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

EXE = str(Path(sys.executable).with_name("mlflow-safeflavor"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()  # MLflow may log INFO lines (creating a database) before it
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


@pytest.mark.parametrize("args", [
    ["verify", "{missing}"], ["inspect", "{missing}"], ["serve", "{missing}"], ["sign", "{missing}", "--key", "{key}"],
    ["scan", "{missing}"], ["convert", "{missing}", "--sample", "synthetic"],
])
def test_a_mistyped_path_is_one_line_naming_it(tmp_path, args):
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    missing = str(tmp_path / "mdoel")
    line = _one_line_error(CliRunner().invoke(main, [a.format(missing=missing, key=key) for a in args]))
    assert f"{missing}: no such file or directory" in line and "Pass" in line


@pytest.mark.parametrize("command", ["verify", "inspect", "serve", "sign"])
def test_an_mlflow_error_is_one_line_with_a_fix_and_debug_shows_it(tmp_path, monkeypatch, command):
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    args = [command, "runs:/0123456789abcdef0123456789abcdef/model"] + (["--key", str(key)] if command == "sign" else [])
    line = _one_line_error(CliRunner().invoke(main, args))
    assert "0123456789abcdef0123456789abcdef" in line and "not found" in line
    assert "Check the model URI" in line and "--debug" in line
    debug = CliRunner().invoke(main, ["--debug", *args])
    assert isinstance(debug.exception, MlflowException) and not isinstance(debug.exception, SystemExit)


def test_promote_against_a_registry_without_the_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    line = _one_line_error(CliRunner().invoke(main, ["promote", "no-such-model", "1", "--alias", "champion"]))
    assert "no-such-model" in line


def test_a_trusted_type_whose_package_is_missing_names_the_module_not_a_bad_file(tmp_path, monkeypatch):
    """The class is trusted but its package is not importable where the model loads: install it, not re-save."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    import numpy as np

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "teamscaler.py").write_text(
        "from sklearn.base import BaseEstimator, TransformerMixin\n"
        "class Scaler(TransformerMixin, BaseEstimator):\n"
        "    def fit(self, X, y=None):\n        return self\n"
        "    def transform(self, X):\n        return X * 2\n")
    monkeypatch.syspath_prepend(str(mods))
    import teamscaler

    X = np.random.default_rng(0).standard_normal((40, 3))
    model = make_pipeline(teamscaler.Scaler(), LogisticRegression()).fit(X, (X[:, 0] > 0).astype(int))
    sf.save_model(model, tmp_path / "m", trusted_types=["teamscaler.Scaler"])
    # Load in a fresh interpreter that cannot import the package (the usual case: another machine).
    res = subprocess.run([EXE, "verify", str(tmp_path / "m"), "--trusted-types", "teamscaler.Scaler"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "needs the Python module 'teamscaler' for teamscaler.Scaler" in res.stdout
    assert "install the package" in res.stdout and "Re-save" not in res.stdout
    with_path = subprocess.run([EXE, "verify", str(tmp_path / "m"), "--trusted-types", "teamscaler.Scaler"],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path,
                               env=dict(os.environ, PYTHONPATH=str(mods)))
    assert with_path.returncode == 0, with_path.stdout + with_path.stderr


def _start(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=dict(os.environ, **env), start_new_session=True)


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    import selectors

    seen, deadline = "", time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    while needle not in seen and time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=1):
            seen += proc.stderr.readline()
    return seen


def test_serve_says_where_it_listens_what_it_loaded_and_the_backend(cases, tmp_path):
    import urllib.request

    sf.save_model(cases["xgb_clf"].model, tmp_path / "m")
    port = _free_port()
    proc = _start(["serve", str(tmp_path / "m"), "--port", str(port), "--backend", "native"], tmp_path)
    try:
        seen = _read_until(proc, "mlflow-safeflavor serve on", 300)
        line = next(ln for ln in seen.splitlines() if "mlflow-safeflavor serve on" in ln)
        assert f"http://127.0.0.1:{port}/invocations" in line and str(tmp_path / "m") in line
        assert "XGBClassifier, xgboost codec" in line and "backend native" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as resp:  # printed once bound
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_ui_with_an_unreachable_tracking_server_fails_fast_in_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    res = subprocess.run([EXE, "ui", "--tracking-uri", f"http://127.0.0.1:{port}", "--port", str(_free_port())],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the tracking server http://127.0.0.1:{port} did not answer (connection refused)" in lines[0]
    assert "--tracking-uri" in lines[0]
    assert elapsed < 60, elapsed  # MLflow's own retry schedule alone is minutes


def test_ui_stops_promptly_on_ctrl_c(tmp_path):
    port = _free_port()
    proc = _start(["ui", "--port", str(port)], tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        assert "mlflow-safeflavor ui on" in _read_until(proc, "mlflow-safeflavor ui on", 300)
        _read_until(proc, "Uvicorn running", 60)
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
        rc = proc.wait(timeout=60)
        assert time.monotonic() - started < 15 and rc in (0, 130), rc
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
