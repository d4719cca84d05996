"""Cost of a safe migration against plain ``pickle.loads`` (not a test).

Prints a markdown table per model: file size, ``pickle.loads`` (the unsafe baseline), our static
scan, our restricted load (scan + restricted unpickler), their ratios to ``pickle.loads``, and the
end-to-end ``convert()`` time (isolated child process, safe save, safe reload, comparison).

    .venv/bin/python benchmarks/bench_migrate.py [--quick]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _timing import median_seconds

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _models(n_trees: int):
    import lightgbm
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 20))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    return X, {
        "LR pipeline": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y),
        f"RandomForest ({n_trees} trees)": RandomForestClassifier(n_trees, max_depth=12, random_state=0, n_jobs=1).fit(X, y),
        "HistGradientBoosting (100 iters)": HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(X, y),
        f"XGBClassifier ({n_trees} trees)": xgboost.XGBClassifier(n_estimators=n_trees, max_depth=6).fit(X, y),
        f"LGBMClassifier ({n_trees} trees)": lightgbm.LGBMClassifier(n_estimators=n_trees, verbose=-1).fit(X, y),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 9

    from mlflow_safeflavor.migrate import convert, restricted_load, scan_pickle

    X, models = _models(50 if args.quick else 300)
    print("| model | pickle size | pickle.loads | scan | scan ×loads | restricted load | load ×loads | convert() |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(models.items()):
            data = pickle.dumps(model, protocol=5)
            path = Path(tmp) / f"m{i}.pkl"
            path.write_bytes(data)
            base = median_seconds(lambda: pickle.loads(data), reps)  # the unsafe baseline, our own bytes
            scan = median_seconds(lambda: scan_pickle(path, second_opinion=False), reps)
            load = median_seconds(lambda: restricted_load(path), reps)
            t = time.perf_counter()
            convert(path, dest_path=Path(tmp) / f"out{i}", sample_input=X[:200])
            conv = time.perf_counter() - t
            print(f"| {name} | {len(data) / 1024:.0f} KiB | {base * 1e3:.2f} ms | {scan * 1e3:.2f} ms | "
                  f"{scan / base:.1f}× | {load * 1e3:.2f} ms | {load / base:.1f}× | {conv:.1f} s |")


if __name__ == "__main__":
    main()
