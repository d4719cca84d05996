"""The end-to-end demo behind ``make demo`` / ``mlflow-safeflavor demo``.

Trains one small model per library, logs and registers each in an embedded local MLflow store
(sqlite under ``directory``), loads them back by ``models:/`` URI through both loaders, predicts,
and then shows a tampered copy and a widened trust list being refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import click


def _data(n: int = 600):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    df = pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, n).astype(float),
            "monthly_charges": rng.normal(70, 20, n).round(2),
            "support_calls": rng.poisson(1.5, n).astype(float),
            "plan": rng.choice(["basic", "plus", "pro"], n),
        }
    )
    score = 0.04 * df.support_calls * 10 - 0.03 * df.tenure_months + 0.01 * df.monthly_charges
    label = np.where(score + rng.normal(0, 0.3, n) > score.median(), "churn", "stay")
    return df, label


def _models(df, label) -> dict[str, tuple[Any, Any]]:
    """name -> (fitted model, input frame) for each library; GBDT libraries only if installed."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = ["tenure_months", "monthly_charges", "support_calls"]
    y = (label == "churn").astype(int)
    encoded = lambda: ColumnTransformer(  # noqa: E731
        [("num", StandardScaler(), num), ("plan", OneHotEncoder(sparse_output=False), ["plan"])]
    )
    out = {
        "sklearn": (Pipeline([("prep", encoded()), ("rf", RandomForestClassifier(50, random_state=0))]).fit(df, label), df),
    }
    def xgboost_pipeline():
        from xgboost import XGBClassifier

        return Pipeline([("prep", encoded()), ("xgb", XGBClassifier(n_estimators=50, max_depth=3))]).fit(df, y)

    def lightgbm_model():
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=50, verbose=-1).fit(df[num], label)

    def catboost_model():
        from catboost import CatBoostClassifier

        model = CatBoostClassifier(iterations=50, verbose=0, allow_writing_files=False, thread_count=2)
        return model.fit(df, label, cat_features=["plan"])

    builders: dict[str, Callable[[], Any]] = {
        "xgboost": xgboost_pipeline,
        "lightgbm": lightgbm_model,
        "catboost": catboost_model,
    }
    for name, build in builders.items():
        try:
            model = build()
        except ImportError:
            click.echo(f"  (skipping {name}: not installed; `pip install mlflow-safeflavor[{name}]`)")
            continue
        out[name] = (model, df[num] if name == "lightgbm" else df)
    return out


def run_demo(directory: str | os.PathLike = "demo-mlruns") -> None:
    """Run the demo against a local sqlite store under ``directory`` (created if needed)."""
    import mlflow
    import numpy as np

    import mlflow_safeflavor as sf

    warnings.filterwarnings("ignore")
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = "safeflavor-demo"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment(experiment)

    click.secho(f"Local MLflow store: {root}", bold=True)
    df, label = _data()
    models = _models(df, label)
    uris = {}
    with mlflow.start_run(run_name="safeflavor-demo"):
        for name, (model, X) in models.items():
            info = sf.log_model(model, name=f"{name}-model", input_example=X[:5], registered_model_name=f"demo-{name}")
            uris[name] = f"models:/demo-{name}/{info.registered_model_version}"
            click.echo(f"  logged {type(model).__name__:<22} -> {uris[name]}")

    click.secho("\nLoading back by models:/ URI", bold=True)
    for name, (model, X) in models.items():
        native = sf.load_model(uris[name])
        pf = mlflow.pyfunc.load_model(uris[name])
        proba = pf.predict(X[:3], params={"predict_method": "predict_proba"})
        same = np.array_equal(np.asarray(model.predict(X)), np.asarray(native.predict(X)))
        click.echo(
            f"  {name:<9} {type(native).__name__:<22} identical predictions: {same}   "
            f"pyfunc predict_proba[0] = {np.round(np.asarray(proba)[0], 3).tolist()}"
        )
        if not same:
            raise SystemExit(f"demo: {name} predictions differ after the round trip")

    click.secho("\nA tampered copy is refused", bold=True)
    tmp = Path(tempfile.mkdtemp(prefix="safeflavor-demo-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(uris["sklearn"], dst_path=str(tmp / "copy")))
        payload = local / "model.skops"
        data = bytearray(payload.read_bytes())
        data[len(data) // 2] ^= 0xFF
        payload.write_bytes(bytes(data))
        _show_refusal(lambda: sf.load_model(str(local)), "flipped one byte of model.skops")
        _show_refusal(lambda: mlflow.pyfunc.load_model(str(local)), "same copy via mlflow.pyfunc.load_model")

        import yaml

        widened = Path(mlflow.artifacts.download_artifacts(uris["sklearn"], dst_path=str(tmp / "widened")))
        doc = yaml.safe_load((widened / "MLmodel").read_text())
        doc["flavors"]["safeflavor"]["trusted_types"] = ["builtins.eval", "posix.system"]
        (widened / "MLmodel").write_text(yaml.safe_dump(doc))
        _show_refusal(lambda: sf.load_model(str(widened)), "MLmodel widened to trust builtins.eval, posix.system")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.secho("\nDemo finished: all models round-tripped; tampering was refused.", fg="green", bold=True)


def _show_refusal(load: Callable[[], Any], what: str) -> None:
    from mlflow_safeflavor.errors import SafeFlavorError

    try:
        load()
    except SafeFlavorError as exc:
        click.echo(f"  {what}:\n    refused with {type(exc).__name__}: {exc.message}")
        return
    raise SystemExit(f"demo: expected a refusal for: {what}")
