"""A loader process for red-team and fuzz tests: one JSON request per line in, one result out.

Run as ``python tests/redteam_worker.py``. Each request names a model directory and a loader; the
reply says whether it loaded (with predictions, for fuzzing) or which exception it raised. If the
process dies by a signal, the parent sees EOF and knows which request did it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

warnings.filterwarnings("ignore")


def _predict(model, X):
    import numpy as np

    if type(model).__name__ == "Booster" and type(model).__module__.startswith("xgboost"):
        import xgboost

        return np.asarray(model.predict(xgboost.DMatrix(X))).tolist()
    return np.asarray(model.predict(X)).tolist()


def _decide(how: str, path: str, kwargs: dict) -> dict:
    """verify / inspect / the gate's evaluation on a directory: they must never raise for the artifact."""
    opts = {k: v for k, v in kwargs.items() if k in ("trusted_types", "public_key")}
    try:
        if how == "verify":
            from mlflow_safeflavor.verify import verify_local

            result = verify_local(path, **opts)
            return {"outcome": "decided", "ok": result.ok, "failed": [c.name for c in result.failures],
                    "detail": " | ".join(c.detail for c in result.failures)[:2000]}
        if how == "inspect":
            from mlflow_safeflavor.report import inspect_local

            report = inspect_local(path, **opts)
            return {"outcome": "decided", "ok": report.would_load, "failed": report.errors[:5], "detail": report.decision}
        from mlflow_safeflavor.registry.core import evaluate

        verdict = evaluate(path, label="models:/hostile/1", smoke=False, **opts)
        return {"outcome": "decided", "ok": verdict.ok, "failed": list(verdict.failed), "detail": verdict.reason[:2000]}
    except BaseException as exc:  # noqa: BLE001 - a report must never raise
        return {"outcome": "other", "type": type(exc).__name__, "message": str(exc)[:500],
                "traceback": traceback.format_exc()[-2000:]}


def handle(req: dict) -> dict:
    import mlflow
    import pandas as pd

    import mlflow_safeflavor as sf

    kwargs = req.get("kwargs", {})
    X = None
    if req.get("X") is not None:
        X = pd.DataFrame(**req["X"]) if isinstance(req["X"], dict) else req["X"]
    if req["loader"] in ("verify", "inspect", "gate"):
        return _decide(req["loader"], req["path"], kwargs)
    try:
        if req["loader"] == "load_model":
            model = sf.load_model(req["path"], **kwargs)
        elif req["loader"] == "load_pyfunc":
            model = sf.load_pyfunc(req["path"], **kwargs)
        else:
            model = mlflow.pyfunc.load_model(req["path"])
    except sf.SafeFlavorError as exc:
        return {"outcome": "refused", "type": type(exc).__name__, "message": exc.message}
    except BaseException as exc:  # noqa: BLE001 - the point is to report anything else
        return {"outcome": "other", "type": type(exc).__name__, "message": str(exc)[:500],
                "traceback": traceback.format_exc()[-2000:]}
    # Predicting is reported apart from loading: a model that loaded may still refuse an input.
    try:
        preds = _predict(model, X) if X is not None else None
        return {"outcome": "loaded", "predictions": preds}
    except BaseException as exc:  # noqa: BLE001
        return {"outcome": "loaded", "predict_error": {"type": type(exc).__name__, "message": str(exc)[:500]}}


def main() -> None:
    import mlflow_safeflavor  # noqa: F401 - import before saying ready

    # Replies go to the original stdout; whatever else writes to fd 1 goes to stderr. Native
    # libraries print there: LightGBM warns on stdout about an unknown parameter in a mutated
    # model ("[LightGBM] [Warning] Ignoring unrecognized parameter ..."), which used to become
    # the reply line and break the campaign with a JSONDecodeError (make fuzz).
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply_with(doc: dict) -> None:
        replies.write(json.dumps(doc) + "\n")
        replies.flush()

    reply_with({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        saved = {k: os.environ.get(k) for k in req.get("env", {})}
        os.environ.update(req.get("env", {}))
        try:
            reply = handle(req)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        reply_with(reply)


if __name__ == "__main__":
    main()
