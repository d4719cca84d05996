"""API tests of ``mlflow-safeflavor ui``: every endpoint, over real HTTP, against a real ``mlflow server``.

The app runs under uvicorn on a loopback port in this process (so the tests can look into its
private workspace); registry endpoints talk to a real ``mlflow server`` started with the
integration suite's ``start_mlflow_server``. Hostile uploads are live: unpickling any of them
would create a marker file, so "no marker" proves no code ran, and "nothing in the workspace"
proves nothing of the upload stayed on disk.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from hostile import pickle_that_touches

uvicorn = pytest.importorskip("uvicorn")  # a dependency of mlflow: always there
from mlflow_safeflavor.ui import UIConfig, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 240
if str(ROOT / "integration") not in sys.path:
    sys.path.insert(0, str(ROOT / "integration"))  # serverproc and the real-server helpers


# ------------------------------------------------------------------------------ the running app

@dataclass
class Running:
    """A UI app served on a loopback port, with a requests session that carries the CSRF token."""

    app: Any
    url: str
    server: Any
    thread: threading.Thread
    token: str

    @property
    def workspace(self) -> Any:
        return self.app.state.workspace

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, *, token: bool = True, headers: dict | None = None, **kw: Any) -> requests.Response:
        h = {"X-SafeFlavor-CSRF": self.token} if token else {}
        return requests.post(self.url + path, headers={**h, **(headers or {})}, timeout=120, **kw)

    def scan(self, name: str, data: bytes, ctype: str = "application/octet-stream", sample: tuple | None = None) -> requests.Response:
        files = {"file": (name, data, ctype)}
        if sample is not None:
            files["sample"] = sample
        return self.post("/api/scan", files=files)

    def wait(self, started: requests.Response) -> dict:
        assert started.status_code == 202, started.text
        job = started.json()
        deadline = time.monotonic() + JOB_TIMEOUT
        while job["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job still {job['state']} after {JOB_TIMEOUT}s: {job}"
            time.sleep(0.3)
            job = self.get(f"/api/jobs/{job['id']}").json()
        return job

    def assert_clean(self, *, jobs: bool = True) -> None:
        """Nothing of any upload (or job) is left in the private workspace."""
        ws = self.workspace
        assert list(ws.uploads_dir.iterdir()) == [], ws.leftovers()
        if jobs:
            deadline = time.monotonic() + 5  # a zip is deleted by a background task after it was sent
            while list(ws.jobs_dir.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert list(ws.jobs_dir.iterdir()) == [], ws.leftovers()


def _serve(config: UIConfig) -> Running:
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="ui-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    token = requests.get(f"{url}/api/csrf", timeout=10).json()["token"]
    return Running(app, url, server, thread, token)


def _stop(running: Running) -> Path:
    root = running.workspace.root
    running.server.should_exit = True
    running.thread.join(timeout=30)
    return root


CAP = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Running:
    """An app with a 2 MiB upload cap and no tracking server (uploads need none)."""
    running = _serve(UIConfig.from_env(tmp_dir=str(tmp_path_factory.mktemp("ui-tmp")), max_upload_bytes=CAP))
    yield running
    root = _stop(running)
    assert not root.exists(), "the workspace must be deleted at shutdown"


# ------------------------------------------------------------------------------ models and pickles

@pytest.fixture(scope="module")
def iris_model() -> tuple[Any, np.ndarray]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=300).fit(X, y), X


def _npy(X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, X[:20], allow_pickle=False)
    return buf.getvalue()


def _raw_multipart(filename: bytes, data: bytes, ctype: bytes = b"application/octet-stream") -> tuple[bytes, dict]:
    """A multipart body with exactly these file-name bytes (clients escape some; an attacker need not)."""
    boundary = b"rawb0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
            b"Content-Type: " + ctype + b"\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def _fickling_exec(marker: Path) -> bytes:
    from fickling.fickle import Pickled

    p = Pickled.load(pickle.dumps([1, 2, 3], protocol=2))
    p.insert_python_exec(f"open({str(marker)!r}, 'w')")
    return p.dumps()


def _html_named_global(marker: Path) -> bytes:
    # A protocol-0 GLOBAL whose module name is markup: shown as text, refused as an import.
    return f"c<img src=x onerror=alert(1)>\nsystem\n(S'touch {marker}'\ntR.".encode()


def _joblib_compressed(marker: Path, tmp: Path) -> bytes:
    import joblib

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    joblib.dump({"model": Boom()}, tmp / "boom.joblib", compress=3)
    return (tmp / "boom.joblib").read_bytes()


HOSTILE = {
    "os_system_reduce": (lambda m, t: pickle_that_touches(m), "model.pkl", "system"),
    "fickling_exec": (lambda m, t: _fickling_exec(m), "model.pickle", "builtins.exec"),
    "html_named_global": (lambda m, t: _html_named_global(m), "model.pkl", "<img src=x onerror=alert(1)>.system"),
    "joblib_zlib": (_joblib_compressed, "model.joblib", "system"),
}


# ------------------------------------------------------------------------------ pages and guards

def test_pages_static_and_health(ui):
    r = ui.get("/")
    assert r.status_code == 200 and "Check a pickle" in r.text
    assert f'name="csrf-token" content="{ui.token}"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "css")):
        s = ui.get(asset)
        assert s.status_code == 200 and kind in s.headers["content-type"]
    js = ui.get("/static/app.js").text  # scan text is the attacker's: only ever set as text
    assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write", js)
    health = ui.get("/healthz").json()
    assert health["status"] == "ok" and health["uploads_held"] == 0
    csrf = ui.get("/api/csrf").json()
    assert csrf == {"header": "x-safeflavor-csrf", "token": ui.token}
    assert ui.get("/docs").status_code == 404  # no OpenAPI pages


def test_workspace_is_private(ui):
    for d in (ui.workspace.root, ui.workspace.uploads_dir, ui.workspace.jobs_dir):
        assert d.stat().st_mode & 0o777 == 0o700


def test_cross_site_writes_and_foreign_hosts_are_refused(ui, tmp_path):
    marker = tmp_path / "MARKER"
    data = pickle_that_touches(marker)
    files = {"file": ("model.pkl", data, "application/octet-stream")}
    for kwargs, why in (
        ({"token": False}, "missing or wrong"),
        ({"token": False, "headers": {"X-SafeFlavor-CSRF": "guess"}}, "missing or wrong"),
        ({"headers": {"Origin": "http://evil.example"}}, "evil.example"),
        ({"headers": {"Sec-Fetch-Site": "cross-site"}}, "cross-site"),
    ):
        r = ui.post("/api/scan", files=files, **kwargs)
        assert r.status_code == 403, r.text
        assert r.json()["error_code"] == "PERMISSION_DENIED" and why in r.json()["message"]
    r = ui.post("/api/registry/m/1/promote", json={"alias": "champion"}, token=False)
    assert r.status_code == 403
    # DNS rebinding: a hostile name that resolves to 127.0.0.1 still sends its own Host header.
    r = ui.get("/", headers={"Host": "attacker.example:5050"})
    assert r.status_code == 400
    assert ui.get("/", headers={"Host": "localhost"}).status_code == 200
    assert not marker.exists()
    ui.assert_clean()


# ------------------------------------------------------------------------------ scan + convert

def test_benign_pickle_scan_convert_download_once(ui, iris_model, tmp_path):
    import mlflow_safeflavor

    model, X = iris_model
    r = ui.scan("iris model.pkl", pickle.dumps(model, protocol=5), sample=("rows.npy", _npy(X), "application/octet-stream"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["file"] == "iris model.pkl" and body["sample"] == "rows.npy" and body["upload_id"]
    scan = body["scan"]
    assert scan["ok"] and scan["message"] is None and scan["source"] == "iris model.pkl"
    names = {f["name"] for f in scan["imports"]}
    assert "sklearn.linear_model._logistic.LogisticRegression" in names
    assert all(f["allowed"] and f["reason"] for f in scan["imports"])
    # The upload waits under our own names only.
    held = sorted(p.name for p in (ui.workspace.uploads_dir / body["upload_id"]).iterdir())
    assert held == ["model.pkl", "sample.npy"]
    assert ui.get("/healthz").json()["uploads_held"] == 1

    job = ui.wait(ui.post("/api/convert", json={"upload_id": body["upload_id"]}))
    assert job["state"] == "done", job["error"]
    assert not (ui.workspace.uploads_dir / body["upload_id"]).exists(), "the upload is deleted after use"
    conv, verify = job["result"]["conversion"], job["result"]["verify"]
    assert conv["rows_compared"] == 20 and "predict_proba" in conv["methods"]
    assert conv["source"] == "iris model.pkl" and conv["path"] is None
    assert verify["ok"] and {c["name"] for c in verify["checks"]} >= {"pickle", "digests", "trust", "validation"}
    assert str(ui.workspace.root) not in json.dumps(job), "server paths are not shown"
    assert job["download_name"] == "iris-model.safeflavor.zip"

    # A second conversion of the same upload: it was used up.
    again = ui.post("/api/convert", json={"upload_id": body["upload_id"]})
    assert again.status_code == 404 and "Upload the file again" in again.json()["message"]

    dl = ui.get(job["download_url"])
    assert dl.status_code == 200 and dl.headers["content-type"] == "application/zip"
    assert 'filename="iris-model.safeflavor.zip"' in dl.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(dl.content)) as zf:
        members = zf.namelist()
        assert all(m.startswith("iris-model.safeflavor/") for m in members)
        assert "iris-model.safeflavor/MLmodel" in members and "iris-model.safeflavor/model.skops" in members
        assert not [m for m in members if m.endswith((".pkl", ".pickle", ".joblib"))]
        zf.extractall(tmp_path)
    loaded = mlflow_safeflavor.load_model(str(tmp_path / "iris-model.safeflavor"))
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))

    gone = ui.get(job["download_url"])
    assert gone.status_code == 410 and "downloaded already" in gone.json()["message"]
    assert ui.get(f"/api/jobs/{job['id']}").json()["download_url"] is None
    ui.assert_clean()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_pickles_are_refused_before_unpickling(ui, tmp_path, kind):
    build, name, finding = HOSTILE[kind]
    marker = tmp_path / "MARKER"
    r = ui.scan(name, build(marker, tmp_path))
    assert r.status_code == 200, r.text
    body = r.json()
    scan = body["scan"]
    assert scan["ok"] is False and body["upload_id"] is None
    refused = [f["name"] for f in scan["imports"] if not f["allowed"]]
    assert any(finding in n for n in refused), refused
    assert "refused before unpickling" in scan["message"] and "Nothing was loaded" in scan["message"]
    assert not marker.exists(), "the pickle's payload ran"
    assert ui.get("/healthz").json()["uploads_held"] == 0
    ui.assert_clean()


def test_not_a_pickle_is_refused_with_the_scan_problem(ui):
    r = ui.scan("notes.pkl", b"just some text, not a pickle")
    scan = r.json()["scan"]
    assert r.status_code == 200 and not scan["ok"] and r.json()["upload_id"] is None
    assert any("not a well-formed pickle" in p for p in scan["problems"])
    ui.assert_clean()


# ------------------------------------------------------------------------------ hostile uploads

def test_oversized_upload_is_refused_by_length_and_while_streaming(ui, tmp_path):
    marker = tmp_path / "MARKER"
    big = pickle_that_touches(marker) + b"\0" * (CAP + 1024)
    r = ui.scan("model.pkl", big)  # Content-Length says it is too large: refused before writing
    assert r.status_code == 413 and "2 MiB cap" in r.json()["message"]
    ui.assert_clean()

    boundary = "safeflavorboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model.pkl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def chunked():  # no Content-Length: the cap is enforced on the running total
        yield head
        for _ in range(40):
            yield b"\0" * (128 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = ui.post("/api/scan", data=chunked(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "cap" in r.json()["message"]
    assert not marker.exists()
    ui.assert_clean()


@pytest.mark.parametrize("name, ctype, status, words", [
    ("model.pkl", "image/png", 415, "was sent as 'image/png'"),
    ("model.pkl", "text/html", 415, "not a type for .pkl"),
    ("model.zip", "application/zip", 415, "must end in .pkl, .pickle, .joblib"),
    ("model.txt", "application/octet-stream", 415, "must end in"),
    ("model", "application/octet-stream", 415, "must end in"),
])
def test_wrong_content_types_and_extensions_are_refused(ui, tmp_path, name, ctype, status, words):
    marker = tmp_path / "MARKER"
    r = ui.scan(name, pickle_that_touches(marker), ctype)
    assert r.status_code == status and words in r.json()["message"], r.text
    assert r.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert not marker.exists()
    ui.assert_clean()


def test_wrong_request_types_are_refused(ui, tmp_path):
    marker = tmp_path / "MARKER"
    data = pickle_that_touches(marker)
    r = ui.post("/api/scan", data=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["message"]
    r = ui.scan("model.pkl", data, sample=("rows.exe", b"MZ", "application/octet-stream"))
    assert r.status_code == 415 and "sample rows" in r.json()["message"]
    r = ui.scan("model.pkl", data, sample=("rows.csv", b"a,b\n1,2\n", "application/x-msdownload"))
    assert r.status_code == 415
    r = ui.post("/api/convert", data="upload_id=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "JSON" in r.json()["message"]
    r = ui.post("/api/convert", data="[1]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert not marker.exists()
    ui.assert_clean()


@pytest.mark.parametrize("name", [
    b"../../evil.pkl", b"/etc/cron.d/evil.pkl", b"..\\..\\evil.pkl", b"sub/evil.pkl", b"C:evil.pkl",
    b"evil\x00.pkl", b"evil\x1b[2J.pkl", b"..", b"....pkl", b"%2e%2e/evil.pkl",
])
def test_path_like_file_names_are_refused(ui, tmp_path, name):
    marker = tmp_path / "MARKER"
    body, headers = _raw_multipart(name, pickle_that_touches(marker))
    r = ui.post("/api/scan", data=body, headers=headers)
    assert r.status_code in (400, 415), r.text
    message = r.json()["message"]
    assert "plain file name" in message or "must end in" in message
    assert not marker.exists()
    ui.assert_clean()
    for where in (ui.workspace.root.parent, Path(os.getcwd()), tmp_path):
        assert not list(where.glob("evil*")), "a client file name reached the file system"


def test_malformed_multipart_is_refused(ui, tmp_path):
    marker = tmp_path / "MARKER"
    data = pickle_that_touches(marker)
    boundary = "b0und"
    ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model.pkl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data
    r = ui.post("/api/scan", data=part, headers=ctype)  # never closed
    assert r.status_code == 400 and "ended early" in r.json()["message"]
    r = ui.post("/api/scan", files={"other": ("model.pkl", data, "application/octet-stream")})
    assert r.status_code == 400 and "unexpected file field" in r.json()["message"]
    r = ui.post("/api/scan", files=[("file", ("a.pkl", data, "application/octet-stream")),
                                    ("file", ("b.pkl", data, "application/octet-stream"))])
    assert r.status_code == 400
    r = ui.post("/api/scan", files={"sample": ("rows.csv", b"a\n1\n", "text/csv")})
    assert r.status_code == 400 and "choose a .pkl" in r.json()["message"]
    r = ui.post("/api/scan", data={"note": "hello"}, files={"file": ("a.pkl", data, "application/octet-stream")})
    assert r.status_code == 400 and "unexpected form field" in r.json()["message"]
    assert not marker.exists()
    ui.assert_clean()


def test_json_endpoints_validate_their_input(ui):
    for body in ({}, {"upload_id": "0" * 32, "uri": "models:/m/1"}):
        r = ui.post("/api/convert", json=body)
        assert r.status_code == 400 and "either" in r.json()["message"]
    for upload_id in ("0" * 32, "../../etc", 7):
        r = ui.post("/api/convert", json={"upload_id": upload_id})
        assert r.status_code == 404, r.text
    for uri in ("/etc/passwd", "file:///etc/passwd", "https://example.com/model.pkl", "models:/m/1\n"):
        for path, key in (("/api/scan-uri", "uri"), ("/api/convert", "uri")):
            r = ui.post(path, json={key: uri})
            assert r.status_code == 400, (path, uri, r.text)
    assert "not read from the page" in ui.post("/api/scan-uri", json={"uri": "/etc/passwd"}).json()["message"]
    assert ui.post("/api/scan-uri", json={"uri": 5}).status_code == 400
    assert ui.post("/api/registry/m/1/promote", json={}).status_code == 400
    assert ui.post("/api/registry/m/1/promote", json={"alias": "a" * 300}).status_code == 400
    assert ui.post("/api/scan-uri", data=b"x" * 20000, headers={"Content-Type": "application/json"}).status_code == 413
    assert ui.get("/api/jobs/" + "0" * 32).status_code == 404
    assert ui.get("/api/jobs/nope").status_code == 404
    assert ui.get("/api/jobs/" + "0" * 32 + "/download").status_code == 404
    assert ui.get("/api/registry?filter=bogus").status_code == 400
    ui.assert_clean()


def test_accepted_uploads_expire(tmp_path, iris_model):
    model, _ = iris_model
    running = _serve(UIConfig.from_env(tmp_dir=str(tmp_path), ttl_seconds=1))
    try:
        r = running.scan("model.pkl", pickle.dumps(model))
        upload_id = r.json()["upload_id"]
        assert upload_id and (running.workspace.uploads_dir / upload_id).is_dir()
        deadline = time.monotonic() + 10
        while (running.workspace.uploads_dir / upload_id).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        running.assert_clean()
        r = running.post("/api/convert", json={"upload_id": upload_id})
        assert r.status_code == 404 and "expired" in r.json()["message"]
    finally:
        root = _stop(running)
    assert not root.exists()


def test_binding_beyond_loopback_warns(tmp_path):
    assert UIConfig(host="127.0.0.1").exposure_warning() is None
    assert UIConfig(host="localhost").exposure_warning() is None
    warning = UIConfig(host="0.0.0.0").exposure_warning()
    assert "no login" in warning and "127.0.0.1" in warning
    assert "box.example" in UIConfig(host="10.1.2.3", allowed_hosts=["box.example"]).host_names()
    # The command itself says so before it listens.
    from serverproc import free_port

    port = free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_safeflavor.cli", "ui", "--host", "0.0.0.0", "--port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path, text=True)
    try:
        lines: list[str] = []
        while not lines or lines[-1] and not lines[-1].startswith("mlflow-safeflavor ui on"):
            lines.append(proc.stderr.readline())  # libraries may log before the command speaks
        warnings = [line for line in lines if line.startswith("warning: listening on")]
        assert warnings and warnings[0].startswith("warning: listening on 0.0.0.0") and "no login" in warnings[0], lines
        assert lines[-1].startswith(f"mlflow-safeflavor ui on http://0.0.0.0:{port}/"), lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not list(scratch.glob("safeflavor-ui-*")), "the workspace outlived the process"


# ------------------------------------------------------------------------------ issue 18: the page's own limits

class _Listener:
    """A TCP listener on 127.0.0.1 that counts connections: proof the page never called it."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("template", [
    "mlflow-artifacts://127.0.0.1:{port}/x/model",
    "mlflow-artifacts://user:pw@127.0.0.1:{port}/x/model",
    "mlflow-artifacts://[::ffff:127.0.0.1]:{port}/x/model",
    "models://profile@databricks/m/1",
    "runs://127.0.0.1:{port}/abc/model",
    "s3://user:pw@127.0.0.1:{port}/bucket/model",
    "s3://127.0.0.1/model",
    "wasbs://c@127.0.0.1:{port}/model",
    "http://127.0.0.1:{port}/model",
    "models:/../../etc/m",
    "mlflow-artifacts:/x/%2e%2e/%2e%2e/model",
])
def test_uris_with_hosts_credentials_or_profiles_are_refused(ui, template):
    listener = _Listener()
    try:
        uri = template.format(port=listener.port)
        for path, body in (("/api/scan-uri", {"uri": uri}), ("/api/convert", {"uri": uri})):
            r = ui.post(path, json=body)
            assert r.status_code == 400 and r.json()["error_code"] == "InvalidArgumentError", r.text
            assert "upload the pickle instead" in r.json()["message"]
        time.sleep(0.3)
        assert listener.connections == 0, "the page called the address in the URI"
    finally:
        listener.close()
    ui.assert_clean()


def test_uris_resolve_through_mlflow_never_as_local_paths(ui, tmp_path, monkeypatch, iris_model):
    """A directory named like the URI in the page's working directory is not read."""
    model, X = iris_model
    local = tmp_path / "models:" / "churn" / "1"
    local.mkdir(parents=True)
    (local / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\n")
    (local / "model.pkl").write_bytes(pickle.dumps(model))
    monkeypatch.chdir(tmp_path)
    saved = _save_tracking()
    try:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/empty.db")  # a registry without that model
        job = ui.wait(ui.post("/api/scan-uri", json={"uri": "models:/churn/1"}))
    finally:
        _restore_tracking(saved)
    assert job["state"] == "failed", job
    assert "churn" in job["error"]["message"] and "MLmodel" not in json.dumps(job.get("result"))
    ui.assert_clean()


def test_held_uploads_have_a_total_cap(tmp_path, iris_model):
    model, X = iris_model
    data = pickle.dumps(model, protocol=5)
    running = _serve(UIConfig.from_env(tmp_dir=str(tmp_path), max_held_bytes=int(len(data) * 1.5)))
    try:
        first = running.scan("a.pkl", data)
        assert first.status_code == 200 and first.json()["upload_id"]
        second = running.scan("b.pkl", data)
        assert second.status_code == 503 and "MLFLOW_SAFEFLAVOR_UI_MAX_HELD_MB" in second.json()["message"]
        health = running.get("/healthz").json()
        assert health["uploads_held"] == 1 and health["uploads_held_bytes"] == len(data)
        assert len(list(running.workspace.uploads_dir.iterdir())) == 1, "the refused upload was not kept"
    finally:
        _stop(running)


def _raw_scan_request(url: str, token: str, data: bytes) -> bytes:
    from urllib.parse import urlsplit

    body, headers = _raw_multipart(b"slow.pkl", data)
    host = urlsplit(url).netloc
    head = (f"POST /api/scan HTTP/1.1\r\nHost: {host}\r\nX-SafeFlavor-CSRF: {token}\r\n"
            f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def test_concurrent_scans_are_capped_and_a_gone_client_stops_its_scan(tmp_path, monkeypatch):
    """A scan whose client hangs up is cancelled: its isolated process is killed, the slot freed."""
    import socket
    from urllib.parse import urlsplit

    import hostile_pickles as hp

    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT", "600")
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB", "4096")
    slow = hp.none_pops(7.5, compress=False)  # our scan, then fickling's (~3.4 s/MB): far more than the 8 s below
    running = _serve(UIConfig.from_env(tmp_dir=str(tmp_path), max_upload_bytes=8 * 1024 * 1024, max_scans=1))
    try:
        parts = urlsplit(running.url)
        sock = socket.create_connection((parts.hostname, parts.port))
        sock.sendall(_raw_scan_request(running.url, running.token, slow))
        deadline = time.monotonic() + 60
        while running.get("/healthz").json()["scans_running"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        busy = running.scan("other.pkl", pickle.dumps([1, 2]))
        assert busy.status_code == 503 and "MLFLOW_SAFEFLAVOR_UI_MAX_SCANS" in busy.json()["message"]
        time.sleep(1.0)
        sock.close()  # the client goes away mid-scan
        deadline = time.monotonic() + 8
        while running.get("/healthz").json()["scans_running"] != 0:
            assert time.monotonic() < deadline, "the scan went on after its client left"
            time.sleep(0.1)
        after = running.scan("after.pkl", pickle.dumps([1, 2])).json()
        assert after["scan"]["ok"]
        held = [p.name for p in running.workspace.uploads_dir.iterdir()]
        assert held == [after["upload_id"]], "the abandoned upload was not deleted"
    finally:
        _stop(running)


def test_convert_refuses_a_held_upload_swapped_for_a_symlink(ui, tmp_path, iris_model):
    model, X = iris_model
    secret = tmp_path / "elsewhere.pkl"
    secret.write_bytes(pickle.dumps(model, protocol=4))  # would convert fine if it were followed
    body = ui.scan("m.pkl", pickle.dumps(model, protocol=5)).json()
    assert body["upload_id"]
    held = ui.workspace.uploads_dir / body["upload_id"] / "model.pkl"
    held.unlink()
    os.symlink(secret, held)
    job = ui.wait(ui.post("/api/convert", json={"upload_id": body["upload_id"]}))
    assert job["state"] == "failed" and "changed on disk" in job["error"]["message"], job
    assert job["download_url"] is None
    ui.assert_clean()


# ------------------------------------------------------------------------------ registry

def _save_tracking() -> tuple[Any, str | None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")


def _restore_tracking(saved: tuple[Any, str | None]) -> None:
    """Put MLflow's tracking URI (and its environment variable) back as they were."""
    import mlflow

    mlflow.set_tracking_uri(saved[0])
    if saved[1] is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved[1]


def _integration_fixtures() -> Any:
    """integration/conftest.py as a plain module: its real-server helpers, without its fixtures."""
    spec = importlib.util.spec_from_file_location("safeflavor_integration_servers", ROOT / "integration" / "conftest.py")
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # its dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return module



@dataclass
class Reg:
    ui: Running
    safe: str
    pickled: str
    rejected: str
    X: np.ndarray
    keys: dict[str, Path]
    hostile: str
    marker: Path
    artifacts: Path | None = None  # the server's artifact root on disk (what a store writer can change)


def _gate_keys(root: Path) -> dict[str, Path]:
    from helpers import write_ec_keypair

    priv, pub = write_ec_keypair(root, "gate")
    return {"private": priv, "public": pub}


@pytest.fixture(scope="module")
def reg(tmp_path_factory, iris_model) -> Reg:
    """A real mlflow server with one safe (promoted, gate-signed), one pickled (holding @production) and one
    rejected version; the page runs with the gate's keys, as ``ui --public-key ... --signing-key ...``."""
    import mlflow
    import mlflow.sklearn

    import mlflow_safeflavor
    from mlflow_safeflavor.registry import PromotionRejectedError, promote

    it = _integration_fixtures()
    server = it.start_mlflow_server(tmp_path_factory.mktemp("ui-mlflow"))
    saved = _save_tracking()
    running = None
    try:
        it.wait_healthy(server)
        keys = _gate_keys(tmp_path_factory.mktemp("ui-keys"))
        running = _serve(UIConfig.from_env(tmp_dir=str(tmp_path_factory.mktemp("ui-reg-tmp")), tracking_uri=server.url,
                                           public_key=[str(keys["public"])], signing_key=str(keys["private"])))
        model, X = iris_model
        suffix = uuid.uuid4().hex[:6]
        marker = tmp_path_factory.mktemp("ui-marker") / "MARKER"
        names = Reg(running, f"ui-safe-{suffix}", f"ui-pickled-{suffix}", f"ui-rejected-{suffix}", X, keys,
                    f"ui-hostile-{suffix}", marker)
        experiment = mlflow.MlflowClient().create_experiment(f"ui-{suffix}")
        with mlflow.start_run(experiment_id=experiment):
            mlflow_safeflavor.log_model(model, name="safe", input_example=X[:5], registered_model_name=names.safe)
            mlflow.sklearn.log_model(model, name="pickled", input_example=X[:5], registered_model_name=names.pickled,
                                     pip_requirements=["scikit-learn"], serialization_format="pickle")
            mlflow.sklearn.log_model(model, name="rejected", input_example=X[:5], registered_model_name=names.rejected,
                                     pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
            mlflow.sklearn.log_model(model, name="hostile", input_example=X[:5], registered_model_name=names.hostile,
                                     pip_requirements=["scikit-learn"], serialization_format="pickle")
        client = mlflow.MlflowClient()
        # An attacker with write access to the artifact store swaps the pickle for a live payload.
        from mlflow_safeflavor.registry.store import storage_uri

        stored = storage_uri(client, names.hostile, "1").split("mlflow-artifacts:/", 1)[1]
        (server.artifacts / stored / "model.pkl").write_bytes(pickle_that_touches(marker))
        names.artifacts = server.artifacts
        promote(names.safe, "1", "champion", signing_key=keys["private"])
        client.set_registered_model_alias(names.pickled, "production", "1")  # no gate on this server
        with pytest.raises(PromotionRejectedError):
            promote(names.rejected, "1", "champion")
        yield names
    finally:
        if running is not None:
            _stop(running)
        _restore_tracking(saved)
        it._stop(server.proc)


def _rows(reg: Reg, **params: str) -> dict[str, dict]:
    r = reg.ui.get("/api/registry", params=params)
    assert r.status_code == 200, r.text
    return {f"{row['name']}/{row['version']}": row for row in r.json()["rows"]}


def test_registry_table_shows_formats_status_aliases(reg):
    rows = _rows(reg)
    safe, pickled, rejected = rows[f"{reg.safe}/1"], rows[f"{reg.pickled}/1"], rows[f"{reg.rejected}/1"]
    assert (safe["flavor"], safe["format"], safe["verification"]) == ("safeflavor", "safe flavor (sklearn)", "verified")
    assert safe["verified_digest"].startswith("sha256:") and safe["aliases"] == ["champion"] and safe["protected"] == ["champion"]
    assert safe["schema"] == "present" and safe["input_example"] and safe["model_sig"] is True
    assert safe["signed_by"].startswith("sha256:")
    assert pickled["model_sig"] is False and pickled["signed_by"] is None
    assert (pickled["flavor"], pickled["format"], pickled["verification"]) == ("sklearn", "pickle", "unverified")
    assert pickled["aliases"] == ["production"] and pickled["protected_unverified"] and pickled["unsafe"]
    assert (rejected["format"], rejected["verification"]) == ("cloudpickle", "rejected")
    assert "not a safe-flavor model" in rejected["rejected_reason"] and rejected["aliases"] == []

    assert set(_rows(reg, filter="unsafe")) >= {f"{reg.pickled}/1", f"{reg.rejected}/1"}
    assert f"{reg.safe}/1" not in _rows(reg, filter="unsafe")
    assert f"{reg.pickled}/1" in _rows(reg, filter="protected-unverified")
    assert {f"{reg.safe}/1", f"{reg.rejected}/1"}.isdisjoint(_rows(reg, filter="protected-unverified"))

    html = reg.ui.get("/registry", params={"filter": "protected-unverified"}).text
    assert reg.pickled in html and reg.safe not in html.split("<tbody>")[1]
    page = reg.ui.get("/registry").text
    assert "safe flavor (sklearn)" in page and "badge bad" in page and "@champion" in page and "gate-signed" in page


def test_version_page_and_verify_report(reg):
    page = reg.ui.get(f"/registry/{reg.safe}/1")
    assert page.status_code == 200 and "safeflavor.verified" in page.text and "Verify report" in page.text
    detail = reg.ui.get(f"/api/registry/{reg.safe}/1").json()
    assert detail["row"]["verification"] == "verified" and detail["policy"]["by"] == "promote"
    assert "safeflavor.policy" in detail["tags"]

    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.safe}/1/verify"))
    assert job["state"] == "done", job["error"]
    assert job["result"]["verify"]["ok"] and job["result"]["tag_check"]["ok"]
    assert job["result"]["verify"]["root"] == f"models:/{reg.safe}/1"
    signature = next(c for c in job["result"]["verify"]["checks"] if c["name"] == "signature")
    assert signature["ok"] and signature["detail"].startswith("valid, by")

    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.pickled}/1/verify"))
    failed = {c["name"] for c in job["result"]["verify"]["checks"] if not c["ok"]}
    assert {"signature", "loader_module", "other_flavors", "pickle", "record"} <= failed
    assert job["result"]["tag_check"] is None

    assert reg.ui.get(f"/registry/{reg.safe}/99").status_code == 404
    assert reg.ui.get(f"/api/registry/{reg.safe}/99").status_code == 404
    assert reg.ui.get("/registry/no-such-model/1").status_code == 404
    reg.ui.assert_clean()


def test_promote_through_the_page_matches_the_cli(reg):
    from click.testing import CliRunner

    from mlflow_safeflavor.cli import main

    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.rejected}/1/promote", json={"alias": "champion"}))
    assert job["state"] == "failed" and job["error"]["type"] == "PromotionRejectedError"
    assert "was not promoted to @champion" in job["error"]["message"] and "Fix:" in job["error"]["message"]
    assert "record" in job["error"]["failed"]
    cli = CliRunner().invoke(main, ["promote", reg.rejected, "1", "--alias", "champion", "--public-key",
                                    str(reg.keys["public"]), "--signing-key", str(reg.keys["private"])])
    assert cli.exit_code == 1
    assert cli.stderr.strip() == f"error: {job['error']['message']}"

    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.safe}/1/promote", json={"alias": "production"}))
    assert job["state"] == "done", job["error"]
    message = job["result"]["message"]
    assert message.startswith(f"promoted {reg.safe} version 1 to @production (safeflavor.verified=sha256:")
    assert message.endswith(", signed)") and job["result"]["signed"]
    assert _rows(reg)[f"{reg.safe}/1"]["aliases"] == ["champion", "production"]

    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.safe}/1/promote", json={"alias": "latest"}))
    assert job["state"] == "failed" and job["error"]["type"] == "InvalidArgumentError"  # MLflow reserves it


def test_promote_refuses_artifacts_swapped_after_verification(reg):
    """Issue 18: no public key is configured for this call, yet a version whose artifacts no longer
    match its safeflavor.verified tag is refused; only reapprove=True verifies the new files."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import mlflow_safeflavor
    from mlflow_safeflavor.registry import PromotionRejectedError, promote
    from mlflow_safeflavor.registry.core import TAG_POLICY, TAG_REJECTED, TAG_VERIFIED
    from mlflow_safeflavor.registry.store import storage_uri

    X, y = load_iris(return_X_y=True)
    name, other = f"{reg.safe}-swapped", f"{reg.safe}-other"
    with mlflow.start_run(experiment_id=mlflow.MlflowClient().create_experiment(f"{name}-exp")):
        mlflow_safeflavor.log_model(LogisticRegression(max_iter=300).fit(X, y), name="a", input_example=X[:5],
                                    registered_model_name=name)
        mlflow_safeflavor.log_model(LogisticRegression(C=0.01, max_iter=300).fit(X, y), name="b", input_example=X[:5],
                                    registered_model_name=other)
    client = mlflow.MlflowClient()
    first = promote(name, "1", "champion")
    stored = reg.artifacts / storage_uri(client, name, "1").split("mlflow-artifacts:/", 1)[1]
    replacement = reg.artifacts / storage_uri(client, other, "1").split("mlflow-artifacts:/", 1)[1]
    for f in replacement.iterdir():  # a store writer swaps in another complete, valid safe model
        (stored / f.name).write_bytes(f.read_bytes())

    with pytest.raises(PromotionRejectedError) as err:
        promote(name, "1", "production")
    assert TAG_VERIFIED in err.value.failed and "reapprove=True" in err.value.message
    tags = client.get_model_version(name, "1").tags
    assert tags[TAG_VERIFIED] == first.digest and "changed after verification" in tags[TAG_REJECTED]
    assert "production" not in client.get_registered_model(name).aliases

    again = promote(name, "1", "production", reapprove=True)
    assert again.digest != first.digest and again.policy["reapproved_from"] == first.digest
    tags = client.get_model_version(name, "1").tags
    assert tags[TAG_VERIFIED] == again.digest and json.loads(tags[TAG_POLICY])["reapproved_from"] == first.digest
    assert TAG_REJECTED not in tags


def test_convert_version_registers_a_safe_version(reg):
    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.pickled}/1/convert", json={"target": ""}))
    assert job["state"] == "done", job["error"]
    assert job["result"]["new_name"] == reg.pickled and job["result"]["new_version"] == "2"
    row = _rows(reg)[f"{reg.pickled}/2"]
    assert row["format"] == "safe flavor (sklearn)" and row["converted_from"] == f"models:/{reg.pickled}/1"
    assert row["verification"] == "unverified" and not row["unsafe"]

    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.safe}/1/convert", json={}))
    assert job["state"] == "failed" and "already stored with mlflow-safeflavor" in job["error"]["message"]


def test_scan_and_convert_by_uri(reg, tmp_path):
    job = reg.ui.wait(reg.ui.post("/api/scan-uri", json={"uri": f"models:/{reg.rejected}/1"}))
    assert job["state"] == "done", job["error"]
    result = job["result"]
    assert (result["flavor"], result["serialization"], result["convertible"]) == ("sklearn", "cloudpickle", True)
    assert result["scan"]["ok"] and result["scan"]["source"].startswith(f"models:/{reg.rejected}/1 (")

    job = reg.ui.wait(reg.ui.post("/api/scan-uri", json={"uri": f"models:/{reg.safe}/1"}))
    assert job["state"] == "failed" and "already stored with mlflow-safeflavor" in job["error"]["message"]

    job = reg.ui.wait(reg.ui.post("/api/convert", json={"uri": f"models:/{reg.rejected}/1"}))
    assert job["state"] == "done", job["error"]
    assert job["result"]["verify"]["ok"] and job["download_name"] == f"{reg.rejected}-1.safeflavor.zip"
    dl = reg.ui.get(job["download_url"])
    assert dl.status_code == 200
    with zipfile.ZipFile(io.BytesIO(dl.content)) as zf:
        assert f"{reg.rejected}-1.safeflavor/MLmodel" in zf.namelist()
    reg.ui.assert_clean()


def test_hostile_registry_version_is_never_unpickled(reg):
    row = _rows(reg)[f"{reg.hostile}/1"]
    assert (row["format"], row["unsafe"]) == ("pickle", True)  # read from MLmodel only

    job = reg.ui.wait(reg.ui.post("/api/scan-uri", json={"uri": f"models:/{reg.hostile}/1"}))
    assert job["state"] == "done", job["error"]
    scan = job["result"]["scan"]
    assert not scan["ok"] and not job["result"]["convertible"]
    assert any(f["name"].endswith(".system") and not f["allowed"] for f in scan["imports"])
    assert "refused before unpickling" in scan["message"]

    for started in (reg.ui.post("/api/convert", json={"uri": f"models:/{reg.hostile}/1", "synthetic": True}),
                    reg.ui.post(f"/api/registry/{reg.hostile}/1/convert", json={"synthetic": True})):
        job = reg.ui.wait(started)
        assert job["state"] == "failed" and job["error"]["type"] == "PickleRefusedError", job
        assert "refused before unpickling" in job["error"]["message"] and job["download_url"] is None
    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.hostile}/1/verify"))
    assert not job["result"]["verify"]["ok"]
    job = reg.ui.wait(reg.ui.post(f"/api/registry/{reg.hostile}/1/promote", json={"alias": "champion"}))
    assert job["state"] == "failed" and job["error"]["type"] == "PromotionRejectedError"
    assert not reg.marker.exists(), "the registry version's payload ran"
    assert [r for r in _rows(reg) if r.startswith(f"{reg.hostile}/")] == [f"{reg.hostile}/1"], "nothing was registered"
    reg.ui.assert_clean()


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    from serverproc import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    saved = _save_tracking()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    running = _serve(UIConfig.from_env(tmp_dir=str(tmp_path), tracking_uri=dead))
    try:
        page = running.get("/registry")
        assert page.status_code == 502 and "Registry error" in page.text and dead in page.text
        api = running.get("/api/registry")
        assert api.status_code == 502 and api.json()["error_code"] == "REGISTRY_ERROR"
    finally:
        _stop(running)
        _restore_tracking(saved)


def test_tracking_uri_credentials_are_not_shown():
    from mlflow_safeflavor.ui.app import shown_uri

    assert shown_uri("https://bob:s3cret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert shown_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert shown_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
