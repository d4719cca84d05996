"""The trees' structure, checked with NumPy over all trees at once: child and parent indices, tree
ids, no cycle reachable from a root, depth, split features, vector leaves and categorical splits.
"""

from __future__ import annotations

import numpy as np

from mlflow_safeflavor.validate._common import INT32_MAX, Refused, first_outside, locate, offsets_of
from mlflow_safeflavor.validate.xgboost_model._caps import MAX_CAT_BITSET_BYTES, MAX_CATEGORY, MAX_TREE_DEPTH

_ROOT_PARENTS = (-1, INT32_MAX)  # how XGBoost writes the root's parent (vector-leaf / scalar)


class Forest:
    """All trees of a gbtree model, node arrays concatenated (checked by check_forest)."""

    __slots__ = (
        "n", "ids", "num_feature", "slv", "num_deleted", "left", "right", "parents", "split_index",
        "split_type", "leaf_rows", "cat_counts", "cat_nodes", "cat_segments", "cat_sizes",
        "cat_lengths", "categories",
    )


# ---- vectorised tree checks ------------------------------------------------------------------------

def _where(nodes: np.ndarray, offsets: np.ndarray, what: str) -> Refused:
    """Name the first offending node: ``nodes`` is a boolean mask or global node indices."""
    g = int(np.flatnonzero(nodes)[0]) if nodes.dtype == bool else int(nodes[0])
    t, node = locate(offsets, g)
    return Refused(f"tree {t}, node {node}: {what}")


def _node_ints(arr: np.ndarray, what: str) -> np.ndarray:
    """Node-indexed integers as native int32 (XGBoost stores them as int32)."""
    if arr.dtype.itemsize > 4 and first_outside(arr, -INT32_MAX - 1, INT32_MAX) is not None:
        raise Refused(f"{what} holds a value outside the 32-bit range XGBoost stores it in")
    return arr.astype(np.int32, copy=False)


def check_forest(f: Forest, num_feature: int, n_outputs: int) -> None:
    count = len(f.n)
    if count == 0:
        return
    if not np.array_equal(np.sort(f.ids), np.arange(count)):
        raise Refused("the tree ids are not 0..num_trees-1 each once (XGBoost indexes its tree list with them)")
    n = f.n
    total = int(n.sum())  # <= MAX_TOTAL_NODES < 2**31
    offsets = offsets_of(n)
    starts = offsets[:-1]

    scalar = f.slv <= 1
    vector_ok = scalar | (f.slv == n_outputs)
    if not vector_ok.all():
        t = int(np.flatnonzero(~vector_ok)[0])
        raise Refused(f"tree {t} has vector leaves of size {int(f.slv[t])} for {n_outputs} model outputs")
    if np.any(f.num_deleted >= n):
        raise Refused("a tree reports more deleted nodes than it has")

    # Node values are int32 (as XGBoost stores them); index arrays are intp (fast gathers).
    left = _node_ints(f.left, "left_children")
    right = _node_ints(f.right, "right_children")
    parents = _node_ints(f.parents, "parents")
    size = np.repeat(n.astype(np.int32), n)  # each node's tree size
    local = np.arange(total, dtype=np.int32) - np.repeat(starts.astype(np.int32), n)  # index in its tree
    internal = left != -1
    room = (size - 1).view(np.uint32)
    # 1 <= child < n as one unsigned comparison (child - 1 wraps to a huge value when child < 1)
    bad = ((left - 1).view(np.uint32) >= room) | ((right - 1).view(np.uint32) >= room) | (left == right)
    bad &= internal
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise _where(bad, offsets, f"child index out of range (left={int(left[k])}, right={int(right[k])}, "
                     f"tree has {int(size[k])} nodes)")
    gi = np.flatnonzero(internal)
    n_internal = gi.size
    if scalar.all():
        # internal nodes have right >= 1 (checked above), so this says every leaf has right == -1
        if np.count_nonzero(right == -1) != total - n_internal:
            raise _where(~internal & (right != -1), offsets, "a leaf (left child -1) has a right child")
    else:
        vector_node = np.repeat(~scalar, n)
        leaf = ~internal
        if np.any(leaf & ~vector_node & (right != -1)):
            raise _where(leaf & ~vector_node & (right != -1), offsets, "a leaf (left child -1) has a right child")
        rows = np.repeat(f.leaf_rows, n)
        bad_leaf = leaf & vector_node & ((right < 0) | (right >= rows))
        if bad_leaf.any():
            raise _where(bad_leaf, offsets, "a vector leaf points outside leaf_weights")

    split_index = f.split_index
    if split_index.dtype == np.int32:
        bad = split_index.view(np.uint32) >= num_feature  # negative wraps to a huge value
    else:
        bad = (split_index < 0) | (split_index >= num_feature)
    bad &= internal
    if bad.any():
        raise _where(bad, offsets, f"splits on feature {int(split_index[np.flatnonzero(bad)[0]])}, "
                     f"the model has {num_feature}")

    # Parents: XGBoost dereferences parents[i] of every non-root node while loading, and its
    # GetDepth() (used when pruning) follows them up to the root. XGBoost allocates children after
    # their parent, so 0 <= parents[i] < i (one unsigned comparison) almost always proves both.
    root_parent = parents[starts]
    bad_root = (root_parent != _ROOT_PARENTS[0]) & (root_parent != _ROOT_PARENTS[1])
    if bad_root.any():
        t = int(np.flatnonzero(bad_root)[0])
        raise Refused(f"tree {t}: the root has a parent ({int(root_parent[t])})")
    backward = parents.view(np.uint32) < local.view(np.uint32)
    backward[starts] = True
    if not backward.all():
        bad = parents.view(np.uint32) >= size.view(np.uint32)
        bad[starts] = False
        if bad.any():
            raise _where(bad, offsets, "parent index out of range")
        root_of = np.repeat(starts, n)
        ancestor = root_of + parents
        ancestor[starts] = starts
        for _ in range(int(n.max()).bit_length() + 1):
            ancestor = ancestor[ancestor]
        if np.any(ancestor != root_of):
            raise _where(ancestor != root_of, offsets, "following parents never reaches the root (parent cycle)")

    li = left[gi]
    ri = right[gi]
    owner = local[gi]
    gl = gi + (li - owner)  # global index of the children
    gr = gi + (ri - owner)
    if np.any(parents[gl] != owner) or np.any(parents[gr] != owner):
        bad = (parents[gl] != owner) | (parents[gr] != owner)
        raise _where(gi[bad], offsets, "a child's parent is not the node that points to it")

    # Tree shape. Each child names exactly one parent and left != right, so no node has two
    # incoming links; a root's parent is the "none" sentinel, so no link points to a root. That is
    # the in-degree argument: following children from a root can never revisit a node, so no cycle
    # is reachable from a root. What remains: every internal node reachable, and depth bounded
    # (XGBoost's MaxDepth() recurses once per level).
    if np.all(li > owner) and np.all(ri > owner):
        # Children come after their parent, so there is no cycle at all, and an internal non-root
        # node is reachable iff it has a parent (induction on the node index).
        linked = np.count_nonzero(internal[gl]) + np.count_nonzero(internal[gr])
        unreachable = n_internal - np.count_nonzero(internal[starts]) - linked
        deep = int(n.max()) > 2 * MAX_TREE_DEPTH + 1  # depth <= internal nodes <= (n - 1) / 2
    else:
        unreachable = -1
        deep = True
    if deep:
        reached, _depth = _walk(starts, internal, gi, gl, gr, total)
        unreachable = n_internal - reached
    if unreachable:
        raise Refused(f"{unreachable} internal nodes cannot be reached from their tree's root "
                      "(a detached cycle or subtree)")

    _check_categorical(f, offsets, total)


def _walk(starts: np.ndarray, internal: np.ndarray, gi: np.ndarray, gl: np.ndarray, gr: np.ndarray,
          total: int) -> tuple[int, int]:
    """Breadth-first from all roots at once: (internal nodes reached, depth). Enforces the depth cap."""
    child_l = np.zeros(total, dtype=np.intp)
    child_r = np.zeros(total, dtype=np.intp)
    child_l[gi] = gl
    child_r[gi] = gr
    frontier = starts
    reached = 0
    depth = 0
    while True:
        frontier = frontier[internal[frontier]]
        if not frontier.size:
            return reached, depth
        reached += frontier.size
        depth += 1
        if depth > MAX_TREE_DEPTH:
            raise Refused(f"a tree is deeper than {MAX_TREE_DEPTH} levels (XGBoost recurses once per level)")
        frontier = np.concatenate((child_l[frontier], child_r[frontier]))


def _check_categorical(f: Forest, offsets: np.ndarray, total: int) -> None:
    split_type = f.split_type
    kc = f.cat_counts
    if not kc.any():
        if split_type.any():  # XGBoost only writes split_type 1 for listed categorical nodes
            raise _where(split_type != 0, offsets, "split_type is set but categories_nodes is empty")
        return
    if first_outside(split_type, 0, 1) is not None:
        raise _where((split_type < 0) | (split_type > 1), offsets, "split_type is neither 0 nor 1")
    count = len(f.n)
    tc = np.repeat(np.arange(count), kc)
    nodes = f.cat_nodes
    if np.any((nodes < 0) | (nodes >= f.n[tc])):
        raise Refused("categories_nodes names a node outside its tree")
    same_tree = tc[1:] == tc[:-1]
    if np.any(same_tree & (np.diff(nodes) <= 0)):
        raise Refused("categories_nodes is not strictly increasing (XGBoost matches it in node order)")
    listed = np.zeros(total, dtype=bool)
    listed[offsets[:-1][tc] + nodes] = True
    if not np.array_equal(listed, split_type == 1):
        raise _where(listed != (split_type == 1), offsets,
                     "split_type and categories_nodes disagree on which nodes are categorical")
    segments, sizes = f.cat_segments, f.cat_sizes
    if np.any(sizes < 1) or np.any(segments < 0) or np.any(segments > f.cat_lengths[tc] - sizes):
        raise Refused("a categorical split's segment lies outside 'categories'")
    cats = f.categories
    if first_outside(cats, 0, MAX_CATEGORY - 1) is not None:
        raise Refused(f"a categorical split uses a category outside [0, {MAX_CATEGORY})")
    # Memory XGBoost allocates for split bitsets: at most nodes * (max category + 1) bits per tree.
    lens = f.cat_lengths
    has = np.flatnonzero(lens > 0)
    if has.size:
        starts = offsets_of(lens)[:-1]
        max_cat = np.maximum.reduceat(cats, starts[has])
        words = (max_cat + 32) // 32
        if int((words * kc[has]).sum()) * 4 > MAX_CAT_BITSET_BYTES:
            raise Refused("the categorical splits would need more than "
                          f"{MAX_CAT_BITSET_BYTES >> 20} MiB of bitsets")
