"""Fixtures for the integration tests: a real MLflow tracking server and registered zoo models.

The server is started once per session as a separate process group::

    python -m mlflow server --backend-store-uri sqlite:///<tmp>/mlflow.db
        --serve-artifacts --artifacts-destination <tmp>/artifacts
        --host 127.0.0.1 --port <free port> --workers 1

so every artifact upload and download goes through the server's ``mlflow-artifacts:/`` proxy,
as it does for a shared team server. Nothing is mocked.

Environment knobs:
    SAFEFLAVOR_IT_SERVER_TIMEOUT  seconds to wait for ``/health`` (default 120)
    SAFEFLAVOR_IT_SERVER_JOBS=1   keep MLflow's background job runner on (off by default)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from serverproc import free_port as _free_port  # noqa: E402
from serverproc import stop_group as _stop  # noqa: E402
from serverproc import wait_url  # noqa: E402

_TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))
warnings.filterwarnings("ignore", category=UserWarning, module="xgboost")
# The suite tests the defaults (saves write the checkpoint only; test_serving_onnx.py passes onnx=).
os.environ.pop("MLFLOW_SAFEFLAVOR_ONNX", None)
# Exports derived at serve time are cached per run, never in the user's ~/.cache.
os.environ.setdefault("MLFLOW_SAFEFLAVOR_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="safeflavor-test-cache-"))

import zoo  # noqa: E402

# One model per library, each from the shared zoo: (factory key, case name).
SELECTED_CASES: dict[str, tuple[str, str]] = {
    "sklearn_pipeline": ("sklearn", "sk_pipeline_ct_lr"),  # ColumnTransformer + LR, string labels, pandas
    "xgboost": ("xgboost", "xgb_clf"),
    "lightgbm": ("lightgbm", "lgb_clf"),
    "catboost": ("catboost", "cb_clf_cat"),  # categorical "color" column
    "pipeline_xgboost": ("pipelines", "pipe_ct_xgb"),  # Pipeline with an XGBClassifier step
}

SERVER_TIMEOUT = float(os.environ.get("SAFEFLAVOR_IT_SERVER_TIMEOUT", "120"))


# ------------------------------------------------------------------------------------ server


@dataclass
class MlflowServer:
    url: str
    root: Path
    artifacts: Path
    log: Path
    proc: subprocess.Popen

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no server log>"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _server_env() -> dict[str, str]:
    """The server's environment: ours minus client-side MLFLOW_* settings.

    MLflow's background job runner (huey consumers for GenAI scorer jobs) is switched off unless
    SAFEFLAVOR_IT_SERVER_JOBS=1: tracking, the registry and artifact proxying do not use it, and
    its half-dozen extra processes double start-up and shutdown time on small CI machines.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if os.environ.get("SAFEFLAVOR_IT_SERVER_JOBS") != "1":
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def start_mlflow_server(
    root: Path,
    *,
    app_name: str | None = None,
    extra_env: dict[str, str] | None = None,
    backend_store_uri: str | None = None,
    workers: int = 1,
    extra_args: list[str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` on a free port with proxied artifacts under ``root``.

    Does not wait for it (see :func:`wait_healthy`). The store is a sqlite file under ``root``
    unless ``backend_store_uri`` names another (e.g. PostgreSQL); ``workers`` is uvicorn's worker
    count. ``app_name`` is passed as ``--app-name``; ``extra_env`` is added to :func:`_server_env`;
    ``extra_args`` go to the end of the command line.
    """
    artifacts = root / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
    ]
    if app_name:
        cmd += ["--app-name", app_name]
    cmd += extra_args or []
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=root, env={**_server_env(), **(extra_env or {})}, stdout=log_fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return MlflowServer(url=url, root=root, artifacts=artifacts, log=log, proc=proc)


def wait_healthy(server: MlflowServer, timeout: float = SERVER_TIMEOUT) -> MlflowServer:
    """Poll ``/health`` until the server answers; fail the test with the log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while not _healthy(server.url):
        if server.proc.poll() is not None:
            pytest.fail(f"{server.url} exited with {server.proc.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{server.url} not healthy after {timeout:.0f}s:\n{server.log_tail()}")
        time.sleep(0.25)
    return server


@pytest.fixture(scope="session")
def _server_process(tmp_path_factory) -> MlflowServer:
    """Start the server (without waiting for it); stop its whole process group at session end.

    Split from :func:`mlflow_server` so that model training can overlap the server's start-up.
    """
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        _stop(server.proc)


@pytest.fixture(scope="session")
def mlflow_server(_server_process) -> MlflowServer:
    """A real MLflow tracking server + model registry with proxied artifact storage, healthy."""
    return wait_healthy(_server_process)


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server) -> str:
    """Point this process's MLflow client at the server; restore the previous setting after."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        yield mlflow_server.url
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


@pytest.fixture(autouse=True)
def _clean_policy_env(monkeypatch):
    """No operator additions to the trust policy unless a test sets them."""
    monkeypatch.delenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", raising=False)


# ------------------------------------------------------------------------------------ models


@pytest.fixture(scope="session")
def zoo_cases() -> dict[str, zoo.Case]:
    """The selected zoo cases, trained once, keyed by the ids in SELECTED_CASES."""
    by_factory: dict[str, dict[str, zoo.Case]] = {}
    out = {}
    for key, (factory, case_name) in SELECTED_CASES.items():
        if factory not in by_factory:
            by_factory[factory] = {c.name: c for c in zoo.FACTORIES[factory]()}
        out[key] = by_factory[factory][case_name]
    return out


@dataclass
class Registered:
    key: str
    case: zoo.Case
    name: str  # registered model name
    info: Any  # mlflow.models.model.ModelInfo
    run_id: str

    @property
    def registry_uri(self) -> str:
        return f"models:/{self.name}/1"


@dataclass
class Registry:
    """Logs and registers each selected model at most once per session, on first request."""

    cases: dict[str, zoo.Case]
    experiment_id: str
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    done: dict[str, Registered] = field(default_factory=dict)

    def get(self, key: str) -> Registered:
        if key not in self.done:
            import mlflow

            import mlflow_safeflavor

            case = self.cases[key]
            name = f"safeflavor-it-{key.replace('_', '-')}-{self.suffix}"
            with mlflow.start_run(experiment_id=self.experiment_id, run_name=f"it-{key}") as run:
                info = mlflow_safeflavor.log_model(
                    case.model, name="model", input_example=case.X[:5], registered_model_name=name
                )
            self.done[key] = Registered(key, case, name, info, run.info.run_id)
        return self.done[key]


@pytest.fixture(scope="session")
def registry(_server_process, zoo_cases, tracking_uri) -> Registry:
    """Lazily registered models; the zoo trains while the server (started first) boots."""
    import mlflow

    experiment_id = mlflow.MlflowClient().create_experiment(f"safeflavor-integration-{uuid.uuid4().hex[:8]}")
    return Registry(zoo_cases, experiment_id)


def pytest_generate_tests(metafunc):
    """A test that takes ``key`` (directly or through ``registered``) runs once per selected model."""
    if "key" in metafunc.fixturenames:
        metafunc.parametrize("key", list(SELECTED_CASES))


@pytest.fixture
def registered(registry, key) -> Registered:
    """The selected model ``key``, logged and registered through the server (once per session)."""
    return registry.get(key)


# ----------------------------------------------------------------------------- registry gate


GATE_PROTECTED_ALIASES = "champion,production"
# MLflow only delivers webhooks to http:// and private addresses (our receiver on 127.0.0.1) with
# these; the webhook list cache (60 s by default) would hide a webhook created after the first event.
_WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@dataclass
class GateStack:
    """The registry-gate deployment under test.

    ``gated`` runs ``--app-name safeflavor-gate`` (the synchronous gate; it also requires the
    gate's signature, ``MLFLOW_SAFEFLAVOR_PUBLIC_KEY``); ``plain`` runs without the plugin but with
    a webhook registered to the receiver, so the webhook's after-the-fact undo can be observed.
    ``backend`` is ``sqlite`` (one worker each) or ``postgresql`` (four workers each, one database
    per server in a throwaway PostgreSQL cluster).
    """

    gated: MlflowServer
    plain: MlflowServer
    receiver_url: str
    receiver_log: Path
    secret: str
    keys: dict[str, Path]
    webhook_id: str
    backend: str = "sqlite"


@pytest.fixture(scope="session")
def gate_keys(tmp_path_factory) -> dict[str, Path]:
    """The gate's EC P-256 key pair (PEM): ``private`` signs at promotion, ``public`` is the server's policy."""
    from helpers import write_ec_keypair

    priv, pub = write_ec_keypair(tmp_path_factory.mktemp("gate-keys"), "gate")
    return {"private": priv, "public": pub}


def start_postgres_or_fail() -> Any:
    """A new throwaway PostgreSQL cluster (:mod:`pgserver`); fails the test naming the fix when it cannot start."""
    from pgserver import PostgresUnavailable, start_postgres

    try:
        return start_postgres()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))


def gate_server_env(keys: dict[str, Path]) -> dict[str, str]:
    """The gated server's settings: the protected aliases and the public key it requires signatures from."""
    return {"MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES": GATE_PROTECTED_ALIASES,
            "MLFLOW_SAFEFLAVOR_PUBLIC_KEY": str(keys["public"])}


# Four uvicorn workers, as a team server on PostgreSQL runs; sqlite stays at one (a file lock).
BACKEND_WORKERS = {"sqlite": 1, "postgresql": 4}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gate_stack(request, tmp_path_factory, gate_keys) -> GateStack:
    """Start the gated server, the plain server and the webhook receiver in parallel; register the webhook.

    Runs once per backend (``sqlite``, ``postgresql`` with four workers); module-scoped so each
    stack is stopped before the next one starts.
    """
    from cryptography.fernet import Fernet
    from mlflow import MlflowClient

    backend = request.param
    postgres = start_postgres_or_fail() if backend == "postgresql" else None
    stores: dict[str, str | None] = {"gated": None, "plain": None}
    if postgres is not None:
        stores = {role: postgres.create_database(f"mlflow_{role}") for role in stores}
    workers = BACKEND_WORKERS[backend]
    started: list[subprocess.Popen] = []
    try:
        secret = uuid.uuid4().hex
        gated = start_mlflow_server(
            tmp_path_factory.mktemp(f"gated-server-{backend}"), app_name="safeflavor-gate",
            extra_env=gate_server_env(gate_keys), backend_store_uri=stores["gated"], workers=workers,
        )
        started.append(gated.proc)
        # Webhook secrets are stored encrypted with this key; without it each worker makes its own.
        plain = start_mlflow_server(
            tmp_path_factory.mktemp(f"plain-server-{backend}"),
            extra_env={**_WEBHOOK_SERVER_ENV, "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()},
            backend_store_uri=stores["plain"], workers=workers,
        )
        started.append(plain.proc)
        receiver_root = tmp_path_factory.mktemp(f"webhook-receiver-{backend}")
        receiver_port = _free_port()
        receiver_log = receiver_root / "receiver.log"
        env = {**_server_env(), "MLFLOW_SAFEFLAVOR_WEBHOOK_SECRET": secret}
        with open(receiver_log, "wb") as fh:
            receiver = subprocess.Popen(
                [sys.executable, "-m", "mlflow_safeflavor.cli", "webhook", "--host", "127.0.0.1",
                 "--port", str(receiver_port), "--tracking-uri", plain.url,
                 "--protected-aliases", GATE_PROTECTED_ALIASES],
                cwd=receiver_root, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        started.append(receiver)
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        wait_healthy(gated)
        wait_healthy(plain)
        wait_url(f"{receiver_url}/health", receiver, receiver_log, SERVER_TIMEOUT)
        hook = MlflowClient(tracking_uri=plain.url).create_webhook(
            name="safeflavor-gate", url=f"{receiver_url}/webhook", secret=secret,
            events=["model_version.created", "model_version_alias.created", "prompt_alias.created"],
        )
        yield GateStack(gated, plain, receiver_url, receiver_log, secret, gate_keys, hook.webhook_id, backend)
    finally:
        for proc in reversed(started):
            _stop(proc)
        if postgres is not None:
            postgres.remove()
