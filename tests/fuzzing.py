"""Mutation fuzzing of saved models, shared by the test profile (tests/test_fuzz.py) and ``make fuzz``.

A *case* is one mutated model: which base model, which file, which mutation, and whether the
attacker recomputed the file's digest in MLmodel (as someone who controls the directory would).
Each case is loaded with ``load_model`` in a worker process (tests/redteam_worker.py) and
predicted on; :func:`judge` says whether the outcome keeps the promise:

- the worker is alive and the load either returned a model or raised a SafeFlavorError;
- a payload changed *without* its digest being recomputed never loads;
- a model that loads from unchanged payload bytes predicts exactly as the original;
- when the digest was recomputed (a different, attacker-made model), predicting on the original
  input either answers or raises the library's own input-validation error (a model that wants
  other columns); never another exception type, never a crash.

Cases are generated from a seed with ``random.Random``, so a seed names the same cases on every
run; ``make fuzz`` draws a random seed and a large budget and appends each failing case to
``tests/fuzz_corpus/<model>.jsonl``, which the test profile replays on every run.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).parent / "fuzz_corpus"
KINDS = ("flip", "set", "truncate", "insert", "delete", "dup", "overwrite", "number")
# Library exceptions a *different* (digest-recomputed) model may raise on the original input.
INPUT_ERRORS = {"ValueError", "TypeError", "KeyError", "CatBoostError", "XGBoostError", "LightGBMError"}
_NUMBER = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_NUMBERS = (b"-1", b"0", b"1", b"-2", b"2147483647", b"-2147483648", b"4294967296", b"999999999999", b"1e308",
            b"nan", b"-inf", b"0.5")

# name -> (zoo case, save_model kwargs, codec)
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "sk_rf_clf": ("sk_rf_clf", {}, "sklearn"),
    "sk_hgb_reg": ("sk_hgb_reg", {}, "sklearn"),
    "pipe_ct_xgb": ("pipe_ct_xgb", {}, "sklearn"),
    "xgb_clf": ("xgb_clf", {}, "xgboost"),
    "xgb_clf_json": ("xgb_clf", {"model_format": "json"}, "xgboost"),
    "xgb_clf_onnx": ("xgb_clf", {"onnx": True}, "xgboost"),
    "lgb_clf": ("lgb_clf", {}, "lightgbm"),
    "cb_clf_cat": ("cb_clf_cat", {}, "catboost"),
    "cb_reg": ("cb_reg", {}, "catboost"),
}


@dataclass(frozen=True)
class Case:
    """One mutated model: ``mutation`` is (kind, where as a fraction of the file, byte, length)."""

    model: str
    file: str
    mutation: tuple[str, float, int, int]
    recompute: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(line: str) -> "Case":
        d = json.loads(line)
        return Case(d["model"], d["file"], tuple(d["mutation"]), bool(d["recompute"]))  # type: ignore[arg-type]


def mutate(data: bytes, kind: str, where: float, byte: int, length: int) -> bytes:
    """Apply one mutation; deterministic in its arguments."""
    if not data:
        return bytes([byte])
    i = min(int(where * len(data)), len(data) - 1)
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
    if kind == "set":
        return data[:i] + bytes([byte]) + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + bytes([byte]) * length + data[i:]
    if kind == "delete":
        return data[:i] + data[i + length :]
    if kind == "dup":  # a range repeated in place: shifts every offset after it
        return data[: i + length] + data[i : i + length] + data[i + length :]
    if kind == "overwrite":  # a range replaced by bytes derived from ``byte``
        filler = bytes(((byte * 31 + k * 17) & 0xFF) for k in range(length))
        return data[:i] + filler + data[i + length :]
    if kind == "number":  # the next decimal number in a text payload becomes a hostile one
        m = _NUMBER.search(data, i)
        if m is None:
            return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
        return data[: m.start()] + _NUMBERS[byte % len(_NUMBERS)] + data[m.end() :]
    raise ValueError(kind)


def generate(model: str, files: list[str], seed: int, n: int) -> list[Case]:
    """``n`` cases for ``model`` from ``seed``: the same list for the same arguments, every run."""
    rng = random.Random(zlib.crc32(model.encode()) ^ seed)
    out = []
    for _ in range(n):
        kind = rng.choice(KINDS)
        out.append(Case(model, rng.choice(files), (kind, rng.random(), rng.randrange(256), rng.randint(1, 64)),
                        rng.random() < 0.6))
    return out


def build(base: Path, case: Case, work: Path, digested: set[str]) -> tuple[Path, bool, bool]:
    """Write the mutated copy of ``base`` under ``work``; return it, whether the digest was recomputed,
    and whether the mutation changed the file at all (a number replaced by itself does not)."""
    from hostile import edit_mlmodel

    from mlflow_safeflavor.integrity import sha256_digest

    target_dir = work / "m"
    shutil.rmtree(target_dir, ignore_errors=True)
    shutil.copytree(base, target_dir)
    target = target_dir / case.file
    old = target.read_bytes()
    new = mutate(old, *case.mutation)
    if new == old:
        return target_dir, False, False
    target.write_bytes(new)
    recomputed = case.recompute and case.file in digested
    if recomputed:
        try:
            edit_mlmodel(target_dir, lambda s: s["files"].__setitem__(case.file, sha256_digest(new)))
        except Exception:  # the MLmodel itself may be what we broke: then no recompute
            recomputed = False
    return target_dir, recomputed, True


def judge(case: Case, reply: dict[str, Any], reference: dict[str, Any], recomputed: bool, digested: set[str],
          changed: bool = True) -> str | None:
    """None when the outcome keeps the promise, else a sentence saying what broke it."""
    outcome = reply.get("outcome")
    if outcome == "crashed":
        return f"the loading process died (return code {reply.get('returncode')})"
    if outcome == "refused":
        return None
    if outcome != "loaded":
        return f"untyped {reply.get('type')}: {str(reply.get('message'))[:200]}"
    if changed and not recomputed and case.file in digested:
        return f"a changed payload {case.file} loaded without its digest being recomputed"
    error = reply.get("predict_error")
    if error is not None:
        if recomputed and error["type"] in INPUT_ERRORS:
            return None
        return f"predict raised {error['type']}: {str(error['message'])[:200]}"
    if not recomputed and reply.get("predictions") != reference.get("predictions"):
        return "loaded from unchanged payload bytes but predicts differently"
    return None


def corpus(model: str) -> list[Case]:
    """The regression cases recorded for ``model`` (failures ``make fuzz`` found, fixed since)."""
    path = CORPUS / f"{model}.jsonl"
    if not path.exists():
        return []
    return [Case.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def record(case: Case, why: str) -> None:
    """Append a failing case to the regression corpus (``make fuzz``)."""
    CORPUS.mkdir(exist_ok=True)
    with open(CORPUS / f"{case.model}.jsonl", "a") as fh:
        fh.write(json.dumps({**asdict(case), "found": why[:300]}) + "\n")
