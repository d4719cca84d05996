"""The exploring fuzz profile (``make fuzz``): a random seed, thousands of mutated models per codec.

Run as ``python tests/fuzz_campaign.py [--per-codec N] [--seed S] [--jobs J]``. Every case of
tests/fuzzing.py is loaded in a worker process; the table printed at the end counts, per codec,
the cases, loads, typed refusals, input mismatches of recomputed models and failures. Each failing
case is appended to ``tests/fuzz_corpus/<model>.jsonl`` so that ``make test`` replays it from then
on. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from conftest import Worker  # noqa: E402
from fuzzing import MODELS, build, generate, judge, record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-codec", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed} (rerun with --seed {seed})", flush=True)

    import warnings

    warnings.filterwarnings("ignore")
    import zoo

    import mlflow_safeflavor as sf
    from mlflow_safeflavor.record import read_mlmodel

    cases = {c.name: c for c in zoo.all_cases()}
    root = Path(tempfile.mkdtemp(prefix="fuzz-campaign-"))
    chosen = [m for m in args.models.split(",") if m]
    per_model: dict[str, int] = {}
    by_codec = collections.defaultdict(list)
    for name in chosen:
        by_codec[MODELS[name][2]].append(name)
    for codec, names in by_codec.items():
        for i, name in enumerate(names):
            per_model[name] = args.per_codec // len(names) + (1 if i < args.per_codec % len(names) else 0)

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[tuple[str, str]] = []
    started = time.time()
    for name in chosen:
        case_name, kwargs, codec = MODELS[name]
        case = cases[case_name]
        base = root / "base" / name
        sf.save_model(case.model, base, input_example=case.X[:5] if kwargs.get("onnx") else None, **kwargs)
        X = case.X[:20]
        payload = {"data": X.to_numpy().tolist(), "columns": list(X.columns)} if hasattr(X, "columns") else np.asarray(X).tolist()
        files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
        digested = set(read_mlmodel(base)["flavors"]["safeflavor"]["files"])
        todo = generate(name, files, seed, per_model[name])
        workers = [Worker() for _ in range(args.jobs)]
        reference = workers[0].load(base, X=payload)
        assert reference["outcome"] == "loaded", reference

        def run(job: int) -> None:
            w = workers[job]
            work = root / f"work-{job}"
            work.mkdir(parents=True, exist_ok=True)
            for c in todo[job :: args.jobs]:
                path, recomputed, changed = build(base, c, work, digested)
                reply = w.load(path, X=payload)
                why = judge(c, reply, reference, recomputed, digested, changed)
                key = reply.get("outcome", "?")
                if key == "loaded" and reply.get("predict_error"):
                    key = "input mismatch"
                counts[codec][key] += 1
                counts[codec]["cases"] += 1
                if why is not None:
                    counts[codec]["FAILED"] += 1
                    failures.append((c.to_json(), why))
                    record(c, why)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, range(args.jobs)))
        for w in workers:
            w.close()
        print(f"{name}: {per_model[name]} cases done ({time.time() - started:.0f} s)", flush=True)

    keys = ["cases", "loaded", "refused", "input mismatch", "crashed", "other", "FAILED"]
    print("\n| codec | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for codec, c in counts.items():
        print(f"| {codec} | " + " | ".join(str(c.get(k, 0)) for k in keys) + " |")
    for c, why in failures[:50]:
        print(f"FAILED {c}: {why}")
    print(f"seed {seed}; {sum(c['cases'] for c in counts.values())} cases in {time.time() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
