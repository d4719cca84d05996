"""What each hostile pickle of issue 18 costs the scan now (not a test).

Builds the issue's files full size (and the extra ones from ``tests/hostile_pickles.py``), then
scans each in a fresh child process the way the CLI, ``convert``, bulk migration and the web page
do — ``scan_pickle(path, isolated=True)``: our scan and fickling's second opinion in a
resource-limited grandchild — and, for comparison, ``scan_pickle(path)`` in-process (fickling
still isolated). Prints one markdown row per file and mode: size, verdict, wall time, CPU time of
the whole process tree, and the peak resident memory of its largest process.

    .venv/bin/python benchmarks/bench_hostile_scan.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import hostile_pickles as hp  # noqa: E402

# A fresh process per measurement, reporting its own usage and its descendants' (the isolated
# scan and fickling's child): CPU summed, memory the larger of the peaks.
_CHILD = """
import json, resource, sys
from mlflow_safeflavor.migrate import scan_pickle
r = scan_pickle(sys.argv[1], isolated=sys.argv[2] == "isolated")
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"ok": r.ok, "why": (r.reasons() or [""])[0][:110], "fickling": (r.fickling or {}).get("severity"),
                  "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, "rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024}))
"""


def _files(directory: Path, quick: bool) -> dict[str, Path]:
    marker = directory / "MARKER"
    import pickle

    builds = {
        "baseline: a benign 3-item list": pickle.dumps([1, "a", 2.0], protocol=5),
        "bytearray memoised, 20x 2**30": hp.bytearray_memo_20x(),
        "list(range(10**8))": hp.list_of_range(10**8),
        "16 MB of N0, bz2": hp.none_pops(4 if quick else 16),
        "20,000 distinct imports": hp.distinct_imports(20_000),
        "4 GiB of zeros, gzip": hp.gzip_bomb(256 * 1024**2 if quick else 4 * 1024**3),
        "bytes(2**30) by NEWOBJ": hp.bytes_newobj(),
        "100,000 chained calls": hp.call_chain(100_000),
        "1,000,000 empty sets": hp.empty_sets(1_000_000),
        "posix.system nested 6 deep": hp.nested_in_bytes(marker, 6),
        "posix.system nested 9 deep": hp.nested_in_bytes(marker, 9),
        "nested pickle, truncated": hp.nested_truncated(marker),
    }
    out = {}
    for i, (name, data) in enumerate(builds.items()):
        path = directory / f"h{i}.pkl"
        path.write_bytes(data)
        out[name] = path
    return out


def _measure(path: Path, mode: str) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode], capture_output=True, text=True)
    wall = time.monotonic() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": None, "why": proc.stderr.strip().splitlines()[-1:], "fickling": None, "wall": wall, "cpu": 0.0, "rss_mb": 0.0}
    return {**json.loads(lines[-1]), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller N0 and gzip files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(Path(tmp), args.quick)
        print("| file | size | mode | verdict | wall s | CPU s | peak RSS MB | first reason |")
        print("|---|---:|---|---|---:|---:|---:|---|")
        for name, path in files.items():
            for mode in ("isolated", "in-process"):
                m = _measure(path, mode)
                verdict = {True: "ok", False: "refused", None: "CRASH"}[m["ok"]]
                print(f"| {name} | {path.stat().st_size:,} B | {mode} | {verdict} | {m['wall']:.1f} | {m['cpu']:.1f} | "
                      f"{m['rss_mb']:.0f} | {str(m['why']).replace('|', '/')} |", flush=True)
        if (Path(tmp) / "MARKER").exists():
            print("MARKER CREATED: something ran a payload")


if __name__ == "__main__":
    main()
