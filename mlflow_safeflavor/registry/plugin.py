"""The ``safeflavor-gate`` ``mlflow.app`` plugin: the tracking server itself refuses unverified promotions.

``safeflavor-gate-auth`` (:func:`create_auth_app`) is the same gate behind MLflow's ``basic-auth``.

``mlflow server --app-name safeflavor-gate`` looks up the entry point ``mlflow.app:safeflavor-gate``
(:func:`create_app`), calls it once per worker (uvicorn ``--factory``), and serves what it returns.
Like MLflow's own ``basic-auth`` app, it adds a ``before_request`` hook to MLflow's Flask app and,
under uvicorn (the default server in MLflow 3), wraps that Flask app in MLflow's FastAPI app with
``create_fastapi_app``; under gunicorn/waitress it returns the Flask app.

The hook looks only at requests Flask routes to ``_set_registered_model_alias`` — in MLflow 3.17
``POST /api/2.0/mlflow/registered-models/alias`` and ``POST /ajax-api/2.0/...`` (the UI), with any
static prefix; there is no 3.0 variant and no native FastAPI or GraphQL route that sets an alias.
Matching Flask's resolved endpoint (not a path string) keeps it correct across prefixes and
versions, and the body is parsed with MLflow's own request parser, so the gate and the handler
cannot read different names. For a protected alias the version must carry a ``safeflavor.verified``
tag equal to the digest of its current artifacts (downloaded server-side from the artifact store),
pass the full verification under the server's policy (``MLFLOW_SAFEFLAVOR_PUBLIC_KEY``,
``MLFLOW_SAFEFLAVOR_TRUSTED_TYPES``) and, unless ``MLFLOW_SAFEFLAVOR_GATE_SMOKE_TEST=false``, the
subprocess smoke test; otherwise the answer is 403 ``PERMISSION_DENIED``. When the registry or
artifact store cannot be read (the database is down: MLflow's 5xx errors) the answer is 503
``TEMPORARILY_UNAVAILABLE`` instead, so the alias stays unset without recording a verdict and
clients retry. Every other request passes through untouched.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from typing import Any

_logger = logging.getLogger(__name__)
ALIAS_ENDPOINT = "_set_registered_model_alias"
_INSTALLED_FLAG = "SAFEFLAVOR_GATE_INSTALLED"


_EVALUATING = threading.Lock()


def create_app(app: Any = None) -> Any:
    """The ``mlflow.app`` factory: MLflow's server app with the alias gate installed.

    ``app`` defaults to MLflow's Flask app (``mlflow.server.app``). Returns MLflow's FastAPI
    wrapper around it when the server runs under uvicorn, the Flask app otherwise.
    """
    from mlflow_safeflavor._mlflow_compat import server_interface

    if app is None:
        from mlflow.server import app as flask_app

        app = flask_app
    install(app)
    if server_interface() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app


def create_auth_app(app: Any = None) -> Any:
    """The ``safeflavor-gate-auth`` factory: MLflow's ``basic-auth`` app with the alias gate behind it.

    ``mlflow server --app-name`` takes one app, so this one runs both: MLflow's
    ``mlflow.server.auth.create_app`` (users, permissions, its own database and
    ``MLFLOW_AUTH_CONFIG_PATH`` configuration) is applied first, so an unauthenticated or
    unauthorised alias write is refused by MLflow before the gate downloads anything; the gate's
    hook is added after it and judges what authentication let through. Returns what basic-auth
    returns (its FastAPI wrapper under uvicorn, with its permission middleware).
    """
    from mlflow.server.auth import create_app as auth_create_app

    if app is None:
        from mlflow.server import app as flask_app

        app = flask_app
    served = auth_create_app(app)  # registers auth's before_request hook first: Flask runs hooks in order
    install(app)
    return served


def install(app: Any) -> None:
    """Add the gate's ``before_request`` hook to a Flask app serving MLflow's handlers (once).

    Use it to combine the gate with another app plugin, e.g. ``basic-auth``: call that plugin's
    factory first (so authentication runs before the gate's work) and then ``install(flask_app)``.
    """
    from mlflow_safeflavor.registry.core import protected_aliases, smoke_enabled

    if app.config.get(_INSTALLED_FLAG):
        return
    protected = protected_aliases()
    smoke = smoke_enabled()

    def _safeflavor_gate() -> Any:
        from flask import request

        if request.endpoint != ALIAS_ENDPOINT:
            return None
        return _guard_alias_request(protected, smoke)

    app.before_request(_safeflavor_gate)
    app.config[_INSTALLED_FLAG] = True
    _logger.info("safeflavor-gate: protected aliases %s (smoke test %s)", sorted(protected), "on" if smoke else "off")


def _guard_alias_request(protected: frozenset[str], smoke: bool) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.model_registry_pb2 import SetRegisteredModelAlias

    from mlflow_safeflavor._mlflow_compat import parse_request_message
    from mlflow_safeflavor.registry.core import is_protected

    try:
        message = parse_request_message(SetRegisteredModelAlias())
    except MlflowException as exc:
        # The handler would fail the same way with the same parser; answer as it would.
        return _json_response(exc.get_http_status_code(), json.loads(exc.serialize_as_json()))
    name, alias, version = message.name, message.alias, message.version
    if not is_protected(alias, protected):
        return None
    try:
        refusal = check_version_server_side(name, version, alias, smoke=smoke)
    except Exception as exc:  # fail closed: an alias the gate cannot check is not set
        if isinstance(exc, MlflowException) and exc.get_http_status_code() >= 500:
            # The registry or artifact store is unavailable (e.g. the database is down): not a
            # verdict on the version. 503 keeps the alias unset and tells clients to retry.
            _logger.warning("safeflavor-gate: cannot check %s version %s now: %s", name, version, str(exc.message)[:300])
            return _json_response(503, {
                "error_code": "TEMPORARILY_UNAVAILABLE",
                "message": (f"the gate cannot check model {name!r} version {version} right now: the tracking "
                            f"server's store is unavailable ({str(exc.message)[:300]}); the alias was not set. Retry."),
            })
        _logger.exception("safeflavor-gate: checking %s version %s failed", name, version)
        refusal = (f"the gate could not verify model {name!r} version {version} "
                   f"({type(exc).__name__}: {str(exc)[:300]}); the alias was not set")
    if refusal is None:
        _logger.info("safeflavor-gate: allowed @%s -> %s version %s", alias, name, version)
        return None
    _logger.warning("safeflavor-gate: refused @%s -> %s version %s: %s", alias, name, version, refusal)
    return _json_response(403, {"error_code": "PERMISSION_DENIED", "message": refusal})


def check_version_server_side(name: str, version: str, alias: str, *, smoke: bool = True) -> str | None:
    """Decide, inside the tracking server, whether ``name``/``version`` may hold ``alias``.

    Returns None to allow, or the refusal message naming the model version, the problem and the
    fix. Reads the registry store and the artifact store directly (not over HTTP).
    """
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor._mlflow_compat import server_registry_store
    from mlflow_safeflavor.registry.core import TAG_VERIFIED, evaluate

    store = server_registry_store()
    fix = (f"run `mlflow-safeflavor promote {name} {version} --alias {alias}` (it verifies, tags and "
           "sets the alias), or promote a version that passes it")
    try:
        mv = store.get_model_version(name=name, version=version)
        uri = store.get_model_version_download_uri(name, version)
    except MlflowException as exc:
        if exc.get_http_status_code() >= 500:
            raise  # the store is unavailable: answered 503 by the caller, not refused
        return f"model {name!r} version {version!r} cannot be read ({str(exc.message)[:200]}); no alias was set"
    if _is_prompt_version(store, name, uri):
        return None
    expected = (mv.tags or {}).get(TAG_VERIFIED)
    if not expected:
        return (f"@{alias} is a protected alias and model {name!r} version {version} has no "
                f"{TAG_VERIFIED} tag. Fix: {fix}.")
    with tempfile.TemporaryDirectory(prefix="safeflavor-gate-") as tmp:
        local = _download_server_side(uri, tmp)
        # One evaluation at a time per worker process: Python 3.11's ast (behind numpy's .npy header
        # parser, which skops and our zip checks call) is not thread-safe (CPython gh-106905), so
        # two concurrent checks could refuse a good version. Workers still verify in parallel.
        with _EVALUATING:
            verdict = evaluate(local, label=f"models:/{name}/{version}", expected_digest=expected, smoke=smoke)
    if verdict.ok:
        return None
    return (f"@{alias} is a protected alias and model {name!r} version {version} fails the "
            f"safeflavor gate: {verdict.reason}. Fix: {fix}.")


def _is_prompt_version(store: Any, name: str, uri: Any) -> bool:
    """A prompt version has no artifacts (its source is MLflow's placeholder): nothing to load or verify.

    Both conditions are required: a model flagged as a prompt by a tag still has its artifacts
    checked when its version points at real storage.
    """
    from mlflow_safeflavor._mlflow_compat import is_prompt
    from mlflow_safeflavor.registry.core import is_prompt_placeholder

    return is_prompt_placeholder(uri) and is_prompt(store.get_registered_model(name=name))


def _download_server_side(uri: str, dst: str) -> str:
    """Download the artifacts at ``uri`` as the server's own artifact handlers resolve them."""
    from mlflow_safeflavor._mlflow_compat import server_download

    return server_download(uri, dst)


def _json_response(status: int, body: dict[str, Any]) -> Any:
    from flask import Response

    return Response(json.dumps(body), status=status, mimetype="application/json")
