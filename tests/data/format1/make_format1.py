"""How the format-1 models in this directory were made (run once, with the format-1 save path).

Kept for the record only: mlflow-safeflavor now saves format 2, so running this again would not
reproduce format-1 files. ``expected.json`` holds, per model, the input rows and the predictions
the model gave when it was saved; ``tests/test_columnar.py`` loads every model through each
loader and compares.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def models() -> dict:
    import xgboost as xgb
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        IsolationForest,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(7)
    X = rng.normal(size=(120, 4)).round(3)
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    reg = (X @ np.array([1.0, -2.0, 0.5, 0.0])).round(3)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["color"] = np.where(X[:, 2] > 0, "red", "blue")
    labels = np.array(["no", "yes"])[y]
    ct = ColumnTransformer([("num", StandardScaler(), ["a", "b", "c", "d"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color"])])
    hgb_df = df.copy()
    hgb_df["color"] = (hgb_df["color"] == "red").astype(int)
    return {
        "rf_clf": (RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0).fit(df[["a", "b", "c", "d"]], labels),
                   df[["a", "b", "c", "d"]], ["predict", "predict_proba"], {}),
        "hgb_clf": (HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(hgb_df, y),
                    hgb_df, ["predict", "predict_proba"], {}),
        "gb_reg": (GradientBoostingRegressor(n_estimators=5, max_depth=2, random_state=0).fit(X, reg), X, ["predict"], {}),
        "iso": (IsolationForest(n_estimators=4, random_state=0).fit(X), X, ["predict", "decision_function"], {}),
        "pipe_ct_rf": (Pipeline([("ct", ct), ("rf", RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0))]).fit(df, labels),
                       df, ["predict", "predict_proba"], {}),
        "pipe_ct_xgb": (Pipeline([("ct", ct), ("xgb", xgb.XGBClassifier(n_estimators=4, max_depth=2))]).fit(df, y),
                        df, ["predict", "predict_proba"], {}),
        "lr": (LogisticRegression().fit(X, y), X, ["predict", "predict_proba"], {}),
        "rf_onnx": (RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X.astype(np.float32), y),
                    X.astype(np.float32), ["predict", "predict_proba"], {"onnx": True}),
    }


def main() -> None:
    from mlflow_safeflavor.record import FORMAT_VERSION

    if FORMAT_VERSION != 1:
        sys.exit("this script records format-1 models; the current save path writes another format")
    write(HERE)


def write(here: Path) -> None:
    """Save every model of :func:`models` under ``here`` with the installed mlflow-safeflavor, and
    ``expected.json`` with the input rows and the predictions each gave when it was saved."""
    import mlflow_safeflavor as sf

    expected = {}
    for name, (model, X, methods, kwargs) in models().items():
        target = here / name
        shutil.rmtree(target, ignore_errors=True)
        example = X.iloc[:3] if isinstance(X, pd.DataFrame) else X[:3]
        sf.save_model(model, target, input_example=example if kwargs.get("onnx") else None, **kwargs)
        rows = X.iloc[:20] if isinstance(X, pd.DataFrame) else X[:20]
        expected[name] = {
            "X": json.loads(rows.to_json(orient="split")) if isinstance(rows, pd.DataFrame) else {"array": rows.tolist(), "dtype": str(rows.dtype)},
            "predictions": {m: np.asarray(getattr(model, m)(rows)).tolist() for m in methods},
        }
    (here / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
