"""The hardened server's fast path gives byte-identical answers to MLflow's handler, or steps aside.

Both are driven through ASGI in-process: ``FastInvocations`` (what ``mlflow-safeflavor serve``
runs) and the MLflow scoring app it wraps (``.app``), on the same request bodies.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

import mlflow_safeflavor
from mlflow_safeflavor.flavor import load_pyfunc
from mlflow_safeflavor.serving import FastInvocations, _app_for

COLS = [f"f{i}" for i in range(8)]


def _call(app, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/invocations", "raw_path": b"/invocations", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", content_type.encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _served(tmp_path, model, X, **save):
    mlflow_safeflavor.save_model(model, tmp_path / "m", input_example=X.head(3), **save)
    app = _app_for(load_pyfunc(str(tmp_path / "m")))
    assert isinstance(app, FastInvocations)
    return app


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(400, len(COLS))), columns=COLS)
    return X, (X["f0"] + X["f1"] > 0).map({True: "yes", False: "no"})


@pytest.mark.parametrize("onnx", [True, False], ids=["onnx", "native"])
def test_numeric_requests_answer_like_mlflow(tmp_path, data, onnx):
    from sklearn.ensemble import RandomForestClassifier

    X, y = data
    app = _served(tmp_path, RandomForestClassifier(20, max_depth=5, random_state=0).fit(X, y), X, onnx=onnx)
    assert app.columns == tuple(COLS)
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 33, 200):
        rows = rng.normal(size=(n, len(COLS))).tolist()
        rows[0][0] = 3  # an int where the schema says double: MLflow converts, so must we
        body = json.dumps({"dataframe_split": {"columns": COLS, "data": rows}}).encode()
        assert app._parse("application/json", body) is not None
        fast, slow = _call(app, body), _call(app.app, body)
        assert fast == slow and fast[0] == 200
        with_index = json.dumps({"dataframe_split": {"index": list(range(100, 100 + n)), "columns": COLS, "data": rows}}).encode()
        assert app._parse("application/json", with_index) is not None
        assert _call(app, with_index) == slow
        assert '"yes"' in fast[1].decode() or '"no"' in fast[1].decode()


def test_regression_floats_identical(tmp_path, data):
    import lightgbm

    X, _ = data
    app = _served(tmp_path, lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(X, X["f2"] * 3), X)
    body = json.dumps({"dataframe_split": {"columns": COLS, "data": X.head(5).values.tolist()}}).encode()
    assert _call(app, body) == _call(app.app, body)


@pytest.mark.parametrize("body, content_type", [
    ({"dataframe_split": {"columns": COLS[::-1], "data": [[0.0] * 8]}}, "application/json"),
    ({"dataframe_split": {"columns": COLS[:-1], "data": [[0.0] * 7]}}, "application/json"),
    ({"dataframe_split": {"columns": COLS, "data": [[0.0] * 8]}, "params": {"predict_method": "predict_proba"}}, "application/json"),
    ({"dataframe_split": {"columns": COLS, "data": [["a"] + [0.0] * 7]}}, "application/json"),
    ({"dataframe_split": {"columns": COLS, "data": [[True] + [0.0] * 7]}}, "application/json"),
    ({"dataframe_split": {"columns": COLS, "data": [[None] + [0.0] * 7]}}, "application/json"),
    ({"dataframe_split": {"columns": COLS, "data": [[0.0] * 8], "index": [5, 6]}}, "application/json"),
    ({"dataframe_records": [dict.fromkeys(COLS, 0.0)]}, "application/json"),
    ({"inputs": {c: [0.0] for c in COLS}}, "application/json"),
    ({"dataframe_split": {"columns": COLS, "data": [[0.0] * 8]}}, "application/json; charset=latin-1"),
    ({"dataframe_split": {"columns": COLS, "data": []}}, "application/json"),
    ("not json", "application/json"),
], ids=["reordered", "missing-column", "params", "string", "bool", "null", "bad-index", "records", "inputs",
        "latin-1", "empty", "garbage"])
def test_everything_else_goes_to_mlflow_unchanged(tmp_path, data, body, content_type):
    from sklearn.linear_model import LogisticRegression

    X, y = data
    app = _served(tmp_path, LogisticRegression().fit(X, y), X, onnx=False)
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert app._parse(content_type, raw) is None
    assert _call(app, raw, content_type) == _call(app.app, raw, content_type)


def test_nan_literal_is_left_to_mlflow(tmp_path, data):
    from sklearn.linear_model import LogisticRegression

    X, y = data
    app = _served(tmp_path, LogisticRegression().fit(X, y), X, onnx=False)
    raw = ('{"dataframe_split": {"columns": %s, "data": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}}' % json.dumps(COLS)).encode()
    rows = app._parse("application/json", raw)
    assert rows is not None and app._answer(rows) is None
    assert _call(app, raw) == _call(app.app, raw)


def test_string_columns_disable_the_fast_path(tmp_path, data):
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    X, y = data
    Xs = X.assign(city=np.where(X["f0"] > 0, "a", "b"))
    pre = make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough")
    app = _served(tmp_path, make_pipeline(pre, LogisticRegression()).fit(Xs, y), Xs, onnx=False)
    assert app.columns is None
    body = json.dumps({"dataframe_split": Xs.head(3).to_dict(orient="split")}).encode()
    assert _call(app, body) == _call(app.app, body)
