"""The model document's schema: required objects and keys with their types, the learner's parameters,
the boosters (gbtree, dart, gblinear), per-tree keys and array sizes, and the category encoder.

Trees the UBJ readers did not take arrive here as dicts and are gathered into one :class:`Forest`.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Any

import numpy as np

from mlflow_safeflavor.validate._common import Refused, first_outside
from mlflow_safeflavor.validate.xgboost_model._caps import (
    MAX_FEATURES,
    MAX_OUTPUTS,
    MAX_TOTAL_NODES,
    MAX_TREE_NODES,
    MAX_TREES,
)
from mlflow_safeflavor.validate.xgboost_model._structure import Forest, check_forest
from mlflow_safeflavor.validate.xgboost_model._values import (
    F32,
    I32,
    I64,
    U8,
    decimal,
    get,
    int_list,
    integer,
    ints,
    length,
    obj,
    string,
)

_SPLIT_INDEX_TYPES = (">i4", ">i8")


def check_document(doc: Any) -> None:
    root = obj(doc, "the model file")
    if "version" in root:
        version = root["version"]
        if type(version) is not list or len(version) < 3 or any(type(v) is not int for v in version[:3]):
            raise Refused("the model's 'version' is not a list of three integers")
    learner = obj(get(root, "learner", "the model file"), "'learner'")
    mparam = obj(get(learner, "learner_model_param", "'learner'"), "'learner_model_param'")
    num_feature = decimal(get(mparam, "num_feature", "'learner_model_param'"), "num_feature", 0, MAX_FEATURES)
    num_class = decimal(get(mparam, "num_class", "'learner_model_param'"), "num_class", 0, MAX_OUTPUTS)
    num_target = 1
    if "num_target" in mparam:
        num_target = decimal(mparam["num_target"], "num_target", 1, MAX_OUTPUTS)
    if num_class > 1 and num_target > 1:
        raise Refused("the model has both several classes and several targets, which XGBoost does not support")
    n_outputs = max(num_class, num_target, 1)
    if "boost_from_average" in mparam:
        text = string(mparam["boost_from_average"], "boost_from_average")
        if not re.fullmatch(r"-?[0-9]{1,10}", text, re.ASCII):
            raise Refused("boost_from_average is not an integer")
    _check_base_score(get(mparam, "base_score", "'learner_model_param'"), n_outputs)

    objective = obj(get(learner, "objective", "'learner'"), "'objective'")
    if not string(get(objective, "name", "'objective'"), "the objective name"):
        raise Refused("the objective name is empty")

    attributes = obj(get(learner, "attributes", "'learner'"), "'attributes'")
    if any(type(v) is not str for v in attributes.values()):
        raise Refused("an entry of 'attributes' is not a string")
    for key in ("feature_names", "feature_types"):
        if key in learner:
            names = learner[key]
            if type(names) is not list or any(type(v) is not str for v in names):
                raise Refused(f"'{key}' is not a list of strings")
            if names and len(names) != num_feature:
                raise Refused(f"'{key}' has {len(names)} entries for {num_feature} features")

    booster = obj(get(learner, "gradient_booster", "'learner'"), "'gradient_booster'")
    name = string(get(booster, "name", "'gradient_booster'"), "the gradient booster name")
    if name == "gbtree":
        _check_gbtree(booster, num_feature, n_outputs)
    elif name == "dart":
        inner = obj(get(booster, "gbtree", "the dart booster"), "the dart booster's 'gbtree'")
        if string(get(inner, "name", "the dart booster's 'gbtree'"), "the dart booster's name") != "gbtree":
            raise Refused("the dart booster does not wrap a gbtree")
        num_trees = _check_gbtree(inner, num_feature, n_outputs)
        weight_drop = get(booster, "weight_drop", "the dart booster")
        if type(weight_drop) is not list or len(weight_drop) != num_trees:
            raise Refused(f"dart 'weight_drop' does not have one weight per tree ({num_trees} trees)")
    elif name == "gblinear":
        model = obj(get(booster, "model", "'gradient_booster'"), "the gblinear model")
        n_weights = length(get(model, "weights", "the gblinear model"), "gblinear weights", (">f4",))
        expected = (num_feature + 1) * n_outputs
        if n_weights != expected:
            raise Refused(f"gblinear has {n_weights} weights; (num_feature + 1) * outputs = {expected}")
        if "boosted_rounds" in model:
            integer(model["boosted_rounds"], "gblinear boosted_rounds")
    else:
        raise Refused(f"the gradient booster is {str(name)[:40]!r}, not gbtree, dart or gblinear")


_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|NaN|[-+]?Infinity"
_BASE_SCORE = re.compile(rf"\[?(?:{_NUMBER})(?:,(?:{_NUMBER}))*\]?", re.ASCII)


def _check_base_score(value: Any, n_outputs: int) -> None:
    text = "".join(string(value, "base_score").split())  # XGBoost drops whitespace
    text = text.replace("(", "[", 1) if text.startswith("(") else text
    text = text[:-1] + "]" if text.endswith(")") else text
    bracketed = text[:1] == "[" and text[-1:] == "]"
    if not _BASE_SCORE.fullmatch(text) or (not bracketed and not re.fullmatch(_NUMBER, text)):
        raise Refused(f"base_score {text[:40]!r} is not a number or a [list] of numbers")
    count = text.count(",") + 1
    if count == 1 and n_outputs > 1:
        count = n_outputs  # XGBoost broadcasts a scalar intercept (pre-3.1 models)
    if count != n_outputs:
        raise Refused(f"base_score has {count} values for {n_outputs} model outputs")


def _check_gbtree(booster: dict, num_feature: int, n_outputs: int) -> int:
    model = obj(get(booster, "model", "the gbtree booster"), "the gbtree model")
    mparam = obj(get(model, "gbtree_model_param", "the gbtree model"), "'gbtree_model_param'")
    num_trees = decimal(get(mparam, "num_trees", "'gbtree_model_param'"), "num_trees", 0, MAX_TREES)
    decimal(get(mparam, "num_parallel_tree", "'gbtree_model_param'"), "num_parallel_tree", 1, MAX_TREES)
    trees = get(model, "trees", "the gbtree model")
    if type(trees) is Forest:
        forest = trees
    else:
        if type(trees) is not list:
            raise Refused("'trees' is not an array")
        if len(trees) > MAX_TREES:
            raise Refused(f"the model has {len(trees)} trees (cap {MAX_TREES})")
        forest = _forest_from_dicts(trees)
    count = len(forest.n)
    if count != num_trees:
        raise Refused(f"num_trees says {num_trees} but the model holds {count} trees")

    tree_info = get(model, "tree_info", "the gbtree model")
    if type(tree_info) is not list:
        raise Refused("'tree_info' is not an array of integers")
    info = int_list(tree_info, "'tree_info'")
    if len(info) != count:
        raise Refused(f"'tree_info' has {len(info)} entries for {count} trees")
    if first_outside(info, 0, n_outputs - 1) is not None:
        raise Refused(f"'tree_info' names an output group outside [0, {n_outputs})")
    if "iteration_indptr" in model:
        indptr = model["iteration_indptr"]
        if type(indptr) is not list:
            raise Refused("'iteration_indptr' is not an array of integers")
        ptr = int_list(indptr, "'iteration_indptr'")
        if len(ptr) == 0 or ptr[0] != 0 or ptr[-1] != count or np.any(np.diff(ptr) < 0):
            raise Refused(f"'iteration_indptr' does not rise from 0 to num_trees ({count})")
    if "cats" in model:
        _check_cats(obj(model["cats"], "'cats'"))
    check_forest(forest, num_feature, n_outputs)
    return count


# ---- trees from generic (JSON / non-canonical UBJ) values ------------------------------------------

_TREE_KEYS = frozenset((
    "base_weights", "default_left", "id", "left_children", "loss_changes", "parents",
    "right_children", "split_conditions", "split_indices", "sum_hessian", "tree_param",
))
_CAT_KEYS = ("categories", "categories_nodes", "categories_segments", "categories_sizes")
_CAT_DTYPES = {"categories": I32, "categories_nodes": I32, "categories_segments": I64, "categories_sizes": I64}


# Per-node arrays and the typed-array types XGBoost's tree loader asks for when the file is typed.
_NODE_ARRAYS = (
    ("left_children", I32), ("right_children", I32), ("parents", I32),
    ("split_indices", _SPLIT_INDEX_TYPES), ("loss_changes", F32), ("sum_hessian", F32),
    ("split_conditions", F32), ("default_left", U8),
)
_INT_NODE_ARRAYS = ("left_children", "right_children", "parents", "split_indices")


def _forest_from_dicts(trees: list) -> Forest:
    count = len(trees)
    n_list = np.zeros(count, dtype=np.int64)
    ids = np.zeros(count, dtype=np.int64)
    nf = np.zeros(count, dtype=np.int64)
    slv = np.zeros(count, dtype=np.int64)
    nd = np.zeros(count, dtype=np.int64)
    leaf_rows = np.zeros(count, dtype=np.int64)
    cat_counts = np.zeros(count, dtype=np.int64)
    cat_lengths = np.zeros(count, dtype=np.int64)
    fields: dict[str, list] = {k: [] for k in _INT_NODE_ARRAYS + ("split_type",)}
    cats: dict[str, list] = {k: [] for k in _CAT_KEYS}
    ndarray = np.ndarray
    total = 0
    for t, tree in enumerate(trees):
        what = f"tree {t}"
        if type(tree) is not dict:
            raise Refused(f"{what} is not an object")
        if not _TREE_KEYS <= tree.keys():
            raise Refused(f"{what} has no {sorted(_TREE_KEYS - tree.keys())[0]!r}")
        tp = obj(tree["tree_param"], f"{what}'s tree_param")
        n = decimal(get(tp, "num_nodes", f"{what}'s tree_param"), f"{what}'s num_nodes", 1, MAX_TREE_NODES)
        nf[t] = decimal(get(tp, "num_feature", f"{what}'s tree_param"), f"{what}'s num_feature", 0, 2**32 - 1)
        k = decimal(get(tp, "size_leaf_vector", f"{what}'s tree_param"), f"{what}'s size_leaf_vector", 0,
                    MAX_OUTPUTS)
        if "num_deleted" in tp:
            nd[t] = decimal(tp["num_deleted"], f"{what}'s num_deleted", 0, n - 1)
        total += n
        if total > MAX_TOTAL_NODES:
            raise Refused(f"the model has more than {MAX_TOTAL_NODES} nodes in total")
        n_list[t] = n
        slv[t] = k
        ids[t] = integer(tree["id"], f"{what}'s id")
        # XGBoost reads either all typed arrays (UBJ as written) or all generic ones (JSON).
        typed = type(tree["parents"]) is ndarray

        def array(key: str, dtypes: tuple) -> Any:
            value = get(tree, key, what)
            if typed:
                if type(value) is not ndarray:
                    raise Refused(f"{what}'s {key} mixes typed and untyped arrays")
                if value.dtype.str not in dtypes:
                    raise Refused(f"{what}'s {key} is a typed array of the wrong type ({value.dtype.str})")
            elif type(value) is not list:
                raise Refused(f"{what}'s {key} is not an array" + (" (mixes typed and untyped arrays)"
                                                                     if type(value) is ndarray else ""))
            return value

        for key, dtypes in _NODE_ARRAYS:
            value = array(key, dtypes)
            if len(value) != n:
                raise Refused(f"{what}'s {key} has {len(value)} entries, num_nodes is {n}")
        for key in _INT_NODE_ARRAYS:
            fields[key].append(tree[key])
        bw = len(array("base_weights", F32))
        if k > 1:  # vector leaf
            if bw == 0 or bw % n:
                raise Refused(f"{what}'s base_weights has {bw} entries, not a positive multiple of {n} nodes")
            lw = len(array("leaf_weights", F32))
            if lw == 0 or lw % k:
                raise Refused(f"{what}'s leaf_weights has {lw} entries, not a positive multiple of {k} targets")
            leaf_rows[t] = lw // k
        elif bw != n:
            raise Refused(f"{what}'s base_weights has {bw} entries, num_nodes is {n}")

        if "split_type" in tree:
            split_type = array("split_type", U8)
            if len(split_type) != n:
                raise Refused(f"{what}'s split_type has {len(split_type)} entries, num_nodes is {n}")
            fields["split_type"].append(split_type)
            parts = [array(key, _CAT_DTYPES[key]) for key in _CAT_KEYS]
            if not len(parts[1]) == len(parts[2]) == len(parts[3]):
                raise Refused(f"{what}'s categories_nodes, categories_segments and categories_sizes differ in length")
            cat_counts[t] = len(parts[1])
            cat_lengths[t] = len(parts[0])
            for key, value in zip(_CAT_KEYS, parts):
                if len(value):
                    cats[key].append(value)
        else:
            fields["split_type"].append(np.zeros(n, dtype=np.uint8))

    f = Forest()
    f.n, f.ids, f.num_feature, f.slv, f.num_deleted = n_list, ids, nf, slv, nd
    f.left, f.right, f.parents, f.split_index, f.split_type = (
        _concat(fields[k], k) for k in _INT_NODE_ARRAYS + ("split_type",)
    )
    f.leaf_rows, f.cat_counts, f.cat_lengths = leaf_rows, cat_counts, cat_lengths
    f.categories, f.cat_nodes, f.cat_segments, f.cat_sizes = (_concat(cats[k], k) for k in _CAT_KEYS)
    return f


def _concat(parts: list, what: str) -> np.ndarray:
    """Concatenate per-tree integer arrays; generic lists are converted (and type-checked) at once."""
    if not parts:
        return np.zeros(0, dtype=np.int64)
    if all(type(p) is list for p in parts):
        return int_list(list(chain.from_iterable(parts)), what)
    return np.concatenate([
        (int_list(p, what) if type(p) is list else p).astype(np.int64, copy=False) for p in parts
    ])


# ---- category encoder (learner 'cats', used to recode DataFrame input) -----------------------------

_CAT_INDEX_TYPES = {  # CatIndexType -> typed UBJ arrays XGBoost accepts for it
    9: ("|i1",), 10: ("|u1",), 11: (">i2",), 12: (">i2",), 13: I32, 14: I32, 15: I64, 16: I64,
}


def _check_cats(cats: dict) -> None:
    enc = get(cats, "enc", "'cats'")
    if type(enc) is not list:
        raise Refused("'cats.enc' is not an array")
    sizes = []
    for i, column in enumerate(enc):
        what = f"'cats.enc[{i}]'"
        column = obj(column, what)
        if "offsets" in column:
            offsets = ints(column["offsets"], f"{what} offsets", I32)
            n_values = length(get(column, "values", what), f"{what} values", ("|i1",))
            if len(offsets):
                if offsets[0] != 0 or offsets[-1] != n_values or np.any(np.diff(offsets) < 0):
                    raise Refused(f"{what} string offsets do not run from 0 to the number of characters")
                sizes.append(len(offsets) - 1)
            else:
                if n_values:
                    raise Refused(f"{what} has characters but no offsets")
                sizes.append(0)
        else:
            kind = integer(get(column, "type", what), f"{what} type")
            if kind not in _CAT_INDEX_TYPES:
                raise Refused(f"{what} has unknown category type {kind}")
            values = get(column, "values", what)
            if type(values) is np.ndarray:
                if values.dtype.str not in _CAT_INDEX_TYPES[kind]:
                    raise Refused(f"{what} values have the wrong typed-array type")
                sizes.append(len(values))
            else:
                sizes.append(len(ints(values, f"{what} values", None)))
    segments = ints(get(cats, "feature_segments", "'cats'"), "'cats.feature_segments'", I32).astype(np.int64)
    if len(segments) == 0:
        if enc:
            raise Refused("'cats' has encoders but no feature_segments")
        n_total = 0
    else:
        if len(segments) != len(enc) + 1 or segments[0] != 0 or not np.array_equal(np.diff(segments), sizes):
            raise Refused("'cats.feature_segments' does not match the per-feature category counts")
        n_total = int(segments[-1])
        if n_total >= 2**31:
            raise Refused("'cats' has too many categories")
    sorted_idx = ints(get(cats, "sorted_idx", "'cats'"), "'cats.sorted_idx'", I32).astype(np.int64)
    if len(sorted_idx):
        if len(sorted_idx) != n_total:
            raise Refused(f"'cats.sorted_idx' has {len(sorted_idx)} entries for {n_total} categories")
        seg_of = np.repeat(np.arange(len(sizes)), sizes)
        seg_len = np.asarray(sizes, dtype=np.int64)[seg_of]
        if np.any((sorted_idx < 0) | (sorted_idx >= seg_len)):
            raise Refused("'cats.sorted_idx' points outside its feature's categories")
        glob = segments[:-1][seg_of] + sorted_idx
        if not np.array_equal(np.sort(glob), np.arange(n_total)):
            raise Refused("'cats.sorted_idx' is not a permutation within each feature")
