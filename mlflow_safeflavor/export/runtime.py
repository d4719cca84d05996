"""onnxruntime serving of a verified ONNX export: session settings, input feeding, output shaping.

The same :class:`OnnxRunner` checks agreement at save time (in the converter worker) and serves
at load time, so what was compared is what answers. Feeding is deliberately narrow: the export is
used only for input in exactly the form it was checked on — a DataFrame with the recorded columns
in the recorded order and dtype kinds, or a 2-D numeric array of the recorded width, all values
finite. Anything else (other columns, NaN, pandas categoricals, mixed object columns, sparse or
Spark data) is not fed: :meth:`OnnxRunner.feed` says why and the caller uses the native model.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError

ENV_THREADS = "MLFLOW_SAFEFLAVOR_ORT_THREADS"
DEFAULT_MAX_THREADS = 4
# Class probabilities closer than this leave the label to the native model: ten times the
# agreement tolerance, far above float32 rounding of probabilities in [0, 1].
TIE_MARGIN = 1e-4
SMALL_BATCH = 32


def default_threads() -> int:
    """Intra-op threads: ``$MLFLOW_SAFEFLAVOR_ORT_THREADS``, else the usable cores capped at 4.

    Tree ensembles gain little past 4 threads on the batch sizes a server sees, and every server
    worker process gets its own pool: more would oversubscribe the machine.
    """
    raw = os.environ.get(ENV_THREADS)
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise InvalidArgumentError(f"{ENV_THREADS}={raw!r} is not an integer number of threads.") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(DEFAULT_MAX_THREADS, cores))


def session_options(threads: int | None = None) -> Any:
    """onnxruntime session options for serving: bounded pool, no spinning, ONNX format only.

    Spinning threads would burn the CPU between requests that other worker processes need; the
    ORT-format loader is switched off so the bytes are always parsed as the ONNX we checked.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.load_model_format", "ONNX")
    return so


class OnnxRunner:
    """A checked ONNX export and the onnxruntime session that serves it.

    ``spec`` is the ``onnx`` sub-record of MLmodel (inputs and methods); the bytes go through
    :func:`mlflow_safeflavor.validate.onnx_model.parse` (structure, external data, domains,
    declared sizes, ``onnx.checker``) before a session is built with the default CPU provider and
    no custom operator libraries.
    """

    def __init__(self, data: bytes, spec: Mapping[str, Any], *, path: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        from mlflow_safeflavor.validate import onnx_model

        onnx_model.parse(data, path=path)
        try:
            self.session = ort.InferenceSession(data, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise MalformedArtifactError(
                f"{path}: onnxruntime cannot build a session from the ONNX export "
                f"({str(exc).splitlines()[0][:300]}). Re-save the model, or serve the checkpoint "
                "with params={'backend': 'native'}.",
                path=path,
            ) from None
        self.path = path
        self.inputs = dict(spec["inputs"])
        self.methods = {m: dict(v) for m, v in spec["methods"].items()}
        self.crossover_rows = spec.get("crossover_rows")
        self._input_names = [i.name for i in self.session.get_inputs()]
        # Real inputs are float32, or float64 for a pipeline that transforms in double before its
        # trees (export.convert._with_cast): the graph's own input type says which.
        self._real = [np.float64 if i.type == "tensor(double)" else np.float32 for i in self.session.get_inputs()]
        types = self.inputs.get("types") or []
        self._positions = {t: [i for i, x in enumerate(types) if x == t] for t in ("float", "int", "string")}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = sorted({m["output"] for m in self.methods.values()} - outputs)
        if self.inputs["kind"] == "columns":
            # One input per column, named after it: the feed maps columns to inputs by name.
            inputs_ok = self._input_names == self.inputs["columns"]
        else:
            shape = self.session.get_inputs()[0].shape
            width = shape[1] if len(shape) == 2 else -1
            inputs_ok = len(self._input_names) == 1 and (width == self.inputs["width"] or not isinstance(width, int))
        if not inputs_ok or missing:
            raise MalformedArtifactError(
                f"{path}: the ONNX export's inputs/outputs do not match MLmodel (inputs "
                f"{self._input_names[:8]}, missing outputs {missing}). Re-save the model.",
                path=path,
            )

    def answers(self, data: Any) -> bool:
        """True if ``backend="auto"`` should use the export for ``data``: fewer rows than the crossover.

        The crossover was measured where the export was made (:mod:`mlflow_safeflavor.export.timing`);
        input whose row count is unknown goes to the export, which feeds it or says why not.
        """
        if self.crossover_rows is None:
            return True
        shape = getattr(data, "shape", None)
        rows = shape[0] if shape else len(data) if isinstance(data, (list, tuple)) else None
        return rows is None or rows < self.crossover_rows

    # ------------------------------------------------------------------------------ input

    def feed(self, data: Any) -> dict[str, np.ndarray] | str:
        """The session feed for ``data``, or the reason it cannot be fed faithfully."""
        import pandas as pd

        kind, columns = self.inputs["kind"], self.inputs.get("columns")
        if kind == "columns":
            if not isinstance(data, pd.DataFrame):
                return f"the export takes a DataFrame with columns {columns[:5]}..., got {type(data).__name__}"
            if list(data.columns) != columns:
                return "the DataFrame's columns differ from the recorded ones (names or order)"
            if len(data) <= SMALL_BATCH:
                return self._feed_small(data)
            feed = {}
            for name, col, typ, real in zip(self._input_names, columns, self.inputs["types"], self._real):
                arr = _column(data[col], typ)
                if isinstance(arr, str):
                    return f"column {col!r}: {arr}"
                feed[name] = (arr.astype(real, copy=False) if typ == "float" else arr).reshape(-1, 1)
            return feed
        if isinstance(data, pd.DataFrame):
            if columns is not None and list(data.columns) != columns:
                return "the DataFrame's columns differ from the recorded ones (names or order)"
            if any(dt.kind not in "fiub" for dt in data.dtypes):
                return "a column is not numeric (object, string or categorical dtype)"
            arr = data.to_numpy(dtype=np.float64)
        elif isinstance(data, np.ndarray):
            # A bare array is taken by position, as the native model takes it.
            arr = data
            if arr.dtype.kind not in "fiub":
                return f"the array's dtype {arr.dtype} is not numeric"
        else:
            return f"input of type {type(data).__name__} is served by the native model"
        if arr.ndim != 2 or arr.shape[1] != self.inputs["width"]:
            return f"the input has shape {arr.shape}, the export takes (n, {self.inputs['width']})"
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return "the input holds NaN or infinite values (missing-value handling is the native model's)"
        return {self._input_names[0]: arr.astype(self._real[0], copy=False)}

    def _feed_small(self, data: Any) -> dict[str, np.ndarray] | str:
        """The per-column feed for a few rows: one conversion to an object array, then plain checks.

        Pandas' per-column access costs ~30 µs a column, more than the model itself on one row;
        element checks on a few rows cost less. The rules are those of :func:`_column`.
        """
        import numbers

        arr = data.to_numpy(dtype=object)
        cols = self.inputs["columns"]
        feed = {}
        for kind, py_type in (("float", numbers.Real), ("int", numbers.Integral)):
            idx = self._positions[kind]
            if not idx:
                continue
            block = arr[:, idx]
            if not all(isinstance(v, py_type) for v in block.flat):
                bad = next(cols[i] for i in idx if not all(isinstance(v, py_type) for v in arr[:, i]))
                return f"column {bad!r}: expected {'integers' if kind == 'int' else 'numbers'}"
            if kind == "int":
                block = block.astype(np.int64)
            else:
                block = block.astype(np.float64)
                if not np.isfinite(block).all():
                    return "the input holds NaN or infinite values (missing-value handling is the native model's)"
            for k, i in enumerate(idx):
                feed[self._input_names[i]] = block[:, k:k + 1].astype(self._real[i] if kind == "float" else np.int64)
        for i in self._positions["string"]:
            values = arr[:, i]
            if not all(type(v) is str for v in values):
                return f"column {cols[i]!r}: expected strings only (no missing values, numbers or categoricals)"
            feed[self._input_names[i]] = values.reshape(-1, 1)
        return feed

    # ----------------------------------------------------------------------------- output

    def predict(self, method: str, data: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
        """Run ``method`` on ``data``; return the result, or a ``str`` saying why it was not fed.

        Labels come from the export only where its class probabilities are decisive: rows whose
        top two probabilities are within ``TIE_MARGIN`` (exact ties included, which the export
        and the native model break differently, and near-ties that float32 rounding could flip)
        are answered by ``fallback`` — the native model's ``predict`` on those rows.
        """
        spec = self.methods.get(method)
        if spec is None:
            return f"the export does not cover {method!r}"
        feed = self.feed(data)
        if isinstance(feed, str):
            return feed
        guard = method == "predict" and spec["kind"] == "label" and "predict_proba" in self.methods
        if not guard:
            (out,) = self.session.run([spec["output"]], feed)
            return shape_output(np.asarray(out), spec)
        labels, proba = self.session.run([spec["output"], self.methods["predict_proba"]["output"]], feed)
        labels = shape_output(np.asarray(labels), spec)
        proba = np.asarray(proba)
        if proba.ndim != 2 or proba.shape[1] < 2:
            return labels
        top2 = np.partition(proba, -2, axis=1)[:, -2:]
        close = np.flatnonzero(top2[:, 1] - top2[:, 0] <= TIE_MARGIN)
        if len(close):
            if fallback is None:
                return f"{len(close)} row(s) have tied class probabilities (the native model breaks ties)"
            rows = data.iloc[close] if hasattr(data, "iloc") else data[close]
            native = np.asarray(fallback(rows))
            labels = labels.astype(np.result_type(labels.dtype, native.dtype)) if labels.dtype != object else labels
            labels.reshape(len(labels), -1)[close] = native.reshape(len(close), -1)
        return labels


def _column(series: Any, typ: str) -> np.ndarray | str:
    """One DataFrame column as the recorded ONNX input type, or why it cannot be."""
    import pandas as pd

    kind = series.dtype.kind
    if typ == "string":
        if kind not in "OU" or pd.api.types.infer_dtype(series, skipna=False) != "string":
            return "expected strings only (no missing values, numbers or categoricals)"
        return series.to_numpy(dtype=object)
    if typ == "int":
        if kind not in "iub":
            return f"expected integers, got dtype {series.dtype}"
        return series.to_numpy(dtype=np.int64)
    if kind not in "fiub":
        return f"expected numbers, got dtype {series.dtype}"
    arr = series.to_numpy(dtype=np.float64)
    if not np.isfinite(arr).all():
        return "holds NaN or infinite values (missing-value handling is the native model's)"
    return arr


def shape_output(out: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Give an ONNX output the native method's rank and dtype family (labels as-is, values float64)."""
    n = out.shape[0] if out.ndim else 1
    if spec["ndim"] == 1:
        out = out.reshape(n) if out.size == n else out
    elif spec["ndim"] == 2 and out.ndim == 1:
        out = out.reshape(n, 1)
    if spec["kind"] == "value" and out.dtype.kind == "f":
        out = out.astype(np.float64)
    return out


class OnnxModel:
    """What ``load_model(..., backend="onnx"|"auto")`` returns: the export for what it covers.

    ``predict`` and ``predict_proba`` run in onnxruntime when the export covers them and can take
    the input faithfully (and, without ``strict``, the batch is below the export's crossover);
    otherwise the native model answers — except with ``strict`` (an explicit
    ``backend="onnx"``), where that is an InvalidArgumentError. Every other attribute is the
    native model's; ``native`` is the model itself.
    """

    def __init__(self, runner: OnnxRunner, native: Any, codec: Any, *, strict: bool) -> None:
        self.runner = runner
        self.native = native
        self.codec = codec
        self.strict = strict

    def _run(self, method: str, data: Any) -> Any:
        if not self.strict and not self.runner.answers(data):
            return self.codec.predict(self.native, method, data)  # a batch the native model answers faster
        out = self.runner.predict(method, data, fallback=lambda rows: self.codec.predict(self.native, "predict", rows))
        if not isinstance(out, str):
            return out
        if self.strict:
            raise InvalidArgumentError(f"backend='onnx' cannot answer {method}: {out}. Load with backend='native' or 'auto'.")
        return self.codec.predict(self.native, method, data)

    def predict(self, data: Any) -> Any:
        """``predict`` through the export (see the class docstring)."""
        return self._run("predict", data)

    def predict_proba(self, data: Any) -> Any:
        """``predict_proba`` through the export (see the class docstring)."""
        return self._run("predict_proba", data)

    def __getattr__(self, name: str) -> Any:
        if name in ("runner", "native", "codec", "strict"):
            raise AttributeError(name)
        return getattr(self.native, name)

    def __repr__(self) -> str:
        return f"OnnxModel({type(self.native).__name__}, methods={sorted(self.runner.methods)})"
