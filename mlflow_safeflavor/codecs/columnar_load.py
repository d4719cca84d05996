"""Read ``trees.safetensors`` and put its trees back into the skeleton skops built.

:func:`read` parses and checks the whole file — container, layout, every array — before any
object exists; :func:`attach` then finds the markers :mod:`.columnar` left in the skeleton, checks
each against the estimator that holds it (class, tree count, input width) and rebuilds the trees
with ``Tree.__setstate__`` (one copy of the checked columns into each tree) and HGB
``TreePredictor``s. Classes and attribute names come from the tables in :mod:`.columnar`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mlflow_safeflavor.codecs.columnar import (
    ENSEMBLES, HEAVY, MARKER, PER_TREE, VARYING, _cls, allowed_attrs, key_of,
)
from mlflow_safeflavor.validate import columnar as v
from mlflow_safeflavor.validate.sklearn_trees import walk

_SLOT_KEYS = {"single": {"kind", "class", "range"}, "forest": {"kind", "class", "range", "varying"},
              "gb": {"kind", "class", "range", "shape", "varying"}, "hgb": {"kind", "class", "range", "shape"}}


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _slots(meta: dict[str, str], *, path: str) -> dict[str, Any]:
    """The layout document from the header's metadata, every slot checked against the fixed tables."""
    try:
        doc = json.loads(meta["safeflavor"]) if set(meta) == {"safeflavor"} else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or set(doc) != {"layout", "node_dtype", "slots"} or doc["layout"] != v.LAYOUT \
            or not isinstance(doc["slots"], list) or len(doc["slots"]) > v.MAX_SLOTS:
        raise v.fail(path, f"has no layout this version reads (layout {v.LAYOUT} expected)")
    for i, s in enumerate(doc["slots"]):
        kind = s.get("kind") if isinstance(s, dict) else None
        ok = (kind in _SLOT_KEYS and set(s) == _SLOT_KEYS[kind] and s["class"] in ENSEMBLES
              and ENSEMBLES[s["class"]][2] == kind and isinstance(s["range"], list) and len(s["range"]) == 2
              and all(type(x) is int for x in s["range"]) and 0 <= s["range"][0] < s["range"][1])
        if ok and "shape" in s:
            ok = (isinstance(s["shape"], list) and len(s["shape"]) == 2 and all(type(x) is int and x > 0 for x in s["shape"])
                  and s["shape"][0] * s["shape"][1] == s["range"][1] - s["range"][0])
        if ok and kind == "single":
            ok = s["range"][1] - s["range"][0] == 1
        if ok and "varying" in s:
            allowed = allowed_attrs(ENSEMBLES[s["class"]][3])
            ok = isinstance(s["varying"], dict) and all(k in allowed and t in VARYING for k, t in s["varying"].items())
        if not ok:
            raise v.fail(path, f"has a malformed layout entry {i} ({s!r:.160})")
    return doc


def _wanted(slots: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    wanted = dict(v.BASE_ARRAYS)
    for i, s in enumerate(slots):
        for name, kind in s.get("varying", {}).items():
            wanted[f"slot{i}.{name}"] = (VARYING[kind], 1)
        for name, (_, dtype, _) in PER_TREE.get(s["class"], {}).items():
            wanted[f"slot{i}.{name}"] = (dtype, 1)
            wanted[f"slot{i}.{name}.offsets"] = ("<i8", 1)
    return wanted


def read(data: bytes, *, path: str) -> v.Checked:
    """Parse and check ``trees.safetensors``; nothing is built. Raises MalformedArtifactError."""
    arrays, meta = v.load(data, path=path)
    doc = _slots(meta, path=path)
    slots = doc["slots"]
    v.expect(arrays, _wanted(slots), path=path)
    arrays.update(v.node_fields(arrays["node.records"], v.node_dtype(doc["node_dtype"], path=path), path=path))
    value_offsets, class_offsets = v.check_trees(arrays, path=path)
    v.check_predictors(arrays, path=path)
    ends = {"tree": 0, "hgb": 0}
    node_counts = np.diff(arrays["tree.node_offsets"])
    for i, s in enumerate(slots):
        unit = "hgb" if s["kind"] == "hgb" else "tree"
        a, b = s["range"]
        if a != ends[unit]:
            raise v.fail(path, f"has layout entry {i} whose range overlaps or leaves a gap")
        ends[unit] = b
        for name in s.get("varying", {}):
            if len(arrays[f"slot{i}.{name}"]) != b - a:
                raise v.fail(path, f"has a per-tree column {name!r} of the wrong length")
        for name, (_, _, by_nodes) in PER_TREE.get(s["class"], {}).items():
            values = arrays[f"slot{i}.{name}"]
            steps = v.offsets(arrays[f"slot{i}.{name}.offsets"], len(values), name=f"{name} offsets", path=path,
                              min_step=0, max_step=v.MAX_NODES_PER_TREE)
            want = node_counts[a:b] if by_nodes else arrays["tree.n_features"][a:b]
            if len(steps) != b - a or not np.array_equal(steps, want):
                raise v.fail(path, f"has per-tree arrays {name!r} that do not match the trees' sizes")
            if name == "estimators_features_" and len(values) and values.min() < 0:
                raise v.fail(path, "has a negative feature index in estimators_features_")
    if ends["tree"] != len(node_counts) or ends["hgb"] != len(arrays["hgb.n_features"]):
        raise v.fail(path, "holds trees that no layout entry covers")
    return v.Checked(arrays, slots, value_offsets, class_offsets)


# ---------------------------------------------------------------------------------- attach


def _markers(model: Any, *, path: str) -> list[Any]:
    """Every object of the skeleton that carries a marker (iterative walk, each object once)."""
    too_big = lambda: v.fail(path, "belongs to a model whose object graph is larger than the walk cap")  # noqa: E731
    return [obj for obj, attrs in walk(model, too_big=too_big) if attrs is not None and MARKER in attrs]


def attach(model: Any, checked: v.Checked, *, path: str) -> None:
    """Rebuild every cut-out estimator of ``model`` (a skeleton skops built) from ``checked``."""
    used: set[int] = set()
    for obj in _markers(model, path=path):
        marker = vars(obj).pop(MARKER)
        key = key_of(obj)
        index = marker.get("slot") if isinstance(marker, dict) else None
        if key is None or not _is_int(index) or not 0 <= index < len(checked.slots) or index in used:
            raise v.fail(path, f"is referred to by a {type(obj).__name__} marker it has no entry for")
        used.add(int(index))
        slot = checked.slots[index]
        if slot["class"] != key or HEAVY[slot["kind"]] in vars(obj):
            raise v.fail(path, f"has entry {index} for a {slot['class']}, but the model holds a {key} there")
        _Builder(checked, slot, index, obj, marker, path).run()
    if len(used) != len(checked.slots):
        raise v.fail(path, "holds trees that no estimator of the model refers to")


class _Builder:
    """Rebuilds one cut-out estimator after checking it against the estimator that holds it."""

    def __init__(self, checked: v.Checked, slot: dict, index: int, obj: Any, marker: dict, path: str) -> None:
        self.c, self.a = checked, checked.arrays
        self.slot, self.index, self.obj, self.marker, self.path = slot, index, obj, marker, path
        self.lo, self.hi = slot["range"]

    def _attr_int(self, name: str) -> int:
        value = vars(self.obj).get(name)
        if not _is_int(value):
            raise v.fail(self.path, f"belongs to a {self.slot['class']} whose {name} is not an integer")
        return int(value)

    def _same(self, values: np.ndarray, want: int, what: str) -> None:
        if len(values) and not np.all(values == want):
            raise v.fail(self.path, f"has trees whose {what} differs from the {self.slot['class']}'s ({want})")

    def run(self) -> None:
        kind = self.slot["kind"]
        if kind == "hgb":
            return self._hgb()
        n_in = self._attr_int("n_features_in_")
        widths = self.a["tree.n_features"][self.lo:self.hi]
        if self.slot["class"] in PER_TREE:
            feats = self.a[f"slot{self.index}.estimators_features_"]
            if len(feats) and feats.max() >= n_in:
                raise v.fail(self.path, "has an estimators_features_ index past the model's input width")
        else:
            self._same(widths, n_in, "input width")
        trees = [self._tree(t) for t in range(self.lo, self.hi)]
        if kind == "single":
            self.obj.tree_ = trees[0]
            return None
        subs = self._subs(trees)
        if kind == "forest":
            if self._attr_int("n_estimators") != len(subs):
                raise v.fail(self.path, f"holds {len(subs)} trees for a forest of n_estimators={self.obj.n_estimators}")
            self.obj.estimators_ = subs
            for name, (container, _, _) in PER_TREE.get(self.slot["class"], {}).items():
                values, offs = self.a[f"slot{self.index}.{name}"], self.a[f"slot{self.index}.{name}.offsets"]
                self.obj.__dict__[name] = container(np.array(values[offs[i]:offs[i + 1]]) for i in range(len(subs)))
            return None
        rows, width = self.slot["shape"]
        if rows != self._attr_int("n_estimators_") or width != self._attr_int("n_trees_per_iteration_"):
            raise v.fail(self.path, f"holds {rows}x{width} trees for a gradient boosting of another size")
        grid = np.empty((rows, width), dtype=object)
        grid.ravel()[:] = subs
        self.obj.estimators_ = grid
        return None

    def _subs(self, trees: list) -> list:
        sub_cls = _cls(ENSEMBLES[self.slot["class"]][3])
        allowed = allowed_attrs(ENSEMBLES[self.slot["class"]][3])
        shared = self.marker.get("shared")
        varying = self.slot["varying"]
        if set(self.marker) != {"slot", "shared"} or not isinstance(shared, dict) or not all(
            isinstance(k, str) and k in allowed and k not in varying for k in shared
        ):
            raise v.fail(self.path, "is referred to by a marker whose shared attributes are not a tree's")
        columns = {name: self.a[f"slot{self.index}.{name}"].tolist() for name in varying}
        subs = []
        for j, tree in enumerate(trees):
            attrs = dict(shared)
            for name, values in columns.items():
                attrs[name] = values[j]
            attrs["tree_"] = tree
            subs.append(_with_dict_of(sub_cls, attrs))
        return subs

    def _tree(self, t: int) -> Any:
        from sklearn.tree._tree import NODE_DTYPE, Tree

        a = self.a
        start, stop = int(a["tree.node_offsets"][t]), int(a["tree.node_offsets"][t + 1])
        if a["node.view"].dtype == NODE_DTYPE:
            nodes = a["node.view"][start:stop]  # __setstate__ copies it into the tree: the one copy
        elif set(NODE_DTYPE.names) == set(v.TREE_FIELDS):
            nodes = np.empty(stop - start, dtype=NODE_DTYPE)
            for f in v.TREE_FIELDS:
                nodes[f] = a[f"node.{f}"][start:stop]
        else:
            raise v.fail(self.path, "was written for a scikit-learn whose tree node layout differs from the installed one")
        n_classes = a["tree.n_classes"][self.c.class_offsets[t]:self.c.class_offsets[t + 1]].astype(np.intp)
        n_outputs = int(a["tree.n_outputs"][t])
        values = a["tree.value"][self.c.value_offsets[t]:self.c.value_offsets[t + 1]]
        tree = Tree(int(a["tree.n_features"][t]), n_classes, n_outputs)
        tree.__setstate__({"max_depth": int(a["tree.max_depth"][t]), "node_count": stop - start, "nodes": nodes,
                           "values": values.reshape(stop - start, n_outputs, int(n_classes.max()))})
        return tree

    def _hgb(self) -> None:
        from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        if set(PREDICTOR_RECORD_DTYPE.names) != set(v.HGB_FIELDS):
            raise v.fail(self.path, "was written for a scikit-learn whose HGB node layout differs from the installed one")
        if set(self.marker) != {"slot"}:
            raise v.fail(self.path, "is referred to by a malformed marker")
        a = self.a
        self._same(a["hgb.n_features"][self.lo:self.hi], self._attr_int("n_features_in_"), "input width")
        rows, width = self.slot["shape"]
        if width != self._attr_int("n_trees_per_iteration_"):
            raise v.fail(self.path, "holds a number of trees per iteration that differs from the model's")
        # One record array for the whole slot (one copy per field, not one per field and tree);
        # each predictor gets a contiguous slice of it.
        first, last = int(a["hgb.node_offsets"][self.lo]), int(a["hgb.node_offsets"][self.hi])
        records = np.empty(last - first, dtype=PREDICTOR_RECORD_DTYPE)
        for f in v.HGB_FIELDS:
            records[f] = a[f"hgbnode.{f}"][first:last]
        bitsets = {k: np.array(a[f"hgb.{k}_bitsets"]) for k in ("binned", "raw")}
        preds = []
        for p in range(self.lo, self.hi):
            start, stop = int(a["hgb.node_offsets"][p]) - first, int(a["hgb.node_offsets"][p + 1]) - first
            bits = [bitsets[k][a[f"hgb.{k}_offsets"][p]:a[f"hgb.{k}_offsets"][p + 1]] for k in ("binned", "raw")]
            preds.append(TreePredictor(records[start:stop], bits[0], bits[1]))
        self.obj._predictors = [preds[i * width:(i + 1) * width] for i in range(rows)]


def _with_dict_of(cls: type, attrs: dict[str, Any]) -> Any:
    new = object.__new__(cls)
    new.__dict__.update(attrs)
    return new
