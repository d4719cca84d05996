"""The FastAPI app behind ``mlflow-safeflavor ui``: server-rendered pages and a small JSON API.

Pages (``GET``): ``/`` check a pickle, ``/registry`` the table, ``/registry/<name>/<version>`` one
version. API: ``POST /api/scan`` (multipart upload, answers with the scan), ``POST /api/scan-uri``,
``POST /api/convert``, ``POST /api/registry/<name>/<version>/{verify,convert,promote}`` (each
answers ``202`` with a job), ``GET /api/jobs/<id>`` (poll), ``GET /api/jobs/<id>/download`` (the
zip, once), ``GET /api/registry[/<name>/<version>]``, ``GET /api/csrf``, ``GET /healthz``.
Errors are ``{"error_code", "message"}`` like MLflow's own REST API.
"""

from __future__ import annotations

import atexit
import json
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

# FastAPI resolves endpoint annotations from module globals: Request must be importable here.
from fastapi import FastAPI, Request

from mlflow_safeflavor.errors import SafeFlavorError
from mlflow_safeflavor.ui import actions
from mlflow_safeflavor.ui.config import ENV_MAX_HELD_MB, ENV_MAX_SCANS, UIConfig
from mlflow_safeflavor.ui.jobs import Job, JobRunner, describe_error
from mlflow_safeflavor.ui.security import CSRF_HEADER, GuardMiddleware, new_token
from mlflow_safeflavor.ui.uploads import UploadRefused, receive
from mlflow_safeflavor.ui.workspace import Upload, Workspace

HERE = Path(__file__).resolve().parent
MAX_JSON_BYTES = 16 * 1024


def _error(status: int, code: str, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error_code": code, "message": message})


def _job_accepted(job: Job) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=202, content=job.to_dict())


async def _json_body(request: Any) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UploadRefused(415, "UNSUPPORTED_MEDIA_TYPE", "send a JSON body (Content-Type: application/json).")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise UploadRefused(413, "REQUEST_TOO_LARGE", f"JSON body over {MAX_JSON_BYTES} bytes.")
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise UploadRefused(400, "BAD_REQUEST", "the body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise UploadRefused(400, "BAD_REQUEST", "the JSON body must be an object.")
    return doc


def _text(doc: dict[str, Any], key: str, *, required: bool = False, limit: int = 256) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise UploadRefused(400, "BAD_REQUEST", f"{key!r} is required.")
        return None
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise UploadRefused(400, "BAD_REQUEST", f"{key!r} must be a single-line string of at most {limit} characters.")
    return value.strip()


def shown_uri(uri: str) -> str:
    """``uri`` without any ``user:password@`` part, for display."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable tracking URI>"
    if parts.username is None and parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class _ScanSlots:
    """How many upload scans run now, at most ``limit``; a request that finds none free is refused."""

    def __init__(self, limit: int) -> None:
        self.limit, self.running = limit, 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.running >= self.limit:
                return False
            self.running += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.running -= 1


def _held_full(config: UIConfig) -> UploadRefused:
    return UploadRefused(
        503, "TEMPORARILY_UNAVAILABLE",
        f"the page already holds {config.max_held_bytes / 1048576:.4g} MiB of uploads waiting for conversion "
        f"({ENV_MAX_HELD_MB}); convert them or wait up to {config.ttl_seconds:g} s for them to expire, then upload again.")


async def _until_disconnected(request: Any, start: Any) -> Any:
    """Await ``start(cancel)`` while watching the client; when it goes away, set ``cancel``.

    The scan behind it checks the event (and kills its isolated process), so a client that hangs
    up stops the work it started instead of leaving a core busy for the whole budget.
    """
    import asyncio

    cancel = threading.Event()
    work = asyncio.ensure_future(start(cancel))
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=0.25)
            if not work.done() and await request.is_disconnected():
                cancel.set()
    except BaseException:  # the request itself was cancelled: stop the scan too
        cancel.set()
        raise
    return work.result()


def create_app(config: UIConfig | None = None) -> Any:
    """Build the app. Sets MLflow's tracking URI when ``config.tracking_uri`` is given.

    ``app.state`` holds ``config``, ``workspace`` (the private temp dir), ``jobs`` and ``token``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from mlflow_safeflavor._version import __version__
    from mlflow_safeflavor.ui import registry_view

    config = config or UIConfig.from_env()
    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    workspace = Workspace(config.ttl_seconds, config.tmp_dir)
    runner = JobRunner(workspace, workers=config.workers, ttl_seconds=config.ttl_seconds, max_jobs=config.max_jobs)
    scans = _ScanSlots(config.max_scans)
    token = new_token()
    stop = threading.Event()

    def janitor() -> None:
        while not stop.wait(min(30.0, max(1.0, config.ttl_seconds / 4))):
            workspace.sweep()
            runner.sweep()

    def close() -> None:
        stop.set()
        runner.shutdown()
        workspace.close()

    # Started here, not in the lifespan, so that the app also cleans up when mounted inside another
    # ASGI app (Starlette does not run a mounted app's lifespan); atexit covers that case at exit.
    threading.Thread(target=janitor, name="safeflavor-ui-janitor", daemon=True).start()
    atexit.register(close)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        try:
            yield
        finally:
            close()

    app = FastAPI(title="mlflow-safeflavor", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.config, app.state.workspace, app.state.jobs, app.state.token = config, workspace, runner, token
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["q"] = lambda s: quote(str(s), safe="")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def client() -> Any:
        from mlflow import MlflowClient

        return MlflowClient()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Any:
        base = {
            "root": request.scope.get("root_path", "").rstrip("/"), "csrf": token, "version": __version__,
            "tracking_uri": shown_uri(mlflow.get_tracking_uri()), "exposure": config.exposure_warning(),
            "ttl": f"{config.ttl_seconds:g}", "max_upload": config.max_upload_bytes, "max_upload_mb": f"{config.max_upload_bytes / 1048576:.4g}",
        }
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    @app.exception_handler(UploadRefused)
    async def _refused(request: Request, exc: UploadRefused) -> Any:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(LookupError)
    async def _missing(request: Request, exc: LookupError) -> Any:
        if request.url.path.startswith("/api/"):
            return _error(404, "RESOURCE_DOES_NOT_EXIST", str(exc.args[0]))
        return page(request, "error.html", status=404, nav=None, message=str(exc.args[0]), title="Not found")

    @app.exception_handler(MlflowException)
    async def _mlflow_error(request: Request, exc: MlflowException) -> Any:
        message = f"the MLflow registry at {shown_uri(mlflow.get_tracking_uri())} answered {exc.error_code}: {str(exc.message)[:300]}"
        if request.url.path.startswith("/api/"):
            return _error(502, "REGISTRY_ERROR", message)
        return page(request, "error.html", status=502, nav=None, message=message, title="Registry error")

    @app.exception_handler(SafeFlavorError)
    async def _library_error(request: Request, exc: SafeFlavorError) -> Any:
        if request.url.path.startswith("/api/"):
            return _error(400, type(exc).__name__, exc.message)
        return page(request, "error.html", status=400, nav=None, message=exc.message, title=type(exc).__name__)

    # ------------------------------------------------------------------------------- pages
    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Any:
        return page(request, "index.html", nav="check")

    @app.get("/registry", response_class=HTMLResponse)
    async def registry(request: Request, filter: str | None = None, page_token: str | None = None) -> Any:
        if filter is not None and filter not in registry_view.FILTERS:
            filter = None
        data = await run_in_threadpool(registry_view.list_versions, client(), filter_name=filter,
                                       page_token=(page_token or "")[:4096] or None)
        return page(request, "registry.html", nav="registry", filter=filter, filters=registry_view.FILTERS, **data)

    @app.get("/registry/{name}/{version}", response_class=HTMLResponse)
    async def version_page(request: Request, name: str, version: str) -> Any:
        from mlflow_safeflavor.signing import configured_keys

        detail = await run_in_threadpool(registry_view.version_detail, client(), name, version)
        keys = bool(configured_keys(config.public_key or None))
        return page(request, "version.html", nav="registry", signature_keys=keys, **detail)

    @app.get("/healthz")
    async def health() -> Any:
        return {"status": "ok", "jobs_running": runner.busy(), "uploads_held": workspace.held(),
                "uploads_held_bytes": workspace.held_bytes(), "scans_running": scans.running}

    # --------------------------------------------------------------------------------- api
    @app.get("/api/csrf")
    async def csrf() -> Any:
        return {"header": CSRF_HEADER, "token": token}

    @app.post("/api/scan")
    async def scan(request: Request) -> Any:
        # Refused before the body is read: no slot for another scan, or no room for another upload.
        if workspace.held_bytes() >= config.max_held_bytes:
            raise _held_full(config)
        if not scans.acquire():
            raise UploadRefused(503, "TEMPORARILY_UNAVAILABLE",
                                f"{config.max_scans} scans are running, the most this page runs at once "
                                f"({ENV_MAX_SCANS}); try again in a moment.")
        try:
            received, _ = await receive(request, workspace, cap=config.max_upload_bytes)
            upload = Upload(received.id, received.dir, received.files)
            try:
                report = await _until_disconnected(request, lambda cancel: run_in_threadpool(
                    actions.scan_upload, upload, config, cancel))
            except BaseException:
                workspace.remove(upload.dir)
                raise
        finally:
            scans.release()
        if report["ok"] and not workspace.keep(upload, max_held_bytes=config.max_held_bytes):
            workspace.remove(upload.dir)
            raise _held_full(config)
        if not report["ok"]:
            workspace.remove(upload.dir)  # refused: nothing of it stays
        sample = upload.files.get("sample")
        return {"upload_id": upload.id if report["ok"] else None, "file": upload.files["file"].display,
                "size": upload.files["file"].size, "sample": sample.display if sample else None, "scan": report}

    @app.post("/api/scan-uri")
    async def scan_uri(request: Request) -> Any:
        uri = actions.check_uri(_text(await _json_body(request), "uri", required=True, limit=2048))
        return _job_accepted(runner.submit("scan-uri", f"scan {uri}", lambda ctx: actions.scan_uri(ctx, uri, config)))

    @app.post("/api/convert")
    async def convert(request: Request) -> Any:
        doc = await _json_body(request)
        upload_id, uri = doc.get("upload_id"), _text(doc, "uri", limit=2048)
        if (upload_id is None) == (uri is None):
            return _error(400, "BAD_REQUEST", "send either 'upload_id' (from /api/scan) or 'uri'.")
        if uri is not None:
            uri = actions.check_uri(uri)
            synthetic = doc.get("synthetic") is True
            return _job_accepted(runner.submit("convert", f"convert {uri}",
                                               lambda ctx: actions.convert_uri(ctx, uri, synthetic, config)))
        upload = workspace.take(upload_id)
        if upload is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST",
                          "no upload waiting under this id: it was converted already, refused by its scan, or "
                          f"expired after {config.ttl_seconds:g} s. Upload the file again.")
        title = f"convert {upload.files['file'].display}"
        return _job_accepted(runner.submit("convert", title, lambda ctx: actions.convert_upload(ctx, upload, config),
                                           cleanup=lambda: workspace.remove(upload.dir)))

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> Any:
        job = runner.get(job_id)
        if job is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", "no such job (finished jobs are forgotten after the TTL).")
        return job.to_dict()

    @app.get("/api/jobs/{job_id}/download")
    async def download(job_id: str) -> Any:
        job = runner.get(job_id)
        taken = runner.take_download(job) if job is not None and job.state == "done" else None
        if taken is None:
            return _error(404 if job is None else 410, "RESOURCE_DOES_NOT_EXIST",
                          "nothing to download: the zip was downloaded already (it is deleted once sent), "
                          "expired, or the job has not finished. Convert again.")
        path, filename = taken
        return FileResponse(path, media_type="application/zip", filename=filename,
                            background=BackgroundTask(runner.discard_download, job))

    @app.get("/api/registry")
    async def registry_api(filter: str | None = None, page_token: str | None = None) -> Any:
        if filter is not None and filter not in registry_view.FILTERS:
            return _error(400, "BAD_REQUEST", f"filter must be one of {sorted(registry_view.FILTERS)}.")
        data = await run_in_threadpool(registry_view.list_versions, client(), filter_name=filter,
                                       page_token=(page_token or "")[:4096] or None)
        return {**data, "rows": [r.to_dict() for r in data["rows"]]}

    @app.get("/api/registry/{name}/{version}")
    async def version_api(name: str, version: str) -> Any:
        detail = await run_in_threadpool(registry_view.version_detail, client(), name, version)
        return {**detail, "row": detail["row"].to_dict()}

    @app.post("/api/registry/{name}/{version}/verify")
    async def verify(name: str, version: str) -> Any:
        return _job_accepted(runner.submit("verify", f"verify models:/{name}/{version}",
                                           lambda ctx: actions.verify_version(ctx, name, version, config)))

    @app.post("/api/registry/{name}/{version}/convert")
    async def convert_version(request: Request, name: str, version: str) -> Any:
        doc = await _json_body(request)
        target, synthetic = _text(doc, "target"), doc.get("synthetic") is True
        return _job_accepted(runner.submit(
            "convert-version", f"convert models:/{name}/{version}",
            lambda ctx: actions.convert_version(ctx, name, version, target, synthetic, config)))

    @app.post("/api/registry/{name}/{version}/promote")
    async def promote(request: Request, name: str, version: str) -> Any:
        alias = _text(await _json_body(request), "alias", required=True)
        return _job_accepted(runner.submit("promote", f"promote models:/{name}/{version} to @{alias}",
                                           lambda ctx: actions.promote_version(ctx, name, version, alias, config)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        return JSONResponse(status_code=500, content={"error_code": "INTERNAL_ERROR", **describe_error(exc)})

    # Added last = runs first: the host check, then the same-origin guard, then the routes.
    app.add_middleware(GuardMiddleware, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.host_names())
    return app
