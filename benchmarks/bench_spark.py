"""Spark batch-scoring throughput: the safe flavor vs MLflow's built-in flavors, in one local session.

For each scenario (a model and an output), three contenders score the same cached DataFrame
(default 1,000,000 rows) in one ``local[2]`` SparkSession:

* ``builtin``      — ``mlflow.pyfunc.spark_udf`` on the model saved with MLflow's own flavor
                     (``mlflow.sklearn`` in its default skops format, ``mlflow.lightgbm``);
* ``safe/mlflow``  — ``mlflow.pyfunc.spark_udf`` on the model saved with ``mlflow_safeflavor``;
* ``safe/ours``    — ``mlflow_safeflavor.spark.spark_udf`` on the same safe-flavor model.

Each evaluation is ``df.select(udf(*cols)).write.format("noop")`` (every row is scored, nothing is
collected). Every contender runs once as warm-up (Python workers start, imports happen), then the
repetitions are interleaved round-robin with a rotating order, and medians are reported: of the
wall time (hence rows/s) and of the CPU time the whole process tree (driver, JVM, Python workers)
used for the evaluation, read from /proc. On a machine shared with other jobs wall time swings by
tens of percent while CPU time stays within a few; ``× built-in`` is throughput relative to the
built-in flavor (>1 is faster) for both. All models are saved with an ``input_example``, so every
UDF does MLflow's schema enforcement.

Scenarios: a ColumnTransformer + LogisticRegression pipeline (string labels, a string column) for
``predict`` (``result_type="string"``) and ``predict_proba`` (``"array<double>"``; the built-in
model is saved with ``pyfunc_predict_fn="predict_proba"``, ours gets ``predict_method``), and a
100-tree LGBMClassifier (3 string classes) for ``predict``.

Note: in ``local`` mode ``mlflow.pyfunc.spark_udf`` loads the model in every task (its per-worker
cache is only used when the model is shipped as an archive); ``safe/ours`` loads once per Python
worker. ``--partitions`` sets the number of tasks per evaluation.

Usage::

    python benchmarks/bench_spark.py                 # 1M rows, 3 reps (~20 min on 2 shared cores)
    python benchmarks/bench_spark.py --quick         # 200k rows
    python benchmarks/bench_spark.py --rows 500000 --reps 5 --json out.json

Target: ``safe/mlflow`` >= 0.95x the built-in flavor's throughput.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
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
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
for _name in ("mlflow", "mlflow_safeflavor", "skops", "py4j"):
    logging.getLogger(_name).setLevel(logging.ERROR)

N_NUM = 10
NUM = [f"f{i}" for i in range(N_NUM)]
N_TRAIN = 5000


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, N_NUM)), columns=NUM)
    X["color"] = np.where(X["f3"] > 0, "red", np.where(X["f4"] > 0, "green", "blue"))
    score = X["f0"] + 0.5 * X["f1"] - X["f2"] + (X["color"] == "red") + rng.normal(scale=0.5, size=n)
    labels2 = np.array(["stay", "churn"])[(score > 0.5).to_numpy().astype(int)]
    labels3 = np.array(["low", "mid", "high"])[np.digitize(score, [-0.5, 1.0])]
    return X, labels2, labels3


@dataclass
class Contender:
    name: str
    make: Callable[[], Any]  # -> UDF
    udf: Any = None
    create_s: float = 0.0
    times: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)


@dataclass
class Scenario:
    name: str
    cols: list[str]
    contenders: list[Contender]


def _scenarios(spark: Any, root: Path) -> list[Scenario]:
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm
    import mlflow.sklearn
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    import mlflow_safeflavor as sf
    from mlflow_safeflavor.spark import spark_udf

    X, y2, y3 = _data(N_TRAIN, seed=0)
    pipe = Pipeline([
        ("ct", ColumnTransformer([("num", StandardScaler(), NUM), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])),
        ("lr", LogisticRegression(max_iter=1000)),
    ]).fit(X, y2)
    gbm = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1).fit(X[NUM], y3)

    reqs = ["mlflow", "scikit-learn", "skops", "lightgbm"]  # skip MLflow's requirement inference
    trusted = sio.get_untrusted_types(data=sio.dumps(pipe))  # mlflow.sklearn (skops) needs these
    paths = {k: str(root / k) for k in ("pipe_safe", "pipe_builtin", "pipe_builtin_proba", "gbm_safe", "gbm_builtin")}
    sf.save_model(pipe, paths["pipe_safe"], input_example=X.head(5))
    sf.save_model(gbm, paths["gbm_safe"], input_example=X[NUM].head(5))
    mlflow.sklearn.save_model(pipe, paths["pipe_builtin"], input_example=X.head(5), pip_requirements=reqs, skops_trusted_types=trusted or None)
    mlflow.sklearn.save_model(pipe, paths["pipe_builtin_proba"], input_example=X.head(5), pip_requirements=reqs,
                              skops_trusted_types=trusted or None, pyfunc_predict_fn="predict_proba")
    mlflow.lightgbm.save_model(gbm, paths["gbm_builtin"], input_example=X[NUM].head(5), pip_requirements=reqs)

    def mlflow_udf(path: str, rt: str, **kw: Any) -> Callable[[], Any]:
        return lambda: mlflow.pyfunc.spark_udf(spark, path, result_type=rt, **kw)

    def ours(path: str, rt: str, **kw: Any) -> Callable[[], Any]:
        return lambda: spark_udf(spark, path, result_type=rt, **kw)

    proba = {"predict_method": "predict_proba"}
    return [
        Scenario("pipeline LR · predict (string)", NUM + ["color"], [
            Contender("builtin", mlflow_udf(paths["pipe_builtin"], "string")),
            Contender("safe/mlflow", mlflow_udf(paths["pipe_safe"], "string")),
            Contender("safe/ours", ours(paths["pipe_safe"], "string")),
        ]),
        Scenario("pipeline LR · predict_proba (array<double>)", NUM + ["color"], [
            Contender("builtin", mlflow_udf(paths["pipe_builtin_proba"], "array<double>")),
            Contender("safe/mlflow", mlflow_udf(paths["pipe_safe"], "array<double>", params=proba)),
            Contender("safe/ours", ours(paths["pipe_safe"], "array<double>", **proba)),
        ]),
        Scenario("LGBMClassifier 100 trees · predict (string)", NUM, [
            Contender("builtin", mlflow_udf(paths["gbm_builtin"], "string")),
            Contender("safe/mlflow", mlflow_udf(paths["gbm_safe"], "string")),
            Contender("safe/ours", ours(paths["gbm_safe"], "string")),
        ]),
    ]


def _tree_cpu() -> float | None:
    """CPU seconds (user + system, reaped children included) used so far by this process and all
    its descendants: the JVM, the pyspark daemon and its Python workers. Linux only (else None)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        parent: dict[int, int] = {}
        cpu: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parent[pid] = int(fields[1])
            cpu[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    except (OSError, ValueError, AttributeError):
        return None
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0)
        todo += children.get(pid, [])
    return total / tick


def _run(sdf: Any, udf: Any, cols: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process tree) for one full evaluation."""
    c0, t0 = _tree_cpu(), time.perf_counter()
    sdf.select(udf(*cols).alias("p")).write.format("noop").mode("overwrite").save()
    wall, c1 = time.perf_counter() - t0, _tree_cpu()
    return wall, (c1 - c0) if c0 is not None and c1 is not None else float("nan")


def _check_same(head: Any, sc: Scenario) -> None:
    """All contenders give identical outputs on ``head`` (20,000 rows, one job, no LIMIT)."""
    out = head.select(*[c.udf(*sc.cols).alias(c.name) for c in sc.contenders]).toPandas()
    ref = out[sc.contenders[0].name]
    for c in sc.contenders[1:]:
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ref, out[c.name]))
        if not same:
            raise SystemExit(f"{sc.name}: {c.name} differs from {sc.contenders[0].name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="200,000 rows")
    ap.add_argument("--only", help="run only scenarios whose name contains this text")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every timing to stderr")
    args = ap.parse_args()
    rows = 200_000 if args.quick else args.rows

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, file=sys.stderr, flush=True)

    from pyspark.sql import SparkSession

    import mlflow
    import pyspark

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("safeflavor-bench-spark")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    root = Path(tempfile.mkdtemp(prefix="safeflavor-bench-spark-"))
    try:
        scenarios = _scenarios(spark, root)
        X, _, _ = _data(rows, seed=1)
        sdf = spark.createDataFrame(X).repartition(args.partitions).cache()
        sdf.count()
        # A LIMIT would stop the Python workers early (and start new ones): check on a copy.
        head = spark.createDataFrame(X.head(20_000)).cache()
        head.count()
        print(f"# {rows:,} rows, {args.partitions} partitions, local[2]; Spark {pyspark.__version__}, "
              f"MLflow {mlflow.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)
        results = []
        for sc in scenarios:
            if args.only and args.only not in sc.name:
                continue
            for c in sc.contenders:
                t0 = time.perf_counter()
                c.udf = c.make()
                c.create_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            _check_same(head, sc)
            log(f"{sc.name}: identical outputs ({time.perf_counter() - t0:.1f}s)")
            for c in sc.contenders:  # warm-up
                wall, cpu = _run(sdf, c.udf, sc.cols)
                log(f"  warm-up {c.name}: {wall:.2f}s wall, {cpu:.2f}s CPU")
            for rep in range(args.reps):
                k = rep % len(sc.contenders)
                for c in sc.contenders[k:] + sc.contenders[:k]:
                    wall, cpu = _run(sdf, c.udf, sc.cols)
                    c.times.append(wall)
                    c.cpus.append(cpu)
                    log(f"  rep {rep} {c.name}: {wall:.2f}s wall, {cpu:.2f}s CPU")
            base, base_cpu = statistics.median(sc.contenders[0].times), statistics.median(sc.contenders[0].cpus)
            for c in sc.contenders:
                med, cpu = statistics.median(c.times), statistics.median(c.cpus)
                results.append({
                    "scenario": sc.name, "contender": c.name, "median_s": med, "rows_per_s": rows / med,
                    "ratio": base / med, "cpu_s": cpu, "ratio_cpu": base_cpu / cpu,
                    "create_s": c.create_s, "times": c.times, "cpus": c.cpus,
                })
            print(f"# done: {sc.name}", file=sys.stderr, flush=True)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print("| scenario | contender | wall (s) | rows/s | × built-in | CPU (s) | × built-in (CPU) | UDF creation (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['scenario']} | {r['contender']} | {r['median_s']:.2f} | {r['rows_per_s']:,.0f} | "
              f"{r['ratio']:.2f} | {r['cpu_s']:.2f} | {r['ratio_cpu']:.2f} | {r['create_s']:.2f} |")
    print()
    print("builtin = mlflow.pyfunc.spark_udf on MLflow's own flavor; safe/mlflow = mlflow.pyfunc.spark_udf "
          "on the safe flavor; safe/ours = mlflow_safeflavor.spark.spark_udf. Target: safe/mlflow >= 0.95x builtin.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "partitions": args.partitions, "results": results}, indent=2))


if __name__ == "__main__":
    main()
