"""Fuzzing of saved models, derandomized profile: mutate bytes of any file, load in a worker process.

The same cases run every time (``fuzzing.generate`` from a fixed seed, plus every case in the
regression corpus ``tests/fuzz_corpus/``), so a red run means a real regression. ``make fuzz`` runs
the exploring profile (tests/fuzz_campaign.py: random seed, thousands of cases per codec) and
records what it finds in the corpus. See tests/fuzzing.py for the property each case must keep.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from fuzzing import MODELS, build, corpus, generate, judge

import mlflow_safeflavor as sf
from mlflow_safeflavor.record import read_mlmodel

EXAMPLES = int(os.environ.get("SAFEFLAVOR_FUZZ_EXAMPLES", "30"))
SEED = 0


def payload_for(X):
    return {"data": X.to_numpy().tolist(), "columns": list(X.columns)} if hasattr(X, "columns") else np.asarray(X).tolist()


@pytest.fixture(scope="module")
def fuzz_base(cases, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-base")
    out = {}
    for name, (case_name, kwargs, _codec) in MODELS.items():
        case = cases[case_name]
        path = root / name
        sf.save_model(case.model, path, input_example=case.X[:5] if kwargs.get("onnx") else None, **kwargs)
        out[name] = (path, payload_for(case.X[:20]))
    return out


@pytest.mark.parametrize("model_name", list(MODELS))
def test_mutated_model_loads_correctly_or_is_refused(model_name, fuzz_base, worker, tmp_path):
    base, X = fuzz_base[model_name]
    reference = worker.load(base, X=X)
    assert reference["outcome"] == "loaded" and "predictions" in reference, reference
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    digested = set(read_mlmodel(base)["flavors"]["safeflavor"]["files"])
    todo = generate(model_name, files, SEED, EXAMPLES) + corpus(model_name)
    failures = []
    for case in todo:
        path, recomputed, changed = build(base, case, tmp_path, digested)
        reply = worker.load(path, X=X)
        why = judge(case, reply, reference, recomputed, digested, changed)
        if why is not None:
            failures.append((case.to_json(), why))
    assert len(todo) >= EXAMPLES
    assert failures == [], "\n".join(f"{c}: {w}" for c, w in failures)


def test_the_same_cases_every_run():
    files = ["MLmodel", "model.cbm"]
    assert generate("cb_clf_cat", files, SEED, 20) == generate("cb_clf_cat", files, SEED, 20)
    assert generate("cb_clf_cat", files, SEED, 20) != generate("cb_clf_cat", files, SEED + 1, 20)


def test_library_output_on_stdout_does_not_break_the_worker(fuzz_base, worker, tmp_path):
    """LightGBM prints a warning on stdout for an unknown parameter in the model text (a mutation
    make fuzz hit); the worker's reply must still arrive and the model still load and predict."""
    import shutil

    from hostile import replace_payload

    base, X = fuzz_base["lgb_clf"]
    path = tmp_path / "m"
    shutil.copytree(base, path)
    text = (path / "model.txt").read_text()
    assert "[boosting: gbdt]" in text
    replace_payload(path, "model.txt", text.replace("[boosting: gbdt]", "[boostinx: gbdt]").encode())
    reply = worker.load(path, X=X)
    assert reply["outcome"] == "loaded" and reply["predictions"] == worker.load(base, X=X)["predictions"], reply
