"""Fast exact readers of the ``trees`` array of a UBJ model, into one :class:`Forest` of all trees.

Numeric trees as ``save_raw("ubj")`` writes them are compared byte for byte with a template per node
count and their arrays sliced out directly (:func:`fast_trees`); other trees in XGBoost's key order
(categorical, vector-leaf, pruned) have only their headers read (:func:`scan_trees`). Both return
None on anything else, which the generic decoder of :mod:`._decode` then reads (and refuses).
"""

from __future__ import annotations

import struct
from typing import Protocol

import numpy as np

from mlflow_safeflavor.validate.xgboost_model._caps import (
    MAX_NESTING,
    MAX_OUTPUTS,
    MAX_TOTAL_NODES,
    MAX_TREE_NODES,
    MAX_TREES,
)
from mlflow_safeflavor.validate.xgboost_model._structure import Forest


class _Source(Protocol):
    """What the readers use of the UBJ decoder (no import of it: the decoder calls the readers)."""

    buf: bytes
    end: int


INT64 = struct.Struct(">q")  # UBJ 'L': every length and count in XGBoost's dialect


# ---- canonical tree layout (what XGBoost 3.2 writes for a numeric, non-vector-leaf tree) ----------

# ---- canonical tree layout (what XGBoost 3.2 writes for a numeric, non-vector-leaf tree) ----------

def _key(name: bytes) -> bytes:
    return b"L" + INT64.pack(len(name)) + name


_ID_MARKER = {1: b"i", 2: b"I", 4: b"l"}
# Node arrays sliced out of canonical trees (all int32), in the order _tree_layout reports them.
_FAST_FIELDS = ("left_children", "right_children", "parents", "split_indices")
_BASE_WEIGHTS_COUNT_AT = 1 + 9 + len(b"base_weights") + 5  # "{", key, "[$d#L" -> the int64 count


_INT64_0 = INT64.pack(0)
# The canonical tree, key by key (std::map order): (constant bytes up to a payload, bytes per node of
# that payload, field name). Every count in a numeric tree is num_nodes except the empty categories.
_TREE_SPEC = (
    (b"{" + _key(b"base_weights") + b"[$d#L", 4, "base_weights"),
    (_key(b"categories") + b"[$l#L" + _INT64_0 + _key(b"categories_nodes") + b"[$l#L" + _INT64_0
     + _key(b"categories_segments") + b"[$L#L" + _INT64_0 + _key(b"categories_sizes") + b"[$L#L" + _INT64_0
     + _key(b"default_left") + b"[$U#L", 1, "default_left"),
    (_key(b"id"), 0, "id"),
    (_key(b"left_children") + b"[$l#L", 4, "left_children"),
    (_key(b"loss_changes") + b"[$d#L", 4, "loss_changes"),
    (_key(b"parents") + b"[$l#L", 4, "parents"),
    (_key(b"right_children") + b"[$l#L", 4, "right_children"),
    (_key(b"split_conditions") + b"[$d#L", 4, "split_conditions"),
    (_key(b"split_indices") + b"[$l#L", 4, "split_indices"),
    (_key(b"split_type") + b"[$U#L", 1, "split_type"),
    (_key(b"sum_hessian") + b"[$d#L", 4, "sum_hessian"),
)
_TP_HEAD = (_key(b"tree_param") + b"{" + _key(b"num_deleted") + b"SL" + INT64.pack(1) + b"0"
            + _key(b"num_feature") + b"SL")
_TP_NODES = _key(b"num_nodes") + b"SL"
_TP_TAIL = _key(b"size_leaf_vector") + b"SL" + INT64.pack(1) + b"1}}"
_LAYOUTS: dict[tuple, tuple] = {}
_NODE_BYTES = 34  # payload bytes per node in a canonical numeric tree (10 arrays)


def _tree_layout(n: int, id_size: int, num_feature: bytes) -> tuple:
    """Byte template of one canonical tree with ``n`` nodes.

    Returns (struct, expected constant chunks, size, id offset, offsets of _FAST_FIELDS payloads,
    offset of the tree_param key). Payload bytes are skipped ('x'); every other byte of the tree,
    including every count and the tree_param strings, is compared.
    """
    cache_key = (n, id_size, num_feature)
    layout = _LAYOUTS.get(cache_key)
    if layout is not None:
        return layout
    count = INT64.pack(n)
    fmt = [">"]
    consts = []
    offsets = {}
    pos = 0
    pending = b""
    for head, item, name in _TREE_SPEC:
        if name == "split_type":  # numeric trees: all zeros, so part of the template
            pending += head + count + bytes(n)
            continue
        if item:
            chunk, size = pending + head + count, item * n
        else:
            chunk, size = pending + head + _ID_MARKER[id_size], id_size
        pending = b""
        consts.append(chunk)
        fmt.append(f"{len(chunk)}s{size}x")
        pos += len(chunk)
        offsets[name] = pos
        pos += size
    digits = str(n).encode()
    tail = _TP_HEAD + INT64.pack(len(num_feature)) + num_feature + _TP_NODES + INT64.pack(len(digits)) + digits + _TP_TAIL
    consts.append(tail)
    fmt.append(f"{len(tail)}s")
    layout = (
        struct.Struct("".join(fmt)),
        tuple(consts),
        pos + len(tail),
        offsets["id"],
        tuple(offsets[name] for name in _FAST_FIELDS),
        pos,
    )
    if n <= 65536:  # templates embed n bytes; keep the shared cache small
        if len(_LAYOUTS) > 4096:
            _LAYOUTS.clear()
        _LAYOUTS[cache_key] = layout
    return layout


# The tree_param key of tree 0 (id_size 1): then '{', "num_deleted": "0", the num_feature key and "SL".
_NF_LEN_FROM_TREE_PARAM = len(_key(b"tree_param") + b"{" + _key(b"num_deleted") + b"SL") + 8 + 1 + len(
    _key(b"num_feature") + b"SL")


def fast_trees(dec: _Source, start: int, count: int, depth: int) -> tuple[Forest, int] | None:
    """Read ``count`` canonical trees starting at ``start``; None if any tree is not canonical.

    Each tree is compared byte for byte (outside its array payloads) with the template XGBoost's
    writer produces for its node count, so the arrays found here are exactly the ones XGBoost's
    reader will see. Anything else (categorical or vector-leaf trees, pruned trees, ...) returns
    None and goes to scan_trees, then to the generic decoder.
    """
    buf = dec.buf
    if depth + 2 > MAX_NESTING or count > MAX_TREES:
        return None
    try:
        # num_feature string of tree 0 (all trees of a canonical file share it)
        n0 = INT64.unpack_from(buf, start + _BASE_WEIGHTS_COUNT_AT)[0]
        if not 1 <= n0 <= (len(buf) - start) // _NODE_BYTES:  # the tree must fit in what is left
            return None
        nf_len_at = start + _tree_layout(n0, 1, b"0")[5] + _NF_LEN_FROM_TREE_PARAM
        nf_len = INT64.unpack_from(buf, nf_len_at)[0]
        if not 1 <= nf_len <= 10:
            return None
        nf_bytes = buf[nf_len_at + 8 : nf_len_at + 8 + nf_len]
        if len(nf_bytes) != nf_len or not nf_bytes.isdigit():
            return None

        unpack_count = INT64.unpack_from
        ns: list[int] = []
        add_n = ns.append
        lefts: list[bytes] = []
        rights: list[bytes] = []
        parents: list[bytes] = []
        splits: list[bytes] = []
        add_left, add_right, add_parent, add_split = lefts.append, rights.append, parents.append, splits.append
        id_parts: list[tuple[str, bytes]] = []
        pos = start
        # XGBoost writes the id with the smallest integer marker: 'i' below 127, 'I' below 32767.
        for lo, hi, id_size, id_dtype in ((0, 127, 1, "i1"), (127, 32767, 2, ">i2"), (32767, 2**31 - 1, 4, ">i4")):
            cache: dict[int, tuple] = {}
            ids: list[bytes] = []
            add_id = ids.append
            for _ in range(lo, min(hi, count)):
                n = unpack_count(buf, pos + _BASE_WEIGHTS_COUNT_AT)[0]
                entry = cache.get(n)
                if entry is None:
                    if not 1 <= n <= (len(buf) - pos) // _NODE_BYTES:
                        return None
                    layout = _tree_layout(n, id_size, nf_bytes)
                    entry = cache[n] = (layout[0].unpack_from, layout[1], layout[2], layout[3]) + layout[4] + (4 * n,)
                unpack, expected, size, o_id, o_left, o_right, o_parent, o_split, width = entry
                if unpack(buf, pos) != expected:
                    return None
                add_id(buf[pos + o_id : pos + o_id + id_size])
                at = pos + o_left
                add_left(buf[at : at + width])
                at = pos + o_right
                add_right(buf[at : at + width])
                at = pos + o_parent
                add_parent(buf[at : at + width])
                at = pos + o_split
                add_split(buf[at : at + width])
                add_n(n)
                pos += size
            if ids:
                id_parts.append((id_dtype, b"".join(ids)))
    except struct.error:  # ran past the end of the buffer
        return None

    n_a = np.asarray(ns, dtype=np.int64)
    total = int(n_a.sum())
    if total > MAX_TOTAL_NODES:
        return None
    f = Forest()
    f.n = n_a
    f.ids = np.concatenate([np.frombuffer(raw, dtype).astype(np.int64) for dtype, raw in id_parts])
    f.left, f.right, f.parents, f.split_index = (
        np.frombuffer(b"".join(parts), ">i4").astype(np.int32) for parts in (lefts, rights, parents, splits)
    )
    f.num_feature = np.full(count, int(nf_bytes), dtype=np.int64)
    f.slv = np.ones(count, dtype=np.int64)
    f.num_deleted = np.zeros(count, dtype=np.int64)
    f.split_type = np.zeros(total, dtype=np.uint8)  # checked byte for byte by the template
    f.leaf_rows = np.zeros(count, dtype=np.int64)
    f.cat_counts = np.zeros(count, dtype=np.int64)
    f.cat_lengths = np.zeros(count, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    f.cat_nodes = f.cat_segments = f.cat_sizes = f.categories = empty
    return f, pos


# ---- canonical key order, any counts (categorical, vector-leaf and pruned trees) -----------------

# (field, key bytes, typed-array header up to the count, element size, optional). The keys are in
# the order XGBoost writes them (std::map); "id" is an integer scalar, "leaf_weights" only exists in
# vector-leaf trees.
_SCAN_SCHEMA = tuple(
    (name, _key(name.encode()), None if marker is None else b"[$" + marker + b"#L", size, name == "leaf_weights")
    for name, marker, size in (
        ("base_weights", b"d", 4), ("categories", b"l", 4), ("categories_nodes", b"l", 4),
        ("categories_segments", b"L", 8), ("categories_sizes", b"L", 8), ("default_left", b"U", 1),
        ("id", None, 0), ("leaf_weights", b"d", 4), ("left_children", b"l", 4), ("loss_changes", b"d", 4),
        ("parents", b"l", 4), ("right_children", b"l", 4), ("split_conditions", b"d", 4),
        ("split_indices", b"l", 4), ("split_type", b"U", 1), ("sum_hessian", b"d", 4),
    )
)
# (key bytes + typed header up to the count, bytes to skip to the count / id marker, element size,
#  kind: 0 array, 1 id, 2 optional array)
_SCAN_STEPS = tuple(
    (key + (head or b""), len(key) + len(head or b""), size, 1 if head is None else (2 if optional else 0))
    for _name, key, head, size, optional in _SCAN_SCHEMA
)
_SCAN_ARRAYS = [name for name, _, head, _, _ in _SCAN_SCHEMA if head is not None]
_COL = {name: i for i, name in enumerate(_SCAN_ARRAYS)}
_SCAN_IDS = {0x69: struct.Struct(">b"), 0x49: struct.Struct(">h"), 0x6C: struct.Struct(">i"), 0x4C: struct.Struct(">q")}
_TP_OPEN = _key(b"tree_param") + b"{"
_TP_KEYS = tuple(_key(name) + b"SL" for name in (b"num_deleted", b"num_feature", b"num_nodes", b"size_leaf_vector"))
_NODE_COLS = [_COL[k] for k in ("default_left", "left_children", "loss_changes", "parents", "right_children",
                                "split_conditions", "split_indices", "split_type", "sum_hessian")]


def scan_trees(dec: _Source, start: int, count: int, depth: int) -> tuple[Forest, int] | None:
    """Read ``count`` trees whose keys are exactly XGBoost's, in XGBoost's order, typed as it writes
    them, with any counts. Returns None on anything else (the generic decoder then reports it).

    Only the headers are read; payloads are skipped after checking their length against the bytes
    left. Accepted bytes are a plain UBJ object XGBoost's reader parses into the same arrays.
    """
    buf = dec.buf
    end = dec.end
    if depth + 2 > MAX_NESTING or count > MAX_TREES:
        return None
    startswith = buf.startswith
    unpack_count = INT64.unpack_from
    offsets: list[list[int]] = []
    counts: list[list[int]] = []
    ids: list[int] = []
    params: list[list[int]] = []
    pos = start
    try:
        for _ in range(count):
            if buf[pos] != 0x7B:
                return None
            p = pos + 1
            offs: list[int] = []
            cnts: list[int] = []
            for key_head, skip, size, kind in _SCAN_STEPS:
                if not startswith(key_head, p):
                    if kind == 2:  # optional array (leaf_weights) absent
                        offs.append(0)
                        cnts.append(-1)
                        continue
                    return None
                p += skip
                if kind == 1:  # the tree id: an integer scalar
                    scalar = _SCAN_IDS.get(buf[p])
                    if scalar is None:
                        return None
                    ids.append(scalar.unpack_from(buf, p + 1)[0])
                    p += 1 + scalar.size
                    continue
                c = unpack_count(buf, p)[0]
                p += 8
                if c < 0 or p + c * size > end:
                    return None
                offs.append(p)
                cnts.append(c)
                p += c * size
            if not startswith(_TP_OPEN, p):
                return None
            p += len(_TP_OPEN)
            values = []
            for key in _TP_KEYS:
                if not startswith(key, p):
                    return None
                length = unpack_count(buf, p + len(key))[0]
                p += len(key) + 8
                if not 1 <= length <= 12:
                    return None
                value = buf[p : p + length]
                if len(value) != length or not value.isdigit():
                    return None
                values.append(int(value))
                p += length
            if not startswith(b"}}", p):
                return None
            offsets.append(offs)
            counts.append(cnts)
            params.append(values)
            pos = p + 2
    except (struct.error, IndexError):  # ran past the end of the buffer
        return None

    par = np.asarray(params, dtype=np.int64)
    nd, nf, n, slv = par[:, 0], par[:, 1], par[:, 2], par[:, 3]
    C = np.asarray(counts, dtype=np.int64)
    O = np.asarray(offsets, dtype=np.int64)
    vector = slv > 1
    bw = C[:, _COL["base_weights"]]
    lw = C[:, _COL["leaf_weights"]]
    total = int(n.sum())
    if (
        n.min() < 1 or n.max() > MAX_TREE_NODES or total > MAX_TOTAL_NODES or nf.max() > 2**32 - 1
        or slv.max() > MAX_OUTPUTS or np.any(nd >= n)
        or np.any(C[:, _NODE_COLS] != n[:, None])
        or np.any(~vector & (bw != n)) or np.any(vector & ((bw < 1) | (bw % n != 0)))
        or np.any(vector & ((lw < 1) | (lw % np.maximum(slv, 1) != 0)))
        or np.any(C[:, _COL["categories_nodes"]] != C[:, _COL["categories_segments"]])
        or np.any(C[:, _COL["categories_nodes"]] != C[:, _COL["categories_sizes"]])
    ):
        return None  # the generic decoder names the problem

    def gather(name: str, size: int, dtype: str) -> np.ndarray:
        col = _COL[name]
        at = O[:, col].tolist()
        sizes = (C[:, col] * size).tolist()
        joined = b"".join([buf[a : a + m] for a, m in zip(at, sizes) if m])
        return np.frombuffer(joined, dtype).astype(np.int64 if size == 8 else np.int32)

    f = Forest()
    f.n, f.ids, f.num_feature, f.slv, f.num_deleted = n, np.asarray(ids, dtype=np.int64), nf, slv, nd
    f.left = gather("left_children", 4, ">i4")
    f.right = gather("right_children", 4, ">i4")
    f.parents = gather("parents", 4, ">i4")
    f.split_index = gather("split_indices", 4, ">i4")
    f.split_type = gather("split_type", 1, "u1")
    f.leaf_rows = np.where(vector, lw // np.maximum(slv, 1), 0)
    f.cat_counts = C[:, _COL["categories_nodes"]].copy()
    f.cat_lengths = C[:, _COL["categories"]].copy()
    f.categories = gather("categories", 4, ">i4").astype(np.int64)
    f.cat_nodes = gather("categories_nodes", 4, ">i4").astype(np.int64)
    f.cat_segments = gather("categories_segments", 8, ">i8")
    f.cat_sizes = gather("categories_sizes", 8, ">i8")
    return f, pos
