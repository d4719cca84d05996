"""Bring a model URI to a local directory, comparing registry versions with their verified tag."""

from __future__ import annotations

import os
import re
import stat

from mlflow_safeflavor.errors import InvalidArgumentError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # runs:, models:, s3:, file:, ... (not a bare path)
# Characters MLflow's local repository treats specially in a bare path: it URL-decodes the path
# ('%'), refuses '#' and '..' in the last part, and escapes control characters. A path holding any
# of them goes through MLflow so the result (or the refusal) stays exactly MLflow's.
_SPECIAL = re.compile(r"[%#?;\\\x00-\x1f\x7f]")


def download(model_uri: str | os.PathLike, dst: str | None = None, *, check_registry: bool = True) -> str:
    """Return a local path holding the model at ``model_uri`` (any MLflow URI or a local path).

    ``models:/name@alias`` and ``models:/name/version`` are resolved to one version once and
    downloaded as exactly the stored files (MLflow's own ``models:/`` download adds a
    ``registered_model_meta`` file no signature covers). With ``check_registry`` (the default) a
    version that carries a ``safeflavor.verified`` tag must still hash to it, or IntegrityError is
    raised naming the tag; a caller that must skip the check (the gate, which computes the tag)
    says so with ``check_registry=False``. Local paths are returned as they are, not copied.
    """
    if not isinstance(model_uri, (str, os.PathLike)):
        raise InvalidArgumentError(f"model_uri must be a string, got {type(model_uri).__name__}.")
    uri = os.fspath(model_uri)
    if not _SCHEME.match(uri):
        local = _local_as_is(uri) if dst is None else None
        if local is not None:
            return local
        if not os.path.exists(uri):
            raise InvalidArgumentError(
                f"{uri}: no such file or directory. Pass the path of a saved model directory or an "
                "MLflow model URI (runs:/<run_id>/<name>, models:/<name>@<alias>, models:/<name>/<version>)."
            )
    # Imported here, past the local-path shortcut: on a cold cache each import statement costs
    # tens of microseconds, and a local load needs neither.
    from mlflow.artifacts import download_artifacts

    from mlflow_safeflavor.loader.versions import download_registered

    local = download_registered(uri, dst, check_tag=check_registry)
    if local is not None:
        return local
    return download_artifacts(artifact_uri=uri, dst_path=dst)


def _local_as_is(path: str) -> str | None:
    """The absolute form of an existing plain local ``path``, as MLflow would return it; else None.

    For a bare local path and no destination, MLflow's ``download_artifacts`` copies nothing and
    returns ``os.path.abspath`` of the path, after about 0.4 ms of URI parsing and repository set-up
    per call. Only ordinary paths take this shortcut (POSIX; no character MLflow decodes or refuses;
    a last part that is a name, not '.', '..' or empty; not a symbolic link, which MLflow resolves
    and may refuse); anything else is left to MLflow so the result stays the same.
    """
    if os.name != "posix" or _SPECIAL.search(path):
        return None
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        return None
    try:
        st = os.lstat(path)  # one call for "exists" and "is not a symbolic link"
    except (OSError, ValueError):
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    return os.path.abspath(path)
