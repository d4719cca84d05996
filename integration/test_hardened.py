"""Hardened mode end to end: MLflow's model-code switch off, our paths still serve verified models
and still refuse hostile ones, while MLflow's own paths refuse as MLflow intends.

The switch is ``MLFLOW_ALLOW_MODEL_CODE_EXECUTION=false`` on MLflow 3.18 (it refuses every pyfunc
model: a pyfunc model names the Python module that loads it) and
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` before (it refuses pickled and skops flavors only);
``_mlflow_compat.code_execution_variable()`` picks the one the installed MLflow reads. It is set
for this whole module — this process, the servers, the Spark workers, the conversion child and the
gate's smoke test all inherit it.

Both sides, per path:

=================================  ==============================  =================================
path                               our verified model              hostile / MLflow's own path
=================================  ==============================  =================================
load_model / load_pyfunc           predicts                        refused, no code ran
mlflow.pyfunc.load_model           3.18: refused; 3.17: loads      pickled sklearn model refused
mlflow-safeflavor serve            MLflow's scoring protocol       refused at start, port never open
mlflow models serve                3.18: refuses to start          pickled sklearn model: refuses
spark_udf (ours / MLflow's)        scores on executors             MLflow's fails in the task
promote + safeflavor-gate server   alias set                       403, alias not set, no code ran
convert, the web page's API        converts and verifies           hostile pickle refused unread
=================================  ==============================  =================================

"No code ran" is shown with marker files: a hostile model's ``loader_module`` (shipped in its
``code/`` directory) or a hostile pickle writes one when it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow.exceptions import MlflowException
from serverproc import free_port as _free_port  # noqa: E402
from serverproc import stop_group as _stop  # noqa: E402

# Helpers of the suites this one extends (imported, not copied): MLflow's scoring protocol and the
# server launchers of test_serving, the registry helpers of test_registry, Spark's session of
# test_spark, and the web page runner of tests/test_ui_api.
from test_registry import alias_of, assert_refused_by_plugin, log_safe, stored, train, unique, using  # noqa: E402
from test_serving import MARKER_MODULE, _env, _launch, _ping, _port_answers, _safeflavor_cmd, assert_predictions, payload, post  # noqa: E402
from test_spark import spark  # noqa: E402,F401  (the module-scoped local[2] session fixture)
from test_ui_api import HOSTILE as HOSTILE_PICKLES  # noqa: E402
from test_ui_api import _integration_fixtures, _npy, _serve  # noqa: E402
from test_ui_api import _stop as _stop_ui  # noqa: E402

import mlflow_safeflavor  # noqa: E402
from mlflow_safeflavor._mlflow_compat import code_execution_variable, mlflow_version  # noqa: E402
from mlflow_safeflavor.errors import PickleRefusedError, SafeFlavorError, UntrustedTypesError  # noqa: E402

SWITCH = code_execution_variable()
PYFUNC_GATED = mlflow_version() >= (3, 18)  # 3.18's switch refuses every pyfunc model, ours included
TIMEOUT = float(os.environ.get("SAFEFLAVOR_IT_SERVE_TIMEOUT", "300"))
N_ROWS = 12


@pytest.fixture(scope="module", autouse=True)
def hardened():
    """MLflow's switch off for this process (and everything it starts) for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SWITCH, "false")
        yield


def _hardened_env(**extra: str) -> dict[str, str]:
    """A child's environment: test_serving's (no MLFLOW_* of ours, the venv on PATH) plus the switch."""
    return _env(**{SWITCH: "false"}, **extra)


# ------------------------------------------------------------------------------------ models


@dataclass
class Models:
    ours: Path  # sklearn pipeline (ColumnTransformer + LR, string labels), safe flavor
    ours_xgb: Path  # XGBClassifier on six float columns, safe flavor
    native: Path  # the same pipeline saved by mlflow.sklearn (pickle)
    hostile_code: Path  # ours with loader_module swapped to a module shipped in code/
    hostile_payload: Path  # ours with a skops payload calling builtins.open, digest recomputed
    marker: Path  # written by hostile_code's module if it is ever imported


def _swap_loader_module(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose MLmodel loader_module is a module in ``code/`` that writes the marker
    named by ``$SAFEFLAVOR_IT_MARKER`` when imported (test_serving's hostile model, built from ours)."""
    shutil.copytree(src, dst)
    (dst / "code").mkdir()
    (dst / "code" / f"{MARKER_MODULE}.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SAFEFLAVOR_IT_MARKER']).write_text('artifact code ran')\n"
        "def _load_pyfunc(path, model_config=None):\n"
        "    raise RuntimeError('artifact code ran')\n"
    )
    doc = yaml.safe_load((dst / "MLmodel").read_text())
    doc["flavors"]["python_function"]["loader_module"] = MARKER_MODULE
    doc["flavors"]["python_function"]["code"] = "code"
    (dst / "MLmodel").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def _hostile_payload(model_dir: Path) -> None:
    """Replace the skops payload with one calling ``builtins.open``, digest recomputed (an attacker
    with write access to the artifact store)."""
    from hostile import replace_payload, skops_calling

    replace_payload(model_dir, "model.skops", skops_calling("builtins", "open"))


@pytest.fixture(scope="module")
def models(zoo_cases, tmp_path_factory) -> Models:
    """Saved with the switch already off: saving needs no model code either."""
    import mlflow.sklearn

    root = tmp_path_factory.mktemp("hardened-models")
    case, xgb = zoo_cases["sklearn_pipeline"], zoo_cases["xgboost"]
    mlflow_safeflavor.save_model(case.model, root / "ours", input_example=case.X[:5])
    mlflow_safeflavor.save_model(xgb.model, root / "ours-xgb", input_example=xgb.X[:5])
    mlflow.sklearn.save_model(case.model, root / "native", serialization_format="pickle",
                              pip_requirements=["scikit-learn"], input_example=case.X[:5])
    hostile_code = _swap_loader_module(root / "ours", root / "hostile-code")
    payload_dir = root / "hostile-payload"
    shutil.copytree(root / "ours", payload_dir)
    _hostile_payload(payload_dir)
    return Models(root / "ours", root / "ours-xgb", root / "native", hostile_code, payload_dir, root / "MARKER")


@pytest.fixture
def marker_env(models, monkeypatch) -> Path:
    monkeypatch.setenv("SAFEFLAVOR_IT_MARKER", str(models.marker))
    return models.marker


def _rows(X: Any) -> Any:
    return X.iloc[:N_ROWS].reset_index(drop=True)


# ------------------------------------------------------------------------- a: in-process loaders


def test_load_model_and_load_pyfunc_serve_verified_models(models, zoo_cases):
    assert os.environ[SWITCH] == "false"
    for key, path in (("sklearn_pipeline", models.ours), ("xgboost", models.ours_xgb)):
        case = zoo_cases[key]
        X = _rows(case.X)
        want = case.model.predict(X)
        assert_predictions(want, mlflow_safeflavor.load_model(str(path)).predict(X), f"load_model {key}")
        assert_predictions(want, mlflow_safeflavor.load_pyfunc(str(path)).predict(X), f"load_pyfunc {key}")


@pytest.mark.parametrize("loader", ["load_model", "load_pyfunc"])
@pytest.mark.parametrize("kind, error, needle", [
    ("hostile_code", SafeFlavorError, "loader_module"),
    ("hostile_payload", UntrustedTypesError, "builtins.open"),
])
def test_our_loaders_refuse_hostile_models_without_running_them(models, marker_env, loader, kind, error, needle):
    with pytest.raises(error) as info:
        getattr(mlflow_safeflavor, loader)(str(getattr(models, kind)))
    assert needle in info.value.message
    assert not marker_env.exists(), "code from the artifact ran"


def test_mlflow_pyfunc_load_model_obeys_the_switch(models, zoo_cases):
    """MLflow's own loader: the pickled sklearn model is refused on every release; ours is refused
    on 3.18 (every pyfunc model is) and, on 3.17, loads through our loader_module."""
    import mlflow.pyfunc

    with pytest.raises(MlflowException) as info:
        mlflow.pyfunc.load_model(str(models.native))
    assert SWITCH in info.value.message
    if PYFUNC_GATED:
        with pytest.raises(MlflowException) as info:
            mlflow.pyfunc.load_model(str(models.ours))
        assert SWITCH in info.value.message and "names the Python module" in info.value.message
    else:
        case = zoo_cases["sklearn_pipeline"]
        assert_predictions(case.model.predict(_rows(case.X)), mlflow.pyfunc.load_model(str(models.ours)).predict(_rows(case.X)),
                           "mlflow.pyfunc.load_model on 3.17")


def test_mlflow_pyfunc_load_model_and_an_artifacts_loader_module(models, tmp_path):
    """In a child process: 3.18's switch refuses before importing the artifact's loader_module; 3.17's
    (pickle only) imports it and runs its code — why hostile artifacts need our loader there."""
    marker = tmp_path / "MARKER"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, mlflow.pyfunc; mlflow.pyfunc.load_model(sys.argv[1])", str(models.hostile_code)],
        env=_hardened_env(SAFEFLAVOR_IT_MARKER=str(marker)), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode != 0
    if PYFUNC_GATED:
        assert SWITCH in proc.stderr, proc.stderr[-2000:]
        assert not marker.exists(), "MLflow 3.18 imported the artifact's loader_module with the switch off"
    else:
        assert marker.read_text() == "artifact code ran"


# ------------------------------------------------------------------------ b: serving over HTTP


@dataclass
class Launched:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    answered: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# name -> (command kind, model attribute, expected to serve)
SERVERS = {
    "safe-ours": ("safe", "ours", True),
    "safe-hostile-code": ("safe", "hostile_code", False),
    "safe-hostile-payload": ("safe", "hostile_payload", False),
    "mlflow-native": ("mlflow", "native", False),
    "mlflow-ours": ("mlflow", "ours", not PYFUNC_GATED),
}


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory) -> dict[str, Launched]:
    """Every server at once, hardened; each runs until it serves (``/ping``) or exits."""
    logs = tmp_path_factory.mktemp("hardened-serve")
    launched: dict[str, Launched] = {}
    try:
        for name, (kind, attr, _) in SERVERS.items():
            port = _free_port()
            model = str(getattr(models, attr))
            if kind == "safe":
                cmd = [*_safeflavor_cmd(), "serve", model, "--host", "127.0.0.1", "--port", str(port)]
            else:
                cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
                       "--host", "127.0.0.1", "--port", str(port)]
            log = logs / f"{name}.log"
            env = _hardened_env(SAFEFLAVOR_IT_MARKER=str(models.marker))
            launched[name] = Launched(name, _launch(cmd, env, log, cwd=logs), port, log)
        deadline = time.monotonic() + TIMEOUT
        pending = set(launched)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                server = launched[name]
                if server.proc.poll() is not None:
                    server.answered = server.answered or _port_answers(server.port)
                    pending.discard(name)
                elif _ping(server.url):
                    server.answered = True
                    pending.discard(name)
            time.sleep(0.25)
        assert not pending, f"neither served nor exited after {TIMEOUT:.0f}s: {sorted(pending)}"
        yield launched
    finally:
        for server in launched.values():
            _stop(server.proc)


def test_safe_serve_answers_mlflows_scoring_protocol(servers, zoo_cases):
    server = servers["safe-ours"]
    assert server.answered and server.proc.poll() is None, server.log.read_text(errors="replace")[-3000:]
    case = zoo_cases["sklearn_pipeline"]
    for fmt in ("dataframe_split", "dataframe_records", "csv"):
        status, text, _ = post(server.url, *payload(_rows(case.X), fmt))
        assert status == 200, f"{fmt}: {status} {text[:500]}"
        assert_predictions(case.model.predict(_rows(case.X)), json.loads(text)["predictions"], fmt)
    status, text, ctype = post(server.url, b'{"dataframe_split": 3}', "application/json")
    assert status == 400 and ctype.startswith("application/json") and "error_code" in json.loads(text)


@pytest.mark.parametrize("name", ["safe-hostile-code", "safe-hostile-payload"])
def test_safe_serve_refuses_hostile_models(servers, models, name):
    server = servers[name]
    log = server.log.read_text(errors="replace")
    assert server.proc.returncode not in (0, None) and not server.answered, log[-2000:]
    assert "error: " in log and "Traceback" not in log, log[-2000:]
    assert ("loader_module" if name.endswith("code") else "builtins.open") in log, log[-2000:]
    assert not models.marker.exists(), "code from the artifact ran"


@pytest.mark.parametrize("name", [n for n, (k, _, _) in SERVERS.items() if k == "mlflow"])
def test_mlflow_models_serve_obeys_the_switch(servers, zoo_cases, name):
    """``mlflow models serve`` refuses the pickled model on every release, and ours on 3.18."""
    server = servers[name]
    log = server.log.read_text(errors="replace")
    if SERVERS[name][2]:  # 3.17 serving ours: it loads through our loader_module
        case = zoo_cases["sklearn_pipeline"]
        status, text, _ = post(server.url, *payload(_rows(case.X), "dataframe_split"))
        assert status == 200, text[:500]
        assert_predictions(case.model.predict(_rows(case.X)), json.loads(text)["predictions"], name)
        return
    assert server.proc.returncode not in (0, None) and not server.answered, log[-2000:]
    assert SWITCH in log, log[-2000:]


# ----------------------------------------------------------------------------------- c: Spark


@pytest.fixture(scope="module")
def spark_rows(spark, zoo_cases):  # noqa: F811 (the imported fixture)
    """XGBoost's zoo rows as a one-partition Spark DataFrame; Spark's Python workers get the switch
    too (a UDF's environment is the context's ``environment``, whatever the JVM started with)."""
    spark.sparkContext.environment[SWITCH] = "false"
    pdf = zoo_cases["xgboost"].X.iloc[:200].reset_index(drop=True)
    return pdf, spark.createDataFrame(pdf).coalesce(1)


def test_safeflavor_spark_udf_scores_in_hardened_mode(spark, spark_rows, models, zoo_cases):  # noqa: F811 (the imported fixture)
    pdf, sdf = spark_rows
    udf = mlflow_safeflavor.spark_udf(spark, str(models.ours_xgb), result_type="long")
    got = sdf.select(udf(*pdf.columns).alias("p")).toPandas()["p"].to_numpy()
    assert_predictions(zoo_cases["xgboost"].model.predict(pdf), got, "safeflavor spark_udf")


def test_safeflavor_spark_udf_refuses_hostile_model_on_the_driver(spark, models, marker_env):  # noqa: F811 (the imported fixture)
    with pytest.raises(SafeFlavorError, match="loader_module"):
        mlflow_safeflavor.spark_udf(spark, str(models.hostile_code))
    assert not marker_env.exists()


def test_mlflow_spark_udf_obeys_the_switch_on_executors(spark, spark_rows, models):  # noqa: F811 (the imported fixture)
    """MLflow's UDF is created (the driver loads nothing) and its task refuses the model on 3.18
    (ours: every pyfunc model) and on 3.17 (the pickled one)."""
    import mlflow.pyfunc
    from pyspark.errors import PythonException

    pdf, sdf = spark_rows
    model = models.ours_xgb if PYFUNC_GATED else models.native
    cols = pdf.columns if PYFUNC_GATED else None
    if cols is None:  # the native model is the sklearn pipeline: its own columns
        from zoo import _data

        pdf = _data(20, seed=3)[4]
        sdf, cols = spark.createDataFrame(pdf).coalesce(1), list(pdf.columns)
    udf = mlflow.pyfunc.spark_udf(spark, str(model), result_type="string", env_manager="local")
    with pytest.raises(PythonException, match=SWITCH):
        sdf.select(udf(*cols)).collect()


# ---------------------------------------------------------------- d: promote and the gate plugin


@pytest.fixture(scope="module")
def gate(tmp_path_factory, models):
    """``mlflow server --app-name safeflavor-gate`` with the switch off; @champion is protected."""
    it = _integration_fixtures()
    server = it.start_mlflow_server(
        tmp_path_factory.mktemp("hardened-gate"), app_name="safeflavor-gate",
        extra_env={SWITCH: "false", "MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES": "champion",
                   "SAFEFLAVOR_IT_MARKER": str(models.marker)},
    )
    try:
        yield it.wait_healthy(server)
    finally:
        _stop(server.proc)


def test_promote_and_the_gate_work_in_hardened_mode(gate):
    with using(gate.url) as client:
        name = unique("hardened")
        model, X = train(7)
        _, version = log_safe(name, model, X)
        result = mlflow_safeflavor.promote(name, version, "champion")
        assert result.alias == "champion" and alias_of(client, name, "champion") == version
        loaded = mlflow_safeflavor.load_pyfunc(f"models:/{name}@champion")
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("attack", ["loader_module", "payload"])
def test_gate_refuses_hostile_versions_in_hardened_mode(gate, models, attack):
    with using(gate.url) as client:
        name = unique(f"hardened-{attack.replace('_', '-')}")
        model, X = train(8)
        info, version = log_safe(name, model, X)
        directory = stored(gate, info)
        if attack == "payload":
            _hostile_payload(directory)
        else:
            swapped = _swap_loader_module(directory, directory.parent / "swapped")
            shutil.rmtree(directory)
            swapped.rename(directory)
        with pytest.raises(mlflow_safeflavor.PromotionRejectedError):
            mlflow_safeflavor.promote(name, version, "champion")
        with pytest.raises(MlflowException) as refused:
            client.set_registered_model_alias(name, "champion", version)
        assert_refused_by_plugin(refused.value, name)
        assert alias_of(client, name, "champion") is None
    assert not models.marker.exists(), "code from the artifact ran (client or server)"


# ------------------------------------------------------------------ e: convert and the web page


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=300).fit(X, y), X


def test_convert_in_hardened_mode(iris, tmp_path):
    model, X = iris
    source = tmp_path / "model.pkl"
    source.write_bytes(pickle.dumps(model, protocol=5))
    result = mlflow_safeflavor.convert(source, dest_path=tmp_path / "converted", sample_input=X[:20])
    loaded = mlflow_safeflavor.load_model(str(tmp_path / "converted"))
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert result is not None

    marker = tmp_path / "MARKER"
    build, filename, finding = HOSTILE_PICKLES["os_system_reduce"]
    hostile = tmp_path / filename
    hostile.write_bytes(build(marker, tmp_path))
    with pytest.raises(PickleRefusedError, match=finding):
        mlflow_safeflavor.convert(hostile, dest_path=tmp_path / "never")
    assert not marker.exists() and not (tmp_path / "never").exists()


def test_web_page_api_in_hardened_mode(iris, tmp_path_factory):
    from mlflow_safeflavor.ui import UIConfig

    model, X = iris
    ui = _serve(UIConfig.from_env(tmp_dir=str(tmp_path_factory.mktemp("hardened-ui"))))
    try:
        r = ui.scan("iris.pkl", pickle.dumps(model, protocol=5), sample=("rows.npy", _npy(X), "application/octet-stream"))
        assert r.status_code == 200 and r.json()["scan"]["ok"], r.text
        job = ui.wait(ui.post("/api/convert", json={"upload_id": r.json()["upload_id"]}))
        assert job["state"] == "done", job["error"]
        assert job["result"]["verify"]["ok"]

        marker = tmp_path_factory.mktemp("hardened-ui-marker") / "MARKER"
        build, filename, _ = HOSTILE_PICKLES["joblib_zlib"]
        refused = ui.scan(filename, build(marker, marker.parent))
        assert refused.status_code == 200 and refused.json()["scan"]["ok"] is False
        assert not marker.exists(), "the pickle's payload ran"
    finally:
        _stop_ui(ui)

