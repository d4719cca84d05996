"""The one module that reaches MLflow's private names, for the MLflow releases this package supports.

MLflow moves private names between minor releases (3.18 renamed
``mlflow.utils.validation._validate_model_alias_name`` to ``_validate_alias_name`` and broke the
promotion gate). Everything else in the package uses MLflow's public API, or, where none exists,
one function here. Each function names what it adapts; when a release moves a name again, the
adapter finds the new one or raises :class:`UnsupportedMlflowError` saying which name is missing,
instead of an ``ImportError`` from deep inside a command. ``tests/test_mlflow_compat.py`` runs each
adapter against the real MLflow of every CI leg (``make test`` and ``make test-mlflow-next``), and
fails when a module outside this one imports a private MLflow name.

Every import is lazy: importing this module imports nothing from MLflow's server, Spark or model
code, so the CLI and the loaders stay as fast to start as before.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from mlflow_safeflavor.errors import SafeFlavorError

# Releases CI tests (pyproject's range): the floor leg and the newest release.
SUPPORTED = "3.17, 3.18"


class UnsupportedMlflowError(SafeFlavorError):
    """The installed MLflow lacks an internal this package adapts (a release newer than it knows)."""


def mlflow_version() -> tuple[int, int]:
    """``(major, minor)`` of the installed MLflow, e.g. ``(3, 18)``."""
    import mlflow

    major, minor = mlflow.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _first(module: str, *names: str) -> Any:
    """The first of ``names`` that ``module`` defines; raises UnsupportedMlflowError if none does."""
    import mlflow

    try:
        mod = importlib.import_module(module)
    except ImportError:
        mod = None
    for name in names:
        if mod is not None and hasattr(mod, name):
            return getattr(mod, name)
    raise UnsupportedMlflowError(
        f"MLflow {mlflow.__version__} has none of {', '.join(f'{module}.{n}' for n in names)}, which "
        f"mlflow-safeflavor needs; it supports MLflow {SUPPORTED}. Fix: install a supported MLflow "
        "(pip install 'mlflow>=3.17,<3.19') or an mlflow-safeflavor release that supports yours."
    )


# ------------------------------------------------------------------------------ model registry


def validate_alias(alias: str) -> None:
    """Refuse ``alias`` exactly as MLflow's registry would: syntax, length and reserved names.

    Raises ``MlflowException`` (INVALID_PARAMETER_VALUE) with MLflow's own message. MLflow 3.17
    names the checks ``_validate_model_alias_name[_reserved]``; 3.18 generalised them to
    ``_validate_alias_name[_reserved]`` (models and skills).
    """
    check = _first("mlflow.utils.validation", "_validate_alias_name", "_validate_model_alias_name")
    reserved = _first("mlflow.utils.validation", "_validate_alias_name_reserved",
                      "_validate_model_alias_name_reserved")
    check(alias)
    reserved(alias)


def parse_model_uri(uri: str) -> Any:
    """MLflow's parse of a ``models:/`` URI: an object with ``name``, ``version``, ``alias``, ``model_id``."""
    return _first("mlflow.store.artifact.utils.models", "_parse_model_uri")(uri)


def prompt_source_placeholders() -> frozenset[str]:
    """The ``source`` values MLflow gives prompt versions (they have no artifacts)."""
    try:
        return frozenset(_first("mlflow.prompt.constants", "_PROMPT_SOURCE_PLACEHOLDERS"))
    except UnsupportedMlflowError:  # both supported releases have it; a fallback costs nothing
        return frozenset({"dummy-source", "prompt-template"})


def is_prompt(registered_model: Any) -> bool:
    """Whether a ``RegisteredModel`` entity is a prompt (MLflow stores prompts as registered models)."""
    return bool(registered_model._is_prompt())


def client_registry_uri(client: Any) -> str | None:
    """The registry URI an ``MlflowClient`` was built with (MLflow exposes no public accessor)."""
    return getattr(client, "_registry_uri", None)


def default_await_registration_for() -> int:
    """``Model.log``'s own default wait for a registered version to become READY, in seconds.

    Read from ``Model.log``'s public signature, so it follows MLflow without a private import.
    """
    from mlflow.models import Model

    return int(inspect.signature(Model.log).parameters["await_registration_for"].default)


def active_experiment_id() -> str:
    """The experiment MLflow's fluent API would log to now (``set_experiment``, env, default)."""
    return _first("mlflow.tracking.fluent", "_get_experiment_id")()


# ------------------------------------------------------------------------------- model saving


def save_example(mlflow_model: Any, input_example: Any, path: str) -> Any:
    """Write ``input_example`` into the model directory as MLflow's flavors do; the saved example or None."""
    return _first("mlflow.models.utils", "_save_example")(mlflow_model, input_example, path)


def infer_signature_from_input_example(saved_example: Any, wrapper: Any) -> Any:
    """MLflow's signature inference from a saved example and a pyfunc-like ``wrapper`` (None if it fails)."""
    return _first("mlflow.models.signature", "_infer_signature_from_input_example")(saved_example, wrapper)


def validate_env_arguments(conda_env: Any, pip_requirements: Any, extra_pip_requirements: Any) -> None:
    """Refuse the combinations of environment arguments MLflow's flavors refuse (``MlflowException``)."""
    _first("mlflow.utils.environment", "_validate_env_arguments")(conda_env, pip_requirements, extra_pip_requirements)


def write_environment_files(path: str, default_requirements: list[str], *, pip_requirements: Any = None,
                            extra_pip_requirements: Any = None, conda_env: Any = None) -> None:
    """Write ``conda.yaml``, ``requirements.txt``, ``python_env.yaml`` (and ``constraints.txt``) as MLflow's flavors do.

    ``default_requirements`` apply unless ``pip_requirements`` or ``conda_env`` replace them; user
    values are processed by MLflow's own helpers, so the files are the ones ``mlflow models`` reads.
    """
    import os

    import yaml

    def need(name: str) -> Any:
        return _first("mlflow.utils.environment", name)

    if conda_env is None:
        conda, pip_reqs, constraints = need("_process_pip_requirements")(
            default_requirements, pip_requirements, extra_pip_requirements)
    else:
        conda, pip_reqs, constraints = need("_process_conda_env")(conda_env)
    with open(os.path.join(path, need("_CONDA_ENV_FILE_NAME")), "w") as fh:
        yaml.safe_dump(conda, stream=fh, default_flow_style=False)
    if constraints:
        with open(os.path.join(path, need("_CONSTRAINTS_FILE_NAME")), "w") as fh:
            fh.write("\n".join(constraints))
    with open(os.path.join(path, need("_REQUIREMENTS_FILE_NAME")), "w") as fh:
        fh.write("\n".join(pip_reqs))
    need("_PythonEnv").current().to_yaml(os.path.join(path, need("_PYTHON_ENV_FILE_NAME")))


def pyfunc_implementation(model: Any) -> Any:
    """The flavor object a ``PyFuncModel`` wraps (ours: ``SafeFlavorPyfunc``), or None."""
    return getattr(model, "_model_impl", None)


# ------------------------------------------------------------------------------------- Spark


def spark_directory_distributor() -> Any:
    """MLflow's ``_SparkDirectoryDistributor``: ships a directory to executors as a Spark archive."""
    return _first("mlflow.utils._spark_utils", "_SparkDirectoryDistributor")


def parse_spark_datatype(ddl: str) -> Any:
    """A Spark ``DataType`` from a DDL string such as ``"array<double>"``, parsed as ``spark_udf`` does."""
    return _first("mlflow.pyfunc", "_parse_spark_datatype")(ddl)


# ------------------------------------------------------------------- inside the tracking server


def server_interface() -> str | None:
    """Which server runs MLflow's app (``uvicorn``, ``gunicorn``, ``waitress``), as ``mlflow server`` set it."""
    return _first("mlflow.environment_variables", "_MLFLOW_SGI_NAME").get()


def parse_request_message(message: Any) -> Any:
    """Fill protobuf ``message`` from the current Flask request with the parser MLflow's handlers use."""
    return _first("mlflow.server.handlers", "_get_request_message")(message)


def server_registry_store() -> Any:
    """The tracking server's model registry store (inside ``mlflow server`` only)."""
    return _first("mlflow.server.handlers", "_get_model_registry_store")()


def server_download(uri: str, dst: str) -> str:
    """Download the artifacts at ``uri`` into ``dst`` as the server's own artifact handlers resolve them.

    A ``models:/<model_id>`` URI becomes the logged model's location; a proxied
    ``mlflow-artifacts:`` root is read from the server's artifact destination (workspace-scoped
    where the release has workspaces); anything else through the repository for the URI.
    """
    from mlflow.server import handlers

    def need(name: str) -> Callable[..., Any]:
        return _first("mlflow.server.handlers", name)

    if uri.startswith("models:/"):
        model_id = parse_model_uri(uri).model_id
        uri = need("_get_tracking_store")().get_logged_model(model_id).artifact_location
    if need("_is_servable_proxied_run_artifact_root")(uri):
        repo = need("_get_artifact_repo_mlflow_artifacts")()
        path = need("_get_proxied_run_artifact_destination_path")(proxied_artifact_root=uri)
        scope = getattr(handlers, "_get_workspace_scoped_repo_path_if_enabled", None)
        path = scope(path) if scope else path
        return repo.download_artifacts(path, dst)
    return need("_get_artifact_repository_for_uri")(uri).download_artifacts("", dst)


# ------------------------------------------------------------------------- hardened mode switch


def code_execution_variable() -> str:
    """The environment variable that turns off MLflow's model-code and pickle loading on this release.

    ``MLFLOW_ALLOW_MODEL_CODE_EXECUTION`` from 3.18 (it refuses every pyfunc model, since a pyfunc
    model names the module that loads it), ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` before (it
    refuses pickled and skops flavors). Set to ``false`` it is MLflow's hardened mode.
    """
    import mlflow.environment_variables as env

    if hasattr(env, "MLFLOW_ALLOW_MODEL_CODE_EXECUTION"):
        return "MLFLOW_ALLOW_MODEL_CODE_EXECUTION"
    return "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
