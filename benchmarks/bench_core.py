"""Core performance benchmark: mlflow-safeflavor vs MLflow's built-in flavors vs the raw library.

For each model this measures, in one process and with the repetitions of the three contenders
interleaved (round-robin, rotating order), the median of:

* save time   — ``mlflow_safeflavor.save_model(model, path)`` vs the built-in flavor's
                ``save_model(model, path)`` vs the raw library call
                (``skops.io.dump`` / ``model.save_model`` / ``booster.save_model``);
* load time   — ``mlflow_safeflavor.load_model(path)`` vs ``mlflow.<flavor>.load_model(path)``
                vs the raw library call (``skops.io.load`` / ``Cls().load_model`` /
                ``lightgbm.Booster(model_file=...)``);
* predict     — one row and 10k rows: raw ``model.predict(X)`` vs our pyfunc wrapper alone
                (``PyFuncModel._model_impl.predict``) vs the full ``PyFuncModel.predict`` (MLflow's
                schema enforcement included) for ours and for the built-in flavor;
* artifact size — bytes of the model directory (ours, built-in) and of the raw file.

All contenders are called with default arguments. Two exceptions, both forced: MLflow 3.17's
``mlflow.sklearn.save_model`` defaults to skops and *raises* for any tree model (skops >= 0.16
no longer trusts ``sklearn.tree._tree.Tree`` / HGB ``TreePredictor``), so the built-in sklearn
baseline gets ``skops_trusted_types=<what skops reports>`` — the one argument it needs; and the
raw ``skops.io.load`` gets the same list (computed once, outside the timer).

The pyfunc predict figures use a second copy of each model saved with ``input_example`` (so the
MLmodel carries a signature and ``PyFuncModel.predict`` does its usual schema enforcement, as for
any logged model). Built-in ``save_model`` runs ``infer_pip_requirements`` (a subprocess, 4-10 s),
so it gets fewer repetitions than the other contenders.

Usage::

    python benchmarks/bench_core.py            # full run (~4 min on an idle 2-core box, est.; longer under load)
    python benchmarks/bench_core.py --quick    # fewer reps (~1-2 min)
    python benchmarks/bench_core.py --models rf,xgb --json out.json
    python benchmarks/bench_core.py --quick --profile   # + cProfile of our save/load per model

scikit-learn models also get a ``pickle`` contender (``pickle.dump``/``pickle.load`` of the same
object to/from a file) for issue 15's targets: tree models (rf, et, hgb, pipe_rf) load ≤ 2×pickle
+ 5 ms and save ≤ 1.5×pickle + 50 ms; pipelines without trees (pipe_lr) load ≤ 1.2×raw skops +
3 ms. ``--memory`` adds the peak-RSS row (RandomForest of 300 trees on 60k×30 by default): each
load runs in a fresh process, which resets its peak RSS (``/proc/self/clear_refs``) just before
the load, so the figure is the growth during that one load.

Targets (from the performance issue) are judged per model:
save <= 1.5 x raw save + 50 ms; load <= 1.2 x raw load + 3 ms for the skops models (XGBoost,
LightGBM, CatBoost: <= 1.2 x raw load + 2 ms, the fixed cost of reading MLmodel, checking digests
and validating the native file);
pyfunc 1-row predict <= raw + 0.2 ms (judged on our wrapper's own overhead; the full PyFuncModel
figures are shown next to it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import pickle
import platform
import subprocess
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
for _name in ("mlflow", "mlflow_safeflavor", "skops"):
    logging.getLogger(_name).setLevel(logging.ERROR)

N_TRAIN = 5000
N_FEATURES = 20
N_BIG = 10_000
N_TREES = 150
# scikit-learn models judged against pickle (issue 15); the other sklearn ones against raw skops.
TREE_KEYS = ("rf", "et", "hgb", "pipe_rf")
# Native GBDT models: load judged as <= 1.2 x raw + 2 ms (issue 15).
GBDT_LIBRARIES = ("xgboost", "lightgbm", "catboost")
GBDT_LOAD_SLACK_S = 0.002
SKOPS_LOAD_SLACK_S = 0.003


# ------------------------------------------------------------------------------------- models


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, N_FEATURES)), columns=[f"f{i}" for i in range(N_FEATURES)])
    X["color"] = np.where(X["f3"] > 0, "red", np.where(X["f4"] > 0, "green", "blue"))
    X["shape"] = rng.choice(list("abcdefgh"), size=n)
    y = ((X["f0"] + 0.5 * X["f1"] - X["f2"] + (X["shape"] < "d") + rng.normal(scale=0.5, size=n)) > 0.5)
    return X, y.astype(int).to_numpy()


@dataclass
class Bench:
    """One model and how to save/load it with each contender."""

    key: str
    label: str
    model: Any
    X: pd.DataFrame  # columns the model takes
    library: str  # sklearn | xgboost | lightgbm | catboost
    builtin: Any  # mlflow flavor module
    builtin_kwargs: dict[str, Any] = field(default_factory=dict)
    raw_save: Callable[[Any, str], None] = None  # type: ignore[assignment]
    raw_load: Callable[[str], Any] = None  # type: ignore[assignment]
    raw_file: str = "model"
    raw_desc: str = ""


def _numeric(X: pd.DataFrame) -> pd.DataFrame:
    return X[[f"f{i}" for i in range(N_FEATURES)]]


def build_models(wanted: set[str] | None) -> list[Bench]:
    import catboost as cb
    import lightgbm as lgb
    import mlflow.catboost
    import mlflow.lightgbm
    import mlflow.sklearn
    import mlflow.xgboost
    import skops.io as sio
    import xgboost as xgb
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = _data(N_TRAIN, seed=0)
    Xn = _numeric(X)
    num = list(Xn.columns)

    def skops_bench(key: str, label: str, model: Any, Xfit: pd.DataFrame) -> Bench:
        trusted = sio.get_untrusted_types(data=sio.dumps(model))
        return Bench(
            key, label, model, Xfit, "sklearn", mlflow.sklearn,
            builtin_kwargs={"skops_trusted_types": trusted} if trusted else {},
            raw_save=lambda m, p: sio.dump(m, p),
            raw_load=lambda p, t=trusted: sio.load(p, trusted=t),
            raw_file="model.skops",
            raw_desc="skops.io.dump / skops.io.load(trusted=<precomputed>)",
        )

    makers: dict[str, Callable[[], Bench]] = {}

    def rf() -> Bench:
        # Trained on both cores, then reset to the default n_jobs so predict is the default path.
        m = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(Xn, y)
        m.n_jobs = None
        return skops_bench("rf", "sklearn RandomForestClassifier (100 trees)", m, Xn)

    def et() -> Bench:
        m = ExtraTreesClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(Xn, y)
        m.n_jobs = None
        return skops_bench("et", "sklearn ExtraTreesClassifier (100 trees)", m, Xn)

    def pipe_rf() -> Bench:
        ct = ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color", "shape"])])
        m = Pipeline([("ct", ct), ("rf", RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0))]).fit(X, y)
        m.steps[-1][1].n_jobs = None
        return skops_bench("pipe_rf", "Pipeline(ColumnTransformer + RandomForestClassifier 100 trees)", m, X)

    def hgb() -> Bench:
        m = HistGradientBoostingClassifier(max_iter=N_TREES, early_stopping=False, random_state=0).fit(Xn, y)
        return skops_bench("hgb", f"sklearn HistGradientBoostingClassifier ({N_TREES} iters)", m, Xn)

    def xgbm() -> Bench:
        m = xgb.XGBClassifier(n_estimators=N_TREES, random_state=0).fit(Xn, y)

        def load(p: str) -> Any:
            out = xgb.XGBClassifier()
            out.load_model(p)
            return out

        return Bench(
            "xgb", f"XGBClassifier ({N_TREES} trees)", m, Xn, "xgboost", mlflow.xgboost,
            raw_save=lambda m, p: m.save_model(p), raw_load=load, raw_file="model.ubj",
            raw_desc="XGBClassifier.save_model(.ubj) / XGBClassifier().load_model",
        )

    def lgbm() -> Bench:
        m = lgb.LGBMClassifier(n_estimators=N_TREES, verbose=-1, random_state=0).fit(Xn, y)
        return Bench(
            "lgbm", f"LGBMClassifier ({N_TREES} trees)", m, Xn, "lightgbm", mlflow.lightgbm,
            raw_save=lambda m, p: m.booster_.save_model(p),
            raw_load=lambda p: lgb.Booster(model_file=p),
            raw_file="model.txt",
            raw_desc="booster_.save_model / lightgbm.Booster(model_file=)",
        )

    def cbm() -> Bench:
        m = cb.CatBoostClassifier(iterations=N_TREES, verbose=0, allow_writing_files=False, random_seed=0).fit(Xn, y)

        def load(p: str) -> Any:
            out = cb.CatBoostClassifier()
            out.load_model(p)
            return out

        return Bench(
            "cb", f"CatBoostClassifier ({N_TREES} iters)", m, Xn, "catboost", mlflow.catboost,
            raw_save=lambda m, p: m.save_model(p), raw_load=load, raw_file="model.cbm",
            raw_desc="save_model(.cbm) / CatBoostClassifier().load_model",
        )

    def pipe_lr() -> Bench:
        ct = ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color", "shape"])])
        m = Pipeline([("ct", ct), ("lr", LogisticRegression(max_iter=1000))]).fit(X, y)
        return skops_bench("pipe_lr", "Pipeline(ColumnTransformer + LogisticRegression)", m, X)

    def pipe_xgb() -> Bench:
        ct = ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color", "shape"])])
        m = Pipeline([("ct", ct), ("xgb", xgb.XGBClassifier(n_estimators=N_TREES, random_state=0))]).fit(X, y)
        return skops_bench("pipe_xgb", f"Pipeline(ColumnTransformer + XGBClassifier {N_TREES} trees)", m, X)

    makers.update(rf=rf, et=et, hgb=hgb, pipe_rf=pipe_rf, xgb=xgbm, lgbm=lgbm, cb=cbm, pipe_lr=pipe_lr, pipe_xgb=pipe_xgb)
    unknown = (wanted or set()) - set(makers)
    if unknown:
        raise SystemExit(f"unknown --models {sorted(unknown)}; choose from {sorted(makers)}")
    return [make() for key, make in makers.items() if wanted is None or key in wanted]


# ------------------------------------------------------------------------------------- timing


def interleaved(
    fns: dict[str, Callable[[], Any]],
    reps: dict[str, int],
    *,
    collect: bool = True,
    budget_s: float | None = None,
    min_reps: int = 0,
) -> dict[str, list[float]]:
    """Run each fn ``reps[name]`` times, round-robin with rotating order; return seconds per call.

    With ``budget_s``, stop after the round in which the budget ran out, once ``min_reps`` rounds
    are done (keeps a contended machine from stretching the run; the report prints the count).
    """
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(max(reps.values())):
        if budget_s is not None and r >= min_reps and time.perf_counter() - start > budget_s:
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r >= reps[name]:
                continue
            if collect:
                gc.collect()
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def dir_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class Paths:
    """Fresh, never-existing paths under one work directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def new(self, stem: str) -> str:
        self.n += 1
        return str(self.root / f"{stem}-{self.n}")


# ------------------------------------------------------------------------------------- benchmark


def run_one(b: Bench, paths: Paths, cfg: argparse.Namespace) -> dict[str, Any]:
    import mlflow.pyfunc
    import mlflow_safeflavor as sf

    res: dict[str, Any] = {"key": b.key, "label": b.label, "raw_desc": b.raw_desc}
    X1 = b.X.iloc[:1]
    Xbig = _data(N_BIG, seed=1)[0][list(b.X.columns)]
    example = b.X.iloc[:5]

    # Warm-up (untimed): first calls import codecs/flavors. These copies carry input_example, so
    # their MLmodel has a signature: they are the ones the pyfunc predict figures use. The
    # built-in copy gets pip_requirements to skip the 4-10 s inference (not timed anyway).
    ours_ex, builtin_ex = paths.new(f"{b.key}-ours-ex"), paths.new(f"{b.key}-builtin-ex")
    sf.save_model(b.model, ours_ex, input_example=example)
    b.builtin.save_model(b.model, builtin_ex, input_example=example, pip_requirements=["mlflow"], **b.builtin_kwargs)
    raw_warm = os.path.join(paths.new(f"{b.key}-raw-warm"), b.raw_file)
    os.makedirs(os.path.dirname(raw_warm))
    b.raw_save(b.model, raw_warm)
    sf.load_model(ours_ex), b.builtin.load_model(builtin_ex), b.raw_load(raw_warm)

    # ---- save (target paths made before timing; each call takes the next one)
    todo = {
        "ours": [paths.new(f"{b.key}-ours") for _ in range(cfg.save_reps)],
        "builtin": [paths.new(f"{b.key}-builtin") for _ in range(cfg.builtin_save_reps)],
        "raw": [os.path.join(paths.new(f"{b.key}-raw"), b.raw_file) for _ in range(cfg.save_reps)],
    }
    for raw_target in todo["raw"]:
        os.mkdir(os.path.dirname(raw_target))
    saved: dict[str, list[str]] = {"ours": [], "builtin": [], "raw": []}

    def save_ours() -> None:
        sf.save_model(b.model, todo["ours"][len(saved["ours"])])
        saved["ours"].append(todo["ours"][len(saved["ours"])])

    def save_builtin() -> None:
        b.builtin.save_model(b.model, todo["builtin"][len(saved["builtin"])], **b.builtin_kwargs)
        saved["builtin"].append(todo["builtin"][len(saved["builtin"])])

    def save_raw() -> None:
        b.raw_save(b.model, todo["raw"][len(saved["raw"])])
        saved["raw"].append(todo["raw"][len(saved["raw"])])

    pickled = b.library == "sklearn"
    save_fns = {"ours": save_ours, "builtin": save_builtin, "raw": save_raw}
    save_reps = {"ours": cfg.save_reps, "builtin": cfg.builtin_save_reps, "raw": cfg.save_reps}
    if pickled:
        pickle_path = os.path.join(paths.new(f"{b.key}-pickle"), "model.pkl")
        os.mkdir(os.path.dirname(pickle_path))

        def save_pickle() -> None:
            with open(pickle_path, "wb") as fh:
                pickle.dump(b.model, fh)

        def load_pickle() -> Any:
            with open(pickle_path, "rb") as fh:
                return pickle.load(fh)

        save_fns["pickle"], save_reps["pickle"] = save_pickle, cfg.save_reps
    t = interleaved(save_fns, save_reps)
    res["save"] = {k: med(v) for k, v in t.items()}
    res["save_n"] = {k: len(v) for k, v in t.items()}
    ours_dir, builtin_dir, raw_path = saved["ours"][-1], saved["builtin"][-1], saved["raw"][-1]

    # ---- size
    from mlflow_safeflavor.record import parse_record, read_mlmodel

    record = parse_record(read_mlmodel(Path(ours_dir)), root=Path(ours_dir))
    res["size"] = {
        "ours_dir": dir_bytes(ours_dir),
        "ours_payload": sum(dir_bytes(os.path.join(ours_dir, f)) for f in record.files),
        "builtin_dir": dir_bytes(builtin_dir),
        "raw": dir_bytes(raw_path),
    }

    # ---- load (native object) and pyfunc load
    t = interleaved(
        {
            "ours": lambda: sf.load_model(ours_dir),
            "builtin": lambda: b.builtin.load_model(builtin_dir),
            "raw": lambda: b.raw_load(raw_path),
            "ours_pyfunc": lambda: mlflow.pyfunc.load_model(ours_dir),
            "builtin_pyfunc": lambda: mlflow.pyfunc.load_model(builtin_dir),
        },
        {"ours": cfg.load_reps, "builtin": cfg.load_reps, "raw": cfg.load_reps,
         "ours_pyfunc": cfg.load_reps, "builtin_pyfunc": cfg.load_reps},
    ) if not pickled else interleaved(
        {
            "ours": lambda: sf.load_model(ours_dir),
            "builtin": lambda: b.builtin.load_model(builtin_dir),
            "raw": lambda: b.raw_load(raw_path),
            "pickle": load_pickle,
            "ours_pyfunc": lambda: mlflow.pyfunc.load_model(ours_dir),
            "builtin_pyfunc": lambda: mlflow.pyfunc.load_model(builtin_dir),
        },
        {k: cfg.load_reps for k in ("ours", "builtin", "raw", "pickle", "ours_pyfunc", "builtin_pyfunc")},
    )
    res["load"] = {k: med(v) for k, v in t.items()}

    # ---- predict
    pf_ours = mlflow.pyfunc.load_model(ours_ex)
    pf_builtin = mlflow.pyfunc.load_model(builtin_ex)
    impl = pf_ours._model_impl
    raw_model = pf_ours.get_raw_model()
    assert isinstance(impl, sf.SafeFlavorPyfunc), type(impl)

    # Sanity: same predictions everywhere (a benchmark of wrong answers is worthless).
    expect = np.asarray(b.model.predict(Xbig))
    checks = {
        "ours_pyfunc": np.asarray(pf_ours.predict(Xbig)),
        "builtin_pyfunc": np.asarray(pf_builtin.predict(Xbig)),
        "ours_load_model": np.asarray(sf.load_model(ours_dir).predict(Xbig)),
    }
    res["mismatch"] = [k for k, v in checks.items() if v.shape != expect.shape or not np.array_equal(v.ravel(), expect.ravel())]

    t = interleaved(
        {
            "raw": lambda: raw_model.predict(X1),
            "wrapper": lambda: impl.predict(X1),
            "ours_pyfunc": lambda: pf_ours.predict(X1),
            "builtin_pyfunc": lambda: pf_builtin.predict(X1),
        },
        {k: cfg.predict1_reps for k in ("raw", "wrapper", "ours_pyfunc", "builtin_pyfunc")},
        collect=False,
        budget_s=cfg.predict1_budget,
        min_reps=cfg.predict1_min_reps,
    )
    res["predict1"] = {k: med(v) for k, v in t.items()}
    res["predict1_n"] = len(t["raw"])
    # Paired estimate of the wrapper's overhead: median of per-round (wrapper - raw) differences.
    res["predict1"]["wrapper_overhead_paired"] = med([w - r for w, r in zip(t["wrapper"], t["raw"])])

    t = interleaved(
        {
            "raw": lambda: raw_model.predict(Xbig),
            "ours_pyfunc": lambda: pf_ours.predict(Xbig),
            "builtin_pyfunc": lambda: pf_builtin.predict(Xbig),
        },
        {k: cfg.predict_big_reps for k in ("raw", "ours_pyfunc", "builtin_pyfunc")},
        budget_s=cfg.predict1_budget,
        min_reps=cfg.predict_big_min_reps,
    )
    res["predict_big"] = {k: med(v) for k, v in t.items()}
    res["predict_big_n"] = len(t["raw"])

    res["predict1"]["wrapper_fixed_cost"] = wrapper_fixed_cost(impl, X1)

    s, l, p1 = res["save"], res["load"], res["predict1"]
    # Issue 15: a native GBDT load may cost its library's own load plus a fixed 2 ms (MLmodel,
    # digests, structural validation); the skops models keep the proportional target.
    # The skops models are judged by the issue against skops + 3 ms (pipelines without trees) and
    # against pickle (tree models, in their own table); this column shows the skops one for all.
    load_slack = GBDT_LOAD_SLACK_S if b.library in GBDT_LIBRARIES else SKOPS_LOAD_SLACK_S
    res["load_target"] = f"≤ 1.2×raw+{load_slack * 1e3:.0f}ms"
    res["targets"] = {
        "save": s["ours"] <= 1.5 * s["raw"] + 0.050,
        "load": l["ours"] <= 1.2 * l["raw"] + load_slack,
        # Judged on the paired estimate: a difference of two medians of ~ms calls on a shared
        # machine is noisier than the 0.2 ms budget itself.
        "predict1": p1["wrapper_overhead_paired"] <= 0.0002,
    }

    if pickled and b.key in TREE_KEYS:
        res["targets"]["pickle_load"] = l["ours"] <= 2 * l["pickle"] + 0.005
        res["targets"]["pickle_save"] = s["ours"] <= 1.5 * s["pickle"] + 0.050
    elif pickled:
        res["targets"]["skops_load"] = l["ours"] <= 1.2 * l["raw"] + SKOPS_LOAD_SLACK_S

    if cfg.profile:
        res["profile"] = profile_ours(b, paths, ours_dir)
    for p in saved["ours"][:-1] + saved["builtin"][:-1]:
        shutil.rmtree(p, ignore_errors=True)
    return res


class _Stub:
    """A model whose predict costs (almost) nothing, to time the wrapper's own code path alone."""

    def predict(self, data: Any) -> Any:
        return data


def wrapper_fixed_cost(impl: Any, X1: Any, batch: int = 2000, samples: int = 15) -> float:
    """Seconds per call our wrapper + codec add around ``model.predict`` (real codec, stub model)."""
    import mlflow_safeflavor as sf

    stub = _Stub()
    wrapped = sf.SafeFlavorPyfunc(stub, impl.codec, "predict")
    per: dict[str, list[float]] = {"wrapped": [], "bare": []}
    for _ in range(samples):
        for name, fn in (("wrapped", wrapped.predict), ("bare", stub.predict)):
            t0 = time.perf_counter()
            for _ in range(batch):
                fn(X1)
            per[name].append((time.perf_counter() - t0) / batch)
    return med(per["wrapped"]) - med(per["bare"])


def profile_ours(b: Bench, paths: Paths, ours_dir: str, top: int = 18) -> str:
    """cProfile of our save and load (cumulative time, top entries) for a quick look at where time goes."""
    import cProfile
    import io
    import pstats

    import mlflow_safeflavor as sf

    out = io.StringIO()
    for what, fn in (
        ("save_model", lambda: [sf.save_model(b.model, paths.new(f"{b.key}-prof")) for _ in range(3)]),
        ("load_model", lambda: [sf.load_model(ours_dir) for _ in range(5)]),
    ):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out.write(f"\n### {b.key}: {what} (3 saves / 5 loads)\n")
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------------------------- report


def ms(x: float) -> str:
    v = x * 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def us(x: float) -> str:
    return f"{x * 1e6:.0f}"


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "n/a"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.3f}×" if r >= 0.001 else f"1/{b / a:.0f}"


def kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def report(results: list[dict[str, Any]], cfg: argparse.Namespace) -> str:
    lines: list[str] = []
    w = lines.append

    w("### Save and load (median ms; ratios are ours ÷ other)\n")
    w("| model | save ours | save builtin | ×builtin | save raw | ×raw | save ≤ 1.5×raw+50ms | "
      "load ours | load builtin | ×builtin | load raw | ×raw | load target |")
    w("|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|:---:|")
    for r in results:
        s, l, t = r["save"], r["load"], r["targets"]
        w(f"| {r['key']} | {ms(s['ours'])} | {ms(s['builtin'])} | {ratio(s['ours'], s['builtin'])} | "
          f"{ms(s['raw'])} | {ratio(s['ours'], s['raw'])} | {ok(t['save'])} | "
          f"{ms(l['ours'])} | {ms(l['builtin'])} | {ratio(l['ours'], l['builtin'])} | "
          f"{ms(l['raw'])} | {ratio(l['ours'], l['raw'])} | {r['load_target']} {ok(t['load'])} |")

    sk = [r for r in results if "pickle" in r["load"]]
    if sk:
        w("\n### scikit-learn against pickle (median ms; issue 15 targets)\n")
        w("| model | load pickle | load raw skops | load MLflow built-in | load ours | ours ÷ pickle | ours ÷ skops | "
          "load target | save pickle | save ours | ours ÷ pickle | save target |")
        w("|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|:---:|")
        for r in sk:
            s, l, t = r["save"], r["load"], r["targets"]
            if "pickle_load" in t:
                load_t, save_t = f"≤ 2×pickle+5ms {ok(t['pickle_load'])}", f"≤ 1.5×pickle+50ms {ok(t['pickle_save'])}"
            else:
                load_t, save_t = f"≤ 1.2×skops+3ms {ok(t['skops_load'])}", "—"
            w(f"| {r['key']} | {ms(l['pickle'])} | {ms(l['raw'])} | {ms(l['builtin'])} | {ms(l['ours'])} | "
              f"{ratio(l['ours'], l['pickle'])} | {ratio(l['ours'], l['raw'])} | {load_t} | "
              f"{ms(s['pickle'])} | {ms(s['ours'])} | {ratio(s['ours'], s['pickle'])} | {save_t} |")

    w("\n### Predict (1 row: median µs; 10k rows: median ms)\n")
    w("| model | 1-row raw | 1-row our wrapper | wrapper overhead: paired (Δ medians) | wrapper fixed cost | "
      "≤ raw+0.2ms | 1-row PyFuncModel ours | 1-row PyFuncModel builtin | ours ÷ builtin | 10k raw | "
      "10k PyFuncModel ours (×raw) | 10k PyFuncModel builtin (×raw) |")
    w("|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p, q = r["predict1"], r["predict_big"]
        w(f"| {r['key']} | {us(p['raw'])} | {us(p['wrapper'])} | "
          f"{p['wrapper_overhead_paired'] * 1e6:+.0f} ({(p['wrapper'] - p['raw']) * 1e6:+.0f}) | "
          f"{p['wrapper_fixed_cost'] * 1e6:.1f} | "
          f"{ok(r['targets']['predict1'])} | {us(p['ours_pyfunc'])} | {us(p['builtin_pyfunc'])} | "
          f"{ratio(p['ours_pyfunc'], p['builtin_pyfunc'])} | {ms(q['raw'])} | "
          f"{ms(q['ours_pyfunc'])} ({ratio(q['ours_pyfunc'], q['raw'])}) | "
          f"{ms(q['builtin_pyfunc'])} ({ratio(q['builtin_pyfunc'], q['raw'])}) |")

    w("\n### Artifact size (KiB) and pyfunc load (median ms)\n")
    w("| model | ours dir | ours payload | builtin dir | ours ÷ builtin | raw file | ours dir ÷ raw | "
      "payload ÷ raw | pyfunc load ours | pyfunc load builtin | ×builtin |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        z, l = r["size"], r["load"]
        w(f"| {r['key']} | {kib(z['ours_dir'])} | {kib(z['ours_payload'])} | {kib(z['builtin_dir'])} | "
          f"{ratio(z['ours_dir'], z['builtin_dir'])} | {kib(z['raw'])} | {ratio(z['ours_dir'], z['raw'])} | "
          f"{ratio(z['ours_payload'], z['raw'])} | {ms(l['ours_pyfunc'])} | {ms(l['builtin_pyfunc'])} | "
          f"{ratio(l['ours_pyfunc'], l['builtin_pyfunc'])} |")

    w("\nModels:")
    for r in results:
        w(f"- `{r['key']}`: {r['label']}; raw = {r['raw_desc']}")
    bad = [(r["key"], r["mismatch"]) for r in results if r["mismatch"]]
    w("\nPrediction cross-check on 10k rows (ours pyfunc and load_model, builtin pyfunc vs the original "
      "in-memory model): "
      + ("all identical." if not bad else f"MISMATCH in {bad}"))
    w("\nWrapper overhead: *paired* = median over rounds of (wrapper − raw) on the real model (the "
      "target is judged on it); *Δ medians* = median(wrapper) − median(raw), noisier; *fixed cost* = "
      "our wrapper + codec around a model whose predict does nothing (µs, noise-free).")
    done = ", ".join(f"{r['key']} {r['predict1_n']}" for r in results)
    done_big = ", ".join(f"{r['key']} {r['predict_big_n']}" for r in results)
    w(f"\nReps: save {cfg.save_reps} (builtin save {cfg.builtin_save_reps}), load {cfg.load_reps}, "
      f"1-row predict {cfg.predict1_reps} (min {cfg.predict1_min_reps}, {cfg.predict1_budget:.0f} s budget per model; "
      f"done: {done}), "
      f"10k-row predict {cfg.predict_big_reps} (min {cfg.predict_big_min_reps}, same budget; done: {done_big}); medians, interleaved.")
    return "\n".join(lines)


_RSS_CHILD = r"""
import json, os, pickle, sys, time, warnings
warnings.filterwarnings("ignore")
kind, path, warm = sys.argv[1], sys.argv[2], sys.argv[3]
import mlflow_safeflavor as sf, skops.io as sio

def load(p):
    if kind == "pickle":
        with open(p, "rb") as fh:
            return pickle.load(fh)
    if kind == "skops":
        return sio.load(p, trusted=json.loads(sys.argv[4]))
    return sf.load_model(p)

load(warm)  # imports and first-use costs, on a small model of the same kind

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # peak RSS := current RSS
before = status("VmRSS")
t = time.perf_counter()
model = load(path)
elapsed = time.perf_counter() - t
print(json.dumps({"growth_kib": status("VmHWM") - before, "seconds": elapsed}))
"""


def memory_row(cfg: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Peak RSS growth and time of one load of a big RandomForest, each in a fresh process."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    import mlflow_safeflavor as sf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(cfg.memory_rows, 30))
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 2] + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    small = RandomForestClassifier(n_estimators=3, random_state=0).fit(X[:500], y[:500])
    big = RandomForestClassifier(n_estimators=cfg.memory_trees, n_jobs=-1, random_state=0).fit(X, y)
    big.n_jobs = None
    trusted = sio.get_untrusted_types(data=sio.dumps(small))
    files: dict[str, tuple[str, str]] = {}
    for kind in ("pickle", "skops", "ours"):
        paths = []
        for name, model in (("big", big), ("small", small)):
            target = root / f"mem-{kind}-{name}"
            if kind == "pickle":
                with open(target, "wb") as fh:
                    pickle.dump(model, fh)
            elif kind == "skops":
                sio.dump(model, target)
            else:
                sf.save_model(model, target)
            paths.append(str(target))
        files[kind] = (paths[0], paths[1])
    size = {k: dir_bytes(v[0]) for k, v in files.items()}
    del big
    out: dict[str, list[dict[str, float]]] = {k: [] for k in files}
    kinds = list(files)
    for r in range(cfg.memory_reps):
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            if kind == "skops" and not cfg.memory_skops:
                continue
            proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, kind, *files[kind], json.dumps(trusted)],
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"memory child ({kind}) failed: {proc.stderr[-2000:]}")
            out[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {
        "trees": cfg.memory_trees, "rows": cfg.memory_rows, "size": size,
        "growth_mib": {k: med([x["growth_kib"] for x in v]) / 1024 for k, v in out.items() if v},
        "seconds": {k: med([x["seconds"] for x in v]) for k, v in out.items() if v},
        "n": cfg.memory_reps,
    }


def memory_report(m: dict[str, Any]) -> str:
    g, t, z = m["growth_mib"], m["seconds"], m["size"]
    lines = [f"\n### Peak RSS growth during one load: RandomForestClassifier {m['trees']} trees on {m['rows']}×30 "
             f"(fresh process per load, median of {m['n']})\n",
             "| contender | file/dir MiB | load s | peak RSS growth MiB | ÷ pickle |", "|---|---:|---:|---:|---:|"]
    for k in g:
        lines.append(f"| {k} | {z[k] / 2**20:.0f} | {t[k]:.2f} | {g[k]:.0f} | {g[k] / g['pickle']:.2f}× |")
    lines.append(f"\nTarget: ours ≤ 1.2× pickle's growth: {ok(g['ours'] <= 1.2 * g['pickle'])}; "
                 f"load time ours ÷ pickle {t['ours'] / t['pickle']:.2f}×.")
    return "\n".join(lines)


def machine() -> str:
    import catboost
    import lightgbm
    import mlflow
    import skops
    import sklearn
    import xgboost

    import mlflow_safeflavor

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"mlflow {mlflow.__version__}, mlflow-safeflavor {mlflow_safeflavor.__version__}, "
        f"scikit-learn {sklearn.__version__}, skops {skops.__version__}, xgboost {xgboost.__version__}, "
        f"lightgbm {lightgbm.__version__}, catboost {catboost.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ap.add_argument("--models", help="comma-separated subset: rf,et,hgb,pipe_rf,xgb,lgbm,cb,pipe_lr,pipe_xgb")
    ap.add_argument("--json", help="also write raw results to this JSON file")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of our save/load per model")
    ap.add_argument("--workdir", help="where to write models (default: a temp dir, removed at exit)")
    ap.add_argument("--memory", action="store_true", help="add the peak-RSS row (big RandomForest, fresh processes)")
    ap.add_argument("--memory-only", action="store_true", help="run only the peak-RSS row")
    ap.add_argument("--memory-trees", type=int, default=300)
    ap.add_argument("--memory-rows", type=int, default=60_000)
    ap.add_argument("--memory-reps", type=int, default=3)
    ap.add_argument("--memory-skops", action="store_true", help="also measure raw skops.io.load (slow: seconds per load)")
    cfg = ap.parse_args(argv)
    if cfg.quick:
        cfg.save_reps, cfg.builtin_save_reps, cfg.load_reps, cfg.predict1_reps, cfg.predict_big_reps = 3, 1, 3, 50, 3
        cfg.predict1_min_reps, cfg.predict1_budget, cfg.predict_big_min_reps = 50, 5.0, 3
    else:
        cfg.save_reps, cfg.builtin_save_reps, cfg.load_reps, cfg.predict1_reps, cfg.predict_big_reps = 7, 3, 7, 300, 11
        cfg.predict1_min_reps, cfg.predict1_budget, cfg.predict_big_min_reps = 200, 20.0, 5

    started = time.perf_counter()
    print(f"# mlflow-safeflavor core benchmark{' (quick)' if cfg.quick else ''}\n", flush=True)
    print(f"Machine: {machine()}\n", flush=True)
    load_start = os.getloadavg()
    wanted = set(cfg.models.split(",")) if cfg.models else None
    t0 = time.perf_counter()
    benches = [] if cfg.memory_only else build_models(wanted)
    print(f"(trained {len(benches)} models in {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)

    root = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="safeflavor-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    paths = Paths(root)
    results = []
    try:
        for b in benches:
            t0 = time.perf_counter()
            results.append(run_one(b, paths, cfg))
            print(f"({b.key}: {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        mem = memory_row(cfg, root) if cfg.memory or cfg.memory_only else None
    finally:
        if not cfg.workdir:
            shutil.rmtree(root, ignore_errors=True)

    if results:
        print(report(results, cfg))
    if mem is not None:
        print(memory_report(mem))
    load_end = os.getloadavg()
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s; load average (1 min) at start "
          f"{load_start[0]:.2f}, at end {load_end[0]:.2f}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if max(load_start[0], load_end[0]) > cores:
        print(f"WARNING: load average above the {cores} cores: other processes competed for the CPU; "
              "absolute times (1-row predict of multi-threaded GBDTs especially) are inflated.")
    if cfg.profile:
        for r in results:
            print(r.get("profile", ""))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(
            {"machine": machine(), "loadavg": [load_start[0], load_end[0]], "memory": mem,
             "results": [{k: v for k, v in r.items() if k != "profile"} for r in results]},
            indent=1, default=str,
        ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
