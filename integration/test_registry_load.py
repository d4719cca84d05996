"""The registry gate under concurrent load and faults: PostgreSQL, four workers, a killed worker, a database restart.

One real deployment, started for this module: a throwaway PostgreSQL cluster (:mod:`pgserver`) and
``mlflow server --backend-store-uri postgresql://… --app-name safeflavor-gate --workers 4`` with the
gate requiring its signature (``MLFLOW_SAFEFLAVOR_PUBLIC_KEY``) and its subprocess smoke test on.

Ten clients run at once, each a thread with its own fixed list of operations:

- four promote clients and one CLI client (``mlflow-safeflavor promote`` as a subprocess) promote
  good (signed by the gate's key), unsigned and tampered-after-registration versions to the
  protected aliases ``champion``/``production``;
- two REST clients set protected aliases (in any letter case) and an unprotected one directly on
  ``POST /api/2.0/mlflow/registered-models/alias``, on versions verified before the run, one of
  which was tampered with after it was promoted;
- a swap client replaces a version's stored artifacts with another valid safe-flavor model while
  the gate verifies it, once while ``promote`` smoke-tests its copy (the server must then refuse)
  and once while the server's gate smoke-tests its copy (the alias is set; the loaders must refuse);
- a victim client verifies and signs a version (``promote`` to an unprotected alias), then asks
  for ``@champion`` on the REST route; the uvicorn worker serving that request is SIGKILLed while
  the gate's smoke test for it runs, and the client asks again;
- a reader loads every protected alias through our loader in a loop.

A fault controller kills that worker, and later stops the PostgreSQL cluster, probes the server
while it is down, and starts it again. Faults are sequenced by progress (a process appears, a
number of operations completed), never by sleeping for a guessed time.

After every operation (and every reader round) the invariants of issue 17 are checked, and they
are asserted at the end: no tampered, swapped or unverified version loads through
``models:/name@<protected alias>``; every ``safeflavor.verified`` tag equals the digest of bytes a
verification completed on; no 5xx and no failed operation unless it overlapped a fault, and then a
clear error (an ``MlflowException`` — ours are ``SafeFlavorError`` — naming what failed, an HTTP
error body, or ``error: …`` from the CLI without a traceback); no version and no acknowledged tag
written before a fault is missing after it. The MLflow client retries a request once, at once
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``, no backoff: a keep-alive connection the server closed as it
was reused is retried, a fault outlasting the retry reaches the client); every 5xx, including
those answered to a retry, is counted through urllib3's retry history.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import numpy as np
import pytest
import requests
from conftest import MlflowServer, gate_server_env, start_mlflow_server, start_postgres_or_fail, wait_healthy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from serverproc import stop_group

import mlflow_safeflavor
from mlflow_safeflavor.errors import SafeFlavorError
from mlflow_safeflavor.registry import TAG_VERIFIED, PromotionRejectedError, artifact_digest

PROTECTED = ("champion", "production")
WORKERS = 4
# uvicorn's supervisor SIGKILLs a worker that does not answer its ping within 5 s. On a 2-core
# machine shared with other jobs a worker busy with gate checks missed it (measured: three workers
# killed within 25 s of a database stop at load average 11-17); docs/registry.md says to raise it.
UVICORN_OPTS = os.environ.get("SAFEFLAVOR_LOAD_UVICORN_OPTS", "--timeout-worker-healthcheck 60")
SMOKE_CHILD = "mlflow_safeflavor.registry.smoke_child"
# Bounds on waits for a process or a state to appear; reaching one fails the test, they time nothing.
WAIT_SECONDS = 240.0


# ------------------------------------------------------------------------------ processes


def _proc_table(parents: set[int] | None = None) -> dict[int, tuple[int, list[str]]]:
    """``{pid: (ppid, argv)}`` for every process we can read under /proc (only children of ``parents``)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parents is not None and ppid not in parents:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return table


def _descendants(root: int, table: dict[int, tuple[int, list[str]]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def uvicorn_workers(server: MlflowServer) -> set[int]:
    """The server's uvicorn worker processes (multiprocessing children of its supervisor)."""
    table = _proc_table()
    return {pid for pid in _descendants(server.proc.pid, table)
            if any("spawn_main" in a for a in table[pid][1]) and SMOKE_CHILD not in table[pid][1]}


def smoke_child_of(parents: Callable[[], set[int]], mlmodel: bytes) -> tuple[int, int] | None:
    """``(child pid, parent pid)`` of a running smoke test whose model has this MLmodel, if any.

    The smoke child is ``python -c <bootstrap> mlflow_safeflavor.registry.smoke_child <dir>``; its
    directory is the gate's private download of the version, so its MLmodel names the version.
    """
    allowed = parents()
    for pid, (ppid, argv) in _proc_table(allowed).items():
        if SMOKE_CHILD not in argv:
            continue
        root = Path(argv[argv.index(SMOKE_CHILD) + 1])
        try:
            if (root / "MLmodel").read_bytes() == mlmodel:
                return pid, ppid
        except (OSError, IndexError):
            continue
    return None


def wait_for(check: Callable[[], Any], what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"gave up after {WAIT_SECONDS:.0f}s waiting for {what}")


# ------------------------------------------------------------------------------- faults


class Faults:
    """Fault windows: an operation *overlapped* a fault if one was active when it started or
    ended, or one began or ended while it ran (the epoch moved)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.epoch = 0
        self.active: str | None = None
        self.ran: list[str] = []
        self.done = threading.Event()

    def mark(self) -> tuple[int, str | None]:
        with self._lock:
            return self.epoch, self.active

    @staticmethod
    def overlapped(start: tuple[int, str | None], end: tuple[int, str | None]) -> bool:
        return start[0] != end[0] or start[1] is not None or end[1] is not None

    @contextmanager
    def window(self, what: str) -> Iterator[None]:
        with self._lock:
            self.epoch += 1
            self.active = what
            self.ran.append(what)
        try:
            yield
        finally:
            with self._lock:
                self.active = None
                self.epoch += 1

    def wait_quiet(self) -> None:
        wait_for(lambda: self.mark()[1] is None, "the fault window to close", poll=0.1)


# ------------------------------------------------------------------------------ the world


@dataclass
class Version:
    """A registered version and the ground truth about its bytes."""

    name: str
    version: str
    kind: str  # good | unsigned | tampered (before any verification)
    directory: Path  # its stored artifacts on the server's disk
    digest: str  # artifact_digest of the bytes as logged
    fingerprint: bytes  # the model's coefficients: which model a successful load returned
    mlmodel: bytes

    @property
    def accepted(self) -> bool:
        """Whether the gate's policy accepts these bytes as logged (good = signed by the gate's key)."""
        return self.kind == "good"


@dataclass
class Op:
    client: str
    route: str  # api | cli | rest | probe
    kind: str
    name: str
    version: str
    alias: str
    expect: str  # promoted | rejected
    outcome: str = ""  # promoted | rejected | error
    detail: str = ""
    statuses: list[int] = field(default_factory=list)
    faulted: bool = False


@dataclass
class World:
    server: MlflowServer
    postgres: Any
    keys: dict[str, Path]
    X: np.ndarray
    versions: dict[tuple[str, str], Version] = field(default_factory=dict)
    swap_dir: Path | None = None
    swap_fingerprint: bytes = b""
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: list[Op] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    loads: Counter = field(default_factory=Counter)
    acked: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # acknowledged marker tags
    swapped: set[Path] = field(default_factory=set)  # stored directories the swap client replaced
    workers_seen: set[int] = field(default_factory=set)  # every uvicorn worker pid observed
    completed: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    def by_kind(self, name: str, kind: str) -> Version:
        (v,) = [v for v in self.versions.values() if v.name == name and v.kind == kind]
        return v

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def record(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)
            self.completed += 1


_local = threading.local()


def fingerprint(model: Any) -> bytes:
    return np.asarray(model.coef_, dtype=np.float64).tobytes() + np.asarray(model.intercept_, dtype=np.float64).tobytes()


def train(seed: int) -> tuple[Any, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=60) > 0).astype(int)
    return LogisticRegression().fit(X, y), X


def flip_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def swap_in(world: World, target: Version) -> None:
    """Replace the version's stored files, one by one in place, with another valid safe-flavor model."""
    for f in sorted(world.swap_dir.iterdir()):
        shutil.copyfile(f, target.directory / f.name)


# --------------------------------------------------------------------------- invariants


def _fault_error(exc: BaseException) -> bool:
    return isinstance(exc, (MlflowException, requests.RequestException, OSError))


def checked(world: World, what: str, fn: Callable[[], Any]) -> Any:
    """Run a read ``fn``; an error is tolerated only while it overlaps a fault (then read again after it)."""
    for _ in range(4):
        start = world.faults.mark()
        try:
            return fn()
        except Exception as exc:
            if not (_fault_error(exc) and Faults.overlapped(start, world.faults.mark())):
                raise AssertionError(f"{what}: {type(exc).__name__}: {exc} (no fault was active)") from exc
        world.faults.wait_quiet()
    raise AssertionError(f"{what}: kept failing after the faults ended")


def check_model(world: World, name: str, who: str) -> None:
    """The invariants for one registered model, read from the server now."""
    client = MlflowClient(tracking_uri=world.url)
    aliases = checked(world, f"{who}: read {name}", lambda: client.get_registered_model(name).aliases)
    for alias, holder in sorted(aliases.items()):
        if alias.lower() not in PROTECTED:
            continue
        uri = f"models:/{name}@{alias}"
        start = world.faults.mark()
        try:
            model = mlflow_safeflavor.load_model(uri)
        except SafeFlavorError as exc:
            # Refused by our loader: not reachable. A fault may also surface here as a typed error.
            with world.lock:
                world.loads["refused"] += 1
            truth = world.versions[(name, holder)]
            if not Faults.overlapped(start, world.faults.mark()) and truth.accepted and truth.directory not in world.swapped:
                world.violation(f"{who}: {uri} (version {holder}, accepted bytes) was refused: {exc.message[:300]}")
            continue
        except Exception as exc:
            if not (_fault_error(exc) and Faults.overlapped(start, world.faults.mark())):
                world.violation(f"{who}: loading {uri} failed outside any fault: {type(exc).__name__}: {exc}")
            continue
        fp = fingerprint(model)
        loaded = [v for v in world.versions.values() if v.fingerprint == fp]
        with world.lock:
            world.loads["loaded"] += 1
        if fp == world.swap_fingerprint:
            world.violation(f"{who}: {uri} loaded the swapped-in model: a swapped version was reachable")
        elif not loaded or not loaded[0].accepted:
            what = f"version {loaded[0].version} ({loaded[0].kind})" if loaded else "an unknown model"
            world.violation(f"{who}: {uri} loaded {what}: an unverified version was reachable")
    versions = checked(world, f"{who}: versions of {name}",
                       lambda: client.search_model_versions(f"name='{name}'"))
    for mv in versions:
        truth = world.versions[(name, str(mv.version))]
        tag = (mv.tags or {}).get(TAG_VERIFIED)
        if tag is None:
            continue
        if truth.kind == "tampered":
            world.violation(f"{who}: {name} v{mv.version} was tampered before any verification but carries {TAG_VERIFIED}={tag}")
        elif tag != truth.digest:
            world.violation(f"{who}: {name} v{mv.version} carries {TAG_VERIFIED}={tag}, not the digest of the "
                            f"bytes any verification ran on ({truth.digest})")


def snapshot(world: World) -> dict[tuple[str, str], dict[str, str]]:
    """Every version of every model in the run with its tags, as the server reports them now."""
    client = MlflowClient(tracking_uri=world.url)
    out = {}
    for name in sorted({v.name for v in world.versions.values()}):
        for mv in client.search_model_versions(f"name='{name}'"):
            out[(name, str(mv.version))] = dict(mv.tags or {})
    return out


def check_nothing_lost(world: World, before: dict, acked: dict, what: str) -> None:
    """Versions and the tags that are never rewritten (markers, safeflavor.verified) survived ``what``."""
    after = checked(world, f"read after {what}", lambda: snapshot(world))
    for key, tags in before.items():
        if key not in after:
            world.violation(f"after {what}: {key[0]} v{key[1]} is gone")
            continue
        for tag, value in tags.items():
            if (tag.startswith("loadtest.") or tag == TAG_VERIFIED) and after[key].get(tag) != value:
                world.violation(f"after {what}: {key[0]} v{key[1]} lost tag {tag}={value} (now {after[key].get(tag)})")
    for key, tags in acked.items():
        for tag, value in tags.items():
            if after.get(key, {}).get(tag) != value:
                world.violation(f"after {what}: acknowledged write {tag}={value} on {key[0]} v{key[1]} is missing")


# ---------------------------------------------------------------------------- operations


def _send_recording(original: Callable) -> Callable:
    """HTTPAdapter.send that also notes every response status on the calling thread's current op,
    including the statuses urllib3 retried (its retry history) and those in a give-up error."""

    def send(self, request, **kwargs):
        op = getattr(_local, "op", None)
        try:
            response = original(self, request, **kwargs)
        except requests.RequestException as exc:
            if op is not None:
                op.statuses += [int(code) for code in re.findall(r"too many (5\d\d) error responses", str(exc))]
            raise
        if op is not None:
            retries = getattr(response.raw, "retries", None)
            op.statuses += [h.status for h in (getattr(retries, "history", None) or ()) if h.status]
            op.statuses.append(response.status_code)
        return response

    return send


def run_op(world: World, op: Op) -> Op:
    """Perform one promotion attempt by its route, classify the outcome, check invariants after it."""
    client_id = op.client
    # An acknowledged write before each operation: it must survive any later fault.
    marker = f"loadtest.{client_id}.{world.completed}.{uuid.uuid4().hex[:6]}"
    start = world.faults.mark()
    try:
        MlflowClient(tracking_uri=world.url).set_model_version_tag(op.name, op.version, marker, "1")
        with world.lock:
            world.acked.setdefault((op.name, op.version), {})[marker] = "1"
    except Exception as exc:  # not acknowledged, so not required afterwards; only a fault excuses it
        if not Faults.overlapped(start, world.faults.mark()):
            world.violation(f"{client_id}: writing tag {marker} failed outside any fault: {exc}")
    _local.op = op
    start = world.faults.mark()
    try:
        _perform(world, op)
    finally:
        _local.op = None
        op.faulted = Faults.overlapped(start, world.faults.mark())
    world.record(op)
    _judge(world, op)
    check_model(world, op.name, f"after {op.client} {op.route} {op.kind} v{op.version} @{op.alias}")
    return op


def _perform(world: World, op: Op) -> None:
    signing = op.kind == "good"
    if op.route == "api":
        try:
            mlflow_safeflavor.promote(op.name, op.version, op.alias, client=MlflowClient(tracking_uri=world.url),
                                      signing_key=world.keys["private"] if signing else None)
            op.outcome = "promoted"
        except PromotionRejectedError as exc:
            op.outcome, op.detail = "rejected", f"{exc.failed}: {exc.message}"
        except MlflowException as exc:  # SafeFlavorError, or MLflow's own naming the failed request
            op.outcome, op.detail = "error", f"{type(exc).__name__}: {exc.message}"
        except Exception as exc:  # untyped: judged below (never acceptable)
            op.outcome, op.detail = "error", f"untyped {type(exc).__name__}: {exc}"
    elif op.route == "cli":
        cmd = [sys.executable, "-m", "mlflow_safeflavor.cli", "promote", op.name, op.version, "--alias", op.alias]
        if signing:
            cmd += ["--signing-key", str(world.keys["private"])]
        env = {**os.environ, "MLFLOW_TRACKING_URI": world.url}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0:
            op.outcome = "promoted"
        elif proc.returncode == 1 and "was not promoted" in proc.stderr and "Traceback" not in output:
            op.outcome, op.detail = "rejected", proc.stderr.strip()
        elif proc.returncode == 1 and "\nerror: " in "\n" + proc.stderr and "Traceback" not in output:
            op.outcome, op.detail = "error", proc.stderr.strip()
        else:
            op.outcome, op.detail = "error", f"untyped exit {proc.returncode}: {output[-1500:]}"
    else:  # rest: the raw alias route, exactly as the UI or any HTTP client calls it
        try:
            response = requests.post(f"{world.url}/api/2.0/mlflow/registered-models/alias",
                                     json={"name": op.name, "alias": op.alias, "version": op.version}, timeout=300)
        except requests.RequestException as exc:
            op.outcome, op.detail = "error", f"{type(exc).__name__}: {exc}"
            return
        if response.status_code == 200:
            op.outcome = "promoted"
        elif response.status_code == 403 and response.json().get("error_code") == "PERMISSION_DENIED":
            op.outcome, op.detail = "rejected", response.json()["message"]
        else:
            op.outcome, op.detail = "error", f"HTTP {response.status_code}: {response.text[:500]}"


def _judge(world: World, op: Op) -> None:
    """Outside a fault an operation ends exactly as its kind says; in one, a clear error is allowed."""
    server_errors = [s for s in op.statuses if s >= 500] + re.findall(r"(?:error code|HTTP) (5\d\d)", op.detail)
    label = f"{op.client} {op.route} {op.kind} {op.name} v{op.version} @{op.alias}"
    if op.outcome == "error" and op.detail.startswith("untyped"):
        world.violation(f"{label}: unclear error: {op.detail[:600]}")
        return
    if not op.faulted:
        if server_errors:
            world.violation(f"{label}: 5xx {server_errors} outside any fault: {op.detail[:400]}")
        if op.outcome != op.expect:
            world.violation(f"{label}: expected {op.expect}, got {op.outcome}: {op.detail[:600]}")
        return
    if op.outcome == "error" and op.detail.startswith("untyped"):
        world.violation(f"{label}: unclear error: {op.detail[:600]}")
    if op.outcome == "promoted" and op.expect != "promoted":
        world.violation(f"{label}: promoted during a fault although it must be refused")
    if op.outcome == "rejected" and op.expect == "promoted":
        # An outage is not a verdict: the gate answers 503, and promote records no rejection.
        world.violation(f"{label}: a fault was reported as a refusal: {op.detail[:400]}")


# ------------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def world(tmp_path_factory, gate_keys) -> Iterator[World]:
    """PostgreSQL + the gated server with four workers, and the registered versions of the run."""
    postgres = start_postgres_or_fail()
    server = None
    try:
        uri = postgres.create_database("mlflow_load")
        server = start_mlflow_server(tmp_path_factory.mktemp("load-server"), app_name="safeflavor-gate",
                                     extra_env=gate_server_env(gate_keys), backend_store_uri=uri, workers=WORKERS,
                                     extra_args=["--uvicorn-opts", UVICORN_OPTS] if UVICORN_OPTS else [])
        # Train while the server starts.
        models = {seed: train(seed) for seed in range(100, 125)}
        swap_model, X = train(999)
        swap_dir = tmp_path_factory.mktemp("swap") / "model"
        mlflow_safeflavor.save_model(swap_model, swap_dir, input_example=X[:5])
        wait_healthy(server)
        wait_for(lambda: len(uvicorn_workers(server)) == WORKERS, f"{WORKERS} uvicorn workers")
        world = World(server, postgres, gate_keys, X, swap_dir=swap_dir, swap_fingerprint=fingerprint(swap_model))
        with _tracking(server.url):
            _register(world, models)
            yield world
    finally:
        if server is not None:
            stop_group(server.proc)
        postgres.remove()


@contextmanager
def _tracking(url: str) -> Iterator[None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(url)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


# (model, kind) of every version, in registration order per model.
LAYOUT = {
    **{f"api{i}": ("good", "unsigned", "tampered") for i in range(1, 5)},
    "cli": ("good", "unsigned", "tampered"),
    # shared by the REST clients: two verified+signed, one signed then tampered, one unsigned, one tampered
    "shared": ("good", "good", "good", "unsigned", "tampered"),
    "swap": ("good", "good"),
    "victim": ("good",),
}


def _register(world: World, models: dict[int, tuple[Any, np.ndarray]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = MlflowClient(tracking_uri=world.url)
    experiment = client.create_experiment(f"load-{uuid.uuid4().hex[:8]}")
    suffix = uuid.uuid4().hex[:6]
    seeds = iter(sorted(models))
    jobs = [(f"load-{model}-{suffix}", kind, next(seeds)) for model, kinds in LAYOUT.items() for kind in kinds]

    def log(job: tuple[str, str, int]) -> tuple[str, str, int, Any]:
        name, kind, seed = job
        model, X = models[seed]
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow_safeflavor.log_model(model, name="model", input_example=X[:5], registered_model_name=name)
        return name, kind, seed, info

    # Versions of one model register in order; different models in parallel.
    by_model: dict[str, list] = {}
    for job in jobs:
        by_model.setdefault(job[0], []).append(job)
    with ThreadPoolExecutor(4) as pool:
        results = pool.map(lambda js: [log(j) for j in js], by_model.values())
        for logged in results:
            for name, kind, seed, info in logged:
                (directory,) = list(world.server.artifacts.glob(f"*/models/{info.model_id}/artifacts"))
                version = str(info.registered_model_version)
                world.versions[(name, version)] = Version(
                    name, version, kind, directory, artifact_digest(directory), fingerprint(models[seed][0]),
                    (directory / "MLmodel").read_bytes())
    for v in world.versions.values():
        client.set_model_version_tag(v.name, v.version, "loadtest.created", v.kind)
        if v.kind == "tampered":
            flip_byte(v.directory / "model.skops")
    # The shared model's good versions are verified, signed and tagged before the run (to an
    # unprotected alias, so the REST clients' protected requests are the server's first look);
    # the third then gets @production and is tampered with afterwards.
    shared = [v for v in world.versions.values() if v.name.startswith("load-shared-") and v.kind == "good"]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda v: mlflow_safeflavor.promote(v.name, v.version, "candidate", client=MlflowClient(tracking_uri=world.url),
                                                          signing_key=world.keys["private"]), shared))
    late = shared[2]
    client.set_registered_model_alias(late.name, "production", late.version)
    flip_byte(late.directory / "model.skops")
    late.kind = "good-then-tampered"


# ----------------------------------------------------------------------------------- test


def test_gate_holds_every_invariant_under_concurrent_load_and_faults(world, monkeypatch):
    from requests.adapters import HTTPAdapter

    for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0"),
                       ("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(HTTPAdapter, "send", _send_recording(HTTPAdapter.send))
    names = {model: next(v.name for v in world.versions.values() if v.name.startswith(f"load-{model}-")) for model in LAYOUT}

    def op(client: str, route: str, model: str, kind: str, alias: str, index: int = 0) -> Op:
        v = [v for v in world.versions.values() if v.name == names[model] and v.kind == kind][index]
        protected = alias.lower() in PROTECTED
        expect = "promoted" if (not protected or (kind == "good")) else "rejected"
        return Op(client, route, kind, v.name, v.version, alias, expect)

    # Each promote client meets the three kinds in a different order.
    orders = [("good", "unsigned", "tampered"), ("unsigned", "tampered", "good"),
              ("tampered", "good"), ("unsigned", "tampered")]
    plans: dict[str, list[Op]] = {}
    for i, order in enumerate(orders, start=1):
        plans[f"api{i}"] = [op(f"api{i}", "api", f"api{i}", kind, ("champion", "production")[j % 2])
                            for j, kind in enumerate(order)]
    plans["cli"] = [op("cli", "cli", "cli", k, a) for k, a in
                    (("tampered", "champion"), ("good", "production"), ("unsigned", "champion"))]
    plans["rest1"] = [
        op("rest1", "rest", "shared", "unsigned", "champion"),
        op("rest1", "rest", "shared", "tampered", "Champion"),
        op("rest1", "rest", "shared", "good-then-tampered", "PRODUCTION"),
        op("rest1", "rest", "shared", "tampered", "staging"),  # unprotected: passes through
        *[op("rest1", "rest", f"api{i}", "tampered", "production") for i in range(1, 5)],
        op("rest1", "rest", "cli", "unsigned", "Production"),
        op("rest1", "rest", "shared", "unsigned", "production"),
    ]
    plans["rest2"] = [
        op("rest2", "rest", "shared", "good", "champion", 0),
        op("rest2", "rest", "shared", "good", "production", 1),
    ]
    results: dict[str, Any] = {}
    done = threading.Event()

    def promote_client(name: str) -> None:
        for o in plans[name]:
            run_op(world, o)

    def swap_client() -> None:
        """Swap A during promote's own smoke test; swap B during the server gate's smoke test."""
        a, b = [v for v in world.versions.values() if v.name == names["swap"]]
        ours = lambda: {os.getpid()}  # noqa: E731
        for target, parents, expect in ((a, ours, "rejected"), (b, lambda: uvicorn_workers(world.server), "promoted")):
            # A fault (a killed worker, the database restart) can end the attempt before its smoke
            # test starts; then nothing is swapped and, once the fault is over, it is tried again.
            for _ in range(4):
                o = Op("swap", "api", "good", target.name, target.version, "champion", expect)
                worker = threading.Thread(target=run_op, args=(world, o))
                worker.start()
                seen = wait_for(lambda: smoke_child_of(parents, target.mlmodel) or not worker.is_alive(),
                                f"a smoke test of {target.name} v{target.version}")
                if seen is not True:
                    break
                worker.join()
                if not o.faulted:
                    world.violation(f"swap: v{target.version} ended ({o.outcome}) without a smoke test and outside any fault")
                    return
                world.faults.wait_quiet()
            else:
                world.violation(f"swap: every attempt on v{target.version} overlapped a fault")
                return
            swap_in(world, target)
            with world.lock:
                world.swapped.add(target.directory)
            worker.join()
            results[f"swap-{target.version}"] = o
        # After swap B the alias points at swapped bytes: the loaders refuse them (checked above),
        # and so does the server when asked to set a protected alias on them again.
        run_op(world, Op("swap", "rest", "swapped", b.name, b.version, "production", "rejected"))

    def victim_client() -> None:
        v = world.by_kind(names["victim"], "good")
        run_op(world, Op("victim", "api", "good", v.name, v.version, "candidate", "promoted"))
        attempts = []
        for _ in range(4):
            o = run_op(world, Op("victim", "rest", "good", v.name, v.version, "champion", "promoted"))
            attempts.append(o)
            if o.outcome == "promoted":
                break
        results["victim"] = attempts

    def reader() -> None:
        rounds = 0
        while not done.is_set() or rounds == 0:
            world.workers_seen |= uvicorn_workers(world.server)
            for name in sorted(set(names.values())):
                check_model(world, name, "reader")
            rounds += 1
            time.sleep(0.2)
        results["reader_rounds"] = rounds

    def controller() -> None:
        # 1. SIGKILL the worker that serves the victim's alias request, while its gate smoke-tests.
        victim = world.by_kind(names["victim"], "good")
        _, worker = wait_for(lambda: smoke_child_of(lambda: uvicorn_workers(world.server), victim.mlmodel),
                             "the gate's smoke test of the victim's version")
        with world.faults.window("worker killed"):
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: worker not in uvicorn_workers(world.server), "the killed worker to be gone")
        results["killed_worker"] = worker
        # 2. Once half of the operations are done, stop PostgreSQL, probe, start it again.
        total = sum(len(p) for p in plans.values())
        wait_for(lambda: world.completed >= total // 2, "half of the operations", poll=0.1)
        with world.lock:
            acked = {k: dict(t) for k, t in world.acked.items()}
        before = checked(world, "snapshot before the database stop", lambda: snapshot(world))
        probes = []
        with world.faults.window("database stopped"):
            world.postgres.stop()
            shared_good = [v for v in world.versions.values() if v.name == names["shared"] and v.kind == "good"][0]
            for probe in (lambda: requests.post(f"{world.url}/api/2.0/mlflow/registered-models/alias",
                                                json={"name": shared_good.name, "alias": "champion",
                                                      "version": shared_good.version}, timeout=120),
                          lambda: requests.get(f"{world.url}/api/2.0/mlflow/registered-models/get",
                                               params={"name": shared_good.name}, timeout=120)):
                response = probe()
                probes.append((response.status_code, response.text[:400]))
            world.postgres.start()
        results["db_probes"] = probes
        results["workers_after"] = wait_for(lambda: len(uvicorn_workers(world.server)) == WORKERS and
                                            uvicorn_workers(world.server), f"{WORKERS} workers again")
        check_nothing_lost(world, before, acked, "the database restart")

    threads = {name: threading.Thread(target=_guarded(world, promote_client), args=(name,), name=name) for name in plans}
    threads["swap"] = threading.Thread(target=_guarded(world, swap_client), name="swap")
    threads["victim"] = threading.Thread(target=_guarded(world, victim_client), name="victim")
    extra = {"reader": threading.Thread(target=_guarded(world, reader), name="reader"),
             "controller": threading.Thread(target=_guarded(world, controller), name="controller")}
    started = time.monotonic()
    for t in [*threads.values(), *extra.values()]:
        t.start()
    for t in threads.values():
        t.join()
    extra["controller"].join()
    done.set()
    extra["reader"].join()
    elapsed = time.monotonic() - started

    # A last look at everything, with no fault active: invariants, and every acknowledged write.
    for name in sorted(set(names.values())):
        check_model(world, name, "final")
    check_nothing_lost(world, {}, world.acked, "the run")
    _summary(world, results, elapsed)

    assert not world.violations, "\n".join(world.violations)
    assert len(threads) >= 8, "fewer than 8 concurrent promotion clients"
    assert world.faults.ran == ["worker killed", "database stopped"], world.faults.ran
    # The victim's first attempt died with its worker and said so; a later attempt promoted it.
    first, last = results["victim"][0], results["victim"][-1]
    assert first.faulted and first.outcome == "error" and last.outcome == "promoted", results["victim"]
    # The swap raced the gate both ways and lost both times.
    assert results[f"swap-{a_version(world, names)}"].outcome == "rejected"
    assert "changed after verification" in results[f"swap-{a_version(world, names)}"].detail
    # While the database was down the server answered, with an error that says so.
    for status, body in results["db_probes"]:
        assert status == 503 and "TEMPORARILY_UNAVAILABLE" in body, (status, body)
    assert results["killed_worker"] not in results["workers_after"]
    # No worker died that the controller did not kill (uvicorn restarts a worker that misses its
    # healthcheck; that would drop requests outside any injected fault).
    final_workers = uvicorn_workers(world.server)
    world.workers_seen |= final_workers
    lost = world.workers_seen - final_workers - {results["killed_worker"]}
    assert not lost, f"workers {sorted(lost)} died unasked:\n" + "\n".join(
        ln for ln in world.server.log.read_text(errors="replace").splitlines() if "died" in ln or "Child process" in ln)
    assert world.loads["loaded"] > 0 and world.loads["refused"] > 0, world.loads


def a_version(world: World, names: dict[str, str]) -> str:
    return sorted((v for v in world.versions.values() if v.name == names["swap"]), key=lambda v: int(v.version))[0].version


def _guarded(world: World, fn: Callable) -> Callable:
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # an assertion or crash in a client thread is a violation too
            import traceback

            world.violation(f"{threading.current_thread().name} crashed: {type(exc).__name__}: {exc}\n"
                            f"{traceback.format_exc()[-2000:]}")

    return run


def _summary(world: World, results: dict[str, Any], elapsed: float) -> None:
    by = Counter((o.route, o.kind, o.outcome) for o in world.ops)
    statuses = Counter(s for o in world.ops for s in o.statuses)
    lines = [f"load test: {len(world.ops)} operations by {len(set(o.client for o in world.ops))} clients in {elapsed:.1f}s; "
             f"faults: {world.faults.ran}; reader rounds: {results.get('reader_rounds')}; "
             f"loads through protected aliases: {dict(world.loads)}",
             f"operations overlapping a fault: {sum(o.faulted for o in world.ops)}; "
             f"HTTP statuses seen in-process: {dict(sorted(statuses.items()))}; db probes: {[p[0] for p in results.get('db_probes', [])]}"]
    lines += [f"  {route:5} {kind:20} {outcome:9} {n}" for (route, kind, outcome), n in sorted(by.items())]
    lines += [f"  faulted: {o.client} {o.route} {o.kind} v{o.version} @{o.alias} -> {o.outcome}: {o.detail[:300]}"
              for o in world.ops if o.faulted]
    text = "\n".join(lines)
    print(text)
    report = os.environ.get("SAFEFLAVOR_LOAD_REPORT")
    if report:
        Path(report).write_text(text + "\n" + json.dumps({"violations": world.violations}, indent=1) + "\n")
