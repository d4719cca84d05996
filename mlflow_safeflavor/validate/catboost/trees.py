"""Semantic checks of the decoded model core: the indices CatBoost follows without checking them.

What CatBoost 1.2 does with the values (model.cpp, cpu/evaluator_impl.cpp, cpu/quantization.h):

* ``CalcBinFeatures`` indexes its list of binary features (float borders, one-hot values, CTR
  borders, in that order) with every ``TreeSplits`` entry, and ``CalcFirstLeafOffsets`` steps
  through ``LeafValues`` by ``(1 << TreeSizes[i]) * ApproxDimension`` — both while loading.
* The evaluator starts at ``TreeStartOffsets[first tree]`` and then walks the repacked splits by
  tree size; it reads leaf values at the computed offsets; non-symmetric trees jump by the step
  nodes' diffs and read ``LeafValues[NonSymmetricNodeIdToLeafId[node] + class]``.
* Feature vectors are sized from the *last* feature's ``Index``/``FlatIndex`` and indexed with
  every feature's; one-hot features look up their categorical feature by ``Index``; a CTR
  projection looks up categorical features, float splits and one-hot splits.

So: split indices are below the number of binary features; tree sizes sum to the split count and
start offsets are their running sum; oblivious depths are at most 16 and ``LeafValues`` holds
exactly ``sum(2**depth) * ApproxDimension`` values; non-symmetric steps stay inside their tree and
every node where a walk can stop names an aligned leaf inside ``LeafValues``, each tree's leaves
forming the next contiguous block; feature indices are non-negative, strictly increasing, capped
and no larger than their flat indices, which are distinct across kinds; borders are finite and
strictly increasing; every reference from a one-hot or CTR feature resolves (a CTR projection's
float and one-hot splits are compared bit for bit with the model's). All checks are NumPy over all
trees and features at once.
"""

from __future__ import annotations

import numpy as np

from mlflow_safeflavor.validate.catboost.flatbuf import Bad, Unsupported
from mlflow_safeflavor.validate.catboost.schema import Core, Ragged

MAX_DEPTH = 16  # CatBoost's limit for symmetric trees
MAX_DIMENSION = 1 << 20
MAX_FEATURE_INDEX = 1 << 24  # vectors of this many floats are allocated per object at predict time
MAX_VALUES_PER_BIN = 254  # model.h
MAX_BUCKETS = 0x10000  # CalcBinFeatures: a repacked feature index is a ui16
NAN_TREATMENTS = (0, 1, 2)  # AsIs, AsFalse, AsTrue
CTR_TYPES = range(6)  # Borders, Buckets, BinarizedTargetMeanValue, FloatTargetMeanValue, Counter, FeatureFreq


def check(core: Core) -> None:
    f = core.features
    if f["unsupported"]:
        raise Unsupported(f"uses {' and '.join(f['unsupported'])} features")
    n_bins = _check_features(f)
    _check_trees(core.trees, n_bins)


def _increasing(arr: np.ndarray, what: str) -> None:
    if arr.size and (arr[0] < 0 or arr[-1] >= MAX_FEATURE_INDEX or (arr[1:] <= arr[:-1]).any()):
        raise Bad(f"has {what} that are negative, too large or not strictly increasing")


def _check_borders(borders: Ragged, what: str) -> None:
    """Finite and strictly increasing within each feature."""
    v = borders.values
    if not v.size:
        return
    increasing = v[1:] > v[:-1]
    ends = borders.counts.cumsum()[:-1] - 1  # last border of each feature but the last one
    increasing[ends[(ends >= 0) & (ends < increasing.size)]] = True
    if not (np.isfinite(v).all() and increasing.all()):
        raise Bad(f"has {what} borders that are not finite and strictly increasing")


def _subset(values: np.ndarray, allowed: np.ndarray) -> bool:
    """Every value is in ``allowed`` (sorted search; cheaper than np.isin on these sizes)."""
    allowed = np.sort(allowed, kind="stable")  # already sorted runs: stable sorting is fastest
    at = np.searchsorted(allowed, values)
    return bool(at.size == 0 or (at < allowed.size).all() and (allowed[np.minimum(at, allowed.size - 1)] == values).all())


def _pairs(index: np.ndarray, bits: np.ndarray) -> np.ndarray:
    return (index.astype(np.int64) << 32) | bits.astype(np.int64)


def _buckets(counts: np.ndarray) -> int:
    return int((-(-counts // MAX_VALUES_PER_BIN)).sum())


def _check_features(f: dict) -> int:
    """Check feature tables and cross-references; return the number of binary features."""
    _increasing(f["float_index"], "float feature indices")
    _increasing(f["float_flat"], "float feature flat indices")
    _increasing(f["cat_index"], "categorical feature indices")
    _increasing(f["cat_flat"], "categorical feature flat indices")
    if (f["float_index"] > f["float_flat"]).any() or (f["cat_index"] > f["cat_flat"]).any():
        raise Bad("has a feature whose index among its kind exceeds its flat index")
    if not set(f["cat_flat"].tolist()).isdisjoint(f["float_flat"].tolist()):
        raise Bad("gives a float and a categorical feature the same flat index")
    if not set(f["float_nan"].tolist()) <= set(NAN_TREATMENTS):
        raise Bad("has a float feature with an unknown NaN treatment")
    float_borders, one_hot, ctr_borders = f["float_borders"], f["one_hot_values"], f["ctr_borders"]
    _check_borders(float_borders, "float feature")
    used_cats = set(f["cat_index"][f["cat_used"]].tolist())
    if not used_cats.issuperset(f["one_hot_index"].tolist()):
        raise Bad("has a one-hot feature for a categorical feature the model does not use")
    if ((f["one_hot_names"] != 0) & (f["one_hot_names"] != one_hot.counts)).any():
        raise Bad("has a one-hot feature with a different number of values and value names")
    bases = f["bases"]
    if (bases.cats.counts < 1).any() or not used_cats.issuperset(bases.cats.values.tolist()):
        raise Bad("has a CTR over categorical features the model does not use")
    for _, _, _, ctr_type, classifier in bases.keys:
        if ctr_type not in CTR_TYPES or classifier < 0:
            raise Bad("has a CTR of an unknown type or with a negative target classifier")
    # A projection's float and one-hot splits must be splits the model has (CatBoost looks them up
    # with THashMap::at): compared as (index, value bits) pairs.
    i32 = f["file"].i32
    if bases.float_splits.values.size:
        at = bases.float_splits.values
        have = _pairs(np.repeat(f["float_index"], float_borders.counts), float_borders.values.view(np.uint32))
        if not _subset(_pairs(i32[at], i32[at + 1].view(np.uint32)), have):
            raise Bad("has a CTR whose feature combination names a float split the model does not have")
    if bases.one_hot_splits.values.size:
        at = bases.one_hot_splits.values
        have = _pairs(np.repeat(f["one_hot_index"], one_hot.counts), one_hot.values.view(np.uint32))
        if not _subset(_pairs(i32[at], i32[at + 1].view(np.uint32)), have):
            raise Bad("has a CTR whose feature combination names a one-hot split the model does not have")
    if (f["ctr_target_border"] < 0).any() or not np.isfinite(f["ctr_priors"]).all():
        raise Bad("has a CTR with a negative target index or a non-finite prior, shift or scale")
    _check_borders(ctr_borders, "CTR feature")
    counts = (float_borders.counts, one_hot.counts, ctr_borders.counts)
    if sum(_buckets(c) for c in counts) > MAX_BUCKETS:
        raise Bad("has more binary feature buckets than CatBoost can index")
    return int(sum(c.sum() for c in counts))


def _check_trees(t: dict, n_bins: int) -> None:
    dim = t["dim"]
    if not 1 <= dim <= MAX_DIMENSION:
        raise Bad(f"declares {dim} prediction dimensions")
    bias = t["multi_bias"]
    if not (np.isfinite(t["scale"]) and np.isfinite(t["bias"]) and np.isfinite(bias).all()):
        raise Bad("has a non-finite scale or bias")
    if bias.size not in (0, dim) or (bias.size == 0 and dim != 1 and t["bias"] != 0):
        raise Bad(f"has {bias.size} bias values for {dim} dimensions")
    sizes, splits, starts = t["sizes"].astype(np.int64), t["splits"], t["starts"]
    n_trees = sizes.size
    if starts.size != n_trees:
        raise Bad(f"has {starts.size} tree start offsets for {n_trees} trees")
    if sizes.size and sizes.min() < 0:
        raise Bad("has a negative tree size")
    if int(sizes.sum()) != splits.size:
        raise Bad(f"has tree sizes that sum to {int(sizes.sum())} but {splits.size} splits")
    if n_trees and (starts[0] != 0 or (np.diff(starts.astype(np.int64)) != sizes[:-1]).any()):
        raise Bad("has tree start offsets that are not the running sum of the tree sizes")
    if t["repacked"] not in (None, 0, splits.size):
        raise Bad(f"has {t['repacked']} repacked splits for {splits.size} splits")
    if n_bins:
        if splits.size and (splits.min() < 0 or splits.max() >= n_bins):
            raise Bad(f"has a split index outside the model's {n_bins} binary features")
    elif splits.size and (splits != 0).any():
        raise Bad("has split indices but no binary features")
    if t["steps"].size or t["leaf_ids"].size:
        n_leaves = _check_non_symmetric(t, sizes, n_bins)
    else:
        if splits.size and not n_bins:
            raise Bad("has symmetric trees with splits but no binary features")
        if sizes.size and sizes.max() > MAX_DEPTH:
            raise Bad(f"has a symmetric tree deeper than {MAX_DEPTH}")
        n_leaves = int((np.int64(1) << sizes).sum())
    leaves, weights = t["leaves"], t["weights"]
    if leaves.size != n_leaves * dim:
        raise Bad(f"has {leaves.size} leaf values where its trees need {n_leaves * dim}")
    if weights.size not in (0, n_leaves):
        raise Bad(f"has {weights.size} leaf weights for {n_leaves} leaves")
    if not (np.isfinite(leaves).all() and np.isfinite(weights).all()):
        raise Bad("has non-finite leaf values or weights")


def _check_non_symmetric(t: dict, sizes: np.ndarray, n_bins: int) -> int:
    """Check step nodes and leaf ids of non-symmetric trees; return the number of leaves."""
    n, steps, leaf_ids = t["splits"].size, t["steps"], t["leaf_ids"]
    if steps.size != n or leaf_ids.size != n:
        raise Bad(f"has {steps.size} step nodes and {leaf_ids.size} leaf ids for {n} tree nodes")
    if sizes.size and sizes.min() < 1:
        raise Bad("has an empty non-symmetric tree")
    left = steps["left"].astype(np.int64)
    right = steps["right"].astype(np.int64)
    tree = np.repeat(np.arange(sizes.size), sizes)
    end = np.cumsum(sizes)[tree]
    node = np.arange(n, dtype=np.int64)
    if ((left > 0) & (node + left >= end)).any() or ((right > 0) & (node + right >= end)).any():
        raise Bad("has a non-symmetric tree step that leaves its tree")
    if not n_bins and ((left > 0) | (right > 0)).any():
        raise Bad("has non-symmetric tree steps but no binary features")
    stops = (left == 0) | (right == 0)
    leaf = leaf_ids.astype(np.int64)[stops]
    dim = t["dim"]
    if (leaf % dim != 0).any() or (leaf + dim > t["leaves"].size).any():
        raise Bad("has a non-symmetric tree leaf id outside the leaf values")
    # Each tree's leaves are the next contiguous block of LeafValues (CalcFirstLeafOffsets and
    # GetTreeLeafCounts assume it): sorted by (tree, leaf), leaf ids step by dim from 0.
    leaf_tree = tree[stops]
    order = np.lexsort((leaf, leaf_tree))
    if (leaf[order] != dim * np.arange(leaf.size)).any():
        raise Bad("has non-symmetric trees whose leaves are not contiguous, in tree order")
    return int(leaf.size)
