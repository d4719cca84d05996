"""Registered model versions as the load engine sees them: resolve, download exactly what is stored, check.

Downloads go to the version's storage location (``get_model_version_download_uri``, with a
``models:/<model_id>`` source resolved to the logged model's artifact location), never through a
``models:/name/version`` URI: MLflow's ``ModelsArtifactRepository`` writes an extra
``registered_model_meta`` file into such downloads, which is not among the stored artifacts and
would make digests and signatures differ between the gate and the store. This module sits below
the registry gate (``registry.store`` re-exports it) so the loader never imports the gate.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_safeflavor import integrity
from mlflow_safeflavor.errors import IntegrityError, InvalidArgumentError, SafeFlavorError
from mlflow_safeflavor.signing import SIGNATURE_FILE

# The registry gate (registry.core) writes these tags; the download compares with them.
TAG_VERIFIED = "safeflavor.verified"
TAG_VERIFIED_AT = "safeflavor.verified_at"
TAG_POLICY = "safeflavor.policy"
TAG_REJECTED = "safeflavor.rejected"
TAG_REJECTED_AT = "safeflavor.rejected_at"


def artifact_digest(root: str | os.PathLike) -> str:
    """The ``safeflavor.verified`` digest of a local copy of a version's artifacts.

    ``sha256(name NUL sha256(file) LF ...)`` over every regular file, names sorted, ``model.sig``
    excluded: the signature is checked on its own, and leaving it out lets the gate sign after
    verifying without changing what it verified. Symlinks and special files raise IntegrityError.
    """
    files = integrity.ModelFiles(Path(os.path.abspath(os.fspath(root))))
    return integrity.tree_digest(files, [n for n in files.listing() if n != SIGNATURE_FILE])


def get_client(client: Any = None) -> Any:
    """``client`` or a new ``MlflowClient`` for the current tracking and registry URIs."""
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def get_version(client: Any, name: str, version: str | int) -> Any:
    """The registry's ModelVersion, or InvalidArgumentError naming the model and version."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise InvalidArgumentError(
            f"model {name!r} version {version}: cannot be read from the registry "
            f"({exc.error_code}: {str(exc.message)[:200]}). Check the name, the version and the "
            "tracking URI (MLFLOW_TRACKING_URI)."
        ) from None


def storage_uri(client: Any, name: str, version: str | int, *, _depth: int = 0) -> str:
    """Where the version's artifacts are stored, as a URI that is not ``models:/``."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from mlflow_safeflavor._mlflow_compat import parse_model_uri as _parse_model_uri

    uri = client.get_model_version_download_uri(name, str(version))
    if not (isinstance(uri, str) and uri.startswith("models:/")):
        return uri
    parsed = _parse_model_uri(uri)
    if parsed.model_id is not None:
        # Registered from a logged model (MLflow 3) with no storage_location of its own.
        return client.get_logged_model(parsed.model_id).artifact_location
    if _depth >= 4:
        raise InvalidArgumentError(f"model {name!r} version {version}: its source {uri} points at "
                                   "other versions more than 4 levels deep; refusing to follow it.")
    # A copied version (source models:/other/N): follow it to where the files are.
    other, other_version = get_model_name_and_version(client, uri)
    return storage_uri(client, other, other_version, _depth=_depth + 1)


def download_version(client: Any, name: str, version: str | int, dst_path: str | None = None) -> str:
    """Download a version's stored artifacts (and nothing else) and return the local directory.

    The files land directly in ``dst_path`` when given (as with a ``models:/`` download), else in
    a new temporary directory (or, for a local file store, the store's own directory is returned).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from mlflow_safeflavor._mlflow_compat import client_registry_uri

    uri = storage_uri(client, name, version)
    try:
        repo = get_artifact_repository(uri, tracking_uri=client.tracking_uri, registry_uri=client_registry_uri(client))
        return repo.download_artifacts("", dst_path)
    except MlflowException as exc:
        raise InvalidArgumentError(
            f"model {name!r} version {version}: its artifacts at {uri} cannot be downloaded "
            f"({str(exc.message)[:200]})."
        ) from None


def parse_registered_uri(model_uri: str) -> tuple[str, str] | None:
    """``(models:/name/<version|@alias|stage|latest> base, sub-path)`` for a registry URI, else None.

    ``models:/<model_id>`` (a logged model, not a registry version), ``models://<profile>/...``
    URIs and every other scheme give None.
    """
    if not isinstance(model_uri, str) or not model_uri.startswith("models:/"):
        return None
    if model_uri.startswith("models://"):
        # A registry named by a Databricks profile in the URI: left to MLflow's own download.
        return None
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    from mlflow_safeflavor._mlflow_compat import parse_model_uri as _parse_model_uri

    base, sub_path = ModelsArtifactRepository.split_models_uri(model_uri)
    try:
        parsed = _parse_model_uri(base)
    except MlflowException:
        return None
    if parsed.model_id is not None or parsed.name is None:
        return None
    return base, sub_path


def download_registered(model_uri: str, dst_path: str | None = None, *, check_tag: bool = True) -> str | None:
    """Download a ``models:/name@alias`` or ``models:/name/version`` URI as exactly the stored files.

    The URI is resolved to one version once (an alias that moves meanwhile cannot mix two versions)
    and that version's stored artifacts are downloaded, without the ``registered_model_meta`` file
    MLflow adds to ``models:/`` downloads (which no signature covers). With ``check_tag``, when the
    version carries a ``safeflavor.verified`` tag the artifacts must still hash to it, or
    IntegrityError is raised. Returns the local path, or None when ``model_uri`` is not a registry
    URI (the caller downloads it as usual).
    """
    parsed = parse_registered_uri(model_uri)
    if parsed is None:
        return None
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    base, sub_path = parsed
    client = get_client()
    try:
        name, version = get_model_name_and_version(client, base)
    except MlflowException as exc:
        raise InvalidArgumentError(f"{model_uri}: cannot be resolved in the registry ({str(exc.message)[:200]}).") from None
    mv = get_version(client, name, version)
    local = download_version(client, name, version, dst_path)
    expected = (mv.tags or {}).get(TAG_VERIFIED)
    if check_tag and expected:
        actual = artifact_digest(local)
        if not hmac.compare_digest(actual, expected):
            raise IntegrityError(
                f"{model_uri} (model {name!r} version {version}): the artifacts hash to {actual}, "
                f"but the version's {TAG_VERIFIED} tag records {expected}. They were changed after "
                "the registry gate verified them; do not load them — restore the original "
                "artifacts, or register the new ones as a new version and promote it.",
                path=local,
            )
    return os.path.join(local, sub_path) if sub_path else local


# MLflow's ModelsArtifactRepository writes this file into every models:/ download (name, version).
REGISTERED_MODEL_META = "registered_model_meta"
_TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def check_registered_copy(root: str | os.PathLike) -> None:
    """Compare a directory MLflow downloaded from ``models:/`` with its version's ``safeflavor.verified`` tag.

    MLflow's own loaders (``mlflow.pyfunc.load_model("models:/...")``, ``mlflow models serve``,
    ``mlflow.pyfunc.spark_udf`` on every executor) download through ``ModelsArtifactRepository``,
    which writes ``registered_model_meta`` (the model name and version) into the copy, and then
    call our ``_load_pyfunc`` with a local path. When that file is present and a registry is
    configured in the environment (``MLFLOW_TRACKING_URI`` or ``MLFLOW_REGISTRY_URI``), the copy —
    without that file — must hash to the version's tag, if it has one, or IntegrityError names the
    tag. Without a configured registry (a model baked into an image) there is nothing to ask.
    """
    import yaml

    path = os.path.join(os.fspath(root), REGISTERED_MODEL_META)
    if not os.path.isfile(path) or not any(os.environ.get(k) for k in _TRACKING_ENV):
        return
    try:
        meta = yaml.safe_load(integrity.read_file(Path(os.fspath(root)), REGISTERED_MODEL_META, max_bytes=64 * 1024))
        name, version = meta["model_name"], meta["model_version"]
    except (SafeFlavorError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"{path}: not the name/version file MLflow writes into a models:/ download "
            f"({type(exc).__name__}). Download the model again.",
            path=os.fspath(root),
        ) from None
    if name is None or version is None:
        return  # a models:/<model_id> download (a logged model, no registry version)
    mv = get_version(get_client(), str(name), str(version))
    expected = (mv.tags or {}).get(TAG_VERIFIED)
    if not expected:
        return
    files = integrity.ModelFiles(Path(os.path.abspath(os.fspath(root))))
    actual = integrity.tree_digest(files, [n for n in files.listing() if n not in (SIGNATURE_FILE, REGISTERED_MODEL_META)])
    if not hmac.compare_digest(actual, expected):
        raise IntegrityError(
            f"models:/{name}/{version} (downloaded to {root}): the artifacts hash to {actual}, but the "
            f"version's {TAG_VERIFIED} tag records {expected}. They were changed after the registry "
            "gate verified them; do not load them — restore the original artifacts, or register the "
            "new ones as a new version and promote it.",
            path=os.fspath(root),
        )
