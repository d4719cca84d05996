"""The trees' structure: children in range, after their parent and reached once; depth; split
features and decision types; categorical splits against their category sets; linear leaves."""

from __future__ import annotations

import warnings

import numpy as np

from mlflow_safeflavor.validate._common import INT32_MAX, Refused, first_outside, locate, offsets_of
from mlflow_safeflavor.validate.lightgbm_model._caps import MAX_DEPTH, MAX_LEAVES
from mlflow_safeflavor.validate.lightgbm_model._text import (
    K,
    check_numbers,
    expected_counts,
    field_values,
    parse_ints,
    read_section,
    small_ints,
    small_ints_of,
)


def check_trees(region: bytes, sizes: list[int], max_feature_idx: int) -> None:
    """The tree section (``region``, cut at ``tree_sizes``): its numbers, then every tree's shape."""
    n = len(sizes)
    section = read_section(region, sizes)
    spans = section.spans

    _require(spans, ("num_leaves", "num_cat", "leaf_value"))  # LightGBM: Log::Fatal in the parallel loop, i.e. abort
    has_linear = spans[:, K["is_linear"], 0] >= 0
    if has_linear.all():  # model_to_string writes is_linear in every tree
        L, num_cat, flags = small_ints_of(region, spans, (("num_leaves", 1, MAX_LEAVES), ("num_cat", 0, MAX_LEAVES), ("is_linear", 0, 1)))
        linear = flags.astype(bool)
    else:
        L, num_cat = small_ints_of(region, spans, (("num_leaves", 1, MAX_LEAVES), ("num_cat", 0, MAX_LEAVES)))
        linear = np.zeros(n, dtype=bool)
        if has_linear.any():
            linear[has_linear] = small_ints(region, spans, "is_linear", 0, 1, np.flatnonzero(has_linear)).astype(bool)
    # LightGBM stops reading a single-leaf, non-linear tree after num_cat, leaf_value,
    # shrinkage and is_linear; it reads no array whose length is 0.
    parsed = (L > 1) | linear
    _require(spans, ("left_child", "right_child", "split_feature", "threshold"), parsed)
    num_cat = np.where(parsed, num_cat, 0)
    if np.any(num_cat > L - 1):
        t = int(np.argmax(num_cat > L - 1))
        raise Refused(f"tree {t} has num_cat={int(num_cat[t])} but only {int(L[t]) - 1} splits")
    no_cat_fields = (spans[:, K["cat_boundaries"], 0] < 0) | (spans[:, K["cat_threshold"], 0] < 0)
    if np.any((num_cat > 0) & no_cat_fields):
        raise Refused(f"tree {int(np.argmax((num_cat > 0) & no_cat_fields))} has num_cat > 0 but no cat_boundaries/cat_threshold")

    counts = check_numbers(section, expected_counts(L, num_cat, linear, parsed))

    # Structure: children, features, decision types.
    n_int = L - 1
    split_trees = np.flatnonzero(n_int > 0)  # every such tree is parsed
    total = int(n_int.sum())
    keys: tuple[str, ...] = ("left_child", "right_child", "split_feature", "decision_type")
    has_dt = spans[split_trees, K["decision_type"], 0] >= 0
    if not has_dt.all():
        keys = keys[:3]
    ints = parse_ints(region, spans, keys, split_trees, n_int)
    child, feature = ints[:2], ints[2]  # left_child and right_child
    if len(keys) == 4:
        decision = ints[3]
    else:  # decision_type is optional; LightGBM uses 0 (numerical split) where it is absent
        (given,) = parse_ints(region, spans, ("decision_type",), split_trees[has_dt], n_int)
        node_off = offsets_of(n_int)
        decision = np.zeros(total, dtype=np.int64)
        where = [np.arange(node_off[t], node_off[t + 1]) for t in split_trees[has_dt].tolist()]
        decision[np.concatenate(where or [np.zeros(0, dtype=np.int64)])] = given

    categorical = np.zeros(0, dtype=bool)
    if total:
        tree_of = np.repeat(np.arange(n), n_int)
        i = first_outside(feature, 0, max_feature_idx)
        if i is not None:
            raise Refused(f"tree {int(tree_of[i])} splits on feature {int(feature[i])} but max_feature_idx is {max_feature_idx}")
        i = first_outside(decision, 0, 11)  # bits: 1 categorical, 2 default-left, (x >> 2) & 3 missing type 0..2
        if i is not None:
            raise Refused(f"tree {int(tree_of[i])} has decision_type {int(decision[i])}")
        _check_children(child, L, n_int, tree_of)
        categorical = (decision & 1).astype(bool)
        if categorical.any() and np.any(categorical & (num_cat[tree_of] == 0)):
            t = int(tree_of[int(np.argmax(categorical & (num_cat[tree_of] == 0)))])
            raise Refused(f"tree {t} has a categorical split but num_cat=0")
        if int(n_int.max()) >= MAX_DEPTH:
            _check_depth(child, n_int, tree_of)

    if np.any(num_cat > 0):
        _check_categories(region, spans, counts, num_cat, categorical, n_int)
    if linear.any():
        _check_linear(region, spans, linear, L, max_feature_idx)



def _require(spans: np.ndarray, keys: tuple[str, ...], trees: np.ndarray | None = None) -> None:
    """Every tree (of ``trees``, a mask) has each of ``keys``; else name the first key missing, then its first tree."""
    missing = spans[:, [K[key] for key in keys], 0] < 0
    if trees is not None:
        missing &= trees[:, None]
    if missing.any():
        j = int(np.argmax(missing.any(axis=0)))
        raise Refused(f"tree {int(np.argmax(missing[:, j]))} has no {keys[j]}")


def _check_children(child: np.ndarray, L: np.ndarray, n_int: np.ndarray, tree_of: np.ndarray) -> None:
    """Every child in range and after its parent; every node and leaf reached exactly once.

    ``child`` holds both sides at once: row 0 the left children, row 1 the right ones.
    """
    total = child.shape[1]
    node_off = offsets_of(n_int)
    first = node_off.take(tree_of)  # per node: its tree's first node
    local = np.arange(total) - first
    leaves = L.take(tree_of)
    # An internal child (>= 0) comes after its parent (LightGBM numbers a node after its parent)
    # and is < num_leaves - 1; a leaf child ~l (< 0) has 0 <= l < num_leaves, i.e. child >= -L.
    to_node = child >= 0
    bad = (child < -leaves) | (child > leaves - 2) | (to_node & (child <= local))
    if bad.any():
        side_i, i = divmod(int(np.argmax(bad)), total)
        t = int(tree_of[i])
        raise Refused(
            f"tree {t} node {int(local[i])} has {('left_child', 'right_child')[side_i]}={int(child[side_i, i])}, "
            f"out of range or not after its parent (num_leaves={int(L[t])})"
        )
    # Every node but the root (never a child: children point forward) is the child of exactly
    # one node; then each split tree has exactly num_leaves leaf slots, and all must differ.
    # One count over both: node slots [0, total), then the leaf slots of all trees.
    leaf_off = offsets_of(L)
    slot = np.where(to_node, first + child, (total + leaf_off.take(tree_of)) + ~child)
    reached = np.bincount(slot.ravel(), minlength=total + int(leaf_off[-1]))
    internal_in, leaf_in = reached[:total], reached[total:]
    if not np.array_equal(internal_in, local != 0):
        i = int(np.argmax(internal_in != (local != 0)))
        raise Refused(f"tree {int(tree_of[i])} node {int(local[i])} is the child of {int(internal_in[i])} nodes")
    if leaf_in.max(initial=0) > 1:
        i = int(np.argmax(leaf_in))
        t, leaf = locate(leaf_off, i)
        raise Refused(f"tree {t} leaf {leaf} is the child of {int(leaf_in[i])} nodes")


def _check_depth(child: np.ndarray, n_int: np.ndarray, tree_of: np.ndarray) -> None:
    """Refuse trees deeper than MAX_DEPTH (pointer jumping over the already-checked parent links)."""
    total = child.shape[1]
    base = offsets_of(n_int)[tree_of]
    parent = np.arange(total)
    for side in child:
        src = np.flatnonzero(side >= 0)
        parent[base[src] + side[src]] = src
    # dist[v] = min(depth(v), 2**k) and anc[v] = the 2**k-th ancestor (a root stays put).
    dist = (parent != np.arange(total)).astype(np.int64)
    anc = parent
    for _ in range(int(np.ceil(np.log2(MAX_DEPTH))) + 1):
        dist = dist + dist[anc]
        anc = anc[anc]
    # Leaves are one level below their parent node; the root is level 0.
    if np.any(parent[anc] != anc) or int(dist.max()) + 1 > MAX_DEPTH:
        t = int(tree_of[int(np.argmax(dist))])
        raise Refused(f"tree {t} is deeper than {MAX_DEPTH} levels")


def _check_categories(
    region: bytes, spans: np.ndarray, counts: np.ndarray, num_cat: np.ndarray, categorical: np.ndarray, n_int: np.ndarray
) -> None:
    """cat_boundaries run 0 <= b[0] <= ... <= b[num_cat] = len(cat_threshold); categorical splits
    name a category set 0 <= threshold < num_cat (the predictor indexes cat_boundaries with it)."""
    trees = np.flatnonzero(num_cat > 0)
    n_words = counts[trees, K["cat_threshold"]]
    (bounds,) = parse_ints(region, spans, ("cat_boundaries",), trees, num_cat + 1, 0, INT32_MAX)
    bounds_at = offsets_of(num_cat[trees] + 1)
    first, end = bounds_at[:-1], bounds_at[1:]
    step_ok = np.diff(bounds) >= 0
    step_ok[end[:-1] - 1] = True  # from one tree's last boundary to the next tree's first
    bad = (bounds[first] != 0) | (bounds[end - 1] != n_words)
    if bad.any() or not step_ok.all():
        t = int(trees[int(np.argmax(bad))]) if bad.any() else int(trees[np.searchsorted(end, np.argmax(~step_ok), side="right")])
        raise Refused(f"tree {t} cat_boundaries do not rise from 0 to the number of cat_threshold words")
    # The words are bitsets read as uint32 (any value is harmless); digits only, as written.
    words = b" ".join(field_values(region, spans, "cat_threshold", trees))
    if words.translate(None, b"0123456789 "):
        raise Refused("a tree's cat_threshold holds a value that is not a 32-bit word")

    # The category set of every categorical split: a small integer below the tree's num_cat.
    tree_of = np.repeat(np.arange(n_int.size), n_int)
    cat_trees = trees[np.bincount(tree_of[categorical], minlength=n_int.size)[trees] > 0]
    if cat_trees.size == 0:
        return
    text = b" ".join(field_values(region, spans, "threshold", cat_trees))
    b = np.frombuffer(text, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(b == 32) + 1))
    ends = np.append(starts[1:] - 1, b.size)
    in_cat_tree = np.zeros(n_int.size, dtype=bool)
    in_cat_tree[cat_trees] = True
    is_cat = categorical[in_cat_tree[tree_of]]
    tree = np.repeat(cat_trees, n_int[cat_trees])[is_cat]
    first, width = starts[is_cat], (ends - starts)[is_cat]
    value = np.zeros(first.size, dtype=np.int64)
    ok = (width >= 1) & (width <= 9)
    for k in range(int(width.max(initial=0))):
        digit = b.take(np.minimum(first + k, b.size - 1)).astype(np.int64) - 48
        inside = k < width
        ok &= ~inside | ((digit >= 0) & (digit <= 9))
        value = np.where(inside, value * 10 + digit, value)
    ok &= value < num_cat[tree]
    if not ok.all():
        i = int(np.argmax(~ok))
        token = text[first[i] : first[i] + width[i]].decode()
        raise Refused(f"tree {int(tree[i])} has a categorical split on category set {token!r} (num_cat={int(num_cat[tree[i]])})")


def _check_linear(region: bytes, spans: np.ndarray, linear: np.ndarray, L: np.ndarray, max_feature_idx: int) -> None:
    """Linear leaves: sum(num_features) feature indices in range, as many coefficients.

    LightGBM reads them only where num_features is present: leaf_features with
    StringToArrayFast<int> and leaf_coeff with StringToArray<double> (which aborts unless it finds
    exactly that many values); both are written with double spaces between leaves.
    """
    trees = np.flatnonzero(linear & (spans[:, K["num_features"], 0] >= 0))
    if trees.size == 0:
        return
    # num_features holds num_leaves values (checked with the other arrays).
    (num_features,) = parse_ints(region, spans, ("num_features",), trees, L, 0, max_feature_idx + 1)
    total = np.add.reduceat(num_features, offsets_of(L[trees])[:-1])
    used, total = trees[total > 0], total[total > 0]
    if used.size == 0:
        return
    missing = (spans[used, K["leaf_features"], 0] < 0) | (spans[used, K["leaf_coeff"], 0] < 0)
    if missing.any():  # predicting would read a coefficient for every leaf feature
        raise Refused(f"tree {int(used[int(np.argmax(missing))])} has num_features but not both leaf_features and leaf_coeff")
    feats = _loose_values(region, spans, "leaf_features", used)
    coeffs = _loose_values(region, spans, "leaf_coeff", used)
    if feats.translate(None, b"0123456789 \n"):
        raise Refused("a linear tree's leaf_features holds a value that is not a feature index")
    for name, buf in (("leaf_features", feats), ("leaf_coeff", coeffs)):
        found = _count_loose(buf)
        if not np.array_equal(found, total):
            i = int(np.argmax(found != total))
            raise Refused(f"tree {int(used[i])} {name} holds {int(found[i])} values, expected sum(num_features) = {int(total[i])}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = np.fromstring(feats, dtype=np.int64, sep=" ")
    if features.size != int(total.sum()) or features.max() > max_feature_idx:
        raise Refused(f"a linear tree uses a feature beyond max_feature_idx={max_feature_idx}")


def _loose_values(region: bytes, spans: np.ndarray, key: str, trees: np.ndarray) -> bytes:
    return b"\n".join(field_values(region, spans, key, trees)) + b"\n"


def _count_loose(buf: bytes) -> np.ndarray:
    """Values per line of space-separated numbers where runs of spaces are allowed; checks that
    every value starts with a digit or '-' and a digit (else LightGBM's strtod fails: abort)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    gap = (b == 32) | (b == 10)
    start = ~gap
    start[1:] &= gap[:-1]
    heads = np.flatnonzero(start)
    head, nxt = b.take(heads), b.take(np.minimum(heads + 1, b.size - 1))
    digit = (head - 48) < 10
    if not np.all(digit | ((head == 45) & ((nxt - 48) < 10))):
        raise Refused("a linear tree has a malformed number")
    signs = np.flatnonzero((b == 45) | (b == 43))
    if signs.size and not np.all((b.take(np.minimum(signs + 1, b.size - 1)) - 48) < 10):
        raise Refused("a linear tree has a malformed number")
    line_first = np.concatenate(([0], np.flatnonzero(b == 10)[:-1] + 1))
    return np.add.reduceat(start, line_first, dtype=np.int64)
