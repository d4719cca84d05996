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
    assert "declared trust: sklearn.tree._tree.Tree" in out
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
