"""Sign a safe-flavor model (offline, an EC key) after the loader's checks pass.

Above the load engine: a model is downloaded (registry tag checked) and verified by the same steps
``load_model`` runs before anything is signed, so a tampered model is never signed. The signing and
verification primitives live in :mod:`mlflow_safeflavor.signing`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from mlflow_safeflavor import loader
from mlflow_safeflavor.errors import InvalidArgumentError, SignatureError
from mlflow_safeflavor.signing import SIGNATURE_FILE, _require_library, hashing_config


def sign_model(
    model_uri_or_path: str | os.PathLike,
    private_key: str | os.PathLike,
    *,
    password: str | None = None,
    trusted_types: Iterable[str] | None = None,
) -> str:
    """Sign a safe-flavor model with an elliptic-curve private key (PEM), offline.

    A local directory is signed in place; any other MLflow URI (``runs:/``, ``models:/``, ...) is
    downloaded, signed, and ``model.sig`` is uploaded next to the model's artifacts. The model is
    verified first (digests and trust decision under this process's policy), so a tampered model is
    never signed. Returns the path or URI that now holds the signature.
    """
    _require_library()
    from model_signing import signing

    key = Path(os.fspath(private_key))
    if not key.is_file():
        raise InvalidArgumentError(f"private key {key} is not a readable PEM file.")
    target = os.fspath(model_uri_or_path)
    local = Path(target) if Path(target).is_dir() else None
    tmp = None
    try:
        if local is None:
            tmp = tempfile.mkdtemp(prefix="safeflavor-sign-")
            local = Path(loader.download(target, tmp))
        # Verified by the loader's steps (digests, pyfunc configuration, trust), never signed blind.
        prep = loader.check_local(local, loader.Options(trusted_types=trusted_types, require_signature=False))
        sig_path = prep.root / SIGNATURE_FILE
        if sig_path.exists() or sig_path.is_symlink():
            sig_path.unlink()
        # Hash and sign into a temporary name outside the directory, then move into place, so the
        # signature never covers itself or a half-written file.
        with tempfile.TemporaryDirectory() as sig_tmp:
            out = Path(sig_tmp) / SIGNATURE_FILE
            try:
                signing.Config().use_elliptic_key_signer(private_key=key, password=password).set_hashing_config(
                    hashing_config()
                ).sign(prep.root, out)
            except Exception as exc:
                raise SignatureError(f"signing {prep.root} failed: {type(exc).__name__}: {str(exc)[:300]}") from None
            shutil.move(str(out), sig_path)
        if tmp is None:
            return str(prep.root)
        _upload_signature(target, sig_path)
        return target
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _upload_signature(model_uri: str, sig_path: Path) -> None:
    """Put ``model.sig`` next to the artifacts that ``model_uri`` points at."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    uri = ModelsArtifactRepository.get_underlying_uri(model_uri) if model_uri.startswith("models:/") else model_uri
    get_artifact_repository(uri).log_artifact(str(sig_path))
