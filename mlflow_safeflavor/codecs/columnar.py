"""Tree ensembles as columns: cut the trees out of a scikit-learn model, and put them back.

skops' cost is per node of its object tree (every estimator, dict and array is one), so a forest
of a few hundred trees costs thousands of nodes to audit and build. At save time :func:`cut`
walks the model — on its own or anywhere inside pipelines, column transformers and other
scikit-learn meta-estimators — and replaces each tree estimator's heavy attribute (``tree_``,
``estimators_``, HGB's ``_predictors``) by a small marker; every tree's node records and values go
to ``trees.safetensors`` as a few concatenated columns with offsets. At load time :func:`attach`
finds the markers in the skeleton skops built and rebuilds the estimators from fixed tables of
classes and attribute names (never names from the file) with ``Tree.__setstate__`` over arrays
that :mod:`mlflow_safeflavor.validate.columnar` checked first. Anything the tables do not
describe exactly is left to skops, whole (and checked after construction as before).
"""

from __future__ import annotations

import copy
import importlib
import json
from typing import Any

import numpy as np

from mlflow_safeflavor.validate import columnar as v

FILE = "trees.safetensors"
MARKER = "_safeflavor_slot"
_MAX_DEPTH = 64
_MAX_WALK = 1_000_000

# key -> (module, class, kind, class key of its sub-estimators)
ENSEMBLES: dict[str, tuple[str, str, str, str | None]] = {
    **{k: ("sklearn.tree", k, "single", None) for k in (
        "DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor")},
    "RandomForestClassifier": ("sklearn.ensemble", "RandomForestClassifier", "forest", "DecisionTreeClassifier"),
    "RandomForestRegressor": ("sklearn.ensemble", "RandomForestRegressor", "forest", "DecisionTreeRegressor"),
    "ExtraTreesClassifier": ("sklearn.ensemble", "ExtraTreesClassifier", "forest", "ExtraTreeClassifier"),
    "ExtraTreesRegressor": ("sklearn.ensemble", "ExtraTreesRegressor", "forest", "ExtraTreeRegressor"),
    "IsolationForest": ("sklearn.ensemble", "IsolationForest", "forest", "ExtraTreeRegressor"),
    "GradientBoostingClassifier": ("sklearn.ensemble", "GradientBoostingClassifier", "gb", "DecisionTreeRegressor"),
    "GradientBoostingRegressor": ("sklearn.ensemble", "GradientBoostingRegressor", "gb", "DecisionTreeRegressor"),
    "HistGradientBoostingClassifier": ("sklearn.ensemble", "HistGradientBoostingClassifier", "hgb", None),
    "HistGradientBoostingRegressor": ("sklearn.ensemble", "HistGradientBoostingRegressor", "hgb", None),
}
HEAVY = {"single": "tree_", "forest": "estimators_", "gb": "estimators_", "hgb": "_predictors"}
# Attributes a tree sub-estimator may carry besides its constructor parameters: the fitted ones,
# and ``class_weight``, which BaseDecisionTree sets on regressors too.
TREE_FITTED = frozenset({"n_features_in_", "feature_names_in_", "n_outputs_", "classes_", "n_classes_",
                         "max_features_", "class_weight"})
# IsolationForest's per-tree arrays: attribute -> (container, dtype, sized by node count).
PER_TREE = {"IsolationForest": {
    "estimators_features_": (list, "<i8", False),
    "_decision_path_lengths": (tuple, "<i8", True),
    "_average_path_length_per_tree": (tuple, "<f8", True),
}}
VARYING = {"int": "<i8", "float": "<f8"}


def _cls(key: str) -> type:
    module, attr = ENSEMBLES[key][:2]
    return getattr(importlib.import_module(module), attr)


def key_of(obj: Any) -> str | None:
    """The table key of ``type(obj)`` when it is exactly that table class, else None."""
    name = type(obj).__name__
    if name in ENSEMBLES and type(obj).__module__.startswith("sklearn.") and _cls(name) is type(obj):
        return name
    return None


def allowed_attrs(sub_key: str) -> frozenset[str]:
    """Attribute names a rebuilt sub-estimator may get: its parameters and the fitted few."""
    return frozenset(_cls(sub_key)._get_param_names()) | TREE_FITTED


def _same_layout(dtype: np.dtype, fields: dict[str, str]) -> bool:
    names = dtype.names or ()
    return set(names) == set(fields) and all(dtype.fields[n][0].str == fields[n] for n in names)


# ------------------------------------------------------------------------------------ save


class Cut:
    """The result of :func:`cut`: the skeleton for skops and the columns for the tree file."""

    def __init__(self) -> None:
        from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
        from sklearn.tree._tree import NODE_DTYPE

        self.trees_ok = _same_layout(NODE_DTYPE, v.TREE_FIELDS)
        self.hgb_ok = _same_layout(PREDICTOR_RECORD_DTYPE, v.HGB_FIELDS)
        self.slots: list[dict[str, Any]] = []
        self.trees: list[tuple[tuple, dict]] = []  # (Tree constructor args, Tree state)
        self.predictors: list[tuple[Any, int]] = []  # (TreePredictor, n_features)
        self.extra: dict[str, tuple[str, list[np.ndarray]]] = {}
        self._memo: dict[int, Any] = {}

    def rewrite(self, obj: Any, depth: int = 0) -> Any:
        """Return ``obj`` with every tree estimator cut out, sharing what did not change.

        Shared references stay shared (one memo by identity); nothing of the caller's is
        modified: containers and estimators on the way to a cut are copied.
        """
        if id(obj) in self._memo:
            return self._memo[id(obj)]
        self._memo[id(obj)] = obj  # a cycle sees the original
        new = self._rewrite(obj, depth)
        self._memo[id(obj)] = new
        return new

    def _rewrite(self, obj: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH or obj is None or isinstance(obj, (str, bytes, int, float, np.ndarray)):
            return obj
        key = key_of(obj)
        if key is not None:
            return self._cut(obj, key)
        if type(obj) in (list, tuple):
            items = [self.rewrite(x, depth + 1) for x in obj]
            return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
        if isinstance(obj, dict):
            items = {k: self.rewrite(x, depth + 1) for k, x in obj.items()}
            if all(items[k] is obj[k] for k in obj):
                return obj
            new = copy.copy(obj)
            new.update(items)
            return new
        if type(obj).__module__.startswith("sklearn.") and hasattr(obj, "__dict__"):
            attrs = {k: self.rewrite(x, depth + 1) for k, x in vars(obj).items()}
            if all(attrs[k] is x for k, x in vars(obj).items()):
                return obj
            return _with_dict(obj, attrs)
        return obj

    def _cut(self, obj: Any, key: str) -> Any:
        kind, sub_key = ENSEMBLES[key][2:]
        attrs = dict(vars(obj))
        heavy = attrs.pop(HEAVY[kind], None)
        if heavy is None:
            return obj  # not fitted
        n_trees = len(self.trees)
        if kind == "hgb":
            return self._cut_hgb(obj, key, attrs, heavy)
        if not self.trees_ok:
            return obj
        if kind == "single":
            subs = [obj]
            split: tuple[dict, dict] | None = ({}, {})
        else:
            subs = list(heavy.ravel()) if kind == "gb" and isinstance(heavy, np.ndarray) and heavy.ndim == 2 else heavy
            if not isinstance(subs, list) or not subs or any(key_of(s) != sub_key for s in subs):
                return obj
            split = _split(subs, allowed_attrs(sub_key))
        trees = [getattr(s, "tree_", None) for s in subs]
        if split is None or not all(type(t).__name__ == "Tree" and type(t).__module__ == "sklearn.tree._tree" for t in trees):
            return obj
        per_tree = self._per_tree(key, attrs, trees)
        if per_tree is None:
            return obj
        slot = len(self.slots)
        meta: dict[str, Any] = {"kind": kind, "class": key, "range": [n_trees, n_trees + len(trees)]}
        if kind == "gb":
            meta["shape"] = list(heavy.shape)
        if kind == "forest" or kind == "gb":
            meta["varying"] = {name: kind_ for name, (kind_, _) in split[1].items()}
            for name, (kind_, values) in split[1].items():
                self.extra[f"slot{slot}.{name}"] = (VARYING[kind_], [np.asarray(values, VARYING[kind_])])
        for name, (dtype, parts) in per_tree.items():
            counts = np.array([len(p) for p in parts], np.int64)
            self.extra[f"slot{slot}.{name}"] = (dtype, parts)
            self.extra[f"slot{slot}.{name}.offsets"] = ("<i8", [np.concatenate(([0], np.cumsum(counts)))])
            attrs.pop(name)
        for t in trees:
            _, args, state = t.__reduce__()
            self.trees.append((args, state))
        self.slots.append(meta)
        attrs[MARKER] = {"slot": slot, "shared": split[0]} if kind != "single" else {"slot": slot}
        return _with_dict(obj, attrs)

    def _per_tree(self, key: str, attrs: dict[str, Any], trees: list) -> dict | None:
        out = {}
        for name, (container, dtype, _) in PER_TREE.get(key, {}).items():
            parts = attrs.get(name)
            if type(parts) is not container or len(parts) != len(trees) or not all(
                isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype.str == dtype for p in parts
            ):
                return None
            out[name] = (dtype, list(parts))
        return out

    def _cut_hgb(self, obj: Any, key: str, attrs: dict[str, Any], heavy: Any) -> Any:
        n_features = attrs.get("n_features_in_")
        if not self.hgb_ok or not isinstance(heavy, list) or not heavy or not isinstance(n_features, int):
            return obj
        width = len(heavy[0]) if isinstance(heavy[0], list) else 0
        preds = [p for row in heavy if isinstance(row, list) and len(row) == width for p in row]
        if width == 0 or len(preds) != width * len(heavy) or not all(_plain_predictor(p) for p in preds):
            return obj
        start = len(self.predictors)
        self.predictors += [(p, n_features) for p in preds]
        self.slots.append({"kind": "hgb", "class": key, "range": [start, start + len(preds)], "shape": [len(heavy), width]})
        attrs[MARKER] = {"slot": len(self.slots) - 1}
        return _with_dict(obj, attrs)

    def dump(self, fh: Any) -> None:
        """Write the tree file for everything cut so far to the binary file ``fh``."""
        from sklearn.tree._tree import NODE_DTYPE

        arrays: dict[str, list[np.ndarray]] = {}
        dtypes = {name: dtype for name, (dtype, _) in v.BASE_ARRAYS.items()}
        args = [a for a, _ in self.trees]
        states = [s for _, s in self.trees]
        counts = np.array([s["node_count"] for s in states], np.int64)
        arrays["tree.node_offsets"] = [np.concatenate(([0], np.cumsum(counts)))]
        arrays["tree.n_features"] = [np.array([a[0] for a in args], np.int64)]
        arrays["tree.n_outputs"] = [np.array([a[2] for a in args], np.int64)]
        arrays["tree.n_classes"] = [np.asarray(a[1], np.int64) for a in args]
        arrays["tree.max_depth"] = [np.array([s["max_depth"] for s in states], np.int64)]
        arrays["tree.value"] = [s["values"].reshape(-1) for s in states]
        arrays["node.records"] = [s["nodes"].view(np.uint8).reshape(-1, s["nodes"].dtype.itemsize) for s in states]
        preds = [p for p, _ in self.predictors]
        arrays["hgb.n_features"] = [np.array([n for _, n in self.predictors], np.int64)]
        for name, parts in (("node", [p.nodes for p in preds]), ("binned", [p.binned_left_cat_bitsets for p in preds]),
                            ("raw", [p.raw_left_cat_bitsets for p in preds])):
            sizes = np.array([len(x) for x in parts], np.int64)
            arrays[f"hgb.{name}_offsets"] = [np.concatenate(([0], np.cumsum(sizes)))]
            if name != "node":
                arrays[f"hgb.{name}_bitsets"] = parts or [np.zeros((0, 8), np.uint32)]
        for f in v.HGB_FIELDS:
            arrays[f"hgbnode.{f}"] = [p.nodes[f] for p in preds]
        for name, (dtype, parts) in self.extra.items():
            arrays[name], dtypes[name] = parts, dtype
        shapes = {}
        for name, parts in arrays.items():
            rows = sum(len(p) for p in parts)
            shapes[name] = (rows, 8) if name.endswith("_bitsets") else (rows,)
            if name.endswith("_bitsets"):
                arrays[name] = [p.reshape(-1, 8) for p in parts]
        shapes["node.records"] = (shapes["node.records"][0], NODE_DTYPE.itemsize)
        layout = {"names": list(NODE_DTYPE.names), "formats": [NODE_DTYPE.fields[n][0].str for n in NODE_DTYPE.names],
                  "offsets": [NODE_DTYPE.fields[n][1] for n in NODE_DTYPE.names], "itemsize": NODE_DTYPE.itemsize}
        doc = {"layout": v.LAYOUT, "node_dtype": layout, "slots": self.slots}
        meta = {"safeflavor": json.dumps(doc, separators=(",", ":"))}
        v.dump(arrays, dtypes, shapes, meta, fh)


def _plain_predictor(p: Any) -> bool:
    ok = type(p).__name__ == "TreePredictor" and type(p).__module__.startswith("sklearn.ensemble._hist_gradient_boosting")
    return ok and set(vars(p)) == {"nodes", "binned_left_cat_bitsets", "raw_left_cat_bitsets"} and all(
        isinstance(b, np.ndarray) and b.dtype.str == "<u4" and b.ndim == 2 and b.shape[1] == 8
        for b in (p.binned_left_cat_bitsets, p.raw_left_cat_bitsets)
    )


def _with_dict(obj: Any, attrs: dict[str, Any]) -> Any:
    """A new instance of ``type(obj)`` whose ``__dict__`` is ``attrs`` (no constructor runs)."""
    new = object.__new__(type(obj))
    new.__dict__.update(attrs)
    return new


def _split(subs: list, allowed: frozenset[str]) -> tuple[dict, dict] | None:
    """Split sub-estimators' attributes into shared values and per-tree int/float columns.

    Returns None when an attribute is outside ``allowed`` or varies in a way a column cannot
    hold: such an ensemble stays in skops.
    """
    keys = set(vars(subs[0]))
    if any(set(vars(s)) != keys for s in subs) or not keys - {"tree_"} <= allowed:
        return None
    shared, varying = {}, {}
    for k in sorted(keys - {"tree_"}):
        vals = [vars(s)[k] for s in subs]
        first = vals[0]
        if all(x is first for x in vals):
            shared[k] = first
        elif isinstance(first, np.ndarray) and all(
            isinstance(x, np.ndarray) and x.dtype == first.dtype and np.array_equal(x, first) for x in vals
        ):
            shared[k] = first
        elif not isinstance(first, np.ndarray) and all(type(x) is type(first) for x in vals) and all(x == first for x in vals):
            shared[k] = first
        elif all(type(x) is int for x in vals) and all(abs(x) < 2**63 for x in vals):
            varying[k] = ("int", vals)
        elif all(type(x) is float for x in vals):
            varying[k] = ("float", vals)
        else:
            return None
    return shared, varying
