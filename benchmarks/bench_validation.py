"""Cost of structural validation against the raw library load (not a test).

Prints a markdown table: for a 500-tree model per format, the median time of our pure-Python
validation and of the library's own load from the same bytes, and their ratio (target ≤ 30%).

    .venv/bin/python benchmarks/bench_validation.py [--quick]
"""

from __future__ import annotations

import argparse

import warnings

import numpy as np
import pandas as pd
from _timing import median_seconds

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trees", type=int, default=500)
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    n_trees = 100 if args.quick else args.trees

    import catboost
    import lightgbm
    import skops.io as sio
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from mlflow_safeflavor.validate import catboost_model, lightgbm_model, sklearn_trees, skops_zip, xgboost_model

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 20))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    rows = []

    booster = xgboost.train({"max_depth": 6, "objective": "binary:logistic"}, xgboost.DMatrix(X, y), n_trees)
    for fmt in ("ubj", "json"):
        data = bytes(booster.save_raw(fmt))
        raw = median_seconds(lambda: xgboost.Booster(model_file=bytearray(data)), reps)
        val = median_seconds(lambda: xgboost_model.validate(data, path="model." + fmt, fmt=fmt), reps)
        rows.append((f"XGBoost {fmt.upper()} ({n_trees} trees, depth 6)", len(data), raw, val))

    lgb = lightgbm.train({"num_leaves": 63, "verbose": -1, "objective": "binary"}, lightgbm.Dataset(X, y), n_trees)
    text = lgb.model_to_string()
    raw = median_seconds(lambda: lightgbm.Booster(model_str=text), reps)
    val = median_seconds(lambda: lightgbm_model.validate(text, path="model.txt"), reps)
    rows.append((f"LightGBM text ({n_trees} trees, 63 leaves)", len(text), raw, val))

    # CatBoost: 300 trees (CatBoost's default depth 6) on 20,000 x 30, numerical only and with three
    # categorical columns (CTR tables after the core). The target here is on the whole load:
    # validation + CatBoost's load <= 1.2 x CatBoost's load + 2 ms (printed below the table).
    cb_rows = []
    Xc = rng.normal(size=(20_000, 30))
    yc = (Xc[:, 0] + Xc[:, 1] * Xc[:, 2] > 0).astype(int)
    frame = pd.DataFrame(Xc[:, :27], columns=[f"f{i}" for i in range(27)])
    for j, k in enumerate((50, 8, 300)):
        frame[f"c{j}"] = rng.integers(0, k, len(frame)).astype(str)
    yf = ((Xc[:, 0] + (frame["c0"].astype(int) % 3 == 0)) > 0.3).astype(int)
    cb_trees = 60 if args.quick else 300
    for label, fit in (
        ("numerical", lambda m: m.fit(Xc, yc)),
        ("3 categorical columns", lambda m: m.fit(frame, yf, cat_features=["c0", "c1", "c2"])),
    ):
        model = fit(catboost.CatBoostClassifier(iterations=cb_trees, verbose=0, allow_writing_files=False))
        blob = bytes(model._serialize_model())
        raw = median_seconds(lambda: catboost.CatBoostClassifier().load_model(blob=blob), reps)
        val = median_seconds(lambda: catboost_model.validate(blob, path="model.cbm"), reps)
        rows.append((f"CatBoost cbm ({cb_trees} trees, 20k x 30, {label})", len(blob), raw, val))
        cb_rows.append((label, raw, val))

    for name, est in (
        (f"sklearn RandomForest ({min(n_trees, 200)} trees)", RandomForestClassifier(min(n_trees, 200), max_depth=12, n_jobs=1, random_state=0)),
        (f"sklearn HistGradientBoosting ({n_trees} iters)", HistGradientBoostingClassifier(max_iter=n_trees, early_stopping=False)),
    ):
        est.fit(X, y)
        data = sio.dumps(est)
        trusted = sio.get_untrusted_types(data=data)
        raw = median_seconds(lambda: sio.loads(data, trusted=trusted), max(3, reps // 3))
        model = sio.loads(data, trusted=trusted)
        val = median_seconds(lambda: (skops_zip.check(data, path="model.skops"), sklearn_trees.check_estimator(model, path="model.skops")), max(3, reps // 3))
        rows.append((name + " (zip checks + tree arrays)", len(data), raw, val))

    print("| payload | bytes | raw library load | our validation | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, size, raw, val in rows:
        print(f"| {name} | {size:,} | {raw * 1e3:.2f} ms | {val * 1e3:.2f} ms | {val / raw:.0%} |")
    for label, raw, val in cb_rows:
        limit = 1.2 * raw + 2e-3
        print(f"CatBoost ({label}): validation + load {(val + raw) * 1e3:.2f} ms, target 1.2 x load + 2 ms = "
              f"{limit * 1e3:.2f} ms: {'met' if val + raw <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
