"""Migration against a real MLflow tracking server and registry.

Versions registered with MLflow's own flavors (cloudpickle sklearn, pickled LightGBM wrapper), a
version whose pickle was swapped for a malicious one, a version already in the safe flavor, and a
LightGBM wrapper in MLflow 3.17's default format (skops):
``convert(models:/...)`` registers a safe copy carrying the source's signature, input example and
tags; ``mlflow-safeflavor convert --registry`` converts what it can, refuses the malicious one by
name, skips the safe one, and is idempotent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import mlflow_safeflavor
import pickle_corpus as pc
from mlflow_safeflavor.migrate import convert
from mlflow_safeflavor.migrate.convert import TAG_CONVERTED_FROM


@pytest.fixture(scope="module")
def legacy(tracking_uri, tmp_path_factory):
    """A registered model with five versions: cloudpickle sklearn, pickled LGBM, malicious, safe, skops LGBM."""
    tmp = tmp_path_factory.mktemp("legacy")
    name = f"legacy-{uuid.uuid4().hex[:6]}"
    client = MlflowClient()
    marker = tmp / "MARKER"
    pipe, sample = pc._column_pipeline()
    lgbm, X = pc._lgbm_clf()
    # An explicit experiment id, not mlflow.set_experiment: the active experiment is process-wide and
    # would leak into later tests that talk to other servers.
    exp = client.create_experiment(f"migration-{name}")
    with mlflow.start_run(experiment_id=exp):
        mlflow.sklearn.log_model(pipe, name="m", serialization_format="cloudpickle",
                                 input_example=sample.head(5), registered_model_name=name)
    client.set_model_version_tag(name, "1", "team", "fraud")
    client.set_model_version_tag(name, "1", "safeflavor.verified", "sha256:" + "0" * 64)
    client.update_model_version(name, "1", description="fraud scorer, 2024")
    with mlflow.start_run(experiment_id=exp):
        mlflow.lightgbm.log_model(lgbm, name="m", serialization_format="pickle", input_example=X[:5],
                                  registered_model_name=name)
    # v3: an MLflow sklearn model whose model.pkl was replaced by a malicious pickle.
    local = tmp / "evil-model"
    mlflow.sklearn.save_model(pc._svc()[0], local, serialization_format="pickle", input_example=X[:3])
    (local / "model.pkl").write_bytes(pc.MALICIOUS["os_system_reduce"][0](marker))
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(local), "m")
    client.create_model_version(name, source=f"{run.info.artifact_uri}/m", run_id=run.info.run_id)
    with mlflow.start_run(experiment_id=exp):
        mlflow_safeflavor.log_model(pc._svc()[0], name="m", input_example=X[:3], registered_model_name=name)
    with mlflow.start_run(experiment_id=exp):  # MLflow's default for LightGBM's sklearn API: skops
        mlflow.lightgbm.log_model(lgbm, name="m", input_example=X[:5], pip_requirements=["lightgbm"],
                                  registered_model_name=name)
    return {"name": name, "pipe": pipe, "sample": sample, "lgbm": lgbm, "X": X, "marker": marker}


def test_convert_registered_version_copies_signature_example_and_tags(legacy):
    client = MlflowClient()
    target = f"{legacy['name']}-safe"
    result = convert(f"models:/{legacy['name']}/1", registered_model_name=target)
    assert (result.registered_name, result.registered_version) == (target, "1")
    mv = client.get_model_version(target, "1")
    assert mv.tags["team"] == "fraud"
    assert mv.tags[TAG_CONVERTED_FROM] == f"models:/{legacy['name']}/1"
    assert "safeflavor.verified" not in mv.tags  # the gate's verdict on the old bytes is not copied
    assert mv.description == "fraud scorer, 2024"

    loaded = mlflow.pyfunc.load_model(f"models:/{target}/1")
    assert loaded.metadata.flavors["python_function"]["loader_module"] == "mlflow_safeflavor"
    assert loaded.metadata.get_input_schema() is not None
    assert loaded.metadata.saved_input_example_info is not None
    np.testing.assert_array_equal(np.asarray(loaded.predict(legacy["sample"])), legacy["pipe"].predict(legacy["sample"]))


def _cli(*args: str, command: str = "convert") -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    exe = shutil.which("mlflow-safeflavor", path=os.path.dirname(sys.executable))
    return subprocess.run([exe, command, *args], capture_output=True, text=True, env=env, timeout=600)


def test_scan_of_a_registered_skops_lightgbm_version_reports_what_it_judged(legacy):
    res = _cli(f"models:/{legacy['name']}/5", command="scan")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "lightgbm flavor, skops" in res.stdout and "nothing to unpickle" not in res.stdout
    assert "lightgbm.sklearn.LGBMClassifier" in res.stdout and "LightGBM structure check" in res.stdout


def test_cli_converts_a_whole_registered_model(legacy):
    name = legacy["name"]
    first = _cli("--registry", name)
    assert first.returncode == 1, first.stdout + first.stderr  # one version refused
    rows = {line.split()[1]: line for line in first.stdout.splitlines() if line.startswith(name + " ")}
    assert "converted" in rows["1"] and "converted" in rows["2"]
    assert "refused" in rows["3"] and "posix.system" in rows["3"]
    assert "skipped" in rows["4"] and "already safe flavor" in rows["4"]
    assert "converted" in rows["5"], rows["5"]
    assert "3 converted, 1 refused, 0 failed, 1 skipped" in first.stdout
    assert not legacy["marker"].exists()

    client = MlflowClient()
    new = {mv.tags.get(TAG_CONVERTED_FROM): mv.version for mv in client.search_model_versions(f"name = '{name}'")}
    lgbm_version = new[f"models:/{name}/2"]
    loaded = mlflow_safeflavor.load_model(f"models:/{name}/{lgbm_version}")
    np.testing.assert_array_equal(loaded.predict_proba(legacy["X"]), legacy["lgbm"].predict_proba(legacy["X"]))
    from_skops = mlflow_safeflavor.load_model(f"models:/{name}/{new[f'models:/{name}/5']}")
    np.testing.assert_array_equal(from_skops.predict_proba(legacy["X"]), legacy["lgbm"].predict_proba(legacy["X"]))

    again = _cli("--registry", name)
    rows = {line.split()[1]: line for line in again.stdout.splitlines() if line.startswith(name + " ")}
    assert "converted earlier" in rows["1"] and "converted earlier" in rows["2"] and "converted earlier" in rows["5"]
    assert "0 converted" in again.stdout
    assert len(client.search_model_versions(f"name = '{name}'")) == 8
