"""Property-based fuzzing of saved models: mutate bytes of any file, then load in a worker process.

Property: every outcome is a load or a SafeFlavorError — never another exception type, never a
crash. When the attacker does not recompute the digest, a load must also predict exactly as the
original model did. ``SAFEFLAVOR_FUZZ_EXAMPLES`` sets the examples per model (``make fuzz`` runs a
long profile); ``make test`` runs a quick one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hostile import edit_mlmodel

import mlflow_safeflavor as sf
from mlflow_safeflavor.integrity import sha256_digest

EXAMPLES = int(os.environ.get("SAFEFLAVOR_FUZZ_EXAMPLES", "30"))
MODELS = {
    "sk_rf_clf": {},
    "sk_hgb_reg": {},
    "pipe_ct_xgb": {},
    "xgb_clf": {},
    "xgb_clf_json": {"model_format": "json"},
    "lgb_clf": {},
    "cb_clf_cat": {},
}
RAN: dict[str, int] = {}


@pytest.fixture(scope="module")
def fuzz_base(cases, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-base")
    out = {}
    for name, kwargs in MODELS.items():
        case = cases[name.replace("_json", "")]
        path = root / name
        sf.save_model(case.model, path, **kwargs)
        X = case.X[:20]
        payload = {"data": X.to_numpy().tolist(), "columns": list(X.columns)} if hasattr(X, "columns") else np.asarray(X).tolist()
        out[name] = (path, payload)
    return out


mutation = st.tuples(
    st.sampled_from(["flip", "set", "truncate", "insert", "delete"]),
    st.floats(min_value=0, max_value=1, exclude_max=True),  # where, as a fraction of the file
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=1, max_value=64),
)


def _mutate(data: bytes, kind: str, where: float, byte: int, length: int) -> bytes:
    if not data:
        return bytes([byte])
    i = int(where * len(data))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
    if kind == "set":
        return data[:i] + bytes([byte]) + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + bytes([byte]) * length + data[i:]
    return data[:i] + data[i + length :]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_mutated_model_loads_correctly_or_is_refused(model_name, fuzz_base, worker, tmp_path_factory):
    base, X = fuzz_base[model_name]
    reference = worker.load(base, X=X)
    assert reference["outcome"] == "loaded", reference
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    digested = set(sf.load_model.__globals__["read_mlmodel"](base)["flavors"]["safeflavor"]["files"])

    # No shrinking: a crash restarts the worker (seconds), and the raw failing example is enough.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fname=st.sampled_from(files), mut=mutation, recompute=st.booleans())
    def run(fname, mut, recompute):
        work = tmp_path_factory.mktemp("fuzz") / "m"
        shutil.copytree(base, work)
        target = work / fname
        new = _mutate(target.read_bytes(), *mut)
        target.write_bytes(new)
        recomputed = recompute and fname in digested
        if recomputed:
            try:
                edit_mlmodel(work, lambda s: s["files"].__setitem__(fname, sha256_digest(new)))
            except Exception:  # the MLmodel itself may be what we broke: then no recompute
                recomputed = False
        reply = worker.load(work, X=X)
        RAN[model_name] = RAN.get(model_name, 0) + 1
        assert reply["outcome"] in ("loaded", "refused"), (fname, mut, reply)
        if reply["outcome"] == "loaded" and not recomputed and fname in digested:
            raise AssertionError(f"a changed payload {fname} loaded without its digest being recomputed")
        if reply["outcome"] == "loaded" and not recomputed:
            assert reply["predictions"] == reference["predictions"], (fname, mut)
        shutil.rmtree(work, ignore_errors=True)

    run()
    assert RAN[model_name] >= min(EXAMPLES, 10)
