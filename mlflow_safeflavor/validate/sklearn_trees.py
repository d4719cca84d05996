"""Checks of scikit-learn tree arrays (``Tree``, HGB ``TreePredictor``) after skops builds them.

A crafted node array does not fail when a ``Tree`` is constructed; it makes ``predict`` read out of
bounds (SIGSEGV). These checks run on the built object, before any prediction, in NumPy.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

MAX_NODES = 50_000_000
_MAX_WALK = 1_000_000


def _fail(path: str, what: str) -> MalformedArtifactError:
    return MalformedArtifactError(
        f"{path}: {what}. Predicting with it would read outside the tree's arrays; the file was "
        "crafted or corrupted — do not load it, re-save the model.",
        path=path,
    )


def check_tree(tree: Any, *, path: str) -> None:
    """Validate an ``sklearn.tree._tree.Tree``: child indices in range and forward, features in range."""
    n = int(tree.node_count)
    if n < 1 or n > MAX_NODES:
        raise _fail(path, f"a decision tree has node_count {n}")
    left = np.asarray(tree.children_left)
    right = np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    if not (len(left) == len(right) == len(feature) == n) or tree.value.shape[0] != n:
        raise _fail(path, "a decision tree's node arrays have inconsistent lengths")
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        raise _fail(path, "a decision tree has a node with exactly one child")
    idx = np.arange(n)
    inner = ~leaf
    # Builders append children after their parent, so forward edges also rule out cycles.
    if np.any(left[inner] <= idx[inner]) or np.any(right[inner] <= idx[inner]) or np.any(left[inner] >= n) or np.any(right[inner] >= n):
        raise _fail(path, "a decision tree has a child index out of range or pointing backwards")
    if np.any(feature[inner] < 0) or np.any(feature[inner] >= tree.n_features):
        raise _fail(path, "a decision tree splits on a feature index out of range")


def check_predictor(pred: Any, *, path: str) -> None:
    """Validate an HGB ``TreePredictor``'s node records the same way."""
    nodes = pred.nodes
    n = len(nodes)
    if n < 1 or n > MAX_NODES:
        raise _fail(path, f"a histogram-boosting tree has {n} nodes")
    leaf = nodes["is_leaf"].astype(bool)
    inner = ~leaf
    idx = np.arange(n)
    for field in ("left", "right"):
        child = nodes[field].astype(np.int64)
        if np.any(child[inner] <= idx[inner]) or np.any(child[inner] >= n):
            raise _fail(path, "a histogram-boosting tree has a child index out of range")
    if np.any(nodes["feature_idx"][inner].astype(np.int64) < 0):
        raise _fail(path, "a histogram-boosting tree has a negative feature index")
    cat = inner & nodes["is_categorical"].astype(bool)
    if np.any(cat):
        n_bitsets = len(pred.raw_left_cat_bitsets)
        bidx = nodes["bitset_idx"][cat].astype(np.int64)
        if np.any(bidx < 0) or np.any(bidx >= n_bitsets):
            raise _fail(path, "a histogram-boosting tree has a categorical bitset index out of range")


def check_estimator(model: Any, *, path: str) -> None:
    """Find every Tree and TreePredictor reachable from ``model`` and validate it.

    The walk follows estimator attributes, lists, tuples, dicts and object arrays, visiting each
    object once, so shared or cyclic references cannot make it loop.
    """
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    for obj, attrs in walk(model, too_big=lambda: _fail(path, "the model's object graph is larger than the walk cap"),
                           leaves=(Tree, TreePredictor)):
        if isinstance(obj, Tree):
            check_tree(obj, path=path)
        elif isinstance(obj, TreePredictor):
            check_predictor(obj, path=path)
        elif attrs is not None and "_predictors" in attrs and isinstance(attrs.get("n_features_in_"), int):
            _check_hgb_features(attrs["_predictors"], attrs["n_features_in_"], path=path)


def walk(model: Any, *, too_big: Callable[[], Exception], leaves: tuple[type, ...] = (),
         cap: int = _MAX_WALK) -> Iterator[tuple[Any, dict[str, Any] | None]]:
    """Every object reachable from ``model``, once each, as ``(obj, its attributes or None)``.

    Follows estimator attributes, lists, tuples, dicts and object arrays (not into ``leaves``), so
    shared or cyclic references cannot make it loop; more than ``cap`` objects raises ``too_big()``.
    """
    seen: set[int] = set()
    stack = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        if len(seen) > cap:
            raise too_big()
        attrs = None
        if isinstance(obj, leaves):
            pass
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif hasattr(obj, "__dict__"):
            attrs = vars(obj)
            stack.extend(attrs.values())
        yield obj, attrs


def _check_hgb_features(predictors: Any, n_features: int, *, path: str) -> None:
    """HGB trees index raw input columns: every split feature must be below ``n_features_in_``."""
    for per_iteration in predictors if isinstance(predictors, list) else []:
        for pred in per_iteration if isinstance(per_iteration, list) else []:
            nodes = getattr(pred, "nodes", None)
            if nodes is None:
                continue
            feats = nodes["feature_idx"][~nodes["is_leaf"].astype(bool)]
            if len(feats) and int(feats.max()) >= n_features:
                raise _fail(path, "a histogram-boosting tree splits on a feature index out of range")
