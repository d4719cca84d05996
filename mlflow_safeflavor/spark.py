"""Score safe-flavor models in Spark with this package's loader on every executor.

``mlflow.pyfunc.spark_udf`` loads the model on executors with ``mlflow.pyfunc.load_model``, which
imports the ``loader_module`` named in the artifact's MLmodel. :func:`spark_udf` here returns the
same kind of pandas UDF, but the driver verifies the model first (digests, trust policy, signature
when keys are configured) and every Python worker loads it again with :func:`load_pyfunc` — never
``loader_module`` — with the trust list and public keys captured on the driver, after checking
that MLmodel is byte for byte the one the driver verified. pyspark is imported only when a UDF is
created or run; importing ``mlflow_safeflavor`` never imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

# Environment variables that widen or change the loading policy. On executors they are masked while
# the model loads, so the policy is exactly the one captured on the driver.
_POLICY_ENV = ("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "MLFLOW_SAFEFLAVOR_PUBLIC_KEY")

# Per-Python-worker state (this module is imported by reference on executors, so these survive
# across the tasks a reused worker runs): UDF token -> loaded PyFuncModel (the most recently used
# few), and -> key files.
_MODELS: OrderedDict[str, Any] = OrderedDict()
_MAX_MODELS = 8
_KEY_DIRS: dict[str, list[str]] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class _UdfSpec:
    """Everything an executor needs, captured on the driver and shipped in the UDF's closure."""

    token: str  # unique per spark_udf call; the per-worker cache key
    model_path: str | None  # driver's verified copy, read directly when executors share its disk
    archive_path: str | None  # _SparkDirectoryDistributor archive otherwise
    mlmodel_sha256: str  # MLmodel as verified on the driver
    trusted_types: tuple[str, ...]
    public_keys: tuple[tuple[str, bytes], ...]  # (file name, PEM bytes)
    result_type: Any  # pyspark DataType
    params: dict[str, Any] | None
    input_names: tuple[str, ...] | None = field(default=None)


def spark_udf(
    spark: Any,
    model_uri: str,
    *,
    result_type: Any = "double",
    predict_method: str | None = None,
    trusted_types: Iterable[str] | None = None,
    public_key: Any = None,
    env_manager: str = "local",
) -> Callable[..., Any]:
    """Return a Spark pandas UDF that scores the safe-flavor model at ``model_uri`` with our loader.

    The model is downloaded and fully verified on the driver (a refused model raises the usual
    SafeFlavorError here), then reaches executors as a local path in ``local[...]`` mode or as an
    archive distributed like ``mlflow.pyfunc.spark_udf`` does otherwise; each Python worker checks
    MLmodel against the driver's digest, loads the model once with :func:`load_pyfunc` using the
    ``trusted_types`` and public keys captured here (call arguments plus this process's
    ``MLFLOW_SAFEFLAVOR_*`` variables; the executors' own variables are ignored) and caches it.
    Call the UDF like MLflow's: ``udf(*cols)``, ``udf(struct(*cols))``, or ``udf()`` for the
    signature's input columns. ``result_type`` is a primitive Spark type or an array of one
    (``"array<double>"`` for ``predict_method="predict_proba"``); a primitive type takes the first
    column of a 2-D output, as MLflow does. Only ``env_manager="local"`` is supported.
    """
    from mlflow.models import Model

    from mlflow_safeflavor._mlflow_compat import spark_directory_distributor

    from mlflow_safeflavor import policy, signing
    from mlflow_safeflavor.codecs.base import PREDICT_METHODS
    from mlflow_safeflavor.errors import IntegrityError, InvalidArgumentError, MalformedArtifactError
    from mlflow_safeflavor import loader

    if env_manager != "local":
        raise InvalidArgumentError(
            f"env_manager={env_manager!r}: mlflow_safeflavor.spark.spark_udf only supports "
            "'local' (executors must have mlflow-safeflavor and the model's libraries installed)."
        )
    if predict_method is not None and predict_method not in PREDICT_METHODS:
        raise InvalidArgumentError(f"predict_method={predict_method!r} is not one of {PREDICT_METHODS}.")
    if _is_spark_connect(spark):
        raise InvalidArgumentError(
            "Spark Connect sessions are not supported by mlflow_safeflavor.spark.spark_udf; use a "
            "classic SparkSession."
        )
    spark_type = _result_type(result_type)

    # The driver's policy, made explicit: the call's additions plus this process's environment.
    trusted = tuple(
        dict.fromkeys(
            policy.parse_type_list(os.environ.get(_POLICY_ENV[0]), source=_POLICY_ENV[0])
            + policy.parse_type_list(trusted_types, source="trusted_types=")
        )
    )
    key_paths = signing.configured_keys(public_key)  # call + MLFLOW_SAFEFLAVOR_PUBLIC_KEY
    keys = tuple((p.name, p.read_bytes()) for p in key_paths)

    dst = tempfile.mkdtemp(prefix="safeflavor-spark-")
    atexit.register(shutil.rmtree, dst, True)
    root = loader.model_root(loader.download(model_uri, dst))
    # Verify on the driver (no model is built): a refused model fails here, not in a task. The
    # MLmodel digest pinned for the executors is taken on both sides of the check.
    mlmodel_sha = _sha256_file(root / "MLmodel")
    prep = loader.check_local(
        root, loader.Options(trusted_types=list(trusted), public_key=[str(p) for p in key_paths] or None)
    )
    if _sha256_file(root / "MLmodel") != mlmodel_sha:
        raise IntegrityError(f"{root}/MLmodel changed while it was being verified.", path=str(root))
    try:
        meta = Model.from_dict(prep.mlmodel)
    except Exception as exc:
        raise MalformedArtifactError(
            f"{root}/MLmodel: MLflow cannot read its metadata ({type(exc).__name__}).", path=str(root)
        ) from None
    schema = meta.get_input_schema()
    names = tuple(schema.input_names()) if schema is not None and schema.has_input_names() else None

    if _is_local_master(spark):
        model_path, archive_path = str(root), None
    else:  # zip + SparkContext.addFile (or an NFS copy on Databricks), as mlflow.pyfunc.spark_udf
        model_path, archive_path = None, spark_directory_distributor().add_dir(spark, str(root))

    spec = _UdfSpec(
        token=uuid.uuid4().hex,
        model_path=model_path,
        archive_path=archive_path,
        mlmodel_sha256=mlmodel_sha,
        trusted_types=trusted,
        public_keys=keys,
        result_type=spark_type,
        params={"predict_method": predict_method} if predict_method else None,
        input_names=names,
    )
    pandas_fn = _make_pandas_udf(spec)

    def udf(*cols: Any) -> Any:
        if not cols:
            if not spec.input_names:
                raise InvalidArgumentError(
                    "The model's signature has no input column names; call the UDF with columns."
                )
            cols = spec.input_names
        return pandas_fn(*cols)

    udf.metadata = meta  # type: ignore[attr-defined]  # as on mlflow's UDF
    udf.model_path = str(root)  # type: ignore[attr-defined]  # the driver's verified copy
    return udf


# ------------------------------------------------------------------------------------ driver


def _is_spark_connect(spark: Any) -> bool:
    try:
        from pyspark.sql.utils import is_remote

        if is_remote():
            return True
    except ImportError:
        pass
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _is_local_master(spark: Any) -> bool:
    """True when executors share the driver's filesystem (``local`` / ``local[n]``)."""
    return spark.sparkContext.master.startswith("local") and not spark.sparkContext.master.startswith(
        "local-cluster"
    )


def _result_type(result_type: Any) -> Any:
    """Parse and check ``result_type``: a primitive Spark type or an array of one."""
    from pyspark.sql.types import ArrayType, DataType

    from mlflow_safeflavor._mlflow_compat import parse_spark_datatype as _parse_spark_datatype

    from mlflow_safeflavor.errors import InvalidArgumentError

    parsed = _parse_spark_datatype(result_type) if isinstance(result_type, str) else result_type
    if not isinstance(parsed, DataType):
        raise InvalidArgumentError(f"result_type must be a Spark type or its DDL string, got {result_type!r}.")
    elem = parsed.elementType if isinstance(parsed, ArrayType) else parsed
    if type(elem) not in _np_types():
        raise InvalidArgumentError(
            f"result_type={parsed.simpleString()!r}: use int, long, float, double, string, boolean "
            "or an array of one (structs and maps are not supported here)."
        )
    return parsed


def _np_types() -> dict[type, Any]:
    import numpy as np
    from pyspark.sql import types as T

    return {
        T.IntegerType: np.int32,
        T.LongType: np.int64,
        T.FloatType: np.float32,
        T.DoubleType: np.float64,
        T.BooleanType: np.bool_,
        T.StringType: str,
    }


def _sha256_file(path: Any) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _make_pandas_udf(spec: _UdfSpec) -> Any:
    """The pandas UDF (iterator of batches). Its closure holds only ``spec``; the work is done by
    module-level functions, which cloudpickle ships by reference, so the cache is per worker."""
    from typing import Tuple, Union

    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    def predict_batches(iterator):
        yield from _score(spec, iterator)

    # Real objects (not strings) so pyspark's type-hint inference needs no module globals.
    predict_batches.__annotations__ = {
        "iterator": Iterator[Tuple[Union[pd.Series, pd.DataFrame], ...]],
        "return": Iterator[pd.Series],
    }
    return pandas_udf(predict_batches, returnType=spec.result_type)


# ---------------------------------------------------------------------------------- executors


def _score(spec: _UdfSpec, iterator: Iterator[Any]) -> Iterator[Any]:
    """Load (or reuse) the model in this worker and score each Arrow batch."""
    import pandas as pd

    model = None
    for batch in iterator:
        args = (batch,) if isinstance(batch, (pd.Series, pd.DataFrame)) else tuple(batch)
        if len(args[0]) == 0:
            continue
        if model is None:
            model = _worker_model(spec)
        pdf = _input_frame(args, spec.input_names)
        yield _to_spark(model.predict(pdf, params=spec.params), spec.result_type)


def _worker_model(spec: _UdfSpec) -> Any:
    """The model for ``spec`` in this Python worker, verified and loaded on first use."""
    with _LOCK:
        if spec.token in _MODELS:
            _MODELS.move_to_end(spec.token)
            return _MODELS[spec.token]
        model = _load_on_worker(spec)
        _MODELS[spec.token] = model
        while len(_MODELS) > _MAX_MODELS:
            _MODELS.popitem(last=False)
        return model


def _load_on_worker(spec: _UdfSpec) -> Any:
    from mlflow_safeflavor.errors import IntegrityError
    from mlflow_safeflavor.flavor import load_pyfunc

    if spec.archive_path is not None:
        from mlflow_safeflavor._mlflow_compat import spark_directory_distributor

        local = spark_directory_distributor().get_or_extract(spec.archive_path)
    else:
        local = spec.model_path
    mlmodel = os.path.join(local, "MLmodel")
    try:
        actual = _sha256_file(mlmodel)
    except OSError as exc:
        raise IntegrityError(f"{mlmodel}: cannot read MLmodel on the executor ({exc}).", path=local) from None
    if actual != spec.mlmodel_sha256:
        raise IntegrityError(
            f"{mlmodel}: MLmodel on the executor differs from the one verified on the driver "
            f"(sha256 {actual}, expected {spec.mlmodel_sha256}); the model was modified after "
            "spark_udf was created. Recreate the UDF from a trusted model.",
            path=local,
        )
    with _masked_policy_env():
        return load_pyfunc(
            local, trusted_types=list(spec.trusted_types), public_key=_key_files(spec) or None
        )


def _key_files(spec: _UdfSpec) -> list[str]:
    """Write the driver's public keys to a worker-private directory, once per UDF and worker."""
    if not spec.public_keys:
        return []
    if spec.token not in _KEY_DIRS:
        d = tempfile.mkdtemp(prefix="safeflavor-keys-")
        atexit.register(shutil.rmtree, d, True)
        paths = []
        for i, (name, pem) in enumerate(spec.public_keys):
            p = os.path.join(d, f"{i}-{os.path.basename(name) or 'key.pem'}")
            with open(p, "wb") as fh:
                fh.write(pem)
            paths.append(p)
        _KEY_DIRS[spec.token] = paths
    return _KEY_DIRS[spec.token]


@contextlib.contextmanager
def _masked_policy_env() -> Iterator[None]:
    """Hide the executor's MLFLOW_SAFEFLAVOR_* policy variables while the model loads."""
    saved = {k: os.environ.pop(k) for k in _POLICY_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _input_frame(args: tuple[Any, ...], input_names: tuple[str, ...] | None) -> Any:
    """The model input for one batch, named as ``mlflow.pyfunc.spark_udf`` names it."""
    import pandas as pd

    if len(args) == 1 and isinstance(args[0], pd.DataFrame):  # udf(struct(...))
        return args[0]
    if input_names is None:
        names = [str(i) for i in range(len(args))]
    else:
        names = list(input_names[: len(args)])
        if len(names) < len(args):
            names += [str(i) for i in range(len(names), len(args))]
    data = {
        n: a if isinstance(a, pd.Series) else a.apply(lambda row: row.to_dict(), axis=1)
        for n, a in zip(names, args)
    }
    return pd.DataFrame(data, columns=names)


def _to_spark(result: Any, result_type: Any) -> Any:
    """Convert a prediction to the pandas Series Arrow expects for ``result_type``."""
    import numpy as np
    import pandas as pd
    from pyspark.sql.types import ArrayType, StringType

    from mlflow_safeflavor.errors import InvalidArgumentError

    is_array = isinstance(result_type, ArrayType)
    elem = result_type.elementType if is_array else result_type
    np_type = _np_types()[type(elem)]
    values = result.to_numpy() if isinstance(result, (pd.DataFrame, pd.Series)) else np.asarray(result)
    if values.ndim == 0:
        values = values.reshape(1)
    if values.ndim == 1 and is_array:
        values = values.reshape(-1, 1)
    if not is_array and values.ndim == 2:
        values = values[:, 0]
    if values.ndim > 2 or (is_array and values.ndim != 2):
        raise InvalidArgumentError(
            f"result_type={result_type.simpleString()!r} cannot hold a prediction of shape {values.shape}."
        )
    if isinstance(elem, StringType):
        if values.dtype.kind == "U":
            out = values.astype(object)
        else:  # str() of each value, as MLflow's UDF does
            out = np.array([str(v) for v in values.ravel()], dtype=object).reshape(values.shape)
    else:
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise InvalidArgumentError(
                f"The model returned {values.dtype} values, which cannot be converted to "
                f"{elem.simpleString()}; use result_type='string'."
            )
        out = values.astype(np_type, copy=False)
    return pd.Series(list(out)) if is_array else pd.Series(out)
