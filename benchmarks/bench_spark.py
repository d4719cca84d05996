"""Spark batch-scoring throughput: the safe flavor vs MLflow's built-in flavors, in one local session.

For each scenario (a model and an output), three contenders score the same cached DataFrame in one
``local[2]`` SparkSession:

* ``builtin``      — ``mlflow.pyfunc.spark_udf`` on the model saved with MLflow's own flavor
                     (``mlflow.sklearn`` in its default skops format, with
                     ``skops_trusted_types=<what skops reports>`` where the model needs it;
                     ``mlflow.lightgbm``);
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

Throughput scenarios (default 1,000,000 rows in ``--partitions`` 4): a ColumnTransformer +
LogisticRegression pipeline (string labels, a string column) for ``predict``
(``result_type="string"``) and ``predict_proba`` (``"array<double>"``; the built-in model is saved
with ``pyfunc_predict_fn="predict_proba"``, ours gets ``predict_method``), and a 100-tree
LGBMClassifier (3 string classes) for ``predict``.

Per-task load scenarios (issue 15; names start with ``load ·``; default 64,000 rows in
``--tree-partitions`` 32, i.e. 32 tasks of 2,000 rows): scikit-learn tree models on numeric data —
RandomForestClassifier (100 trees), HistGradientBoostingClassifier (100 iterations) and a
ColumnTransformer + RandomForestClassifier (100 trees) pipeline — for ``predict``
(``result_type="long"``). In ``local`` mode ``mlflow.pyfunc.spark_udf`` loads the model in every
task (its per-worker cache is only used when the model is shipped as an archive), so these
evaluations are dominated by the load; ``safe/ours`` loads once per Python worker and, after its
warm-up, not at all. The extra CPU per task of a contender over ``safe/ours`` —
``(CPU − CPU of safe/ours) / tasks`` — estimates its per-task load cost, shown next to an
in-process table of the same models: ``mlflow.pyfunc.load_model`` of ours and of the built-in
flavor, and ``pickle.load`` of the raw model from a file (interleaved, rotating order, medians of
wall and CPU time, after one warm-up load each). That table runs before Spark starts.

Defaults only: no ``MLFLOW_SAFEFLAVOR_*`` variable is set (what users get).

Usage::

    python benchmarks/bench_spark.py                 # 1M rows, 3 reps (~20 min on 2 shared cores)
    python benchmarks/bench_spark.py --quick         # 200k rows
    python benchmarks/bench_spark.py --only load --reps 5    # per-task load scenarios (~7-9 min)
    python benchmarks/bench_spark.py --load-only     # in-process pyfunc load table, no Spark
    python benchmarks/bench_spark.py --rows 500000 --reps 5 --json out.json

Targets: ``safe/mlflow`` >= 0.95x the built-in flavor's throughput; in the ``load ·`` scenarios
``safe/mlflow`` should show the pyfunc load gain (issue 15).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import pickle
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
    frame: str = "rows"  # "rows": the throughput DataFrame; "tasks": the many-partition one


@dataclass
class TreeModel:
    """A scikit-learn tree model saved with both flavors (per-task load scenarios, load table)."""

    key: str
    label: str
    model: Any
    cols: list[str]
    safe: str
    builtin: str


LOAD_PREFIX = "load · "


def _tree_scenario_name(t: TreeModel) -> str:
    return f"{LOAD_PREFIX}{t.label} · predict (long)"


def _save_models(root: Path) -> tuple[dict[str, str], list[TreeModel]]:
    """Train and save every model both ways; return the throughput models' paths and the tree models."""
    import lightgbm as lgb
    import mlflow.lightgbm
    import mlflow.sklearn
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    import mlflow_safeflavor as sf

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

    # Tree models, integer labels (result_type "long": no per-value str() in either UDF, so the
    # contenders differ only in how often they load). Trained on both cores, then reset to the
    # default n_jobs so predict runs as users get it.
    y01 = (y2 == "churn").astype(np.int64)
    rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(X[NUM], y01)
    rf.n_jobs = None
    hgb = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0).fit(X[NUM], y01)
    ct = ColumnTransformer([("num", StandardScaler(), NUM), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])
    pipe_rf = Pipeline([("ct", ct), ("rf", RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0))]).fit(X, y01)
    pipe_rf.steps[-1][1].n_jobs = None
    trees = []
    for key, label, model, cols in (
        ("rf", "RandomForestClassifier 100 trees", rf, NUM),
        ("hgb", "HistGradientBoostingClassifier 100 iterations", hgb, NUM),
        ("pipe_rf", "ColumnTransformer + RandomForestClassifier 100 trees", pipe_rf, NUM + ["color"]),
    ):
        safe, builtin = str(root / f"{key}_safe"), str(root / f"{key}_builtin")
        sf.save_model(model, safe, input_example=X[cols].head(5))
        # MLflow 3.17 + skops 0.16: the built-in flavor refuses to load a forest or boosted model
        # without the tree types it needs; pass what skops reports, as bench_core.py does.
        trusted = sio.get_untrusted_types(data=sio.dumps(model))
        mlflow.sklearn.save_model(model, builtin, input_example=X[cols].head(5), pip_requirements=reqs,
                                  skops_trusted_types=trusted or None)
        trees.append(TreeModel(key, label, model, cols, safe, builtin))
    return paths, trees


def _scenarios(spark: Any, paths: dict[str, str], trees: list[TreeModel]) -> list[Scenario]:
    import mlflow.pyfunc

    from mlflow_safeflavor.spark import spark_udf

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
    ] + [
        Scenario(_tree_scenario_name(t), t.cols, [
            Contender("builtin", mlflow_udf(t.builtin, "long")),
            Contender("safe/mlflow", mlflow_udf(t.safe, "long")),
            Contender("safe/ours", ours(t.safe, "long")),
        ], frame="tasks")
        for t in trees
    ]


def _load_table(trees: list[TreeModel], root: Path, reps: int) -> list[dict[str, Any]]:
    """In-process load of each tree model: ``pickle.load`` of the raw model from a file vs
    ``mlflow.pyfunc.load_model`` of the built-in and of the safe-flavor model. One warm-up load
    each, then ``reps`` rounds, round-robin with rotating order, a ``gc.collect()`` before each
    load (as bench_core.py) and the loaded object released only after the clock stops; medians of
    wall and CPU (this process, all threads) seconds."""
    import mlflow.pyfunc

    out = []
    for t in trees:
        pkl = root / f"{t.key}.pkl"
        with open(pkl, "wb") as fh:
            pickle.dump(t.model, fh, protocol=pickle.HIGHEST_PROTOCOL)

        def load_pickle(path: Path = pkl) -> Any:
            with open(path, "rb") as fh:
                return pickle.load(fh)

        fns: dict[str, Callable[[], Any]] = {
            "pickle.load": load_pickle,
            "builtin": lambda p=t.builtin: mlflow.pyfunc.load_model(p),
            "ours": lambda p=t.safe: mlflow.pyfunc.load_model(p),
        }
        for fn in fns.values():
            fn()
        names = list(fns)
        walls: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for r in range(reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                loaded = fns[name]()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                del loaded
                walls[name].append(wall)
                cpus[name].append(cpu)
        out.append({
            "key": t.key, "model": t.label, "reps": reps,
            "wall_s": {n: statistics.median(v) for n, v in walls.items()},
            "cpu_s": {n: statistics.median(v) for n, v in cpus.items()},
            "walls": walls, "cpus": cpus,
        })
        print(f"# done: load table {t.label}", file=sys.stderr, flush=True)
    return out


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


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--tree-rows", type=int, default=64_000, help="rows of the per-task load scenarios")
    ap.add_argument("--tree-partitions", type=int, default=32, help="tasks per evaluation in the per-task load scenarios")
    ap.add_argument("--load-reps", type=int, default=20, help="rounds of the in-process load table (0: skip it)")
    ap.add_argument("--load-only", action="store_true", help="only the in-process load table (no Spark)")
    ap.add_argument("--quick", action="store_true", help="200,000 rows")
    ap.add_argument("--only", help="run only scenarios whose name contains this text ('load' for the per-task load ones)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every timing to stderr")
    args = ap.parse_args()
    rows = 200_000 if args.quick else args.rows

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, file=sys.stderr, flush=True)

    def wanted(name: str) -> bool:
        return not args.only or args.only in name

    import mlflow
    import pyspark

    load_start = _loadavg()
    root = Path(tempfile.mkdtemp(prefix="safeflavor-bench-spark-"))
    results: list[dict[str, Any]] = []
    try:
        paths, trees = _save_models(root)
        # Before Spark starts, so no JVM shares the cores with these loads.
        load_rows = _load_table([t for t in trees if wanted(_tree_scenario_name(t))], root, args.load_reps) if args.load_reps > 0 else []
        if not args.load_only:
            results = _spark(args, rows, paths, trees, wanted, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_end = _loadavg()

    print(f"# Spark {pyspark.__version__}, MLflow {mlflow.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; load average (1/5/15 min) {load_start} at start, {load_end} at end")
    if results:
        print()
        print("| scenario | contender | wall (s) | rows/s | × built-in | CPU (s) | × built-in (CPU) | UDF creation (s) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['scenario']} | {r['contender']} | {r['median_s']:.2f} | {r['rows_per_s']:,.0f} | "
                  f"{r['ratio']:.2f} | {r['cpu_s']:.2f} | {r['ratio_cpu']:.2f} | {r['create_s']:.2f} |")
        print()
        print("builtin = mlflow.pyfunc.spark_udf on MLflow's own flavor; safe/mlflow = mlflow.pyfunc.spark_udf "
              "on the safe flavor; safe/ours = mlflow_safeflavor.spark.spark_udf. Target: safe/mlflow >= 0.95x builtin.")
    tree_results = [r for r in results if r["scenario"].startswith(LOAD_PREFIX)]
    by_key = {row["key"]: row for row in load_rows}
    if tree_results:
        print()
        print(f"Per-task load ({args.tree_rows:,} rows in {args.tree_partitions} tasks per evaluation; MLflow's UDF "
              "loads in every task, safe/ours once per Python worker):")
        print()
        print("| scenario | contender | wall (s) | CPU (s) | CPU per task (ms) | extra CPU per task vs safe/ours (ms) "
              "| in-process pyfunc load, CPU (ms) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in tree_results:
            extra = r["extra_cpu_per_task_s"]
            if r["contender"] == "safe/ours":
                inproc = "once per worker"
            else:  # the in-process load of the same model with the same flavor, if it was measured
                cpu = by_key.get(r["key"], {}).get("cpu_s", {}).get("builtin" if r["contender"] == "builtin" else "ours")
                inproc = "n/a" if cpu is None else f"{1e3 * cpu:.1f}"
            print(f"| {r['scenario']} | {r['contender']} | {r['median_s']:.2f} | {r['cpu_s']:.2f} | "
                  f"{1e3 * r['cpu_s'] / r['tasks']:.1f} | {'—' if extra is None else f'{1e3 * extra:.1f}'} | {inproc} |")
    if load_rows:
        print()
        print(f"In-process load (median of {args.load_reps} interleaved rounds; ms wall, CPU in parentheses):")
        print()
        print("| model | pickle.load | mlflow.pyfunc.load_model, built-in | mlflow.pyfunc.load_model, ours "
              "| built-in ÷ ours | ours ÷ pickle |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in load_rows:
            w, c = row["wall_s"], row["cpu_s"]

            def cell(n: str, w: dict[str, float] = w, c: dict[str, float] = c) -> str:
                return f"{1e3 * w[n]:.1f} ({1e3 * c[n]:.1f})"

            def ratio(a: str, b: str, w: dict[str, float] = w, c: dict[str, float] = c) -> str:
                return f"{w[a] / w[b]:.2f}× ({c[a] / c[b]:.2f}×)"

            print(f"| {row['model']} | {cell('pickle.load')} | {cell('builtin')} | {cell('ours')} | "
                  f"{ratio('builtin', 'ours')} | {ratio('ours', 'pickle.load')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": rows, "partitions": args.partitions, "tree_rows": args.tree_rows,
            "tree_partitions": args.tree_partitions, "loadavg_start": load_start, "loadavg_end": load_end,
            "results": results, "load_table": load_rows,
        }, indent=2))


def _spark(args: argparse.Namespace, rows: int, paths: dict[str, str], trees: list[TreeModel],
           wanted: Callable[[str], bool], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run the selected Spark scenarios in one local[2] session; one result row per contender."""
    from pyspark.sql import SparkSession

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
    results: list[dict[str, Any]] = []
    try:
        scenarios = [sc for sc in _scenarios(spark, paths, trees) if wanted(sc.name)]
        frames: dict[str, tuple[Any, int, int]] = {}  # frame -> (DataFrame, rows, tasks)
        for frame, n, parts, seed in (("rows", rows, args.partitions, 1), ("tasks", args.tree_rows, args.tree_partitions, 2)):
            if any(sc.frame == frame for sc in scenarios):
                X, _, _ = _data(n, seed=seed)
                sdf = spark.createDataFrame(X).repartition(parts).cache()
                sdf.count()
                frames[frame] = (sdf, n, parts)
        # A LIMIT would stop the Python workers early (and start new ones): check on a copy.
        X, _, _ = _data(20_000, seed=1)
        head = spark.createDataFrame(X).cache()
        head.count()
        for frame, (_, n, parts) in frames.items():
            print(f"# {frame}: {n:,} rows, {parts} partitions, local[2]", flush=True)
        for sc in scenarios:
            sdf, n, parts = frames[sc.frame]
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
            # safe/ours loads once per Python worker (its warm-up did): the others' extra CPU per
            # task over it is their per-task load (plus whatever else MLflow's UDF does per task).
            once = {c.name: statistics.median(c.cpus) for c in sc.contenders}.get("safe/ours")
            key = next((t.key for t in trees if _tree_scenario_name(t) == sc.name), None)
            for c in sc.contenders:
                med, cpu = statistics.median(c.times), statistics.median(c.cpus)
                results.append({
                    "scenario": sc.name, "contender": c.name, "key": key, "rows": n, "tasks": parts,
                    "median_s": med, "rows_per_s": n / med,
                    "ratio": base / med, "cpu_s": cpu, "ratio_cpu": base_cpu / cpu,
                    "extra_cpu_per_task_s": (cpu - once) / parts if once is not None and c.name != "safe/ours" else None,
                    "create_s": c.create_s, "times": c.times, "cpus": c.cpus,
                })
            print(f"# done: {sc.name}", file=sys.stderr, flush=True)
    finally:
        spark.stop()
    return results


if __name__ == "__main__":
    main()
