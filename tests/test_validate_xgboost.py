"""Tests of mlflow_safeflavor.validate.xgboost_model: the pre-load structural check of XGBoost files.

Legit models of every kind must pass in both formats; crafted files must be refused with
MalformedArtifactError and nothing else; a sample of the crafted files is shown to really crash a
raw XGBoost load + predict (in a subprocess), so the refusals are not theoretical.
"""

from __future__ import annotations

import ast
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_safeflavor.errors import MalformedArtifactError
from mlflow_safeflavor.validate import xgboost_model as V
from mlflow_safeflavor.validate.xgboost_model import _decode, _schema, _structure, _ubj_trees, validate

xgb = pytest.importorskip("xgboost")
pd = pytest.importorskip("pandas")

FORMATS = ("ubj", "json")


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

def _raw(booster) -> dict[str, bytes]:
    return {fmt: bytes(booster.save_raw(raw_format=fmt)) for fmt in FORMATS}


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, bytes]]:
    """Small models of every kind XGBoost writes, as {"name": {"ubj": bytes, "json": bytes}}."""
    warnings.filterwarnings("ignore", category=UserWarning)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y_bin = (X[:, 0] + X[:, 1] > 0).astype(int)
    y_reg = X[:, 0] * 2 + X[:, 2]
    y_cls = rng.integers(0, 3, 300)
    d_bin, d_reg, d_cls = xgb.DMatrix(X, y_bin), xgb.DMatrix(X, y_reg), xgb.DMatrix(X, y_cls)
    out = {
        "binary": xgb.train({"objective": "binary:logistic", "max_depth": 3}, d_bin, 4),
        "regression": xgb.train({"objective": "reg:squarederror", "max_depth": 4}, d_reg, 5),
        "multiclass": xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3}, d_cls, 3),
        "rf": xgb.train({"num_parallel_tree": 4, "subsample": 0.8, "colsample_bynode": 0.8,
                         "learning_rate": 1.0, "max_depth": 3}, d_reg, 1),
        "dart": xgb.train({"booster": "dart", "objective": "reg:squarederror", "max_depth": 3,
                           "rate_drop": 0.3}, d_reg, 4),
        "gblinear": xgb.train({"booster": "gblinear", "objective": "reg:squarederror"}, d_reg, 3),
        "gblinear_multiclass": xgb.train({"booster": "gblinear", "objective": "multi:softprob",
                                          "num_class": 3}, d_cls, 3),
        # >127 trees: tree ids switch from the 1-byte to the 2-byte UBJ integer marker
        "many_stumps": xgb.train({"objective": "reg:squarederror", "max_depth": 1}, d_reg, 150),
        # exact + gamma prunes: trees keep deleted nodes (num_deleted > 0)
        "exact_pruned": xgb.train({"tree_method": "exact", "gamma": 5.0, "max_depth": 5,
                                   "min_child_weight": 0}, d_reg, 3),
    }
    ranker = xgb.XGBRanker(n_estimators=4, max_depth=3)
    ranker.fit(X, rng.integers(0, 4, 300), qid=np.repeat(np.arange(30), 10))
    out["ranker"] = ranker.get_booster()
    clf = xgb.XGBClassifier(n_estimators=3, max_depth=2)
    clf.fit(pd.DataFrame(X, columns=[f"f{i}" for i in range(5)]), y_bin)
    out["sklearn_named_features"] = clf.get_booster()

    df = pd.DataFrame({
        "num": X[:, 0],
        "letters": pd.Categorical(rng.choice(list("wxyz"), 300)),
        "words": pd.Categorical(rng.choice(["aa", "b", "cccc"], 300)),
        "ints": pd.Categorical(rng.choice([30, 10, 20], 300)),
    })
    y_cat = df["letters"].isin(["x", "y"]).astype(float) + df["num"] + (df["words"] == "b")
    d_cat = xgb.DMatrix(df, y_cat, enable_categorical=True)
    out["categorical"] = xgb.train({"tree_method": "hist", "max_depth": 3, "max_cat_to_onehot": 1}, d_cat, 3)
    out["categorical_onehot"] = xgb.train({"tree_method": "hist", "max_depth": 3, "max_cat_to_onehot": 16},
                                          d_cat, 3)

    Y = np.stack([X[:, 0], X[:, 1] - X[:, 2]], axis=1)
    d_multi = xgb.DMatrix(X, Y)
    out["multi_output_tree"] = xgb.train({"tree_method": "hist", "multi_strategy": "multi_output_tree",
                                          "max_depth": 3}, d_multi, 3)
    out["multi_target_per_tree"] = xgb.train({"tree_method": "hist", "max_depth": 3}, d_multi, 3)
    return {name: _raw(booster) for name, booster in out.items()}


LEGIT = (
    "binary", "regression", "multiclass", "rf", "dart", "gblinear", "gblinear_multiclass", "many_stumps",
    "exact_pruned", "ranker", "sklearn_named_features", "categorical", "categorical_onehot",
    "multi_output_tree", "multi_target_per_tree",
)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", LEGIT)
def test_legit_models_validate_clean(models, name, fmt):
    validate(models[name][fmt], fmt=fmt, path=f"{name}/model.{fmt}")


def test_fixture_covers_what_it_claims(models):
    """The interesting configurations really produce the structures they are meant to cover."""
    def doc(name):
        return json.loads(models[name]["json"])["learner"]

    def trees(name):
        booster = doc(name)["gradient_booster"]
        return (booster.get("gbtree", booster))["model"]["trees"]

    assert doc("dart")["gradient_booster"]["name"] == "dart"
    assert doc("gblinear")["gradient_booster"]["name"] == "gblinear"
    assert any(t["categories_nodes"] for t in trees("categorical"))
    assert doc("categorical")["gradient_booster"]["model"]["cats"]["enc"]
    assert all(t["tree_param"]["size_leaf_vector"] == "2" and "leaf_weights" in t
               for t in trees("multi_output_tree"))
    assert any(t["tree_param"]["num_deleted"] != "0" for t in trees("exact_pruned"))
    assert len(trees("many_stumps")) > 127
    assert doc("sklearn_named_features")["feature_names"] == [f"f{i}" for i in range(5)]


TEMPLATE_MODELS = ("binary", "regression", "multiclass", "rf", "dart", "many_stumps", "ranker",
                   "sklearn_named_features", "multi_target_per_tree")


@pytest.mark.parametrize("name", [n for n in LEGIT if not n.startswith("gblinear")])
def test_fast_ubj_paths_read_the_same_trees_as_the_generic_decoder(models, name, monkeypatch):
    """UBJ trees are read by a byte template (numeric trees), a header scanner (any tree in XGBoost's
    key order) or the generic decoder; all three must produce identical arrays."""
    data = models[name]["ubj"]

    def trees_of(doc):
        booster = doc["learner"]["gradient_booster"]
        return booster.get("gbtree", booster)["model"]["trees"]

    def same(a, b):
        for field in _structure.Forest.__slots__:
            assert np.array_equal(np.asarray(getattr(a, field), np.int64),
                                  np.asarray(getattr(b, field), np.int64)), field

    first = trees_of(_decode.UBJDecoder(data).decode())
    assert type(first) is _structure.Forest
    template_used = _ubj_trees.fast_trees(_decode.UBJDecoder(data), data.index(b"trees[#L") + 16, len(first.n), 5)
    assert (template_used is not None) == (name in TEMPLATE_MODELS)
    monkeypatch.setattr(_decode, "fast_trees", lambda *args: None)
    scanned = trees_of(_decode.UBJDecoder(data).decode())
    assert type(scanned) is _structure.Forest
    monkeypatch.setattr(_decode, "scan_trees", lambda *args: None)
    generic = _schema._forest_from_dicts(trees_of(_decode.UBJDecoder(data).decode()))
    same(first, generic)
    same(scanned, generic)


def _many_trees_ubj(models, count: int, id_of=lambda t: t) -> bytes:
    """The binary model with tree 0 repeated ``count`` times (canonical UBJ, ids from ``id_of``)."""
    doc = json.loads(models["binary"]["json"])
    model = gbtree_model(doc)
    first = model["trees"][0]
    model["trees"] = []
    model["tree_info"] = [0] * count
    model["iteration_indptr"] = list(range(count + 1))
    model["gbtree_model_param"]["num_trees"] = str(count)
    head, tail = to_ubj(dict(first, id=0)).split(b"L" + struct.pack(">q", 2) + b"idi\x00")
    head += b"L" + struct.pack(">q", 2) + b"id"
    trees = b"".join(head + to_ubj(id_of(t)) + tail for t in range(count))
    empty = b"trees[#L" + struct.pack(">q", 0)
    out = to_ubj(doc)
    assert out.count(empty) == 1
    return out.replace(empty, b"trees[#L" + struct.pack(">q", count) + trees)


def test_more_than_32767_trees_use_the_fast_path(models):
    """Tree ids past 32766 are written with the 4-byte 'l' marker; the template handles all three."""
    data = _many_trees_ubj(models, 33_000)
    validate(data, fmt="ubj", path="p")
    template = _ubj_trees.fast_trees(_decode.UBJDecoder(data), data.index(b"trees[#L") + 16, 33_000, 5)
    assert template is not None and np.array_equal(template[0].ids, np.arange(33_000))
    # a repeated id written with a shorter marker: the template misses it, the scanner reads it
    refused(_many_trees_ubj(models, 33_000, lambda t: 5 if t == 32_900 else t), "ubj", "tree ids")
    refused(_many_trees_ubj(models, 33_000, lambda t: 33_000 if t == 40_000 - 7_001 else t), "ubj", "tree ids")


def test_validator_does_not_import_xgboost():
    for source in Path(V.__file__).parent.glob("*.py"):  # every module of the validator package
        tree = ast.parse(source.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert "xgboost" not in imported, source.name


# --------------------------------------------------------------------------------------------------
# Crafting helpers
# --------------------------------------------------------------------------------------------------

# Typed arrays as XGBoost's UBJ writer emits them (everything else is a generic array).
_TYPED = {
    "base_weights": "d", "loss_changes": "d", "sum_hessian": "d", "split_conditions": "d",
    "leaf_weights": "d", "weights": "d", "left_children": "l", "right_children": "l", "parents": "l",
    "split_indices": "l", "categories": "l", "categories_nodes": "l", "offsets": "l",
    "feature_segments": "l", "sorted_idx": "l", "default_left": "U", "split_type": "U",
    "categories_segments": "L", "categories_sizes": "L",
}
_PACK = {"d": ">f", "l": ">i", "U": ">B", "L": ">q", "i": ">b", "I": ">h"}
_BITS = {"l": 32, "U": 8, "L": 64, "i": 8, "I": 16}


def _fit(kind: str, x):
    """Wrap a (mutated) integer into the typed array's range, as a C cast would."""
    if kind == "d":
        return x
    bits = _BITS[kind]
    x %= 1 << bits
    return x if kind == "U" or x < 1 << (bits - 1) else x - (1 << bits)
_CAT_VALUES = {9: "i", 10: "U", 11: "I", 12: "I", 13: "l", 14: "l", 15: "L", 16: "L"}


def to_ubj(value, key=None, parent=None) -> bytes:
    """Encode a JSON document the way XGBoost's UBJWriter does (byte-identical for real models)."""
    if isinstance(value, dict):
        body = b"".join(
            b"L" + struct.pack(">q", len(k.encode())) + k.encode() + to_ubj(value[k], k, value)
            for k in sorted(value, key=lambda s: s.encode())
        )
        return b"{" + body + b"}"
    if isinstance(value, list):
        kind = _TYPED.get(key)
        if key == "values" and parent is not None:
            kind = "i" if "offsets" in parent else _CAT_VALUES.get(parent.get("type"))
        if kind:
            return (b"[$" + kind.encode() + b"#L" + struct.pack(">q", len(value))
                    + b"".join(struct.pack(_PACK[kind], _fit(kind, x)) for x in value))
        return b"[#L" + struct.pack(">q", len(value)) + b"".join(to_ubj(x) for x in value)
    if value is True:
        return b"T"
    if value is False:
        return b"F"
    if value is None:
        return b"Z"
    if isinstance(value, int):
        if -128 < value < 127:
            return b"i" + struct.pack(">b", value)
        if -32768 < value < 32767:
            return b"I" + struct.pack(">h", value)
        if -(2**31) < value < 2**31 - 1:
            return b"l" + struct.pack(">i", value)
        return b"L" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">f", value)
    raw = value.encode()
    return b"SL" + struct.pack(">q", len(raw)) + raw


@pytest.mark.parametrize("name", LEGIT)
def test_test_encoder_matches_xgboost_ubj(models, name):
    """Crafted UBJ below is produced by to_ubj(); it must be exactly what XGBoost writes."""
    assert to_ubj(json.loads(models[name]["json"])) == models[name]["ubj"]


def learner(doc):
    return doc["learner"]


def gbtree_model(doc):
    booster = doc["learner"]["gradient_booster"]
    return booster.get("gbtree", booster)["model"]


def tree(doc, i=0):
    return gbtree_model(doc)["trees"][i]


def craft(models, name, fmt, mutate) -> bytes:
    doc = json.loads(models[name]["json"])
    mutate(doc)
    return json.dumps(doc).encode() if fmt == "json" else to_ubj(doc)


def refused(data: bytes, fmt: str, match: str | None = None) -> str:
    with pytest.raises(MalformedArtifactError) as info:
        validate(data, fmt=fmt, path="m/model." + fmt)
    message = str(info.value)
    assert message.startswith("m/model." + fmt + ": ")
    assert "do not load it" in message and "re-save the model" in message
    assert "could not be validated" not in message, message  # an explicit check, not the safety net
    if match:
        assert match in message, message
    assert info.value.path == "m/model." + fmt
    return message


def set_item(path_fn, key, index, value):
    def mutate(doc):
        path_fn(doc)[key][index] = value
    return mutate


def set_key(path_fn, key, value):
    def mutate(doc):
        path_fn(doc)[key] = value
    return mutate


def drop_key(path_fn, key):
    def mutate(doc):
        del path_fn(doc)[key]
    return mutate


def _chain_tree(depth: int) -> dict:
    """A valid-looking tree that is a single path ``depth`` levels deep (2 * depth + 1 nodes)."""
    n = 2 * depth + 1
    left, right, parents = [-1] * n, [-1] * n, [0] * n
    parents[0] = 2**31 - 1
    for k in range(depth):
        i = 2 * k
        left[i], right[i] = i + 1, i + 2
        parents[i + 1] = parents[i + 2] = i
    return {"left_children": left, "right_children": right, "parents": parents,
            "split_indices": [0] * n, "split_conditions": [0.0] * n, "default_left": [0] * n,
            "split_type": [0] * n, "base_weights": [0.1] * n, "loss_changes": [0.0] * n,
            "sum_hessian": [1.0] * n, "tree_param": {"num_deleted": "0", "num_feature": "5",
                                                     "num_nodes": str(n), "size_leaf_vector": "1"}}


def replace_tree0(new):
    def mutate(doc):
        t = tree(doc)
        for key in list(t):
            if key not in ("id", "categories", "categories_nodes", "categories_segments", "categories_sizes"):
                del t[key]
        t.update(json.loads(json.dumps(new)))
    return mutate


def detached_subtree(doc):
    """Tree 0 gets an extra split node (and its two leaves) that claims node 1 as parent, but no
    node points to it: children, parents and in-degrees are all consistent; it is just unreachable."""
    t = tree(doc)
    n = int(t["tree_param"]["num_nodes"])
    for key, values in (("left_children", [n + 1, -1, -1]), ("right_children", [n + 2, -1, -1]),
                        ("parents", [1, n, n])):
        t[key] = t[key] + values
    for key, fill in (("split_indices", 0), ("split_type", 0), ("default_left", 0), ("split_conditions", 0.0),
                      ("base_weights", 0.0), ("loss_changes", 0.0), ("sum_hessian", 1.0)):
        t[key] = t[key] + [fill] * 3
    t["tree_param"]["num_nodes"] = str(n + 3)


def detached_cycle(doc):
    """Tree 0 gets four extra nodes forming a cycle (a -> b -> a) that no path from the root
    reaches. Children and parents agree and nobody has two parents."""
    t = tree(doc)
    n = int(t["tree_param"]["num_nodes"])
    extra = 4
    for key, values in (("left_children", [n + 1, n, -1, -1]), ("right_children", [n + 2, n + 3, -1, -1]),
                        ("parents", [n + 1, n, n, n + 1])):
        t[key] = t[key] + values
    for key, fill in (("split_indices", 0), ("split_type", 0), ("default_left", 0), ("split_conditions", 0.0),
                      ("base_weights", 0.0), ("loss_changes", 0.0), ("sum_hessian", 1.0)):
        t[key] = t[key] + [fill] * extra
    t["tree_param"]["num_nodes"] = str(n + extra)


def _deleted_leaves(doc) -> tuple[dict, list[int]]:
    """A pruned tree and its unreachable (deleted) leaves."""
    for t in gbtree_model(doc)["trees"]:
        left, right = t["left_children"], t["right_children"]
        linked = {c for c in left + right if c >= 0}
        dead = [i for i in range(1, len(left)) if i not in linked]
        if len(dead) >= 2:
            return t, dead
    raise AssertionError("no pruned tree with two deleted leaves")


def parent_cycle_among_deleted_leaves(doc):
    """Two deleted leaves name each other as parent: nothing reaches them, but XGBoost's GetDepth()
    (used when pruning during continued training) would follow that loop forever."""
    t, (a, b, *_) = _deleted_leaves(doc)
    t["parents"][a], t["parents"][b] = b, a


# Each case: (model, mutation, text expected in the message)
CRAFTED = {
    "child index out of range": ("binary", set_item(tree, "left_children", 0, 10**6), "child index out of range"),
    "negative child index": ("binary", set_item(tree, "right_children", 0, -7), "child index out of range"),
    "child index 0 (points to root)": ("binary", set_item(tree, "left_children", 1, 0), "child index out of range"),
    "cycle to an ancestor": ("regression", set_item(tree, "left_children", 3, 1), ""),
    "both children the same": ("binary", set_item(tree, "right_children", 0, 1), "child index out of range"),
    "leaf with one child": ("binary", lambda d: tree(d)["right_children"].__setitem__(
        tree(d)["left_children"].index(-1), 1), "leaf"),
    "detached subtree": ("binary", detached_subtree, "cannot be reached"),
    "detached cycle": ("binary", detached_cycle, ""),
    "split index >= num_feature": ("binary", set_item(tree, "split_indices", 0, 5), "splits on feature 5"),
    "negative split index": ("binary", set_item(tree, "split_indices", 0, -1), "splits on feature -1"),
    "parent out of range": ("binary", set_item(tree, "parents", 1, 10**6), ""),
    "parent -1 on a non-root": ("binary", set_item(tree, "parents", 1, -1), ""),
    "root with a parent": ("binary", set_item(tree, "parents", 0, 1), "root has a parent"),
    "parent cycle among deleted leaves": ("exact_pruned", parent_cycle_among_deleted_leaves, "parent cycle"),
    "array length mismatch": ("binary", lambda d: tree(d)["loss_changes"].pop(), "loss_changes has"),
    "short left_children": ("binary", lambda d: tree(d)["left_children"].pop(), "left_children has"),
    "num_nodes lie (bigger)": ("binary", lambda d: tree(d)["tree_param"].__setitem__(
        "num_nodes", str(int(tree(d)["tree_param"]["num_nodes"]) + 2)), "num_nodes is"),
    "num_nodes lie (smaller)": ("binary", lambda d: tree(d)["tree_param"].__setitem__("num_nodes", "1"),
                                "num_nodes is 1"),
    "num_nodes zero": ("binary", lambda d: tree(d)["tree_param"].__setitem__("num_nodes", "0"), "num_nodes"),
    "num_nodes not decimal": ("binary", lambda d: tree(d)["tree_param"].__setitem__("num_nodes", "1_5"),
                              "plain decimal"),
    "missing tree key": ("binary", drop_key(tree, "parents"), "has no 'parents'"),
    "tree_info out of range": ("binary", set_item(gbtree_model, "tree_info", 0, 1), "tree_info"),
    "tree_info out of range (multiclass)": ("multiclass", set_item(gbtree_model, "tree_info", 2, 3), "tree_info"),
    "tree_info negative": ("binary", set_item(gbtree_model, "tree_info", 0, -1), "tree_info"),
    "tree_info too short": ("binary", lambda d: gbtree_model(d)["tree_info"].pop(), "tree_info"),
    "num_trees lie": ("binary", lambda d: gbtree_model(d)["gbtree_model_param"].__setitem__("num_trees", "9"),
                      "num_trees"),
    "duplicate tree id": ("binary", set_key(lambda d: tree(d, 1), "id", 0), "tree ids"),
    "tree id out of range": ("binary", set_key(lambda d: tree(d, 1), "id", 10**6), "tree ids"),
    "iteration_indptr empty": ("binary", set_key(gbtree_model, "iteration_indptr", []), "iteration_indptr"),
    "iteration_indptr wrong end": ("binary", set_item(gbtree_model, "iteration_indptr", -1, 99), "iteration_indptr"),
    "iteration_indptr decreasing": ("binary", set_item(gbtree_model, "iteration_indptr", 1, 3), "iteration_indptr"),
    "too deep": ("binary", replace_tree0(_chain_tree(V.MAX_TREE_DEPTH + 1)), "deeper than"),
    "base_score count": ("multiclass", lambda d: learner(d)["learner_model_param"].__setitem__(
        "base_score", "[0.1,0.2]"), "base_score"),
    "base_score empty": ("binary", lambda d: learner(d)["learner_model_param"].__setitem__("base_score", ""),
                         "base_score"),
    "num_feature not decimal": ("binary", lambda d: learner(d)["learner_model_param"].__setitem__(
        "num_feature", "\uff15"), "num_feature"),
    "num_feature huge": ("binary", lambda d: learner(d)["learner_model_param"].__setitem__(
        "num_feature", "99999999999"), "num_feature"),
    "feature_names length": ("sklearn_named_features", lambda d: learner(d)["feature_names"].pop(),
                             "feature_names"),
    "unknown booster": ("binary", lambda d: learner(d)["gradient_booster"].__setitem__("name", "gbforest"),
                        "gbforest"),
    "dart weight_drop short": ("dart", lambda d: learner(d)["gradient_booster"]["weight_drop"].pop(),
                               "weight_drop"),
    "gblinear weights short": ("gblinear", lambda d: gbtree_model(d)["weights"].pop(), "gblinear has"),
    "gblinear weights missing": ("gblinear", drop_key(gbtree_model, "weights"), "weights"),
    "gblinear multiclass weights": ("gblinear_multiclass", lambda d: gbtree_model(d).__setitem__(
        "weights", gbtree_model(d)["weights"][:6]), "gblinear has"),
    "vector leaf index out of range": ("multi_output_tree", lambda d: tree(d)["right_children"].__setitem__(
        tree(d)["left_children"].index(-1), 10**5), "leaf_weights"),
    "vector leaf weights missing": ("multi_output_tree", drop_key(tree, "leaf_weights"), "leaf_weights"),
    "vector leaf size vs outputs": ("multi_output_tree", lambda d: learner(d)["learner_model_param"].update(
        num_target="3", base_score="[0,0,0]"), "vector leaves"),
    "vector leaf short default_left": ("multi_output_tree", set_key(tree, "default_left", [0]), "default_left"),
    "negative category": ("categorical", lambda d: next(t for t in gbtree_model(d)["trees"]
                                                        if t["categories"])["categories"].__setitem__(0, -10**6),
                          "category outside"),
    "category too large": ("categorical", lambda d: next(t for t in gbtree_model(d)["trees"]
                                                         if t["categories"])["categories"].__setitem__(0, 2**24),
                           "category outside"),
    "category segment out of range": ("categorical", lambda d: next(
        t for t in gbtree_model(d)["trees"] if t["categories"])["categories_segments"].__setitem__(0, 10**5),
        "segment"),
    "categorical node not listed": ("categorical", lambda d: next(
        t for t in gbtree_model(d)["trees"] if t["categories"])["categories_nodes"].pop(), "differ in length"),
    "categorical split_type mismatch": ("binary", set_item(tree, "split_type", 0, 1), "categories_nodes"),
    "split_type not 0/1": ("binary", set_item(tree, "split_type", 0, 7), "split_type"),
    "split_type not 0/1 (categorical model)": ("categorical", lambda d: next(
        t for t in gbtree_model(d)["trees"] if t["categories"])["split_type"].__setitem__(0, 7), "neither 0 nor 1"),
    "categorical node listed twice": ("categorical", lambda d: (lambda t: t.update(
        categories_nodes=[t["categories_nodes"][0]] * len(t["categories_nodes"])))(next(
            t for t in gbtree_model(d)["trees"] if len(t["categories_nodes"]) > 1)), "strictly increasing"),
    "cats sorted_idx out of range": ("categorical", lambda d: gbtree_model(d)["cats"]["sorted_idx"].__setitem__(
        1, 10**5), "sorted_idx"),
    "cats offsets out of range": ("categorical", lambda d: next(
        c for c in gbtree_model(d)["cats"]["enc"] if c.get("offsets"))["offsets"].__setitem__(2, 10**5),
        "offsets"),
    "cats segments mismatch": ("categorical", lambda d: gbtree_model(d)["cats"]["feature_segments"].__setitem__(
        -1, 99), "feature_segments"),
    "missing learner_model_param": ("binary", drop_key(learner, "learner_model_param"), "learner_model_param"),
    "attributes not strings": ("binary", set_key(learner, "attributes", {"a": 1}), "attributes"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_models_are_refused(models, case, fmt):
    name, mutate, match = CRAFTED[case]
    refused(craft(models, name, fmt, mutate), fmt, match)


@pytest.mark.parametrize("fmt", FORMATS)
def test_parent_chains_need_not_be_monotone(models, fmt):
    """A deleted leaf may name a later node as parent as long as the chain reaches the root."""
    def mutate(doc):
        t, (a, b, *_) = _deleted_leaves(doc)
        low, high = min(a, b), max(a, b)
        t["parents"][low], t["parents"][high] = high, 1
    validate(craft(models, "exact_pruned", fmt, mutate), fmt=fmt, path="p")


# ---- byte-level / decoder cases ------------------------------------------------------------------

def _ubj_typed(data: bytes, key: str, nth: int = 0) -> tuple[int, int]:
    """(payload offset, count) of the nth typed array stored under ``key`` in real UBJ bytes."""
    marker = b"L" + struct.pack(">q", len(key)) + key.encode()
    pos = -1
    for _ in range(nth + 1):
        pos = data.index(marker, pos + 1)
    header = pos + len(marker)
    assert data[header : header + 2] == b"[$"
    return header + 13, struct.unpack_from(">q", data, header + 5)[0]


def patch_i32(data: bytes, key: str, index: int, value: int, nth: int = 0) -> bytes:
    at, count = _ubj_typed(data, key, nth)
    assert 0 <= index < count
    out = bytearray(data)
    struct.pack_into(">i", out, at + 4 * index, value)
    return bytes(out)


def test_ubj_payload_patches_are_caught_on_the_fast_path(models):
    """Patching node values inside canonical UBJ keeps the byte template intact (the fast path is
    used) and the value checks still fire."""
    data = models["regression"]["ubj"]
    for key, index, value, match in (
        ("left_children", 0, 10**6, "child index out of range"),
        ("left_children", 3, 1, ""),
        ("right_children", 0, 0, "child index out of range"),
        ("parents", 2, -1, "parent"),
        ("split_indices", 0, 5, "splits on feature"),
        ("split_indices", 0, -(2**31), "splits on feature"),
    ):
        refused(patch_i32(data, key, index, value), "ubj", match)
    doc = _decode.UBJDecoder(patch_i32(data, "left_children", 0, 10**6)).decode()
    assert type(gbtree_model(doc)["trees"]) is _structure.Forest


def _obj(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"{" + b"".join(b"L" + struct.pack(">q", len(k)) + k + v for k, v in pairs) + b"}"


@pytest.mark.parametrize("cut", [1, 2, 10, 11, 40, 300, 1000, -200, -30, -2, -1])
def test_truncated_ubj_is_refused(models, cut):
    data = models["regression"]["ubj"]
    refused(data[:cut], "ubj")


def test_truncated_json_is_refused(models):
    data = models["regression"]["json"]
    for cut in (1, 2, 50, len(data) // 2, -1):
        refused(data[:cut], "json")


UBJ_GARBAGE = {
    "huge typed count": _obj((b"learner", b"[$d#L" + struct.pack(">q", 2**40) + b"\0" * 8)),
    "huge typed count overflowing": _obj((b"learner", b"[$L#L" + struct.pack(">q", 2**62) + b"\0" * 8)),
    "negative typed count": _obj((b"learner", b"[$l#L" + struct.pack(">q", -5))),
    "huge generic count": _obj((b"learner", b"[#L" + struct.pack(">q", 2**62) + b"Z")),
    "huge string": b"{L" + struct.pack(">q", 7) + b"learnerSL" + struct.pack(">q", 2**50) + b"abc}",
    "huge key": b"{L" + struct.pack(">q", 2**60) + b"learner",
    "negative key length": b"{L" + struct.pack(">q", -1) + b"learner",
    "count not int64": _obj((b"learner", b"[#i" + b"\x02ZZ")),
    "typed count not int64": _obj((b"learner", b"[$l#i\x01\0\0\0\x01")),
    "unsupported typed type": _obj((b"learner", b"[$S#L" + struct.pack(">q", 1) + b"x")),
    "no-op marker N": _obj((b"learner", b"N{}")),
    "high-precision marker H": _obj((b"learner", b"HL" + struct.pack(">q", 1) + b"1")),
    "key without L": b"{i\x07learner{}}",
    "deep arrays": b"{L" + struct.pack(">q", 1) + b"a" + b"[" * 100_000,
    "deep objects": b"{L" + struct.pack(">q", 1) + b"a" + (b"{L" + struct.pack(">q", 1) + b"a") * 5_000,
    "deep closed arrays": b"{L" + struct.pack(">q", 1) + b"a" + b"[" * 200 + b"]" * 200 + b"}",
    "unterminated object": b"{L" + struct.pack(">q", 1) + b"aZ",
    "empty object": b"{}",
    "not an object": b"[#L" + struct.pack(">q", 0),
}


@pytest.mark.parametrize("case", sorted(UBJ_GARBAGE))
def test_malformed_ubj_is_refused(case):
    refused(UBJ_GARBAGE[case], "ubj")


def test_ubj_trailing_bytes_and_duplicate_keys_are_refused(models):
    data = models["binary"]["ubj"]
    refused(data + b"\0", "ubj", "unexpected bytes")
    # Duplicate key: XGBoost's UBJ reader keeps the FIRST value of a repeated key (a Python dict
    # would keep the last), so a repeated key could show the check one tree and XGBoost another.
    doc = json.loads(models["binary"]["json"])
    bad = to_ubj({"left_children": [10**6, -1, -1]})[1:-1]  # key + typed array, no braces
    ubj = to_ubj(doc)
    at = ubj.index(b"L" + struct.pack(">q", len("left_children")) + b"left_children")
    refused(ubj[:at] + bad + ubj[at:], "ubj", "repeats the key")


def test_deeply_nested_json_is_refused():
    refused(b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "json")
    refused(b'{"a":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001, "json")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_bytes_are_refused(fmt, seed):
    rnd = random.Random(seed)
    size = rnd.choice([0, 1, 2, 17, 4096])
    data = bytes(rnd.getrandbits(8) for _ in range(size))
    if seed % 2 and size:
        data = b"{" + data[1:]
    refused(data, fmt)


@pytest.mark.parametrize("data", [b"", b"{", b"{\xff\xfe", b"\x00" * 64, "not bytes", 12, None, bytearray(b"{}")])
def test_odd_inputs_raise_only_malformed(data):
    with pytest.raises(MalformedArtifactError):
        validate(data, fmt="json", path="p")
    with pytest.raises(MalformedArtifactError):
        validate(data, fmt="ubj", path="p")


def test_unknown_format_is_refused(models):
    with pytest.raises(MalformedArtifactError):
        validate(models["binary"]["ubj"], fmt="bin", path="p")


def test_format_must_match_what_xgboost_will_sniff(models):
    """XGBoost picks the parser from the bytes, not the file name."""
    refused(models["binary"]["ubj"], "json", "not an XGBoost JSON model")
    refused(models["binary"]["json"], "ubj", "not an XGBoost UBJ model")
    refused(b" " + models["binary"]["json"], "json")


def test_memoryview_and_bytearray_inputs_are_accepted(models):
    validate(bytearray(models["binary"]["ubj"]), fmt="ubj", path="p")
    validate(memoryview(models["binary"]["json"]), fmt="json", path="p")


def disguised_leaf_weights(models) -> bytes:
    """Vector-leaf model whose 'leaf_weights' key is written as ``leaf_w\\u0065ights``.

    Python's json decodes the escape (and would see the key); XGBoost's reader keeps ``\\u0065``
    literally, finds no 'leaf_weights' and dereferences the end of its map."""
    text = models["multi_output_tree"]["json"].decode()
    assert '"leaf_weights"' in text
    return text.replace('"leaf_weights"', '"leaf_w\\u0065ights"').encode()


def test_json_unicode_escapes_are_read_like_xgboost_reads_them(models):
    refused(disguised_leaf_weights(models), "json", "leaf_weights")
    # escapes elsewhere (feature names, attributes) are harmless and still accepted
    doc = json.loads(models["sklearn_named_features"]["json"])
    text = json.dumps(doc, ensure_ascii=True).replace('"f1"', '"f\\u00e91"').replace('"f2"', '"f\\\\u2"')
    validate(text.encode(), fmt="json", path="p")


# --------------------------------------------------------------------------------------------------
# The crafted payloads are live: raw XGBoost crashes on them
# --------------------------------------------------------------------------------------------------

_RAW_LOAD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from the expected crash
    import numpy as np
    import xgboost as xgb
    data = open(sys.argv[1], "rb").read()
    try:
        booster = xgb.Booster(model_file=bytearray(data))
        X = np.random.default_rng(0).normal(size=(64, max(booster.num_features(), 1)))
        booster.predict(xgb.DMatrix(X))
    except xgb.core.XGBoostError as exc:
        print("CLEAN-ERROR", str(exc).splitlines()[0][:200])
        sys.exit(3)
    print("LOADED-AND-PREDICTED")
    """
)


def _raw_xgboost(tmp_path: Path, data: bytes) -> subprocess.CompletedProcess:
    target = tmp_path / "model.bin"
    target.write_bytes(data)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", _RAW_LOAD, str(target)], capture_output=True, text=True,
                          timeout=600, env=env)


RAW_CRASHERS = {
    "json child index out of range": ("binary", "json", set_item(tree, "left_children", 0, 10**6)),
    "json cycle (child points to the root)": ("regression", "json", set_item(tree, "left_children", 1, 0)),
    "json cycle (child points to an ancestor)": ("regression", "json", set_item(tree, "left_children", 3, 1)),
    "ubj child index out of range": ("binary", "ubj", set_item(tree, "left_children", 0, 10**6)),
    "ubj cycle (child points to the root)": ("regression", "ubj", set_item(tree, "left_children", 1, 0)),
}


@pytest.mark.parametrize("case", sorted(RAW_CRASHERS))
def test_crafted_payload_crashes_raw_xgboost_but_is_refused_in_process(models, tmp_path, case):
    """XGBoost 3.2 does not reject these cleanly: load + predict dies with SIGSEGV (observed for all
    five cases: the predictor/MaxDepth() follows the bad child index). The validator refuses the
    same bytes in-process."""
    name, fmt, mutate = RAW_CRASHERS[case]
    data = craft(models, name, fmt, mutate)
    refused(data, fmt)
    result = _raw_xgboost(tmp_path, data)
    assert result.returncode < 0, (
        f"raw XGBoost did not die by a signal (rc={result.returncode}, stdout={result.stdout!r}, "
        f"stderr={result.stderr[-300:]!r}); if it now rejects this cleanly, update the docstring"
    )


def test_disguised_key_crashes_raw_xgboost_but_is_refused(models, tmp_path):
    """The \\u-escape differential is live: XGBoost 3.2 segfaults on the disguised vector-leaf model
    (its multi-target loader looks up 'leaf_weights' without checking it exists)."""
    data = disguised_leaf_weights(models)
    refused(data, "json")
    result = _raw_xgboost(tmp_path, data)
    assert result.returncode < 0, (result.returncode, result.stdout, result.stderr[-300:])


def test_sanity_unmodified_model_loads_in_the_raw_runner(models, tmp_path):
    result = _raw_xgboost(tmp_path, models["binary"]["ubj"])
    assert result.returncode == 0 and "LOADED-AND-PREDICTED" in result.stdout, result.stderr[-300:]


# --------------------------------------------------------------------------------------------------
# Mutation fuzzing
# --------------------------------------------------------------------------------------------------

_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "int32"]),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.integers(min_value=0, max_value=255),
    st.sampled_from([0, 1, -1, 2, 3, 127, 128, 255, 2**15, 2**31 - 1, -(2**31), 10**6]),
)


def _apply(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, byte, number in mutations:
        if not out:
            break
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << (byte % 8)
        elif kind == "set":
            out[at] = byte
        elif kind == "insert":
            out[at:at] = bytes([byte])
        elif kind == "delete":
            del out[at]
        elif kind == "truncate":
            del out[at:]
        else:
            out[at : at + 4] = struct.pack(">i", number)[: len(out) - at]
    return bytes(out)


def _fuzz_once(data: bytes, fmt: str) -> None:
    try:
        validate(data, fmt=fmt, path="fuzz")
    except MalformedArtifactError as exc:
        assert "could not be validated" not in str(exc), str(exc)  # explicit checks, not the safety net


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutation, min_size=1, max_size=6))
def test_random_mutations_only_ever_raise_malformed(models, fmt, mutations):
    _fuzz_once(_apply(models["binary"][fmt], mutations), fmt)


def _structural_mutants(doc: dict, rnd: random.Random, count: int) -> list[dict]:
    """Change one integer in a tree's node arrays (or tree_info / ids) to a nasty value."""
    mutants = []
    targets = [("tree", k) for k in ("left_children", "right_children", "parents", "split_indices",
                                     "split_type", "categories", "categories_nodes", "categories_segments",
                                     "categories_sizes")] + [("model", "tree_info"), ("model", "iteration_indptr")]
    for _ in range(count):
        mutant = json.loads(json.dumps(doc))
        model = gbtree_model(mutant)
        where, key = rnd.choice(targets)
        holder = rnd.choice(model["trees"]) if where == "tree" else model
        values = holder.get(key)
        if not values:
            continue
        n = len(values)
        values[rnd.randrange(n)] = rnd.choice([-2, -1, 0, 1, 2, n - 1, n, n + 1, 2**31 - 1, -(2**31), 2**24,
                                               rnd.randrange(-3, n + 3)])
        mutants.append(mutant)
    return mutants


@pytest.mark.parametrize("name", ["binary", "multi_output_tree", "categorical", "multiclass"])
def test_mutants_the_validator_accepts_do_not_crash_raw_xgboost(models, tmp_path, name):
    """End to end: every mutant that passes validation is loaded and used by raw XGBoost in one
    subprocess; it must never die by a signal (clean XGBoost errors are fine)."""
    rnd = random.Random(1234)
    doc = json.loads(models[name]["json"])
    accepted = []
    for i, mutant in enumerate(_structural_mutants(doc, rnd, 150)):
        for fmt in FORMATS:
            data = json.dumps(mutant).encode() if fmt == "json" else to_ubj(mutant)
            try:
                validate(data, fmt=fmt, path="m")
            except MalformedArtifactError as exc:
                assert "could not be validated" not in str(exc), str(exc)
                continue
            path = tmp_path / f"{i}.{fmt}"
            path.write_bytes(data)
            accepted.append(str(path))
    for i in range(40):  # plus random byte damage of the real UBJ file
        data = _apply(models[name]["ubj"], [(rnd.choice(["flip", "set", "int32"]), rnd.random(), rnd.randrange(256),
                                             rnd.choice([0, 1, -1, 10**6])) for _ in range(rnd.randint(1, 3))])
        try:
            validate(data, fmt="ubj", path="m")
        except MalformedArtifactError:
            continue
        path = tmp_path / f"bytes{i}.ubj"
        path.write_bytes(data)
        accepted.append(str(path))
    runner = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        import numpy as np
        import xgboost as xgb
        for path in sys.argv[1:]:
            print(path, flush=True)
            try:
                booster = xgb.Booster(model_file=bytearray(open(path, "rb").read()))
                n = max(booster.num_features(), 1)
                X = np.random.default_rng(0).normal(size=(50, n))
                X[::7, 0] = np.nan
                types = booster.feature_types
                dm = xgb.DMatrix(X, feature_names=booster.feature_names, feature_types=types,
                                 enable_categorical=bool(types and "c" in types))
                booster.predict(dm)
            except Exception:
                pass
        print("DONE", flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", runner, *accepted], capture_output=True, text=True,
                            timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(none)"
    assert result.returncode == 0 and last == "DONE", (
        f"raw XGBoost died (rc={result.returncode}) on an accepted mutant: {last}; {result.stderr[-400:]}")
