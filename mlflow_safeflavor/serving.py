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
import sys
import tempfile
from typing import Any, Iterable

ENV_SERVE_MODEL = "MLFLOW_SAFEFLAVOR_SERVE_MODEL"
ENV_SERVE_BACKEND = "MLFLOW_SAFEFLAVOR_SERVE_BACKEND"
ENV_SERVE_DERIVE = "MLFLOW_SAFEFLAVOR_SERVE_DERIVE"


def _app_for(model: Any) -> Any:
    from mlflow.pyfunc import scoring_server

    return FastInvocations(scoring_server.init(model), model)


# A request body this small is answered on the event loop; larger ones go to a thread as MLflow does.
_INLINE_ROWS = 32


class FastInvocations:
    """ASGI wrapper: all-numeric ``dataframe_split`` requests skip MLflow's per-column pandas work.

    MLflow's ``/invocations`` spends about 7 ms of a one-row request on a 30-column model casting
    and re-checking each column with pandas, 5–30× the prediction itself with the ONNX backend.
    When the model's input schema is all ``double``/``float`` columns and a JSON request is exactly
    ``{"dataframe_split": {"columns": <the schema's names, in order>, "data": [[numbers]]}}`` (an
    ``index`` of the right length may come along, as pandas writes it), the
    result of that enforcement is known in advance — one float64 DataFrame with those columns — so
    it is built directly and MLflow's own ``predictions_to_json`` writes the answer. Anything else
    (other keys, ``params``, other columns or order, strings, bools, null, NaN, a failing predict)
    is handed to MLflow's handler unchanged, which answers or refuses exactly as before.
    """

    def __init__(self, app: Any, model: Any) -> None:
        from mlflow_safeflavor._mlflow_compat import pyfunc_implementation

        self.app = app
        self.impl = pyfunc_implementation(model)
        self.columns = _numeric_columns(model)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (self.columns is None or scope.get("type") != "http" or scope.get("path") != "/invocations"
                or scope.get("method") != "POST"):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # client went away: let the app see it
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"content-type"), "")
        rows = self._parse(content_type, body)
        answer = None
        if rows is not None:
            import asyncio

            answer = self._answer(rows) if len(rows) <= _INLINE_ROWS else await asyncio.to_thread(self._answer, rows)
        if answer is None:
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _parse(self, content_type: str, body: bytes) -> Any:
        import json

        parts = [p.strip().lower() for p in content_type.split(";")]
        if parts[0] != "application/json" or any(p not in ("charset=utf-8", "") for p in parts[1:]):
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        if not isinstance(doc, dict) or list(doc) != ["dataframe_split"]:
            return None
        split = doc["dataframe_split"]
        if (not isinstance(split, dict) or not {"columns", "data"} <= set(split) <= {"columns", "data", "index"}
                or split["columns"] != list(self.columns)):
            return None
        data, width = split["data"], len(self.columns)
        if not isinstance(data, list) or not data:
            return None
        # pandas' to_dict(orient="split") sends an index; the answer is a list, so it plays no part.
        if "index" in split and not (isinstance(split["index"], list) and len(split["index"]) == len(data)):
            return None
        for row in data:
            if not isinstance(row, list) or len(row) != width or not all(type(v) in (int, float) for v in row):
                return None
        return data

    def _answer(self, rows: list) -> bytes | None:
        import io

        import numpy as np
        import pandas as pd
        from mlflow.pyfunc.scoring_server import predictions_to_json

        arr = np.asarray(rows, dtype=np.float64)
        if not np.isfinite(arr).all():
            return None
        try:
            predictions = self.impl.predict(pd.DataFrame(arr, columns=list(self.columns)), params=None)
        except Exception:  # MLflow's handler reports errors in its own format
            return None
        out = io.StringIO()
        predictions_to_json(predictions, out)
        return out.getvalue().encode("utf-8")


def _numeric_columns(model: Any) -> tuple[str, ...] | None:
    """The input column names when the schema is only required double/float columns, else None."""
    from mlflow.types import DataType

    from mlflow_safeflavor._mlflow_compat import pyfunc_implementation
    from mlflow_safeflavor.flavor import SafeFlavorPyfunc

    if not isinstance(pyfunc_implementation(model), SafeFlavorPyfunc):
        return None
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names() or schema.is_tensor_spec():
        return None
    names = []
    for spec in schema.inputs:
        if getattr(spec, "type", None) not in (DataType.double, DataType.float) or not getattr(spec, "required", True):
            return None
        names.append(spec.name)
    return tuple(names) if len(set(names)) == len(names) else None


def create_app() -> Any:
    """uvicorn factory for worker processes: load ``$MLFLOW_SAFEFLAVOR_SERVE_MODEL`` and build the app.

    Trusted types and public keys come from the environment the parent set up.
    """
    from mlflow_safeflavor.flavor import load_pyfunc

    backend = os.environ.get(ENV_SERVE_BACKEND, "auto")
    local = os.environ[ENV_SERVE_MODEL]
    model = load_pyfunc(local, backend="native" if backend == "native" else "auto")
    # The parent found no export could be derived: do not pay the same failed conversion per worker.
    derive = os.environ.get(ENV_SERVE_DERIVE, "1") == "1"
    return _app_for(_with_export(model, local, backend, None, None, derive=derive))


def _with_export(model: Any, local: str, backend: str, trusted_types: Any, public_key: Any, *,
                 derive: bool = True) -> Any:
    """Set the served backend; under auto/onnx, derive the export a model saved without one lacks.

    ``model`` was loaded with backend "auto" (or "native"), so an export in the artifact that
    agreed is already in use. Otherwise the checks run again up to the trust decision (nothing is
    built twice) and :func:`mlflow_safeflavor.export.derive.derived_runner` converts the verified
    checkpoint bytes, or takes the export from its local cache.
    """
    impl = getattr(model, "_model_impl", None)
    from mlflow_safeflavor.flavor import SafeFlavorPyfunc

    if not isinstance(impl, SafeFlavorPyfunc):
        return model
    impl.backend = backend
    if backend == "native" or impl.onnx is not None or not derive:
        return model
    from mlflow_safeflavor.export.derive import derived_runner
    from mlflow_safeflavor.loader import Options, check_local

    progress = check_local(local, Options(trusted_types=trusted_types, public_key=public_key))
    impl.onnx = derived_runner(progress, strict=backend == "onnx")
    return model


def _name_source(exc: Any, local: str, model_uri: str) -> None:
    """Make a refusal name the model the user gave, not the private copy (deleted on exit)."""
    uri = os.fspath(model_uri)
    source = os.path.abspath(uri) if os.path.isdir(uri) else uri.rstrip("/")
    exc.message = exc.message.replace(local, source)
    exc.args = (exc.message, *exc.args[1:])
    if getattr(exc, "path", None):
        exc.path = exc.path.replace(local, source)


def ready_line(model: Any, model_uri: str, *, host: str, port: int, backend: str, workers: int) -> str:
    """The line ``serve`` prints once it listens: where, what it loaded, and with which backend."""
    impl = getattr(model, "_model_impl", None)
    inner = getattr(impl, "model", None)
    what = f"{type(inner).__name__}, {impl.codec.name} codec" if inner is not None and hasattr(impl, "codec") else "model"
    export = "ONNX export ready" if getattr(impl, "onnx", None) is not None else "no ONNX export"
    shown = f"[{host}]" if ":" in host else host
    many = f", {workers} workers" if workers > 1 else ""
    return (f"mlflow-safeflavor serve on http://{shown}:{port}/invocations: {model_uri} ({what}), "
            f"backend {backend} ({export}){many}")


def _ready_server(config: Any, line: str) -> Any:
    """A uvicorn server that prints ``line`` once its socket is bound (log_level warning hides uvicorn's own)."""
    import uvicorn

    class ReadyServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(line, file=sys.stderr, flush=True)

    return ReadyServer(config)


def serve(
    model_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    public_key: Any = None,
    trusted_types: Iterable[str] | str | None = None,
    timeout: int | None = None,
    backend: str | None = None,
) -> None:
    """Serve a safe-flavor model with MLflow's scoring protocol; refuse to start on any failed check.

    The model is downloaded and fully verified before the server binds its port: a refused model
    raises a SafeFlavorError (the CLI turns it into a message and exit code 1) and nothing serves.
    With ``workers > 1`` each uvicorn worker loads and verifies the model again. ``backend`` (None:
    ``$MLFLOW_SAFEFLAVOR_BACKEND``, else "auto") is the default for requests that do not say: "auto" (the ONNX export for batches where it is
    faster, derived from the verified checkpoint and cached locally when the model was saved
    without one), "onnx" (the export, or refuse to start when none can be made) or "native".
    """
    import uvicorn

    from mlflow_safeflavor import policy, signing
    from mlflow_safeflavor.errors import SafeFlavorError
    from mlflow_safeflavor.flavor import _resolve_backend, load_pyfunc
    from mlflow_safeflavor.loader import download

    tmp = tempfile.mkdtemp(prefix="safeflavor-serve-")
    try:
        backend = _resolve_backend(backend, source="--backend ")
        local = download(model_uri, tmp)
        try:
            model = load_pyfunc(local, trusted_types=trusted_types, public_key=public_key,
                                backend="native" if backend == "native" else "auto")
            _with_export(model, local, backend, trusted_types, public_key)
        except SafeFlavorError as exc:
            _name_source(exc, local, model_uri)
            raise
        if timeout:
            os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(timeout)
        line = ready_line(model, model_uri, host=host, port=port, backend=backend, workers=workers)
        if workers <= 1:
            _ready_server(uvicorn.Config(_app_for(model), host=host, port=port, log_level="warning"), line).run()
            return
        print(line, file=sys.stderr, flush=True)  # the supervisor binds the port just after this
        # Worker processes inherit the policy through the environment.
        extra = policy.parse_type_list(trusted_types, source="--trusted-types")
        if extra:
            current = os.environ.get(policy.ENV_TRUSTED_TYPES, "")
            os.environ[policy.ENV_TRUSTED_TYPES] = ",".join(filter(None, [current, *extra]))
        keys = signing.configured_keys(public_key)
        if keys:
            os.environ[signing.ENV_PUBLIC_KEY] = ",".join(str(k.resolve()) for k in keys)
        os.environ[ENV_SERVE_MODEL] = local
        os.environ[ENV_SERVE_BACKEND] = backend  # workers find a derived export in the cache
        os.environ[ENV_SERVE_DERIVE] = "1" if getattr(model._model_impl, "onnx", None) is not None else "0"
        uvicorn.run("mlflow_safeflavor.serving:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
