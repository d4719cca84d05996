"""ONNX export benchmark (not a test): native vs ONNX vs ``auto`` vs MLflow's built-in flavor.

Per model, in one process, with the contenders' repetitions interleaved (round-robin), default
arguments unless a row says otherwise:

* save time: ``save_model`` with default arguments (the checkpoint only), the library's own save
  (``pickle.dump`` for scikit-learn, ``save_model`` of the booster for the others) and
  ``onnx=True`` (conversion, agreement check and the crossover timing);
* predict latency, p50 and p99, for 1, 100 and 10,000 rows, through each pyfunc implementation
  (``PyFuncModel._model_impl.predict``): ours with ``params={"backend": "native"}``, ``"onnx"``
  and ``"auto"`` (routed by the recorded crossover), and ``mlflow.<flavor>``; for 1 row also
  through the full ``PyFuncModel.predict`` (MLflow's schema enforcement included) and the
  library's own ``model.predict``;
* pyfunc load time (median) and agreement on 20,000 fresh rows.

Then servers (``--no-serve`` skips them) for ``rf``: the built-in flavor under ``mlflow models
serve``; ``mlflow-safeflavor serve`` on the model saved with ``onnx=True``; and ``mlflow-safeflavor
serve --backend auto`` on the model saved with default arguments, started twice on an empty cache
(the first start derives the export, the second finds it cached): start-up seconds and sequential
single-row latency.

Targets (issue 16): default save ≤ 1.5× the library's save + 50 ms; ``scaled`` =
``make_pipeline(StandardScaler(), RandomForestClassifier(200))`` agrees with ``onnx=True`` and its
one-row ``PyFuncModel.predict`` is ≥ 10× faster than scikit-learn's ``predict`` with identical labels
on 20k rows; ``auto`` ≥ 0.95× ``native`` at 10k rows and never slower than ``onnx`` at one row; the
derived export serves one row as fast as a saved one.

    .venv/bin/python benchmarks/bench_onnx.py [--quick] [--models rf,xgb,lgbm,cb,pipe,scaled] [--no-serve]
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
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

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

    def scaled() -> Bench:
        m = make_pipeline(StandardScaler(), RandomForestClassifier(N_TREES, n_jobs=-1, random_state=0)).fit(Xn, y)
        m[-1].n_jobs = None
        return Bench("scaled", f"make_pipeline(StandardScaler(), RandomForestClassifier({N_TREES}))", m, Xn, "sklearn",
                     skops_kwargs(m))

    makers: dict[str, Callable[[], Bench]] = {"rf": rf, "xgb": xgbm, "lgbm": lgbm, "cb": cbm, "pipe": pipe,
                                              "scaled": scaled}
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


def raw_save(model: Any, path: Path) -> None:
    """The library's own save: pickle for scikit-learn, the booster's native format for the others."""
    import pickle

    top = type(model).__module__.split(".", 1)[0]
    if top == "xgboost":
        model.save_model(str(path) + ".ubj")
    elif top == "lightgbm":
        model.booster_.save_model(str(path) + ".txt")
    elif top == "catboost":
        model.save_model(str(path) + ".cbm")
    else:
        with open(str(path) + ".pkl", "wb") as f:
            pickle.dump(model, f, protocol=5)


def run_one(b: Bench, root: Path, cfg: argparse.Namespace) -> dict[str, Any]:
    import mlflow.pyfunc

    import mlflow_safeflavor as sf

    res: dict[str, Any] = {"key": b.key, "label": b.label}
    example = b.X.iloc[:5]
    ours = root / f"{b.key}-ours"
    t0 = time.perf_counter()
    sf.save_model(b.model, ours, input_example=example, onnx=True)
    first_save = time.perf_counter() - t0
    # The case as written: onnx=True and otherwise default arguments, so no signature and
    # no schema enforcement by MLflow on each call.
    # A pipeline that selects columns by name needs the example (its column types); n/a then.
    plain_onnx: Path | None = root / f"{b.key}-ours-onnx-only"
    try:
        sf.save_model(b.model, plain_onnx, onnx=True)
    except sf.UnsupportedModelError:
        plain_onnx = None
    counter = iter(range(10**6))
    saves = interleaved({
        "default": lambda: sf.save_model(b.model, root / f"{b.key}-default-{next(counter)}", input_example=example),
        "bare": lambda: sf.save_model(b.model, root / f"{b.key}-bare-{next(counter)}"),
        "raw": lambda: raw_save(b.model, root / f"{b.key}-raw-{next(counter)}"),
    }, cfg.save_reps, 60)
    t0 = time.perf_counter()
    if not cfg.quick:  # a second export save, without the worker's start-up
        sf.save_model(b.model, root / f"{b.key}-onnx-again", input_example=example, onnx=True)
    res["save"] = {**{k: statistics.median(v) for k, v in saves.items()},
                   "onnx": first_save if cfg.quick else time.perf_counter() - t0}
    res["first_save"] = first_save
    res["plain_dir"] = str(root / f"{b.key}-default-0")
    rec = __import__("yaml").safe_load((ours / "MLmodel").read_text())["flavors"]["safeflavor"]["onnx"]
    res["agreement"] = {"sample": rec["sample_size"], "max_abs_diff": rec["max_abs_diff"]}
    res["crossover"] = rec.get("crossover_rows")

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
    pf_plain = mlflow.pyfunc.load_model(str(plain_onnx)) if plain_onnx is not None else None
    pb = mlflow.pyfunc.load_model(str(builtin_dir))
    impl, bimpl = pf._model_impl, pb._model_impl
    big = _data(20_000, 1)[0][list(b.X.columns)]
    want = np.asarray(b.model.predict(big))
    got = np.asarray(impl.predict(big, params={"backend": "onnx"}))
    res["labels_identical_20k"] = bool(np.array_equal(got, want))
    p_want = b.model.predict_proba(big)
    p_got = np.asarray(impl.predict(big, params={"backend": "onnx", "predict_method": "predict_proba"}))
    res["proba_max_diff_20k"] = float(np.abs(p_got - p_want).max())

    res["predict"] = {}
    for rows, reps in ((1, cfg.reps1), (100, cfg.reps100), (10_000, cfg.reps10k)):
        X = big.iloc[:rows]
        gc.collect()
        t = interleaved({
            "native": lambda: impl.predict(X, params={"backend": "native"}),
            "onnx": lambda: impl.predict(X, params={"backend": "onnx"}),
            "auto": lambda: impl.predict(X),
            "builtin": lambda: bimpl.predict(X),
        }, reps, cfg.budget)
        res["predict"][rows] = {k: (pct(v, 0.5), pct(v, 0.99), len(v)) for k, v in t.items()}
    # The routing targets, two contenders each so that their calls alternate closely.
    X10k = big.iloc[:10_000]
    t = interleaved({"native": lambda: impl.predict(X10k, params={"backend": "native"}),
                     "auto": lambda: impl.predict(X10k)}, cfg.reps_target, 4 * cfg.budget)
    res["target10k"] = {k: statistics.median(v) for k, v in t.items()}
    X1 = big.iloc[:1]
    t = interleaved({"onnx": lambda: impl.predict(X1, params={"backend": "onnx"}), "auto": lambda: impl.predict(X1)},
                    cfg.reps1, cfg.budget)
    res["target1"] = {k: statistics.median(v) for k, v in t.items()}
    contenders = {
        "native": lambda: pf.predict(X1, params={"backend": "native"}),
        "onnx": lambda: pf.predict(X1, params={"backend": "onnx"}),
        "auto": lambda: pf.predict(X1),
        "auto_nosig": lambda: pf_plain.predict(X1),
        "builtin": lambda: pb.predict(X1),
        "library": lambda: b.model.predict(X1),
    }
    if pf_plain is None:
        del contenders["auto_nosig"]
    t = interleaved(contenders, cfg.reps1, cfg.budget)
    res["pyfunc1"] = {k: (pct(v, 0.5), pct(v, 0.99), len(v)) for k, v in t.items()}
    res["dirs"] = {"ours": str(ours), "builtin": str(builtin_dir)}
    return res


# ------------------------------------------------------------------------------------ serving


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_bench(res: dict[str, Any], X1: pd.DataFrame, n: int, cache: Path) -> dict[str, tuple[float, ...]]:
    """{server: (requests/s, p50, p99, start-up seconds)} for single-row requests, round-robin over the servers."""
    import requests

    body = json.dumps({"dataframe_split": X1.to_dict(orient="split")}).encode()
    out = {}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    base_env["PATH"] = f"{BIN}{os.pathsep}{base_env.get('PATH', '')}"
    base_env["MLFLOW_SAFEFLAVOR_CACHE_DIR"] = str(cache)
    mlflow_serve = [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local", "-m"]
    hardened = [str(BIN / "mlflow-safeflavor"), "serve"]
    auto = ["--backend", "auto"]
    plans = {
        "built-in flavor, `mlflow models serve`": (mlflow_serve, res["dirs"]["builtin"], []),
        "ours, saved with onnx=True": (hardened, res["dirs"]["ours"], []),
        "ours, saved with defaults, `--backend auto`, first start (derives)": (hardened, res["plain_dir"], auto),
        "ours, saved with defaults, `--backend auto`, second start (cached)": (hardened, res["plain_dir"], auto),
    }
    shutil.rmtree(cache, ignore_errors=True)
    procs, started = {}, {}
    session = requests.Session()
    headers = {"Content-Type": "application/json"}
    try:
        # Started one after another (the second auto start must find the first one's cache entry),
        # then measured together: requests go round-robin, so load on the machine hits all alike.
        for name, (cmd, model_dir, extra) in plans.items():
            port = _free_port()
            log = open(Path(model_dir).parent / f"serve-{port}.log", "w")
            t0 = time.perf_counter()
            proc = subprocess.Popen([*cmd, model_dir, *extra, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                                    stderr=subprocess.STDOUT, env=base_env, start_new_session=True)
            procs[name] = (proc, f"http://127.0.0.1:{port}", log)
            deadline = time.time() + 600
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server {name} did not start")
                time.sleep(0.1)
            started[name] = time.perf_counter() - t0
        for _, url, _ in procs.values():
            for _ in range(30):
                session.post(f"{url}/invocations", data=body, headers=headers).raise_for_status()
        lat: dict[str, list[float]] = {name: [] for name in procs}
        names = list(procs)
        for i in range(n):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                session.post(f"{procs[name][1]}/invocations", data=body, headers=headers).raise_for_status()
                lat[name].append(time.perf_counter() - t0)
        for name, xs in lat.items():
            out[name] = (len(xs) / sum(xs), pct(xs, 0.5), pct(xs, 0.99), started[name])
    finally:
        for proc, _, log in procs.values():
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


def nosig(r: dict[str, Any]) -> str:
    t = r["pyfunc1"]
    if "auto_nosig" not in t:
        return "n/a (selects columns by name: needs an input_example)"
    return ratio(t["auto_nosig"][0], t["library"][0])


def report(results: list[dict[str, Any]], serving: dict[str, dict]) -> str:
    lines = []
    w = lines.append
    w("### Targets (issue 16)\n")
    w("| model | default save (no input example) | library save | ≤ 1.5×library + 50 ms | default save with "
      "`input_example` (+ signature inference, example file) | auto ÷ native time, 10k rows | "
      "auto ÷ onnx time, 1 row | crossover rows | labels identical, 20k rows | 1-row `PyFuncModel.predict` (auto) vs the library's `predict`: "
      "saved with `onnx=True` | … and an `input_example` (MLflow's schema enforcement per call) |")
    w("|---|---:|---:|:---:|---:|---:|---:|---:|:---:|---:|---:|")
    for r in results:
        sv = r["save"]
        ok = sv["bare"] <= 1.5 * sv["raw"] + 0.05
        w(f"| {r['key']} | {ms(sv['bare'])} | {ms(sv['raw'])} | {'met' if ok else '**missed**'} | {ms(sv['default'])} | "
          f"{r['target10k']['auto'] / r['target10k']['native']:.2f} | {r['target1']['auto'] / r['target1']['onnx']:.2f} | {r['crossover']} | "
          f"{'yes' if r['labels_identical_20k'] else '**NO**'} | {nosig(r)} | "
          f"{ratio(r['pyfunc1']['auto'][0], r['pyfunc1']['library'][0])} |")
    w("\n### Predict latency through the pyfunc implementation (ms, p50 / p99)\n")
    w("| model | rows | native (ours) | ONNX (ours) | auto (ours) | built-in flavor | auto vs built-in | auto vs native |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for rows, t in r["predict"].items():
            n, o, a, b = t["native"], t["onnx"], t["auto"], t["builtin"]
            w(f"| {r['key']} | {rows:,} | {ms(n[0])} / {ms(n[1])} | {ms(o[0])} / {ms(o[1])} | {ms(a[0])} / {ms(a[1])} | "
              f"{ms(b[0])} / {ms(b[1])} | {ratio(a[0], b[0])} | {ratio(a[0], n[0])} |")
    w("\n### One row through the full `PyFuncModel.predict` (MLflow's schema enforcement included; ms p50 / p99)\n")
    w("| model | native (ours) | ONNX (ours) | auto (ours) | auto (ours, saved with onnx=True only: no signature) | built-in flavor | the library's `predict` | auto vs built-in |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        t = r["pyfunc1"]
        cells = " | ".join(f"{ms(t[k][0])} / {ms(t[k][1])}" if k in t else "n/a"
                           for k in ("native", "onnx", "auto", "auto_nosig", "builtin", "library"))
        w(f"| {r['key']} | {cells} | {ratio(t['auto'][0], t['builtin'][0])} |")
    w("\n### Load and save (median ms)\n")
    w("| model | load native | load ONNX | load built-in | save, defaults + input_example | save, library | save, onnx=True | "
      "first save (onnx=True; the first model also starts the worker) | agreement sample | largest diff (proba) | 20k max proba diff |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ld, sv = r["load"], r["save"]
        w(f"| {r['key']} | {ms(ld['native'])} | {ms(ld['onnx'])} | {ms(ld['builtin'])} | {ms(sv['default'])} | "
          f"{ms(sv['raw'])} | {ms(sv['onnx'])} | {ms(r['first_save'])} | {r['agreement']['sample']} | "
          f"{r['agreement']['max_abs_diff'].get('predict_proba', 0):.1e} | {r['proba_max_diff_20k']:.1e} |")
    if serving:
        w("\n### Scoring servers, single-row requests (one worker each, one client, requests round-robin over the servers)\n")
        w("| model | server | start-up s (launch to /ping) | requests/s | p50 ms | p99 ms | p50 vs built-in |")
        w("|---|---|---:|---:|---:|---:|---:|")
        for key, per in serving.items():
            base = next(iter(per.values()))[1]
            for name, (rps, p50, p99, startup) in per.items():
                w(f"| {key} | {name} | {startup:.1f} | {rps:.0f} | {ms(p50)} | {ms(p99)} | {ratio(p50, base)} |")
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
    ap.add_argument("--models", help="subset of rf,xgb,lgbm,cb,pipe,scaled")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--json")
    cfg = ap.parse_args()
    cfg.reps1, cfg.reps100, cfg.reps10k, cfg.load_reps, cfg.budget, cfg.requests, cfg.save_reps, cfg.reps_target = (
        (200, 50, 5, 3, 10.0, 300, 3, 15) if cfg.quick else (400, 200, 15, 7, 25.0, 500, 5, 31))
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
                if r["key"] == "rf":
                    serving[r["key"]] = serve_bench(r, b.X.iloc[:1], cfg.requests, root / "cache")
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
