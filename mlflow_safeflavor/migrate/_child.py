"""The isolated half of a conversion: ``<bootstrap> mlflow_safeflavor.migrate._child JOB.json``.

Started by :func:`mlflow_safeflavor.migrate.convert.convert` under the smoke test's resource limits
(:func:`mlflow_safeflavor.registry.smoke.run_limited`). It rebuilds the source model — a pickle
through the restricted unpickler only after the static scan passed, a native file through our
validators — predicts with it on the sample, and saves it with the safe flavor. Predictions go
back as ``.npy`` files written without pickle. Rebuilding a pickled XGBoost/LightGBM/CatBoost
model hands its embedded bytes to native code; doing that here means a crafted payload can at
worst kill this process, never the caller.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Run one conversion job and print the verdict line; return the exit code."""
    from mlflow_safeflavor.registry.smoke import report

    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        detail = _run(job)
    except MemoryError:
        report(False, "the conversion ran out of its memory limit (MLFLOW_SAFEFLAVOR_CONVERT_MEMORY_MB)")
        return 3
    except Exception as exc:  # every failure becomes one verdict line for the parent
        from mlflow_safeflavor.errors import SafeFlavorError

        msg = exc.message if isinstance(exc, SafeFlavorError) else f"{type(exc).__name__}: {str(exc)[:500]}"
        Path(job["out"], "error.json").write_text(
            json.dumps({"type": type(exc).__name__, "message": msg,
                        "findings": list(getattr(exc, "findings", None) or getattr(exc, "types", None) or [])}),
            encoding="utf-8",
        )
        report(False, msg)
        return 1
    report(True, detail)
    return 0


def _load_source(job: dict[str, Any]) -> Any:
    kind, file, label = job["kind"], job["file"], job["label"]
    trusted = job.get("trusted_types") or None
    if kind == "pickle":
        from mlflow_safeflavor.migrate.pickles import restricted_load

        return restricted_load(file, trusted_types=trusted, label=label)
    data = Path(file).read_bytes()
    if kind == "skops":
        return _load_skops(data, trusted, label)
    from mlflow_safeflavor.codecs import get_codec

    if kind == "xgboost":
        name = "model.json" if data[:2] == b'{"' else "model.ubj"
        booster = get_codec("xgboost").load({name: data}, {"model_class": "Booster"}, trusted=[], path=label)
        if job["model_class"] == "Booster":
            return booster
        import xgboost

        model = getattr(xgboost, job["model_class"])()
        model.load_model(bytearray(data))  # the same bytes the validator just accepted
        return model
    if kind == "lightgbm":
        return get_codec("lightgbm").load({"model.txt": data}, {"model_class": "Booster"}, trusted=[], path=label)
    if kind == "catboost":
        return get_codec("catboost").load({"model.cbm": data}, {"model_class": job["model_class"]}, trusted=[], path=label)
    raise ValueError(f"unknown source kind {kind!r}")


def _load_skops(data: bytes, trusted: Any, label: str) -> Any:
    """skops files from MLflow's sklearn/lightgbm flavors: judged by the converter's allowlist, not MLmodel."""
    from mlflow_safeflavor.migrate import skops_source

    return skops_source.load(data, trusted, label)


def _read_sample(spec: dict[str, Any]) -> Any:
    import numpy as np
    import pandas as pd

    if spec["format"] == "parquet":
        return pd.read_parquet(spec["path"])
    return np.load(spec["path"], allow_pickle=False)


def _synthetic_sample(model: Any, out: Path, rows: int = 64) -> dict[str, str]:
    """Random standard-normal rows shaped like the model's input, for models shipped without data.

    Identical predictions on them prove the rebuild is faithful, not that the model is any good.
    """
    import numpy as np
    import pandas as pd

    n = getattr(model, "n_features_in_", None) or None  # CatBoost reports 0 after a pickle round trip
    names = getattr(model, "feature_names_in_", None)
    if n is None and hasattr(model, "num_features"):
        n = model.num_features() if callable(model.num_features) else model.num_features
    if n is None and hasattr(model, "num_feature"):
        n = model.num_feature()
    if n is None and hasattr(model, "feature_names_"):
        n = len(model.feature_names_)
    if not isinstance(n, (int, np.integer)) or not 0 < int(n) <= 100_000:
        raise ValueError("the model does not say how many input features it takes; pass a sample file instead of a synthetic sample")
    data = np.random.default_rng(0).standard_normal((rows, int(n)))
    if names is not None:
        path = out / "sample.parquet"
        pd.DataFrame(data, columns=[str(c) for c in names]).to_parquet(path, index=False)
        return {"format": "parquet", "path": str(path)}
    path = out / "sample.npy"
    np.save(path, data, allow_pickle=False)
    return {"format": "npy", "path": str(path)}


def _run(job: dict[str, Any]) -> str:
    import numpy as np

    from mlflow_safeflavor.codecs import codec_for
    from mlflow_safeflavor.codecs.base import PREDICT_METHODS
    from mlflow_safeflavor.flavor import save_model
    from mlflow_safeflavor.migrate.compare import to_plain_array

    model = _load_source(job)
    codec = codec_for(model)
    out = Path(job["out"])
    if job["sample"]["format"] == "synthetic":
        job["sample"] = _synthetic_sample(model, out)
        (out / "sample.json").write_text(json.dumps(job["sample"]), encoding="utf-8")
        if job.get("example") is None:
            job["example"] = job["sample"]
    sample = _read_sample(job["sample"])
    preds = out / "predictions"
    preds.mkdir(parents=True, exist_ok=True)
    methods = []
    for method in PREDICT_METHODS:
        if method != "predict" and not hasattr(model, method):
            continue
        try:
            result = codec.predict(model, method, sample)
        except Exception as exc:
            if method == "predict":
                raise RuntimeError(f"the source model cannot predict on the sample ({type(exc).__name__}: {str(exc)[:300]})") from None
            continue  # e.g. predict_proba on a regressor wrapper that only has it for show
        np.save(preds / f"{method}.npy", to_plain_array(result), allow_pickle=False)
        methods.append(method)
    signature = None
    if job.get("signature"):
        from mlflow.models.signature import ModelSignature

        signature = ModelSignature.from_dict(job["signature"])
    example = _read_sample(job["example"]) if job.get("example") else None
    save_model(
        model,
        out / "model",
        trusted_types=job.get("trusted_types") or None,
        signature=signature,
        input_example=example,
        predict_method=job.get("predict_method") or "predict",
        onnx=job.get("onnx"),
    )
    (out / "result.json").write_text(json.dumps({"methods": methods, "model_class": f"{type(model).__module__}.{type(model).__qualname__}"}), encoding="utf-8")
    return f"rebuilt {type(model).__name__}, predicted {', '.join(methods)} on {len(sample)} rows, saved"


if __name__ == "__main__":
    sys.exit(main())
