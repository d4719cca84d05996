"""The converter worker: a child process that converts a just-saved checkpoint and checks agreement.

Protocol: one JSON request per line on stdin, one JSON reply per line on a private copy of stdout
(converters and native libraries print to fd 1, which is pointed at stderr). A request names the
temporary model directory, the codec record of the checkpoint written there and, optionally, the
input example file (Parquet or ``.npy`` without pickle). The worker rebuilds the model *from those
files* with our own codec — so the export is compared with exactly what ``load_model`` returns —
converts it, checks agreement, times both backends (:mod:`mlflow_safeflavor.export.timing`),
writes ``model.onnx`` next to the checkpoint and replies with the ``onnx`` record, or with the
reason it cannot (``stage`` = ``convert`` or ``agree``).

The parent (:mod:`mlflow_safeflavor.export`) kills this process when a request overruns its
time limit; nothing here needs to be interruptible.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


class Disagreement(Exception):
    """The export answers differently from the checkpoint; the message says where."""


def _read_example(spec: dict[str, Any] | None) -> Any:
    if not spec:
        return None
    if spec["kind"] == "parquet":
        import pandas as pd

        return pd.read_parquet(spec["path"])
    return np.load(spec["path"], allow_pickle=False)


def _concat(parts: list[Any]) -> Any:
    import pandas as pd

    if isinstance(parts[0], pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    return np.vstack([np.asarray(p, dtype=np.float64) for p in parts])


def _native_outputs(codec: Any, model: Any, methods: dict[str, Any], X: Any) -> dict[str, np.ndarray]:
    return {m: np.asarray(codec.predict(model, m, X)) for m in methods}


def _sample(codec: Any, model: Any, spec: dict[str, Any], methods: dict[str, Any], example: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """The example plus the coverage rows, and the checkpoint's answers on them.

    A coverage row the model itself rejects (an unseen category under handle_unknown="error")
    is no test of the export: retry without unseen categories, then fall back to the example.
    """
    from mlflow_safeflavor.export import sample

    tries = [sample.coverage(model, spec, example, unseen=True), sample.coverage(model, spec, example, unseen=False)]
    last_error = None
    for cov in tries:
        X = _concat([example, cov]) if example is not None else cov
        try:
            return X, _native_outputs(codec, model, methods, X)
        except Exception as exc:  # whatever the model raises on the coverage rows
            last_error = exc
    if example is None:
        raise Disagreement(f"the model rejects the coverage sample ({type(last_error).__name__}: {str(last_error)[:200]})")
    return example, _native_outputs(codec, model, methods, example)


def agreement(runner: Any, methods: dict[str, Any], X: Any, native: dict[str, np.ndarray], rtol: float, atol: float,
              fallback: Any = None) -> dict[str, float]:
    """Largest |onnx − native| per method; raise Disagreement unless labels are identical and
    values within ``atol + rtol·|native|``."""
    diffs = {}
    for method, spec in methods.items():
        want = native[method]
        got = runner.predict(method, X, fallback=fallback)
        if isinstance(got, str):
            raise Disagreement(f"the sample cannot be fed to the export ({got})")
        if got.shape != want.shape:
            raise Disagreement(f"{method}: the export answers with shape {got.shape}, the checkpoint {want.shape}")
        if spec["kind"] == "label":
            same_family = (got.dtype.kind in "iu" and want.dtype.kind in "iu") or (got.dtype.kind in "OUS" and want.dtype.kind in "OUS") or got.dtype.kind == want.dtype.kind
            wrong = np.flatnonzero(np.asarray(got).astype(str) != np.asarray(want).astype(str)) if same_family else np.arange(len(want))
            if len(wrong):
                raise Disagreement(f"{method}: {len(wrong)} of {len(want)} labels differ (first at row {int(wrong[0])}: "
                                   f"export {np.ravel(got)[wrong[0]]}, checkpoint {np.ravel(want)[wrong[0]]})")
            diffs[method] = 0.0
            continue
        want_f = want.astype(np.float64)
        delta = np.abs(got.astype(np.float64) - want_f)
        worst = float(delta.max()) if delta.size else 0.0
        bad = delta > atol + rtol * np.abs(want_f)
        if bad.any() or not np.isfinite(delta).all():
            raise Disagreement(f"{method}: {int(bad.sum())} of {delta.size} values differ by more than "
                               f"{atol:g} + {rtol:g}·|value| (largest difference {worst:.3g})")
        diffs[method] = worst
    return diffs


def handle(req: dict[str, Any]) -> dict[str, Any]:
    """Convert and check one saved checkpoint; return the ``onnx`` record (file written)."""
    from mlflow_safeflavor import integrity
    from mlflow_safeflavor.codecs import get_codec
    from mlflow_safeflavor.export import ATOL, FILE, RTOL, convert, timing
    from mlflow_safeflavor.export.runtime import OnnxRunner
    from mlflow_safeflavor.errors import MalformedArtifactError

    root = Path(req["dir"])
    record = req["record"]
    codec = get_codec(record["codec"], path=str(root))
    blobs = {name: integrity.read_file(root, name) for name in record["files"]}
    model = codec.load(blobs, record, trusted=list(record.get("trusted_types", [])), path=str(root))
    example = _read_example(req.get("example"))
    spec = convert.input_spec(model, example)
    conv = convert.convert(model, record["codec"], spec)
    X, native = _sample(codec, model, spec, conv.methods, example)
    for method, out in native.items():
        conv.methods[method]["ndim"] = int(out.ndim)
    data = conv.proto.SerializeToString()
    try:
        # The serving session settings (threads included), so the timings below are the server's.
        runner = OnnxRunner(data, {"inputs": spec, "methods": conv.methods}, path=f"{root}/{FILE}")
    except MalformedArtifactError as exc:
        problem = getattr(exc, "problem", exc.message)
        raise convert.NotConvertible(f"the converter's output fails the loader's ONNX checks: {problem}") from None

    def fallback(rows: Any) -> Any:
        return codec.predict(model, "predict", rows)

    diffs = agreement(runner, conv.methods, X, native, RTOL, ATOL, fallback=fallback)
    method = "predict" if "predict" in conv.methods else next(iter(conv.methods))
    rows, _ = timing.crossover(lambda b: codec.predict(model, method, b),
                               lambda b: runner.predict(method, b, fallback=fallback), X)
    (root / FILE).write_bytes(data)
    opset = {(o.domain or "ai.onnx"): int(o.version) for o in conv.proto.opset_import}
    return {
        "file": FILE,
        "converter": conv.converter,
        "versions": conv.versions,
        "opset": opset,
        "inputs": spec,
        "methods": conv.methods,
        "sample_size": int(len(X)),
        "max_abs_diff": diffs,
        "tolerance": {"rtol": RTOL, "atol": ATOL},
        "agreed": True,
        "crossover_rows": rows,
    }


def main() -> int:
    """Serve requests until stdin closes."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by converters goes to stderr, never into a reply
    out = os.fdopen(reply_fd, "w", buffering=1)
    import warnings

    warnings.filterwarnings("ignore")
    # Import what every request needs before saying ready, so start-up is bounded separately.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import skl2onnx  # noqa: F401

    from mlflow_safeflavor.errors import SafeFlavorError
    from mlflow_safeflavor.export.convert import NotConvertible

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            reply = {"ok": True, "record": handle(json.loads(line))}
        except NotConvertible as exc:
            reply = {"ok": False, "stage": "convert", "reason": str(exc)}
        except Disagreement as exc:
            reply = {"ok": False, "stage": "agree", "reason": str(exc)}
        except SafeFlavorError as exc:
            reply = {"ok": False, "stage": "convert", "reason": exc.message}
        except Exception as exc:  # a converter bug must not end the worker
            reply = {"ok": False, "stage": "convert", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
