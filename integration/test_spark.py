"""Spark batch scoring: ``mlflow.pyfunc.spark_udf`` and ``mlflow_safeflavor.spark.spark_udf``.

One local SparkSession (``local[2]``, UI off, 2 shuffle partitions, Arrow on) serves the module.
Both UDFs score 100,000 rows with a scikit-learn pipeline (pandas input with a string column,
string labels) and a LightGBM classifier, for labels (``result_type="string"``) and probabilities
(``predict_method="predict_proba"``, ``result_type="array<double>"``), and must match direct
prediction with the original in-memory model.

Labels must be identical. Probabilities are compared with a 1e-12 absolute tolerance (and are
in practice bit-identical): Arrow carries float64 losslessly and each row's probability depends on
that row only, but the UDF scores 10,000-row Arrow batches while the direct call scores 100,000
rows at once, and BLAS may choose a different kernel or blocking for a different matrix shape
(LogisticRegression's ``X @ coef``), which can change the summation order and the last bit. Any
real defect (wrong row, wrong column, float32 round trip) is many orders of magnitude larger.

The refusal tests show the checks run where the model is loaded, on the executors: mlflow's UDF on
a byte-flipped model is created without complaint (in local mode the driver never loads the model)
and fails only when a task runs, with our "digest mismatch"; our UDF refuses on the driver, and a
model modified after the UDF was created is refused by the executors (digests, MLmodel pinned to
the driver's copy, signature with the driver's public key). Trusted types and public keys reach
our executors in the UDF's closure; mlflow's UDF takes them from the executors' environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lightgbm  # noqa: E402,F401 - dev extras; a missing one is an error, not a skip
import pyspark  # noqa: E402,F401

if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.fail("Spark needs a Java runtime (Java 17); install one — these tests do not skip.", pytrace=False)

import zoo  # noqa: E402  (integration/conftest.py puts tests/ on sys.path)

import mlflow_safeflavor as sf  # noqa: E402
from mlflow_safeflavor.errors import (  # noqa: E402
    IntegrityError,
    MalformedArtifactError,
    SignatureError,
    UntrustedTypesError,
)

N_ROWS = 100_000
NUM = [f"f{i}" for i in range(6)]
MODELS = {  # key -> (zoo factory, case name, input columns)
    "sklearn_pipeline": ("sklearn", "sk_pipeline_ct_lr", NUM + ["color"]),
    "lightgbm": ("lightgbm", "lgb_clf", NUM),
}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def spark():
    """One local Spark session for the module; workers run this interpreter."""
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "MLFLOW_SAFEFLAVOR_PUBLIC_KEY"):
            mp.delenv(var, raising=False)  # the JVM, hence every Python worker, starts without them
        mp.setenv("PYSPARK_PYTHON", sys.executable)
        mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (
            SparkSession.builder.master("local[2]")
            .appName("safeflavor-integration")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.driver.memory", "1g")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """key -> (case, saved model directory) for the two models scored on 100k rows."""
    out = {}
    root = tmp_path_factory.mktemp("spark-models")
    for key, (factory, name, _) in MODELS.items():
        case = next(c for c in zoo.FACTORIES[factory]() if c.name == name)
        sf.save_model(case.model, root / key, input_example=case.X[:5])
        out[key] = (case, root / key)
    return out


@pytest.fixture(scope="module")
def data(spark):
    """100,000 fresh rows (f0..f5 floats, a string column) with an id; pandas and cached Spark."""
    pdf = zoo._data(N_ROWS, seed=11)[4]
    pdf.insert(0, "id", np.arange(N_ROWS, dtype=np.int64))
    sdf = spark.createDataFrame(pdf).cache()
    assert sdf.count() == N_ROWS
    return pdf, sdf


@pytest.fixture(scope="module")
def small(spark, data):
    """The first 2,000 rows in one partition (a failing task then ends only one Python worker)."""
    pdf, _ = data
    return spark.createDataFrame(pdf.head(2000)).coalesce(1).cache()


@pytest.fixture(scope="module")
def fix_model(tmp_path_factory):
    """(model, path): a pipeline whose FunctionTransformer(numpy.fix) no default policy trusts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    _, y, _, _, df, *_ = zoo._data()
    model = Pipeline([("fix", FunctionTransformer(np.fix)), ("lr", LogisticRegression())]).fit(df[NUM], y)
    path = tmp_path_factory.mktemp("fix") / "model"
    with warnings.catch_warnings():  # MLflow's hint about the integer output column
        warnings.simplefilter("ignore", UserWarning)
        sf.save_model(model, path, trusted_types=["numpy.fix"], input_example=df[NUM].head(5))
    return model, path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _payload(model_dir: Path) -> Path:
    return next(model_dir / n for n in ("model.skops", "model.txt") if (model_dir / n).exists())


def _collect(sdf, **cols) -> pd.DataFrame:
    return sdf.select("id", *[c.alias(name) for name, c in cols.items()]).toPandas().sort_values("id")


def _check(out: pd.DataFrame, case: zoo.Case, X: pd.DataFrame) -> None:
    assert len(out) == N_ROWS
    labels = case.model.predict(X)
    assert np.array_equal(out["label"].to_numpy(), labels.astype(str)), "labels differ"
    proba = np.stack(out["proba"].to_numpy())
    expected = case.model.predict_proba(X)
    assert proba.shape == expected.shape
    assert np.abs(proba - expected).max() <= 1e-12


# ---------------------------------------------------------------------------- equal to direct


@pytest.mark.parametrize("model_key", list(MODELS))
def test_mlflow_spark_udf_matches_direct_prediction(spark, models, data, model_key):
    """mlflow.pyfunc.spark_udf (loader_module -> our _load_pyfunc on executors) on 100k rows."""
    import mlflow
    from pyspark.sql.functions import struct

    case, path = models[model_key]
    cols = MODELS[model_key][2]
    pdf, sdf = data
    labels = mlflow.pyfunc.spark_udf(spark, str(path), result_type="string")
    proba = mlflow.pyfunc.spark_udf(
        spark, str(path), result_type="array<double>", params={"predict_method": "predict_proba"}
    )
    out = _collect(sdf, label=labels(*cols), proba=proba(struct(*cols)))
    _check(out, case, pdf[cols])


@pytest.mark.parametrize("model_key", list(MODELS))
def test_safeflavor_spark_udf_matches_direct_prediction(spark, models, data, model_key):
    """Our UDF, called with no columns (signature names) and with a struct, on 100k rows."""
    from pyspark.sql.functions import struct

    from mlflow_safeflavor.spark import spark_udf

    case, path = models[model_key]
    cols = MODELS[model_key][2]
    pdf, sdf = data
    labels = spark_udf(spark, str(path), result_type="string")
    proba = spark_udf(spark, str(path), result_type="array<double>", predict_method="predict_proba")
    out = _collect(sdf, label=labels(), proba=proba(struct(*cols)))
    _check(out, case, pdf[cols])


def test_safeflavor_spark_udf_archive_distribution(spark, models, small, data, monkeypatch):
    """Off local mode the model travels as a _SparkDirectoryDistributor archive; same predictions."""
    from mlflow_safeflavor import spark as sf_spark

    case, path = models["lightgbm"]
    monkeypatch.setattr(sf_spark, "_is_local_master", lambda spark: False)
    udf = sf_spark.spark_udf(spark, str(path), result_type="double", predict_method="predict_proba")
    out = small.select("id", udf(*NUM).alias("p")).toPandas().sort_values("id")
    X = data[0].head(2000)[NUM]
    assert np.array_equal(out["p"].to_numpy(), case.model.predict_proba(X)[:, 0])


def test_safeflavor_spark_udf_ships_trusted_types_to_executors(spark, small, data, fix_model, monkeypatch):
    """The driver's policy (call + its environment) reaches executors explicitly.

    MLFLOW_SAFEFLAVOR_TRUSTED_TYPES set in the driver after the session started never reaches the
    executors' environment (see the next test), yet the UDF loads there because the list travels
    in the closure.
    """
    from mlflow_safeflavor.spark import spark_udf

    model, path = fix_model
    with pytest.raises(UntrustedTypesError, match="numpy.fix"):
        spark_udf(spark, str(path))
    expected = model.predict_proba(data[0].head(2000)[NUM])[:, 1]
    by_arg = spark_udf(spark, str(path), trusted_types=["numpy.fix"], result_type="array<double>", predict_method="predict_proba")
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "numpy.fix")
    by_env = spark_udf(spark, str(path), result_type="array<double>", predict_method="predict_proba")
    out = small.select("id", by_arg(*NUM).alias("a"), by_env(*NUM).alias("e")).toPandas().sort_values("id")
    np.testing.assert_array_equal(np.stack(out["a"].to_numpy())[:, 1], expected)
    np.testing.assert_array_equal(np.stack(out["e"].to_numpy())[:, 1], expected)


# ------------------------------------------------------------------------------------ refusals


def test_mlflow_spark_udf_takes_policy_from_executor_env(spark, small, fix_model, monkeypatch):
    """mlflow's UDF reaches our _load_pyfunc on executors, whose environment the driver's
    later os.environ changes do not reach: the model needing numpy.fix is refused there."""
    import mlflow
    from pyspark.errors import PythonException

    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "numpy.fix")
    udf = mlflow.pyfunc.spark_udf(spark, str(fix_model[1]), result_type="double")
    with pytest.raises(PythonException, match="UntrustedTypesError"):
        small.select(udf(*NUM)).collect()


def test_mlflow_spark_udf_refuses_tampered_model_on_executors(spark, models, small, tmp_path):
    """mlflow's UDF is created (the driver does not load the model) and fails in the task."""
    import mlflow
    from pyspark.errors import PythonException

    bad = _copy(models["sklearn_pipeline"][1], tmp_path / "bad")
    _flip_byte(_payload(bad))
    udf = mlflow.pyfunc.spark_udf(spark, str(bad), result_type="string")  # no error here
    with pytest.raises(PythonException, match="digest mismatch"):
        small.select(udf(*MODELS["sklearn_pipeline"][2])).collect()


@pytest.mark.parametrize("model_key", list(MODELS))
def test_safeflavor_spark_udf_refuses_tampered_model_on_driver(spark, models, tmp_path, model_key):
    from mlflow_safeflavor.spark import spark_udf

    bad = _copy(models[model_key][1], tmp_path / "bad")
    _flip_byte(_payload(bad))
    with pytest.raises(IntegrityError, match="digest mismatch"):
        spark_udf(spark, str(bad), result_type="string")


def test_safeflavor_spark_udf_refuses_model_tampered_after_creation(spark, models, small, tmp_path):
    """The executors verify again: a payload changed after the driver's check is refused there."""
    from pyspark.errors import PythonException

    from mlflow_safeflavor.spark import spark_udf

    udf = spark_udf(spark, str(models["sklearn_pipeline"][1]), result_type="string")
    _flip_byte(_payload(Path(udf.model_path)))
    with pytest.raises(PythonException, match="digest mismatch"):
        small.select(udf()).collect()


def test_safeflavor_spark_udf_refuses_swapped_loader_module(spark, models, small, tmp_path, monkeypatch):
    """A rewritten loader_module is refused on the driver, and on executors if rewritten later."""
    from pyspark.errors import PythonException

    from mlflow_safeflavor.spark import spark_udf

    marker = tmp_path / "imported"
    (tmp_path / "evil_loader.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable on the driver, were anyone to import it

    def swap(model_dir: Path) -> None:
        mlmodel = model_dir / "MLmodel"
        text = mlmodel.read_text()
        assert "loader_module: mlflow_safeflavor" in text
        mlmodel.write_text(text.replace("loader_module: mlflow_safeflavor", "loader_module: evil_loader"))

    bad = _copy(models["lightgbm"][1], tmp_path / "bad")
    swap(bad)
    with pytest.raises(MalformedArtifactError, match="loader_module is 'evil_loader'"):
        spark_udf(spark, str(bad), result_type="string")

    udf = spark_udf(spark, str(models["lightgbm"][1]), result_type="string")
    swap(Path(udf.model_path))
    with pytest.raises(PythonException, match="differs from the one verified on the driver"):
        small.select(udf(*NUM)).collect()
    assert not marker.exists()


def test_safeflavor_spark_udf_ships_public_key_to_executors(spark, models, small, tmp_path):
    """Signature required on the driver's say-so: executors verify with the shipped key."""
    pytest.importorskip("model_signing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from pyspark.errors import PythonException

    from mlflow_safeflavor.spark import spark_udf

    keys = {}
    for name in ("good", "other"):
        k = ec.generate_private_key(ec.SECP256R1())
        priv, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub"
        priv.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        keys[name] = (priv, pub)
    model = _copy(models["lightgbm"][1], tmp_path / "signed")
    sf.sign_model(model, keys["good"][0])

    with pytest.raises(SignatureError):
        spark_udf(spark, str(model), public_key=keys["other"][1])
    udf = spark_udf(spark, str(model), result_type="string", public_key=keys["good"][1])
    # requirements.txt is outside the digests and MLmodel but inside the signature: only an
    # executor that checks the signature with the driver's key notices the change.
    with open(Path(udf.model_path) / "requirements.txt", "a") as fh:
        fh.write("evil-package\n")
    with pytest.raises(PythonException, match="SignatureError"):
        small.select(udf(*NUM)).collect()


def test_importing_the_module_does_not_import_pyspark():
    """pyspark is imported lazily: the module and the package import with pyspark unavailable."""
    code = "import sys; sys.modules['pyspark'] = None; import mlflow_safeflavor.spark, mlflow_safeflavor; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
