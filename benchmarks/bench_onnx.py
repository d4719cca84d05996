"""ONNX export benchmark (not a test): native vs ONNX vs MLflow's built-in flavor.

Per model, in one process, with the contenders' repetitions interleaved (round-robin):

* predict latency, p50 and p99, for 1, 100 and 10,000 rows, through each pyfunc implementation
  (``PyFuncModel._model_impl.predict``: the backend's own cost) and, for 1 row, through the full
  ``PyFuncModel.predict`` (MLflow's schema enforcement included, as a scoring server runs it);
  contenders: ours with ``params={"backend": "native"}``, ours with ``{"backend": "onnx"}``, and
  ``mlflow.<flavor>`` loaded by ``mlflow.pyfunc.load_model``;
* pyfunc load time (median): ``load_pyfunc(backend="native")``, ``load_pyfunc(backend="onnx")``
  (ONNX checks + session build included), ``mlflow.pyfunc.load_model`` of the built-in model;
* save time with and without the export (the export's cost at save).

Then ``mlflow models serve --env-manager local`` (one worker) for the tree-ensemble models, three
servers each: built-in flavor, ours with the export (default), ours with
``MLFLOW_SAFEFLAVOR_BACKEND=native``; sequential single-row requests from one client.

Target (issue 8): single-row serving latency ≥ 10× lower than MLflow's built-in sklearn flavor
for tree ensembles.

    .venv/bin/python benchmarks/bench_onnx.py [--quick] [--models rf,xgb,lgbm,cb,pipe] [--no-serve]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
BIN = Path(sys.executable).parent
N_TRAIN, N_FEATURES, N_TREES = 20_000, 30, 200


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, N_FEATURES)), columns=[f"f{i}" for i in range(N_FEATURES)])
    X["color"] = rng.choice(["red", "green", "blue", "grey"], size=n)
    y = ((X["f0"] + 0.5 * X["f1"] - X["f2"] + (X["color"] == "red") + rng.normal(scale=0.5, size=n)) > 0.5)
    return X, y.astype(int).to_numpy()


@dataclass
class Bench:
    key: str
    label: str
    model: Any
    X: pd.DataFrame
    builtin: str  # mlflow flavor module name
    builtin_kwargs: dict


def build(wanted: set[str] | None) -> list[Bench]:
    import catboost as cb
    import lightgbm as lgb
    import skops.io as sio
    import xgboost as xgb
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    X, y = _data(N_TRAIN, 0)
    num = [f"f{i}" for i in range(N_FEATURES)]
    Xn = X[num]

    def skops_kwargs(m: Any) -> dict:
        return {"skops_trusted_types": sio.get_untrusted_types(data=sio.dumps(m))}

    def rf() -> Bench:
        m = RandomForestClassifier(N_TREES, n_jobs=-1, random_state=0).fit(Xn, y)
        m.n_jobs = None  # the default predict path
        return Bench("rf", f"RandomForestClassifier ({N_TREES} trees)", m, Xn, "sklearn", skops_kwargs(m))

    def pipe() -> Bench:
        ct = ColumnTransformer([("num", "passthrough", num), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])
        m = Pipeline([("ct", ct), ("rf", RandomForestClassifier(N_TREES, n_jobs=-1, random_state=0))]).fit(X, y)
        m[-1].n_jobs = None
        return Bench("pipe", f"Pipeline(ColumnTransformer(passthrough, OneHotEncoder) + RandomForest {N_TREES})", m, X,
                     "sklearn", skops_kwargs(m))

    def xgbm() -> Bench:
        m = xgb.XGBClassifier(n_estimators=N_TREES, max_depth=6, random_state=0).fit(Xn, y)
        return Bench("xgb", f"XGBClassifier ({N_TREES} trees)", m, Xn, "xgboost", {})

    def lgbm() -> Bench:
        m = lgb.LGBMClassifier(n_estimators=N_TREES, verbose=-1, random_state=0).fit(Xn, y)
        return Bench("lgbm", f"LGBMClassifier ({N_TREES} trees)", m, Xn, "lightgbm", {})

    def cbm() -> Bench:
        m = cb.CatBoostClassifier(iterations=N_TREES, verbose=0, allow_writing_files=False, random_seed=0).fit(Xn, y)
        return Bench("cb", f"CatBoostClassifier ({N_TREES} iterations)", m, Xn, "catboost", {})

    makers: dict[str, Callable[[], Bench]] = {"rf": rf, "xgb": xgbm, "lgbm": lgbm, "cb": cbm, "pipe": pipe}
    return [make() for key, make in makers.items() if wanted is None or key in wanted]


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, budget: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    start = time.perf_counter()
    for r in range(reps):
        if r >= 5 and time.perf_counter() - start > budget:
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_one(b: Bench, root: Path, cfg: argparse.Namespace) -> dict[str, Any]:
    import mlflow.pyfunc

    import mlflow_safeflavor as sf

    res: dict[str, Any] = {"key": b.key, "label": b.label}
    example = b.X.iloc[:5]
    ours = root / f"{b.key}-ours"
    t0 = time.perf_counter()
    sf.save_model(b.model, ours, input_example=example, onnx=True)
    first_save = time.perf_counter() - t0
    saves = {"onnx": [], "native": []}
    for i in range(3):
        for mode in ("onnx", "native"):
            t0 = time.perf_counter()
            sf.save_model(b.model, root / f"{b.key}-save-{mode}-{i}", input_example=example, onnx=mode == "onnx")
            saves[mode].append(time.perf_counter() - t0)
    res["save"] = {k: statistics.median(v) for k, v in saves.items()}
    res["first_save"] = first_save
    rec = __import__("yaml").safe_load((ours / "MLmodel").read_text())["flavors"]["safeflavor"]["onnx"]
    res["agreement"] = {"sample": rec["sample_size"], "max_abs_diff": rec["max_abs_diff"]}

    builtin_dir = root / f"{b.key}-builtin"
    flavor = getattr(__import__(f"mlflow.{b.builtin}").__dict__[b.builtin], "save_model")
    flavor(b.model, str(builtin_dir), input_example=example, pip_requirements=["mlflow"], **b.builtin_kwargs)

    loads = interleaved({
        "native": lambda: sf.load_pyfunc(str(ours), backend="native"),
        "onnx": lambda: sf.load_pyfunc(str(ours), backend="onnx"),
        "builtin": lambda: mlflow.pyfunc.load_model(str(builtin_dir)),
    }, cfg.load_reps, 60)
    res["load"] = {k: statistics.median(v) for k, v in loads.items()}

    pf = sf.load_pyfunc(str(ours))
    pb = mlflow.pyfunc.load_model(str(builtin_dir))
    impl, bimpl = pf._model_impl, pb._model_impl
    big = _data(10_000, 1)[0][list(b.X.columns)]
    want = np.asarray(b.model.predict(big))
    got = np.asarray(impl.predict(big, params={"backend": "onnx"}))
    res["labels_identical_10k"] = bool(np.array_equal(got, want))
    p_want = b.model.predict_proba(big)
    p_got = np.asarray(impl.predict(big, params={"backend": "onnx", "predict_method": "predict_proba"}))
    res["proba_max_diff_10k"] = float(np.abs(p_got - p_want).max())

    res["predict"] = {}
    for rows, reps in ((1, cfg.reps1), (100, cfg.reps100), (10_000, cfg.reps10k)):
        X = big.iloc[:rows]
        gc.collect()
        t = interleaved({
            "native": lambda: impl.predict(X, params={"backend": "native"}),
            "onnx": lambda: impl.predict(X, params={"backend": "onnx"}),
            "builtin": lambda: bimpl.predict(X),
        }, reps, cfg.budget)
        res["predict"][rows] = {k: (pct(v, 0.5), pct(v, 0.99), len(v)) for k, v in t.items()}
    X1 = big.iloc[:1]
    t = interleaved({
        "native": lambda: pf.predict(X1, params={"backend": "native"}),
        "onnx": lambda: pf.predict(X1, params={"backend": "onnx"}),
        "builtin": lambda: pb.predict(X1),
    }, cfg.reps1, cfg.budget)
    res["pyfunc1"] = {k: (pct(v, 0.5), pct(v, 0.99), len(v)) for k, v in t.items()}
    res["dirs"] = {"ours": str(ours), "builtin": str(builtin_dir)}
    return res


# ------------------------------------------------------------------------------------ serving


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_bench(res: dict[str, Any], X1: pd.DataFrame, n: int) -> dict[str, tuple[float, float, float]]:
    import requests

    body = json.dumps({"dataframe_split": X1.to_dict(orient="split")}).encode()
    out = {}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    base_env["PATH"] = f"{BIN}{os.pathsep}{base_env.get('PATH', '')}"
    mlflow_serve = [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local", "-m"]
    hardened = [str(BIN / "mlflow-safeflavor"), "serve"]
    plans = {
        "builtin": (mlflow_serve, res["dirs"]["builtin"], {}),
        "ours, native": (mlflow_serve, res["dirs"]["ours"], {"MLFLOW_SAFEFLAVOR_BACKEND": "native"}),
        "ours, onnx (default)": (mlflow_serve, res["dirs"]["ours"], {}),
        "ours, onnx, `mlflow-safeflavor serve`": (hardened, res["dirs"]["ours"], {}),
    }
    for name, (cmd, model_dir, extra) in plans.items():
        port = _free_port()
        log = open(Path(model_dir).parent / f"serve-{port}.log", "w")
        proc = subprocess.Popen([*cmd, model_dir, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env={**base_env, **extra}, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 300
            while True:
                try:
                    if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server {name} did not start")
                time.sleep(0.5)
            session = requests.Session()
            headers = {"Content-Type": "application/json"}
            for _ in range(30):
                session.post(f"{url}/invocations", data=body, headers=headers).raise_for_status()
            lat = []
            start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                session.post(f"{url}/invocations", data=body, headers=headers).raise_for_status()
                lat.append(time.perf_counter() - t0)
            total = time.perf_counter() - start
            out[name] = (n / total, pct(lat, 0.5), pct(lat, 0.99))
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
            log.close()
    return out


# ------------------------------------------------------------------------------------ report


def ms(x: float) -> str:
    v = x * 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def ratio(a: float, b: float) -> str:
    r = b / a if a > 0 else float("nan")
    return f"{r:.0f}×" if r >= 10 else f"{r:.1f}×"


def report(results: list[dict[str, Any]], serving: dict[str, dict]) -> str:
    lines = []
    w = lines.append
    w("### Predict latency through the pyfunc implementation (ms, p50 / p99; speed-up = builtin p50 ÷ ONNX p50)\n")
    w("| model | rows | native (ours) | ONNX (ours) | built-in flavor | ONNX vs built-in | ONNX vs native |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for rows, t in r["predict"].items():
            n, o, b = t["native"], t["onnx"], t["builtin"]
            w(f"| {r['key']} | {rows:,} | {ms(n[0])} / {ms(n[1])} | {ms(o[0])} / {ms(o[1])} | {ms(b[0])} / {ms(b[1])} | "
              f"{ratio(o[0], b[0])} | {ratio(o[0], n[0])} |")
    w("\n### One row through the full `PyFuncModel.predict` (MLflow's schema enforcement included; ms p50 / p99)\n")
    w("| model | native (ours) | ONNX (ours) | built-in flavor | ONNX vs built-in |")
    w("|---|---:|---:|---:|---:|")
    for r in results:
        n, o, b = r["pyfunc1"]["native"], r["pyfunc1"]["onnx"], r["pyfunc1"]["builtin"]
        w(f"| {r['key']} | {ms(n[0])} / {ms(n[1])} | {ms(o[0])} / {ms(o[1])} | {ms(b[0])} / {ms(b[1])} | {ratio(o[0], b[0])} |")
    w("\n### Load and save (median ms)\n")
    w("| model | load native | load ONNX | load built-in | ONNX ÷ built-in | save without export | save with export | "
      "first save (for the first model: + worker start-up) | agreement sample | largest diff (proba) | 10k labels identical | 10k max proba diff |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    for r in results:
        ld, sv = r["load"], r["save"]
        w(f"| {r['key']} | {ms(ld['native'])} | {ms(ld['onnx'])} | {ms(ld['builtin'])} | {ld['onnx'] / ld['builtin']:.2f}× | "
          f"{ms(sv['native'])} | {ms(sv['onnx'])} | {ms(r['first_save'])} | {r['agreement']['sample']} | "
          f"{r['agreement']['max_abs_diff'].get('predict_proba', 0):.1e} | {'yes' if r['labels_identical_10k'] else '**NO**'} | "
          f"{r['proba_max_diff_10k']:.1e} |")
    if serving:
        w("\n### Scoring servers, single-row requests (one worker, one sequential client)\n")
        w("| model | server | requests/s | p50 ms | p99 ms | p50 vs built-in |")
        w("|---|---|---:|---:|---:|---:|")
        for key, per in serving.items():
            base = per["builtin"][1]
            for name, (rps, p50, p99) in per.items():
                w(f"| {key} | {name} | {rps:.0f} | {ms(p50)} | {ms(p99)} | {ratio(p50, base)} |")
    w("\nModels: " + "; ".join(f"`{r['key']}` = {r['label']}" for r in results)
      + f". Trained on {N_TRAIN:,} rows × {N_FEATURES} numeric features (+ one string column for `pipe`).")
    return "\n".join(lines)


def machine() -> str:
    import mlflow
    import onnxruntime
    import sklearn

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}; "
            f"mlflow {mlflow.__version__}, scikit-learn {sklearn.__version__}, onnxruntime {onnxruntime.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", help="subset of rf,xgb,lgbm,cb,pipe")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--json")
    cfg = ap.parse_args()
    cfg.reps1, cfg.reps100, cfg.reps10k, cfg.load_reps, cfg.budget, cfg.requests = (
        (100, 50, 5, 3, 10.0, 200) if cfg.quick else (400, 200, 15, 7, 25.0, 500))
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    print("# mlflow-safeflavor ONNX benchmark\n")
    print(f"Machine: {machine()}\n")
    t0 = time.perf_counter()
    benches = build(set(cfg.models.split(",")) if cfg.models else None)
    print(f"(trained {len(benches)} models in {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    root = Path(tempfile.mkdtemp(prefix="safeflavor-bench-onnx-"))
    results, serving = [], {}
    try:
        for b in benches:
            t0 = time.perf_counter()
            results.append(run_one(b, root, cfg))
            print(f"({b.key}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if not cfg.no_serve:
            for r, b in zip(results, benches):
                if r["key"] in ("rf", "pipe"):
                    serving[r["key"]] = serve_bench(r, b.X.iloc[:1], cfg.requests)
                    print(f"(served {r['key']})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(results, serving))
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s; load average (1 min) at start {load0:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}.")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"results": results, "serving": serving}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
