"""Promotions through the registry gate on PostgreSQL with four workers, against the same server without it (not a test).

Starts a throwaway PostgreSQL cluster and, one after another on a fresh database each, three
``mlflow server --backend-store-uri postgresql://… --workers 4`` configurations on 127.0.0.1:

  * ``plain``      — no plugin;
  * ``gate``       — ``--app-name safeflavor-gate`` requiring the gate's signature, smoke test on (the default);
  * ``gate-nosmoke`` — the same with ``MLFLOW_SAFEFLAVOR_GATE_SMOKE_TEST=false``.

On each it registers ``--versions`` copies of a small scikit-learn model and verifies, signs and
tags them with ``promote`` to an unprotected alias (setup, not timed). Then ``--clients`` threads
send ``--requests`` protected-alias promotions (``POST /api/2.0/mlflow/registered-models/alias``,
``@champion`` on a version picked in turn) and the same number of unprotected reads
(``GET model-versions/get``); it prints promotions/s, p50 and p95 latency per configuration, and
the end-to-end ``promote()`` (client-side verification, smoke test, signature, tags, alias) for
``--promotes`` versions one at a time. One run; figures go to docs/performance.md.

    .venv/bin/python benchmarks/bench_registry.py [--clients 8] [--requests 32] [--versions 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pgserver import start_postgres  # noqa: E402
from serverproc import free_port, stop_group, wait_url  # noqa: E402

warnings.filterwarnings("ignore")
PROTECTED = "champion,production"


def _keys(root: Path) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = root / "gate.pem", root / "gate.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"private": priv, "public": pub}


def _start_server(root: Path, store_uri: str, env_extra: dict[str, str], app: str | None) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--serve-artifacts",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "4", "--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    if app:
        cmd += ["--app-name", app]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env_extra})
    log = root / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def _register(url: str, n: int, keys: dict[str, Path]) -> tuple[str, list[str]]:
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    import mlflow_safeflavor

    mlflow.set_tracking_uri(url)
    client = MlflowClient(tracking_uri=url)
    experiment = client.create_experiment(f"bench-{uuid.uuid4().hex[:6]}")
    name = f"bench-{uuid.uuid4().hex[:6]}"
    versions = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(60, 4))
        model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow_safeflavor.log_model(model, name="model", input_example=X[:5], registered_model_name=name)
        versions.append(str(info.registered_model_version))
    return name, versions


def _verify_sign_tag(url: str, name: str, versions: list[str], keys: dict[str, Path]) -> None:
    from mlflow import MlflowClient

    import mlflow_safeflavor

    for v in versions:
        mlflow_safeflavor.promote(name, v, "candidate", client=MlflowClient(tracking_uri=url), signing_key=keys["private"])


def _load(fn: Callable[[int], requests.Response], total: int, clients: int) -> dict[str, Any]:
    """``total`` calls of ``fn(i)`` spread over ``clients`` threads: throughput and latency percentiles."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            status = fn(i).status_code
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20)
    return {"n": total, "per_s": total / wall, "p50_ms": statistics.median(latencies) * 1e3,
            "p95_ms": q[18] * 1e3, "statuses": statuses}


def bench_config(label: str, pg: Any, keys: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    from mlflow import MlflowClient

    import mlflow_safeflavor

    env_extra: dict[str, str] = {}
    app = None
    if label.startswith("gate"):
        app = "safeflavor-gate"
        env_extra = {"MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES": PROTECTED, "MLFLOW_SAFEFLAVOR_PUBLIC_KEY": str(keys["public"])}
        if label == "gate-nosmoke":
            env_extra["MLFLOW_SAFEFLAVOR_GATE_SMOKE_TEST"] = "false"
    root = Path(tempfile.mkdtemp(prefix=f"bench-registry-{label}-"))
    store = pg.create_database(f"bench_{label.replace('-', '_')}")
    proc, url, log = _start_server(root, store, env_extra, app)
    try:
        wait_url(f"{url}/health", proc, log, timeout=300)
        time.sleep(5)  # let all four workers finish importing before timing
        name, versions = _register(url, args.versions + args.promotes, keys)
        timed, e2e = versions[: args.versions], versions[args.versions:]
        _verify_sign_tag(url, name, timed, keys)
        session = threading.local()

        def post_alias(i: int) -> requests.Response:
            s = getattr(session, "s", None) or requests.Session()
            session.s = s
            return s.post(f"{url}/api/2.0/mlflow/registered-models/alias",
                          json={"name": name, "alias": "champion", "version": timed[i % len(timed)]}, timeout=600)

        def get_version(i: int) -> requests.Response:
            s = getattr(session, "s", None) or requests.Session()
            session.s = s
            return s.get(f"{url}/api/2.0/mlflow/model-versions/get",
                         params={"name": name, "version": timed[i % len(timed)]}, timeout=600)

        _load(get_version, args.clients, args.clients)  # warm connections and workers
        out: dict[str, Any] = {"config": label}
        out["alias"] = _load(post_alias, args.requests, args.clients)
        out["read"] = _load(get_version, max(args.requests, 200), args.clients)
        times = []
        for v in e2e:
            t = time.perf_counter()
            mlflow_safeflavor.promote(name, v, "champion", client=MlflowClient(tracking_uri=url), signing_key=keys["private"])
            times.append(time.perf_counter() - t)
        out["promote_s"] = statistics.median(times) if times else None
        return out
    finally:
        stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="protected-alias promotions per configuration")
    parser.add_argument("--versions", type=int, default=8)
    parser.add_argument("--promotes", type=int, default=3, help="end-to-end promote() calls per configuration")
    parser.add_argument("--configs", default="plain,gate,gate-nosmoke")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    key_dir = Path(tempfile.mkdtemp(prefix="bench-registry-keys-"))
    keys = _keys(key_dir)
    pg = start_postgres()
    rows = []
    try:
        for label in args.configs.split(","):
            rows.append(bench_config(label, pg, keys, args))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        pg.remove()
        shutil.rmtree(key_dir, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nPostgreSQL, 4 workers, {args.clients} clients; load average {load[0]:.1f}/{load[1]:.1f}")
    print("| server | promotions/s | p50 ms | p95 ms | reads/s | read p50 ms | promote() s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a, g = r["alias"], r["read"]
        e2e = f"{r['promote_s']:.1f}" if r["promote_s"] is not None else "-"
        print(f"| {r['config']} | {a['per_s']:.2f} | {a['p50_ms']:.0f} | {a['p95_ms']:.0f} | {g['per_s']:.0f} | "
              f"{g['p50_ms']:.0f} | {e2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": load}, indent=1))


if __name__ == "__main__":
    main()
