"""A receiver for MLflow registry webhooks that verifies new versions and undoes unverified promotions.

MLflow (3.17, ``mlflow/webhooks/delivery.py``) POSTs JSON ``{"entity", "action", "timestamp",
"data"}`` with the headers ``X-MLflow-Delivery-Id`` (a UUID), ``X-MLflow-Timestamp`` (Unix seconds)
and, when the webhook has a secret, ``X-MLflow-Signature: v1,<base64 HMAC-SHA256>`` over
``f"{delivery_id}.{timestamp}.{body}"``. The receiver refuses a bad or missing signature (401), a
timestamp outside the window (401) and a delivery id it has already accepted within the window
(409), then answers 202 at once and does the work on one background thread, in arrival order:

- ``model_version.created``: verify the version (as ``promote`` does, without an alias) and tag it
  ``safeflavor.verified`` or ``safeflavor.rejected``;
- ``model_version_alias.created`` / ``prompt_alias.created`` for a protected alias: unless the
  version's artifacts still match its ``safeflavor.verified`` tag and pass verification, delete the
  alias (if it still points at that version) and tag the version rejected.

Delivery is asynchronous and fire-and-forget, so this can undo a promotion but never veto it; the
``safeflavor-gate`` app plugin is the synchronous guard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

_logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
EVENTS = ("model_version.created", "model_version_alias.created", "prompt_alias.created")
DEFAULT_WINDOW_SECONDS = 300
# MLflow's registry payloads are a few hundred bytes (tags and descriptions included, well under this).
MAX_BODY_BYTES = 1024 * 1024


def sign_delivery(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's signature header value for one delivery: ``v1,<base64 HMAC-SHA256>``."""
    digest = hmac.new(secret.encode("utf-8"), f"{delivery_id}.{timestamp}.{body}".encode("utf-8"),
                      hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


@dataclass
class Receiver:
    """Authenticates deliveries and runs the gate's reactions on a worker thread.

    ``client`` is an ``MlflowClient`` for the tracking server the webhook is registered on; the
    policy (``public_key``, ``trusted_types``) and the protected aliases are the gate's own.
    """

    secret: str
    client: Any
    protected: frozenset[str]
    public_key: Any = None
    trusted_types: Iterable[str] | str | None = None
    window: float = DEFAULT_WINDOW_SECONDS
    smoke: bool = True
    _seen: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _jobs: "queue.Queue[tuple[str, dict[str, Any]]]" = field(default_factory=queue.Queue)

    def authenticate(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """Return ``(status, error body)`` for a delivery to refuse, or None to accept it.

        The delivery id is remembered only after the signature verified, so unsigned requests
        cannot poison the replay cache; an id is kept until its timestamp leaves the window, after
        which the timestamp check alone refuses a replay.
        """
        delivery_id = headers.get(DELIVERY_ID_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not (delivery_id and timestamp and signature):
            return _error(401, "UNAUTHENTICATED", f"missing {DELIVERY_ID_HEADER}, {TIMESTAMP_HEADER} or "
                          f"{SIGNATURE_HEADER}; register the webhook with a secret")
        try:
            sent = int(timestamp)
            text = body.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return _error(401, "UNAUTHENTICATED", "malformed timestamp or body encoding")
        now = time.time()
        if abs(now - sent) > self.window:
            return _error(401, "UNAUTHENTICATED", f"timestamp {sent} is outside the {self.window:g}s window "
                          "(stale or replayed delivery, or clocks out of sync)")
        expected = sign_delivery(self.secret, delivery_id, timestamp, text)
        # Standard Webhooks allow several space-separated signatures; accept any valid v1 one. Compared
        # as bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401).
        wanted = expected.encode("utf-8")
        if not any(hmac.compare_digest(wanted, s.encode("utf-8", "surrogateescape")) for s in signature.split()):
            return _error(401, "UNAUTHENTICATED", "invalid X-MLflow-Signature for this secret")
        with self._lock:
            # Forget an id only once its timestamp has left the window, so no replay can fall between.
            for old, expires in list(self._seen.items()):
                if now > expires:
                    del self._seen[old]
            if delivery_id in self._seen:
                return _error(409, "REPLAYED_DELIVERY", f"delivery {delivery_id} was already accepted")
            self._seen[delivery_id] = max(now, sent) + self.window
        return None

    def accept(self, payload: Any) -> str:
        """Queue the reaction to an authenticated delivery; returns what will be done."""
        if not isinstance(payload, dict):
            return "ignored: not a JSON object"
        event = f"{payload.get('entity')}.{payload.get('action')}"
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        if event not in EVENTS:
            return f"ignored: {event}"
        self._jobs.put((event, data))
        return f"queued: {event}"

    def run_forever(self) -> None:
        """Process queued events one at a time (the worker thread's body)."""
        while True:
            event, data = self._jobs.get()
            try:
                self.handle(event, data)
            except Exception:  # one bad event must not stop the worker
                _logger.exception("safeflavor webhook: handling %s %s failed", event, data)
            finally:
                self._jobs.task_done()

    def handle(self, event: str, data: dict[str, Any]) -> None:
        """React to one event synchronously (``run_forever`` calls this; tests may too)."""
        from mlflow_safeflavor.registry.core import is_protected

        name, version = str(data.get("name", "")), str(data.get("version", ""))
        if not name or not version:
            return
        if event == "model_version.created":
            self._verify_new_version(name, version)
        elif is_protected(str(data.get("alias", "")), self.protected):
            self._check_alias(name, version, str(data["alias"]))

    def _evaluate(self, name: str, version: str, expected: str | None = None) -> Any:
        """Download and evaluate one version; a failure to check counts as a refusal (fail closed)."""
        from mlflow_safeflavor.registry.core import Verdict, evaluate
        from mlflow_safeflavor.registry.store import download_version

        try:
            with tempfile.TemporaryDirectory(prefix="safeflavor-webhook-") as tmp:
                local = download_version(self.client, name, version, tmp)
                return evaluate(local, label=f"models:/{name}/{version}", public_key=self.public_key,
                                trusted_types=self.trusted_types, expected_digest=expected, smoke=self.smoke)
        except Exception as exc:  # the registry or artifact store failed us: nothing was verified
            _logger.exception("safeflavor webhook: verifying %s version %s failed", name, version)
            return Verdict(ok=False).refuse("gate", f"the webhook could not verify model {name!r} version "
                                                    f"{version} ({type(exc).__name__}: {str(exc)[:300]})")

    def _verify_new_version(self, name: str, version: str) -> None:
        from mlflow_safeflavor.registry.core import policy_record, rejected_tags, verified_tags

        verdict = self._evaluate(name, version)
        if verdict.ok:
            policy = policy_record(by="webhook", trusted_types=self.trusted_types,
                                   public_key=self.public_key, smoke=self.smoke)
            tags = verified_tags(verdict.digest, policy)
        else:
            tags = rejected_tags(verdict.reason)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        _logger.info("safeflavor webhook: %s version %s %s", name, version,
                     "verified" if verdict.ok else f"rejected: {verdict.reason}")

    def _check_alias(self, name: str, version: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        from mlflow_safeflavor._mlflow_compat import is_prompt
        from mlflow_safeflavor.registry.core import TAG_VERIFIED, is_prompt_placeholder, rejected_tags

        uri = self.client.get_model_version_download_uri(name, version)
        if is_prompt_placeholder(uri) and is_prompt(self.client.get_registered_model(name)):
            return  # a prompt version: no artifacts a model loader could fetch
        expected = (self.client.get_model_version(name, version).tags or {}).get(TAG_VERIFIED)
        if not expected:
            reason = f"it has no {TAG_VERIFIED} tag"
        else:
            verdict = self._evaluate(name, version, expected)
            if verdict.ok:
                return
            reason = verdict.reason
        # Only undo what this event did: the alias may have moved on or gone since (with its own event).
        try:
            current = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return
        if str(current.version) != version:
            return
        self.client.delete_registered_model_alias(name, alias)
        message = (f"protected alias @{alias} was removed by the safeflavor webhook: {reason}. Promote "
                   f"with `mlflow-safeflavor promote {name} <version> --alias {alias}`")
        for key, value in rejected_tags(message).items():
            self.client.set_model_version_tag(name, version, key, value)
        _logger.warning("safeflavor webhook: removed @%s from %s version %s: %s", alias, name, version, reason)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error_code": code, "message": message}


def create_app(receiver: Receiver) -> Any:
    """The FastAPI app: ``POST /webhook`` for deliveries, ``GET /health``; starts the worker thread."""
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="mlflow-safeflavor webhook", docs_url=None, redoc_url=None, openapi_url=None)
    threading.Thread(target=receiver.run_forever, name="safeflavor-webhook", daemon=True).start()

    async def health(request: Any) -> Any:
        return JSONResponse({"status": "ok"})

    async def webhook(request: Any) -> Any:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:  # checked before authentication: cap what anyone can send
                return JSONResponse(status_code=413, content={"error_code": "REQUEST_TOO_LARGE",
                                                              "message": f"body over {MAX_BODY_BYTES} bytes"})
        refusal = receiver.authenticate(request.headers, body)
        if refusal is not None:
            return JSONResponse(status_code=refusal[0], content=refusal[1])
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse(status_code=400, content={"error_code": "BAD_REQUEST", "message": "body is not JSON"})
        return JSONResponse(status_code=202, content={"status": receiver.accept(payload)})

    # Plain Starlette routes: the handlers take the raw request, with no parameter injection that
    # could parse the body before its signature is checked.
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/webhook", webhook, methods=["POST"])
    return app


def serve(
    *,
    secret: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    tracking_uri: str | None = None,
    public_key: Any = None,
    trusted_types: Iterable[str] | str | None = None,
    protected: str | Iterable[str] | None = None,
    window: float = DEFAULT_WINDOW_SECONDS,
) -> None:
    """Run the receiver with uvicorn until interrupted; register it with ``MlflowClient().create_webhook``.

    ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``) is the server whose versions are tagged and
    whose aliases are removed; ``protected`` defaults to ``MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES``.
    """
    import uvicorn
    from mlflow import MlflowClient

    from mlflow_safeflavor.errors import InvalidArgumentError
    from mlflow_safeflavor.registry.core import policy_record, protected_aliases, smoke_enabled

    if not secret:
        raise InvalidArgumentError("the webhook receiver needs a secret (--secret or MLFLOW_SAFEFLAVOR_WEBHOOK_SECRET), "
                                   "the same one given to MlflowClient().create_webhook(secret=...).")
    policy_record(by="webhook", trusted_types=trusted_types, public_key=public_key)  # checks keys up front
    receiver = Receiver(secret=secret, client=MlflowClient(tracking_uri=tracking_uri),
                        protected=protected_aliases(protected), public_key=public_key,
                        trusted_types=trusted_types, window=window, smoke=smoke_enabled())
    uvicorn.run(create_app(receiver), host=host, port=port, log_level="info")
