"""Bring a model URI to a local directory, comparing registry versions with their verified tag."""

from __future__ import annotations

import os
import re

from mlflow_safeflavor.errors import InvalidArgumentError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # runs:, models:, s3:, file:, ... (not a bare path)


def download(model_uri: str | os.PathLike, dst: str | None = None, *, check_registry: bool = True) -> str:
    """Return a local path holding the model at ``model_uri`` (any MLflow URI or a local path).

    ``models:/name@alias`` and ``models:/name/version`` are resolved to one version once and
    downloaded as exactly the stored files (MLflow's own ``models:/`` download adds a
    ``registered_model_meta`` file no signature covers). With ``check_registry`` (the default) a
    version that carries a ``safeflavor.verified`` tag must still hash to it, or IntegrityError is
    raised naming the tag; a caller that must skip the check (the gate, which computes the tag)
    says so with ``check_registry=False``. Local paths are returned as they are, not copied.
    """
    from mlflow.artifacts import download_artifacts

    from mlflow_safeflavor.loader.versions import download_registered

    if not isinstance(model_uri, (str, os.PathLike)):
        raise InvalidArgumentError(f"model_uri must be a string, got {type(model_uri).__name__}.")
    uri = os.fspath(model_uri)
    if not _SCHEME.match(uri) and not os.path.exists(uri):
        raise InvalidArgumentError(
            f"{uri}: no such file or directory. Pass the path of a saved model directory or an "
            "MLflow model URI (runs:/<run_id>/<name>, models:/<name>@<alias>, models:/<name>/<version>)."
        )
    local = download_registered(uri, dst, check_tag=check_registry)
    if local is not None:
        return local
    return download_artifacts(artifact_uri=uri, dst_path=dst)
