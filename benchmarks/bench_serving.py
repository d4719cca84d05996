"""Scoring-server throughput and latency (not a test).

Starts three servers on 127.0.0.1, one after another, on the same model:
  * ``mlflow models serve`` for the model saved with **mlflow_safeflavor** (MLflow's server, our loader module),
  * ``mlflow models serve`` for the same model saved with MLflow's **built-in** flavor,
  * the hardened ``mlflow-safeflavor serve`` (MLflow's scoring app, our verifying loader),
all with ``--env-manager local`` / one worker, and sends a bounded number of sequential requests of
1 row and 1,000 rows from this process. Prints requests/s, p50 and p99 latency, and ratios against
the built-in flavor (target: throughput ≥ 0.95×).

    .venv/bin/python benchmarks/bench_serving.py [--model lgbm|sklearn|xgb] [--requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import requests

warnings.filterwarnings("ignore")
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(kind: str):
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(5000, 20)), columns=[f"f{i}" for i in range(20)])
    y = (X.f0 + X.f1 * X.f2 > 0).astype(int)
    if kind == "lgbm":
        import lightgbm

        return lightgbm.LGBMClassifier(n_estimators=150, verbose=-1).fit(X, y), X, "lightgbm"
    if kind == "xgb":
        import xgboost

        return xgboost.XGBClassifier(n_estimators=150, max_depth=6).fit(X, y), X, "xgboost"
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(100, max_depth=12, random_state=0).fit(X, y), X, "sklearn"


def _start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    # mlflow models serve execs `uvicorn` by name: the venv's bin must be on PATH.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _measure(port: int, body: bytes, n: int) -> tuple[float, float, float]:
    url = f"http://127.0.0.1:{port}/invocations"
    headers = {"Content-Type": "application/json"}
    session = requests.Session()
    for _ in range(min(20, n)):
        session.post(url, data=body, headers=headers).raise_for_status()
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        r = session.post(url, data=body, headers=headers)
        lat.append(time.perf_counter() - t)
        r.raise_for_status()
    total = time.perf_counter() - start
    lat.sort()
    return n / total, statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lgbm", choices=["lgbm", "xgb", "sklearn"])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()

    import mlflow

    import mlflow_safeflavor as sf

    model, X, flavor = _model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    sf.save_model(model, tmp / "ours", input_example=X[:5])
    builtin = getattr(mlflow, flavor)
    kwargs = {"skops_trusted_types": ["sklearn.tree._tree.Tree"]} if flavor == "sklearn" else {}
    builtin.save_model(model, str(tmp / "builtin"), input_example=X[:5], **kwargs)

    bodies = {
        1: json.dumps({"dataframe_split": X[:1].to_dict(orient="split")}).encode(),
        1000: json.dumps({"dataframe_split": X[:1000].to_dict(orient="split")}).encode(),
    }
    env_cmd = [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local", "--host", "127.0.0.1"]
    servers = {
        "builtin (mlflow models serve)": lambda p: env_cmd + ["-m", str(tmp / "builtin"), "--port", str(p)],
        "safeflavor (mlflow models serve)": lambda p: env_cmd + ["-m", str(tmp / "ours"), "--port", str(p)],
        "safeflavor (hardened serve)": lambda p: [str(BIN / "mlflow-safeflavor"), "serve", str(tmp / "ours"), "--port", str(p)],
    }
    results: dict[str, dict[int, tuple[float, float, float]]] = {}
    for name, cmd in servers.items():
        port = _free_port()
        print(f"starting {name} ...", file=sys.stderr)
        proc = _start(cmd(port), port, tmp / f"{port}.log")
        try:
            results[name] = {rows: _measure(port, body, args.requests if rows == 1 else max(50, args.requests // 4))
                             for rows, body in bodies.items()}
        finally:
            _stop(proc)

    base = results["builtin (mlflow models serve)"]
    print(f"Model: {type(model).__name__} ({flavor}); sequential requests from one client, one server worker.\n")
    print("| server | rows/request | requests/s | p50 | p99 | throughput vs builtin |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, per_rows in results.items():
        for rows, (rps, p50, p99) in per_rows.items():
            print(f"| {name} | {rows} | {rps:.1f} | {p50 * 1e3:.2f} ms | {p99 * 1e3:.2f} ms | {rps / base[rows][0]:.2f}× |")
    print(f"\nload average: {os.getloadavg()[0]:.1f} (2 cores)")


if __name__ == "__main__":
    main()
