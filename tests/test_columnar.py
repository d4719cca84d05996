"""Format 2: tree estimators as columns in trees.safetensors, format-1 compatibility, and attacks.

Round trips show exact predictions and that no tree type is trusted any more; the format-1
models under tests/data/format1 (saved by the format-1 code) still load with their recorded
predictions; every hostile tree file is loaded in a worker process and must be refused with a
SafeFlavorError — no signal, no marker file — even though the worker would predict with it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from hostile import edit_mlmodel, replace_payload

import mlflow_safeflavor as sf
from mlflow_safeflavor.validate import columnar as v
from mlflow_safeflavor.verify import verify_local

FORMAT1 = Path(__file__).parent / "data" / "format1"
# Saved by earlier releases (each directory's make_*.py says how): they must keep loading.
EARLIER = {1: FORMAT1, 2: Path(__file__).parent / "data" / "format2"}
TREES = "trees.safetensors"


def read_section(model_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((Path(model_dir) / "MLmodel").read_text())["flavors"]["safeflavor"]


# ------------------------------------------------------------------------------- round trips


def _tree_models():
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        ExtraTreesClassifier, GradientBoostingClassifier, GradientBoostingRegressor, IsolationForest, RandomForestRegressor,
    )
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.tree import DecisionTreeRegressor, ExtraTreeClassifier

    import zoo

    X, y, y3, reg, df, labels, labels3, _ = zoo._data()
    num = [f"f{i}" for i in range(6)]
    ct = ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])
    Xm = X.copy()
    Xm[::7, 1] = np.nan  # missing values: scikit-learn writes +inf thresholds for them
    return {
        "et_clf": (ExtraTreesClassifier(6, random_state=0).fit(X, labels3), X, ("predict", "predict_proba")),
        "rf_reg_multi": (RandomForestRegressor(4, random_state=0).fit(X, np.c_[reg, -reg]), X, ("predict",)),
        "rf_missing": (RandomForestRegressor(4, random_state=0).fit(Xm, reg), Xm, ("predict",)),
        "gb_multi": (GradientBoostingClassifier(n_estimators=4).fit(X, y3), X, ("predict", "predict_proba")),
        "iso": (IsolationForest(n_estimators=5, max_features=4, random_state=0).fit(X), X, ("predict", "score_samples")),
        "dt_reg": (DecisionTreeRegressor(max_depth=5).fit(X, reg), X, ("predict",)),
        "et_single": (ExtraTreeClassifier(random_state=0).fit(X, y), X, ("predict", "predict_proba")),
        "multioutput_in_pipeline": (
            Pipeline([("ct", ct), ("multi", MultiOutputRegressor(GradientBoostingRegressor(n_estimators=3)))]).fit(df, np.c_[reg, -reg]),
            df, ("predict",)),
    }


@pytest.mark.parametrize("name", list(_tree_models()))
def test_tree_models_round_trip_as_columns(name, tmp_path):
    model, X, methods = _tree_models()[name]
    before = {k: id(x) for k, x in vars(model).items()}
    sf.save_model(model, tmp_path / "m")
    assert {k: id(x) for k, x in vars(model).items()} == before  # the caller's model is untouched
    section = read_section(tmp_path / "m")
    assert section["format_version"] == 2 and section["columnar"] == TREES and TREES in section["files"]
    assert section["trusted_types"] == []  # no Tree / TreePredictor in the skops skeleton any more
    loaded = sf.load_model(str(tmp_path / "m"))
    for method in methods:
        np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(model, method)(X))


def test_zoo_tree_models_need_no_trusted_types(cases, tmp_path):
    for name in ("sk_rf_clf", "sk_rf_reg", "sk_hgb_clf", "sk_hgb_reg", "sk_gb_clf", "sk_pipeline_ct_rf"):
        sf.save_model(cases[name].model, tmp_path / name)
        assert read_section(tmp_path / name)["trusted_types"] == [], name


def test_inspect_reads_once_and_builds_once(cases, tmp_path):
    from mlflow_safeflavor.codecs import get_codec

    sf.save_model(cases["sk_knn_clf"].model, tmp_path / "m")
    section = read_section(tmp_path / "m")
    blobs = {f: (tmp_path / "m" / f).read_bytes() for f in section["files"]}
    codec = get_codec("sklearn")
    inspected = codec.inspect(blobs, section, path=str(tmp_path))
    assert inspected.required == set(section["trusted_types"]) != set()
    with pytest.raises(sf.UntrustedTypesError):
        codec.inspect(blobs, section, path=str(tmp_path)).build([])
    model = inspected.build(sorted(inspected.required))
    np.testing.assert_array_equal(model.predict(cases["sk_knn_clf"].X), cases["sk_knn_clf"].model.predict(cases["sk_knn_clf"].X))
    with pytest.raises(RuntimeError):
        inspected.build(sorted(inspected.required))


# ------------------------------------------------------------------------------- format 1


def _format1_X(doc):
    if "array" in doc:
        return np.asarray(doc["array"], dtype=doc["dtype"])
    return pd.DataFrame(doc["data"], columns=doc["columns"], index=doc["index"])


EXPECTED = {v: json.loads((d / "expected.json").read_text()) for v, d in EARLIER.items()}


@pytest.mark.parametrize("version, name", [(v, n) for v in EXPECTED for n in sorted(EXPECTED[v])],
                         ids=[f"format{v}-{n}" for v in EXPECTED for n in sorted(EXPECTED[v])])
def test_earlier_formats_still_load_with_the_same_predictions(version, name, tmp_path):
    import mlflow.pyfunc

    path = tmp_path / name
    shutil.copytree(EARLIER[version] / name, path)
    assert read_section(path)["format_version"] == version
    assert verify_local(path).ok
    X = _format1_X(EXPECTED[version][name]["X"])
    model = sf.load_model(str(path))
    for method, want in EXPECTED[version][name]["predictions"].items():
        got = np.asarray(getattr(model, method)(X))
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, np.asarray(want, dtype=float), rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype))
    want = np.asarray(EXPECTED[version][name]["predictions"]["predict"])
    for pyfunc in (sf.load_pyfunc(str(path), backend="native"), mlflow.pyfunc.load_model(str(path))):
        got = np.asarray(pyfunc.predict(X)).ravel()
        np.testing.assert_array_equal(got.astype(want.dtype) if want.dtype.kind != "U" else got, want)
    if name == "rf_onnx":
        onnx_model = sf.load_model(str(path), backend="onnx")
        np.testing.assert_array_equal(np.asarray(onnx_model.predict(X)), want)


# ------------------------------------------------------------------------------- hostile files


def _raw(path: Path) -> tuple[dict, bytes]:
    data = (path / TREES).read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _put_raw(path: Path, header: dict, buf: bytes, *, length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    replace_payload(path, TREES, (len(raw) if length is None else length).to_bytes(8, "little") + raw + buf)


def _edit_arrays(path: Path, edit: Callable[[dict, dict], None]) -> None:
    """Rewrite the tree file after ``edit(arrays, layout)``; the result is well-formed safetensors."""
    import io

    arrays, meta = v.load((path / TREES).read_bytes(), path="x")
    arrays = {k: np.array(a) for k, a in arrays.items()}
    layout = json.loads(meta["safeflavor"])
    fields = v.node_fields(arrays["node.records"], v.node_dtype(layout["node_dtype"], path="x"), path="x")
    arrays.update(fields)  # writable views into the records copy: edits land in node.records
    edit(arrays, layout)
    for name in fields:
        arrays.pop(name, None)
    out = io.BytesIO()
    v.dump({k: [a] for k, a in arrays.items()}, {k: a.dtype.str for k, a in arrays.items()},
           {k: a.shape for k, a in arrays.items()}, {"safeflavor": json.dumps(layout)}, out)
    replace_payload(path, TREES, out.getvalue())


def _inner(arrays: dict, prefix: str = "node.left_child") -> int:
    """Index of the second inner node of the first tree (so that index 0 lies behind it)."""
    return int(np.flatnonzero(arrays[prefix] != -1)[1]) if prefix.startswith("node.") else \
        int(np.flatnonzero(arrays["hgbnode.is_leaf"] == 0)[1])


def _set(name: str, value, *, where: Callable[[dict], int] = _inner):
    def edit(arrays, layout):
        if name not in arrays:
            raise KeyError(name)
        arrays[name][where(arrays)] = value
    return edit


def _header(edit: Callable[[dict], None]):
    def apply(path):
        header, buf = _raw(path)
        edit(header)
        _put_raw(path, header, buf)
    return apply


def _swap_in_trees_from(other_case_model: Callable[[], object]):
    def apply(path):
        other = path.parent / "other"
        sf.save_model(other_case_model(), other)
        replace_payload(path, TREES, (other / TREES).read_bytes())
    return apply


def _fewer_trees():
    from sklearn.ensemble import RandomForestClassifier

    import zoo

    X, _, _, _, df, labels, _, _ = zoo._data()
    num = [f"f{i}" for i in range(6)]
    return RandomForestClassifier(n_estimators=7, random_state=0).fit(df[num], labels)


def _other_forest_class():
    from sklearn.ensemble import ExtraTreesClassifier

    import zoo

    _, _, _, _, df, labels, _, _ = zoo._data()
    return ExtraTreesClassifier(n_estimators=8, random_state=0).fit(df[[f"f{i}" for i in range(6)]], labels)


def _first_range(header):
    name = next(k for k in header if k != "__metadata__" and header[k]["data_offsets"][1] > 0)
    return name


@dataclass
class Attack:
    name: str
    case: str
    apply: Callable[[Path], None]
    message: str


ATTACKS = [
    Attack("header-length-past-end", "sk_rf_clf", lambda p: _put_raw(p, *_raw(p), length=2**40), "header"),
    Attack("header-not-json", "sk_rf_clf", lambda p: replace_payload(p, TREES, (5).to_bytes(8, "little") + b"{[}:x" + b"\0" * 64), "not valid JSON"),
    Attack("offsets-past-end", "sk_rf_clf", _header(lambda h: h[_first_range(h)].__setitem__("data_offsets", [0, 2**40])), "byte range"),
    Attack("offsets-overlap", "sk_rf_clf", _header(lambda h: h["tree.n_features"].__setitem__("data_offsets", list(h["tree.max_depth"]["data_offsets"]))), "overlap"),
    Attack("huge-declared-shape", "sk_rf_clf", _header(lambda h: h["tree.value"].__setitem__("shape", [2**61])), "byte range"),
    Attack("bytes-after-last-array", "sk_rf_clf", lambda p: _put_raw(p, _raw(p)[0], _raw(p)[1] + b"\0" * 16), "after its last array"),
    Attack("unknown-dtype", "sk_rf_clf", _header(lambda h: h["tree.n_outputs"].__setitem__("dtype", "OBJ")), "malformed entry"),
    Attack("wrong-dtype", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: a.__setitem__("tree.node_offsets", a["tree.node_offsets"].astype(np.uint32))), "not <i8"),
    Attack("extra-array", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: a.__setitem__("code", np.zeros(3))), "exactly the arrays"),
    Attack("missing-array", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: a.pop("tree.max_depth")), "exactly the arrays"),
    Attack("child-index-backwards", "sk_rf_clf", lambda p: _edit_arrays(p, _set("node.left_child", 0)), "pointing backwards"),
    Attack("child-index-past-tree", "sk_rf_clf", lambda p: _edit_arrays(p, _set("node.right_child", 10**9)), "past the end"),
    Attack("child-index-into-next-tree", "sk_rf_clf", lambda p: _edit_arrays(p, _next_tree_child(p)), "past the end"),
    Attack("node-with-one-child", "sk_rf_clf", lambda p: _edit_arrays(p, _set("node.right_child", -1)), "exactly one child"),
    Attack("feature-out-of-range", "sk_rf_clf", lambda p: _edit_arrays(p, _set("node.feature", 10**6)), "feature index out of range"),
    Attack("feature-negative", "sk_rf_clf", lambda p: _edit_arrays(p, _set("node.feature", -3)), "feature index out of range"),
    Attack("node-layout-overlapping-fields", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: l["node_dtype"]["offsets"].__setitem__(1, 0)), "node record layout"),
    Attack("node-layout-foreign-field", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: l["node_dtype"]["formats"].__setitem__(0, "|O")), "node record layout"),
    Attack("node-records-short-rows", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: l["node_dtype"].__setitem__("itemsize", 72)), "node records of 64 bytes"),
    Attack("nan-threshold", "sk_rf_clf", lambda p: _edit_arrays(p, _set("node.threshold", np.nan)), "NaN"),
    Attack("node-offsets-not-covering", "sk_rf_clf", lambda p: _edit_arrays(p, _set("tree.node_offsets", 10**6, where=lambda a: -1)), "cover exactly"),
    Attack("node-offsets-decreasing", "sk_rf_clf", lambda p: _edit_arrays(p, _set("tree.node_offsets", 0, where=lambda a: 1)), "not increasing"),
    Attack("class-count-lie", "sk_rf_clf", lambda p: _edit_arrays(p, _set("tree.n_classes", 3, where=lambda a: 0)), "tree values"),
    Attack("width-lie-matches-feature", "sk_rf_clf", lambda p: _edit_arrays(p, _wide_tree), "input width"),
    Attack("fewer-trees-than-n_estimators", "sk_rf_clf", _swap_in_trees_from(_fewer_trees), "n_estimators"),
    Attack("layout-class-swapped", "sk_rf_clf", _swap_in_trees_from(_other_forest_class), "but the model holds"),
    Attack("layout-unknown-kind", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: l["slots"][0].__setitem__("kind", "pickle")), "malformed layout"),
    Attack("layout-range-gap", "sk_rf_clf", lambda p: _edit_arrays(p, lambda a, l: l["slots"][0].__setitem__("range", [1, 8])), "gap"),
    Attack("varying-attribute-not-a-tree-attribute", "sk_rf_clf", lambda p: _edit_arrays(p, _rename_varying("__class__")), "malformed layout"),
    Attack("hgb-child-backwards", "sk_hgb_clf", lambda p: _edit_arrays(p, _set("hgbnode.left", 0, where=lambda a: _inner(a, "hgb"))), "pointing backwards"),
    Attack("hgb-feature-out-of-range", "sk_hgb_clf", lambda p: _edit_arrays(p, _set("hgbnode.feature_idx", 99, where=lambda a: _inner(a, "hgb"))), "feature index out of range"),
    Attack("hgb-width-lie", "sk_hgb_clf", lambda p: _edit_arrays(p, _wide_hgb), "input width"),
    Attack("hgb-bitset-index", "sk_hgb_clf", lambda p: _edit_arrays(p, _categorical_without_bitsets), "bitset index"),
    Attack("gb-shape-lie", "sk_gb_clf", lambda p: _edit_arrays(p, lambda a, l: l["slots"][0].__setitem__("shape", [5, 2])), "another size"),
    Attack("columnar-in-format-1-record", "sk_rf_clf", lambda p: edit_mlmodel(p, lambda s: s.__setitem__("format_version", 1)), "format-2"),
    Attack("columnar-names-another-file", "sk_rf_clf", lambda p: edit_mlmodel(p, lambda s: s.__setitem__("columnar", "model.skops")), "safeflavor.columnar"),
    Attack("markers-without-tree-file", "sk_rf_clf", lambda p: edit_mlmodel(p, lambda s: (s.pop("columnar"), s["files"].pop(TREES))), "marker"),
]


def _next_tree_child(path):
    def edit(arrays, layout):
        offs = arrays["tree.node_offsets"]
        arrays["node.right_child"][_inner(arrays)] = offs[1] - offs[0] + 1  # a node of the next tree
    return edit


def _wide_tree(arrays, layout):
    arrays["tree.n_features"][0] = 1000
    arrays["node.feature"][_inner(arrays)] = 500


def _wide_hgb(arrays, layout):
    arrays["hgb.n_features"][:] = 1000
    arrays["hgbnode.feature_idx"][_inner(arrays, "hgb")] = 500


def _categorical_without_bitsets(arrays, layout):
    i = _inner(arrays, "hgb")
    arrays["hgbnode.is_categorical"][i] = 1
    arrays["hgbnode.bitset_idx"][i] = 7


def _rename_varying(name):
    def edit(arrays, layout):
        old = next(iter(layout["slots"][0]["varying"]))
        layout["slots"][0]["varying"] = {name: "int"}
        arrays["slot0." + name] = arrays.pop("slot0." + old)
    return edit


def test_attack_table_is_whole():
    assert len({a.name for a in ATTACKS}) == len(ATTACKS) >= 30


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_hostile_tree_file_is_refused_in_a_worker(attack, cases, worker, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "model"
    sf.save_model(cases[attack.case].model, path)
    assert TREES in read_section(path)["files"]
    attack.apply(path)
    data = cases[attack.case].X
    X = {"data": data.to_numpy().tolist(), "columns": list(data.columns)} if hasattr(data, "columns") else np.asarray(data).tolist()
    reply = worker.load(path, "load_model", X=X)
    assert reply["outcome"] == "refused", reply
    assert reply["type"] == "MalformedArtifactError", reply
    assert attack.message in reply["message"], reply["message"]
    assert str(path) in reply["message"], reply["message"]
    assert not marker.exists()


STRUCTURAL = [a for a in ATTACKS if a.case == "sk_rf_clf" and a.message in (
    "pointing backwards", "past the end", "exactly one child", "feature index out of range", "NaN")]


def _checked_message(path: Path) -> str | None:
    from mlflow_safeflavor.codecs import columnar_load

    try:
        columnar_load.read((path / TREES).read_bytes(), path=str(path))
    except sf.MalformedArtifactError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("attack", [None, *STRUCTURAL], ids=["untouched", *[a.name for a in STRUCTURAL]])
def test_record_words_fast_path_and_field_copies_decide_alike(attack, cases, tmp_path, monkeypatch):
    """check_trees reads scikit-learn's layout as 8-byte words; any other layout by field name."""
    assert len(STRUCTURAL) >= 7
    path = tmp_path / "model"
    sf.save_model(cases["sk_rf_clf"].model, path)
    if attack is not None:
        attack.apply(path)
    fast = _checked_message(path)
    monkeypatch.setattr(v, "_leading_words", lambda a: None)
    assert _checked_message(path) == fast
    assert (fast is None) == (attack is None)
    if attack is not None:
        assert attack.message in fast
