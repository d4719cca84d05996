"""Client-side access to registered model versions: resolve, download exactly what is stored, check.

Downloads go to the version's storage location (``get_model_version_download_uri``, with a
``models:/<model_id>`` source resolved to the logged model's artifact location), never through a
``models:/name/version`` URI: MLflow's ``ModelsArtifactRepository`` writes an extra
``registered_model_meta`` file into such downloads, which is not among the stored artifacts and
would make digests and signatures differ between the gate and the store.
"""

from __future__ import annotations

import os
from typing import Any

from mlflow_safeflavor.loader.versions import (  # re-exported: the gate and the page use them from here
    download_registered,
    download_version,
    get_client,
    get_version,
    parse_registered_uri,
    storage_uri,
)

__all__ = [
    "download_registered",
    "download_version",
    "get_client",
    "get_version",
    "parse_registered_uri",
    "storage_uri",
    "upload_file",
]


def upload_file(client: Any, name: str, version: str | int, local_file: str | os.PathLike) -> None:
    """Put one file next to a version's stored artifacts (through the client's tracking server)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = storage_uri(client, name, version)
    get_artifact_repository(uri, tracking_uri=client.tracking_uri).log_artifact(os.fspath(local_file))


