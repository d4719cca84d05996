"""A hardened scoring server: MLflow's own scoring app, with the model loaded by our loader.

``mlflow models serve`` loads models with ``mlflow.pyfunc.load_model``, which imports whatever
``loader_module`` MLmodel names. ``serve`` instead loads with :func:`load_pyfunc` — digests,
policy and (when keys are configured) signatures checked, ``loader_module`` never read — and hands
the ``PyFuncModel`` to ``mlflow.pyfunc.scoring_server.init``, so the protocol (``/ping``,
``/invocations``, JSON and CSV inputs, ``params``, 400 errors) is exactly MLflow's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable

ENV_SERVE_MODEL = "MLFLOW_SAFEFLAVOR_SERVE_MODEL"


def _app_for(model: Any) -> Any:
    from mlflow.pyfunc import scoring_server

    return scoring_server.init(model)


def create_app() -> Any:
    """uvicorn factory for worker processes: load ``$MLFLOW_SAFEFLAVOR_SERVE_MODEL`` and build the app.

    Trusted types and public keys come from the environment the parent set up.
    """
    from mlflow_safeflavor.flavor import load_pyfunc

    return _app_for(load_pyfunc(os.environ[ENV_SERVE_MODEL]))


def _name_source(exc: Any, local: str, model_uri: str) -> None:
    """Make a refusal name the model the user gave, not the private copy (deleted on exit)."""
    uri = os.fspath(model_uri)
    source = os.path.abspath(uri) if os.path.isdir(uri) else uri.rstrip("/")
    exc.message = exc.message.replace(local, source)
    exc.args = (exc.message, *exc.args[1:])
    if getattr(exc, "path", None):
        exc.path = exc.path.replace(local, source)


def serve(
    model_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    public_key: Any = None,
    trusted_types: Iterable[str] | str | None = None,
    timeout: int | None = None,
) -> None:
    """Serve a safe-flavor model with MLflow's scoring protocol; refuse to start on any failed check.

    The model is downloaded and fully verified before the server binds its port: a refused model
    raises a SafeFlavorError (the CLI turns it into a message and exit code 1) and nothing serves.
    With ``workers > 1`` each uvicorn worker loads and verifies the model again.
    """
    import uvicorn

    from mlflow_safeflavor import policy, signing
    from mlflow_safeflavor.errors import SafeFlavorError
    from mlflow_safeflavor.flavor import _download, load_pyfunc

    tmp = tempfile.mkdtemp(prefix="safeflavor-serve-")
    try:
        local = _download(model_uri, tmp, check_registry=True)
        try:
            model = load_pyfunc(local, trusted_types=trusted_types, public_key=public_key)
        except SafeFlavorError as exc:
            _name_source(exc, local, model_uri)
            raise
        if timeout:
            os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(timeout)
        if workers <= 1:
            uvicorn.run(_app_for(model), host=host, port=port, log_level="warning")
            return
        # Worker processes inherit the policy through the environment.
        extra = policy.parse_type_list(trusted_types, source="--trusted-types")
        if extra:
            current = os.environ.get(policy.ENV_TRUSTED_TYPES, "")
            os.environ[policy.ENV_TRUSTED_TYPES] = ",".join(filter(None, [current, *extra]))
        keys = signing.configured_keys(public_key)
        if keys:
            os.environ[signing.ENV_PUBLIC_KEY] = ",".join(str(k.resolve()) for k in keys)
        os.environ[ENV_SERVE_MODEL] = local
        uvicorn.run("mlflow_safeflavor.serving:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
