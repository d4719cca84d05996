"""Where the export stops paying: the batch size from which the native model answers faster.

onnxruntime wins at one row (no Python per call, 5-20× for tree ensembles) and can lose at
thousands (XGBoost and CatBoost predict large batches 3-9× faster natively). The converter worker
times both backends on the agreement sample, replicated to a ladder of batch sizes, right after
the agreement check that already runs both; the crossover it finds is recorded (MLmodel's
``onnx.crossover_rows``, or the cache entry of a derived export) and ``backend="auto"`` routes
each call by its row count (:meth:`mlflow_safeflavor.export.runtime.OnnxRunner.answers`).

The figure is a property of the machine that saved the model as much as of the model; it errs
only between two similar costs, where either choice is close.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

SIZES = (1, 16, 128, 1024, 8192)
BUDGET = 0.15  # seconds per contender and batch size, at least MIN_REPS calls each
MIN_REPS, MAX_REPS = 3, 50


def _batch(X: Any, rows: int) -> Any:
    """``rows`` rows of the sample, repeated as often as needed."""
    import pandas as pd

    n = len(X)
    index = np.arange(rows) % n
    if isinstance(X, pd.DataFrame):
        return X.iloc[index].reset_index(drop=True)
    return np.asarray(X)[index]


def _medians(native: Callable[[], Any], onnx: Callable[[], Any]) -> tuple[float, float]:
    """Median seconds of each, calls interleaved so that load on the machine hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    for rep in range(MAX_REPS):
        if rep >= MIN_REPS and time.perf_counter() - start > 2 * BUDGET:
            break
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for k in order:
            fn = native if k == 0 else onnx
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def crossover(native: Callable[[Any], Any], onnx: Callable[[Any], Any], X: Any) -> tuple[int | None, dict[int, list[float]]]:
    """Time both backends on ``X`` replicated to :data:`SIZES` rows; return :func:`decide`'s answer and the medians.

    The ladder stops once native has won at two sizes in a row. ``measured`` maps rows to
    ``[native_s, onnx_s]`` medians.
    """
    measured: dict[int, list[float]] = {}
    losses = 0
    for rows in SIZES:
        batch = _batch(X, rows)
        native(batch), onnx(batch)  # warm-up: first-call allocations are no one's steady state
        measured[rows] = list(_medians(lambda: native(batch), lambda: onnx(batch)))
        losses = losses + 1 if measured[rows][0] < measured[rows][1] else 0
        if losses == 2:
            break
    return decide(measured), measured


def decide(measured: dict[int, list[float]]) -> int | None:
    """The row count from which native is faster, from ``{rows: [native_s, onnx_s]}``; None if never.

    Between the last size the export won and the first it lost, each backend's cost is taken as
    a straight line (fixed cost + cost per row) through its two measurements, and the crossover
    is where they meet. Native faster already at the smallest size gives that size.
    """
    sizes = sorted(measured)
    first_loss = next((i for i, s in enumerate(sizes) if measured[s][0] < measured[s][1]), None)
    if first_loss is None:
        return None
    if first_loss == 0:
        return sizes[0]
    lo, hi = sizes[first_loss - 1], sizes[first_loss]
    (n_lo, o_lo), (n_hi, o_hi) = measured[lo], measured[hi]
    # The export's lead d = t_onnx - t_native is then linear in rows: <= 0 at `lo`, > 0 at `hi`.
    d_lo, d_hi = o_lo - n_lo, o_hi - n_hi
    at = lo - d_lo * (hi - lo) / (d_hi - d_lo)
    return int(min(hi, max(lo + 1, round(at))))
