"""save_model / log_model / load_model / load_pyfunc and the pyfunc wrapper.

This module is MLflow's surface; the load engine lives below it in :mod:`mlflow_safeflavor.loader`
(download with the registry tag check, then the decision steps — files, signature, MLmodel, pyfunc
configuration, record, digests, payload inspection, trust, build — that ``verify``, ``inspect``,
the gate and Spark run too). Nothing named by the artifact is imported before the trust decision
passes; codecs and classes come from fixed tables.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Iterable

from mlflow_safeflavor import envfiles
from mlflow_safeflavor import loader as _loader
from mlflow_safeflavor import saving
from mlflow_safeflavor import export as _export
from mlflow_safeflavor import policy as _policy
from mlflow_safeflavor.codecs import codec_for
from mlflow_safeflavor.codecs.base import PREDICT_METHODS, Codec
from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError
from mlflow_safeflavor.record import FLAVOR_NAME

_logger = logging.getLogger(__name__)
LOADER_MODULE = _loader.LOADER_MODULE
BACKENDS = ("auto", "native", "onnx")
ENV_BACKEND = "MLFLOW_SAFEFLAVOR_BACKEND"


# ----------------------------------------------------------------------------------------- save


def save_model(
    model: Any,
    path: str | os.PathLike,
    *,
    trusted_types: Iterable[str] | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict[str, Any] | None = None,
    predict_method: str = "predict",
    model_format: str | None = None,
    conda_env: Any = None,
    mlflow_model: Any = None,
    onnx: bool | str | None = None,
    **kwargs: Any,
) -> None:
    """Save ``model`` as an MLflow model directory at ``path``, without pickle.

    scikit-learn estimators go to skops, XGBoost/LightGBM/CatBoost models to their native formats
    (``model_format="json"`` picks XGBoost JSON instead of UBJ). MLmodel records the codec, the
    model class key, a SHA-256 digest of every payload file and the types the payload needs
    trusted beyond skops' defaults; ``trusted_types`` declares extra types the model may need. The
    model is written to a temporary directory next to ``path`` and moved into place, so an error
    leaves nothing behind. Raises a SafeFlavorError subclass on bad input or an unsupported model.

    ``onnx="auto"`` or ``True`` (default None: ``$MLFLOW_SAFEFLAVOR_ONNX``, else no export) adds
    ``model.onnx``, an ONNX export made by the library's own converter from the checkpoint just
    written, kept only if it agrees with the checkpoint on the input example and a sample covering
    the model's thresholds (docs/onnx.md); the pyfunc then serves the methods it covers with
    onnxruntime where that is faster. With "auto" a model that does not convert or agree is saved
    without it and an ``OnnxExportWarning`` says why; ``onnx=True`` makes that an error.
    ``mlflow-safeflavor serve`` derives the export for a model saved without one.
    """
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    from mlflow_safeflavor._mlflow_compat import save_example as _save_example

    target = saving.check_arguments(path, predict_method=predict_method, signature=signature, metadata=metadata,
                                    kwargs=kwargs)
    extra_trusted = _policy.parse_type_list(trusted_types, source="trusted_types=")
    onnx_mode = _export.resolve_mode(onnx)
    codec = codec_for(model)
    if predict_method != "predict" and not hasattr(model, predict_method):
        raise InvalidArgumentError(f"predict_method={predict_method!r}: {type(model).__name__} has no such method.")

    with saving.staging(target) as tmp:
        saved, digests = saving.write_payload(codec, model, tmp, {"model_format": model_format, "trusted_types": extra_trusted})
        requirements = list(saved.requirements)
        onnx_record = saving.add_export(codec, saved, tmp, input_example, mode=onnx_mode, target=target,
                                        digests=digests, requirements=requirements)

        mlflow_model = mlflow_model if mlflow_model is not None else Model()
        saved_example = _save_example(mlflow_model, input_example, str(tmp))
        if signature is None and saved_example is not None:
            from mlflow_safeflavor._mlflow_compat import infer_signature_from_input_example

            signature = infer_signature_from_input_example(saved_example, SafeFlavorPyfunc(model, codec, predict_method))
        if signature is not False:
            # Even without an input schema, MLflow only forwards ``params`` that the signature
            # declares: always declare predict_method.
            mlflow_model.signature = _with_predict_param(signature, predict_method)
        if metadata is not None:
            mlflow_model.metadata = metadata
        add_to_model(
            mlflow_model,
            loader_module=LOADER_MODULE,
            conda_env="conda.yaml",
            python_env="python_env.yaml",
            # Declared so that mlflow.pyfunc.load_model(..., model_config={"backend": ...}) reaches us.
            model_config={"backend": "auto"},
        )
        record = saving.flavor_record(codec, saved, digests, predict_method=predict_method, onnx_record=onnx_record,
                                      target=target)
        mlflow_model.add_flavor(FLAVOR_NAME, **record)
        mlflow_model.model_size_bytes = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        mlflow_model.save(str(tmp / "MLmodel"))
        envfiles.write(str(tmp), requirements, pip_requirements=pip_requirements,
                       extra_pip_requirements=extra_pip_requirements, conda_env=conda_env)


def _with_predict_param(signature: Any, predict_method: str) -> Any:
    """Return ``signature`` with ``predict_method`` and ``backend`` string params so MLflow passes them through."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    wanted = [ParamSpec("predict_method", "string", predict_method), ParamSpec("backend", "string", "auto")]
    if signature is None:
        return ModelSignature(inputs=None, outputs=None, params=ParamSchema(wanted))
    params = list(signature.params.params) if signature.params else []
    have = {p.name for p in params}
    added = [spec for spec in wanted if spec.name not in have]
    if not added:
        return signature
    return ModelSignature(inputs=signature.inputs, outputs=signature.outputs, params=ParamSchema([*params, *added]))


def log_model(
    model: Any,
    name: str | None = None,
    *,
    registered_model_name: str | None = None,
    trusted_types: Iterable[str] | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict[str, Any] | None = None,
    predict_method: str = "predict",
    model_format: str | None = None,
    onnx: bool | str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    await_registration_for: int | None = None,
    artifact_path: str | None = None,
    **kwargs: Any,
) -> Any:
    """Log ``model`` to the active run (and optionally register it) with the safe flavor.

    Built on ``mlflow.models.Model.log`` like MLflow's own flavors, so it returns MLflow's
    ``ModelInfo`` and works with every tracking and registry backend; the keywords are those of
    :func:`save_model` plus MLflow's usual logging ones.
    """
    from mlflow.models import Model

    from mlflow_safeflavor._mlflow_compat import default_await_registration_for

    if name is not None and not isinstance(name, str):
        raise InvalidArgumentError(f"name must be a string, got {type(name).__name__}.")
    return Model.log(
        artifact_path=artifact_path,
        name=name,
        flavor=_self_module(),
        registered_model_name=registered_model_name,
        await_registration_for=default_await_registration_for() if await_registration_for is None else await_registration_for,
        metadata=metadata,
        params=params,
        tags=tags,
        model_type=model_type,
        step=step,
        model_id=model_id,
        model=model,
        trusted_types=trusted_types,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        predict_method=predict_method,
        model_format=model_format,
        onnx=onnx,
        **kwargs,
    )


def _self_module() -> Any:
    import mlflow_safeflavor

    return mlflow_safeflavor


# ----------------------------------------------------------------------------------------- load


def _load_local(local_path: str | os.PathLike, trusted_types: Iterable[str] | None, public_key: Any = None) -> Any:
    """Run every decision step on a local directory (raising at the first failure); the Progress holds the model."""
    return _loader.load_local(local_path, _loader.Options(trusted_types=trusted_types, public_key=public_key))


def _resolve_backend(backend: Any, *, source: str = "backend=") -> str:
    """A valid backend name; None reads ``$MLFLOW_SAFEFLAVOR_BACKEND`` (default "auto")."""
    if backend is None:
        backend, source = os.environ.get(ENV_BACKEND) or "auto", f"{ENV_BACKEND}="
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"{source}{backend!r} is not one of {BACKENDS}.")
    return backend


def _onnx_runner(prep: _loader.Progress, backend: str) -> Any:
    """The verified onnxruntime runner for the model's export, or None when it is not to be used.

    "native" never touches the export. "auto" uses it when it agreed at save time and the onnx
    extra is installed (otherwise a log line and the native model); "onnx" requires it. An export
    that fails validation is refused in both cases: the directory was tampered with.
    """
    spec = prep.record.onnx
    if backend == "native":
        return None
    where = f"{prep.root}/{_export.FILE}"
    if spec is None or not spec.agreed:
        if backend == "onnx":
            raise InvalidArgumentError(
                f"{prep.root}: backend='onnx' but the model has no agreed ONNX export. Re-save it with "
                "save_model(..., onnx=True) to see why, or use backend='native' or 'auto'.",
                path=str(prep.root),
            )
        return None
    missing = [m for m in _export.RUNTIME_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        if backend == "onnx":
            raise InvalidArgumentError(
                f"{where}: backend='onnx' needs the onnx extra ({', '.join(missing)} missing): "
                "pip install 'mlflow-safeflavor[onnx]', or use backend='native'.",
                path=str(prep.root),
            )
        _logger.warning("mlflow_safeflavor: %s is served by the native model: %s not installed.", prep.root, ", ".join(missing))
        return None
    from mlflow_safeflavor.export.runtime import OnnxRunner

    return OnnxRunner(prep.blobs[spec.file], spec.spec(), path=where)


def load_model(
    model_uri: str,
    *,
    trusted_types: Iterable[str] | None = None,
    dst_path: str | None = None,
    public_key: Any = None,
    backend: str = "native",
) -> Any:
    """Load a safe-flavor model from any MLflow URI and return the native model object.

    Digests are checked before any parsing, then the trust decision (required ⊆ declared ⊆
    allowed, where allowed is the built-in allowlist plus ``trusted_types`` and
    ``MLFLOW_SAFEFLAVOR_TRUSTED_TYPES``, minus the hard-deny list). Refusals raise a
    SafeFlavorError subclass that names the file, the problem and the fix. With ``public_key`` (a
    PEM path or several) or ``MLFLOW_SAFEFLAVOR_PUBLIC_KEY`` set, a valid signature over the whole
    directory is mandatory. For ``models:/name@alias`` and ``models:/name/version`` the version's
    artifacts must still match its ``safeflavor.verified`` tag when the registry gate set one.

    ``backend="onnx"`` returns an ``OnnxModel`` instead: ``predict``/``predict_proba`` run in
    onnxruntime on the model's verified ONNX export (an error if there is none, or for input it
    cannot take faithfully), everything else is the native model's (``.native``); ``"auto"``
    returns that object when the export is usable, falling back per call, else the native model.
    """
    backend = _resolve_backend(backend)
    prep = _load_local(_loader.download(model_uri, dst_path), trusted_types, public_key)
    model = prep.model
    runner = _onnx_runner(prep, backend)
    if runner is None:
        return model
    from mlflow_safeflavor.export.runtime import OnnxModel

    return OnnxModel(runner, model, prep.codec, strict=backend == "onnx")


def load_pyfunc(
    model_uri: str,
    *,
    trusted_types: Iterable[str] | None = None,
    dst_path: str | None = None,
    public_key: Any = None,
    backend: str | None = None,
) -> Any:
    """Load a safe-flavor model as an ``mlflow.pyfunc.PyFuncModel`` with this package's loader.

    Unlike ``mlflow.pyfunc.load_model`` it never reads or imports the ``loader_module`` written in
    MLmodel, so it is the way to load a model whose directory you do not trust; signature
    enforcement and ``params`` work as in MLflow. Registry URIs get the ``safeflavor.verified``
    check of :func:`load_model`. ``backend`` ("auto" unless ``$MLFLOW_SAFEFLAVOR_BACKEND`` says
    otherwise) is the default for calls that do not pass ``params={"backend": ...}``.
    """
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel

    backend = _resolve_backend(backend)
    prep = _load_local(_loader.download(model_uri, dst_path), trusted_types, public_key)
    runner = _onnx_runner(prep, backend)
    try:
        meta = Model.from_dict(prep.mlmodel)
    except Exception as exc:
        raise MalformedArtifactError(
            f"{prep.root}/MLmodel: MLflow cannot read its metadata ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Re-save the model.",
            path=str(prep.root),
        ) from None
    impl = SafeFlavorPyfunc(prep.model, prep.codec, prep.record.predict_method, onnx=runner, backend=backend)
    return PyFuncModel(model_meta=meta, model_impl=impl)


def _load_pyfunc(path: str, model_config: Any = None) -> "SafeFlavorPyfunc":
    """MLflow's pyfunc entry point (``loader_module: mlflow_safeflavor``); ``path`` is the model dir or a file in it.

    ``model_config={"backend": "native"|"onnx"}`` (``mlflow.pyfunc.load_model(...,
    model_config=...)``) overrides ``$MLFLOW_SAFEFLAVOR_BACKEND`` as the default backend; "auto"
    (what MLmodel declares) leaves the choice to the environment.
    """
    chosen = model_config.get("backend") if isinstance(model_config, dict) else None
    if chosen in (None, "auto"):
        backend = _resolve_backend(None)
    else:
        backend = _resolve_backend(chosen, source="model_config backend=")
    # MLflow's own loaders reach us with a local copy; a models:/ copy still meets its registry tag.
    _loader.check_registered_copy(_loader.model_root(path))
    prep = _load_local(path, None)
    runner = _onnx_runner(prep, backend)
    return SafeFlavorPyfunc(prep.model, prep.codec, prep.record.predict_method, onnx=runner, backend=backend)


# -------------------------------------------------------------------------------------- pyfunc


class SafeFlavorPyfunc:
    """The pyfunc implementation: ``predict(data, params=None)`` with a choosable method and backend.

    ``onnx`` is the verified runner of the model's ONNX export (or None); ``backend`` the default
    for calls whose ``params`` say ``"auto"`` or nothing.
    """

    def __init__(self, model: Any, codec: Codec, predict_method: str = "predict", *, onnx: Any = None,
                 backend: str = "auto") -> None:
        self.model = model
        self.codec = codec
        self.predict_method = predict_method
        self.onnx = onnx
        self.backend = backend

    def _native_predict(self, rows: Any) -> Any:
        return self.codec.predict(self.model, "predict", rows)

    def _no_export_reason(self, method: str) -> str:
        if self.onnx is not None:
            return f"its ONNX export covers {sorted(self.onnx.methods)}, not {method!r}"
        if self.backend == "native":
            return "it was loaded with backend='native'"
        return "the model has no usable ONNX export"

    def get_raw_model(self) -> Any:
        """Return the native model object (as MLflow's own pyfunc wrappers do)."""
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Predict with ``params["predict_method"]`` (default: the method recorded at save time).

        ``params["backend"]``: "auto" (the loader's default: onnxruntime for the methods the export
        covers, input it can take faithfully and batches below its measured crossover, the native
        model otherwise), "native" or "onnx" (an error when the export cannot answer this call).
        """
        params = params or {}
        method = params.get("predict_method") or self.predict_method
        if method not in PREDICT_METHODS:
            raise InvalidArgumentError(
                f"predict_method={method!r} is not one of {PREDICT_METHODS}."
            )
        if method != "predict" and not hasattr(self.model, method):
            have = [m for m in PREDICT_METHODS if m == "predict" or hasattr(self.model, m)]
            raise InvalidArgumentError(
                f"predict_method={method!r}: {type(self.model).__name__} has no such method; "
                f"choose one of {have}."
            )
        backend = params.get("backend") or "auto"
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"backend={backend!r} is not one of {BACKENDS}.")
        if backend == "auto":
            backend = self.backend
        if backend != "native":
            if self.onnx is not None and method in self.onnx.methods:
                if backend == "auto" and not self.onnx.answers(data):
                    return self.codec.predict(self.model, method, data)  # the native model is faster here
                out = self.onnx.predict(method, data, fallback=self._native_predict)
                if not isinstance(out, str):
                    return out
                why = out
            else:
                why = self._no_export_reason(method)
            if backend == "onnx":
                raise InvalidArgumentError(f"backend='onnx' cannot answer this call: {why}. Use backend='native' or 'auto'.")
        return self.codec.predict(self.model, method, data)
