"""Structural checks of an XGBoost model file (UBJ or JSON), run on the raw bytes before XGBoost.

XGBoost 3.2's loaders trust the file. Its UBJ reader copies bytes without bounds checks, recurses
without a depth limit and allocates whatever a count says. Its tree loader indexes node arrays with
child, parent and tree ids taken from the file, and its predictor walks those indices. A crafted
file (a child index out of range, a cycle, a duplicate tree id, a short array, a truncated UBJ
stream, ...) crashes the process with SIGSEGV instead of raising. :func:`validate` reads the same
bytes in Python and NumPy, following XGBoost's own reading rules, and refuses anything the native
code would misread. It never imports XGBoost.

What is checked (names follow the model schema XGBoost 3.2 writes):

* Format: the bytes must be what XGBoost itself will take them for. ``XGBoosterLoadModelFromBuffer``
  picks the parser by sniffing the first bytes, not by file name, so a ``.json`` payload must look
  like JSON to XGBoost and a ``.ubj`` payload like UBJ. JSON ``\\uXXXX`` escapes are read literally,
  as XGBoost does, so keys cannot be disguised.
* UBJ: XGBoost's dialect only (big-endian; ``{ } [ ] Z T F i U I l L C d D S``; ``#``/``$`` containers
  with an ``L`` count; keys ``L``-prefixed). Every length or count is checked against the bytes left
  before anything is allocated, nesting is capped, trailing bytes and duplicate keys are refused.
* Learner: required objects and keys present with the right types; ``num_feature``, ``num_class``,
  ``num_target`` are plain decimal strings within caps; ``base_score`` has one value per output.
* gbtree / dart: ``num_trees`` matches the trees, tree ids are a permutation, ``tree_info`` values are
  output groups, ``iteration_indptr`` runs from 0 to ``num_trees``, dart ``weight_drop`` has one
  weight per tree. Per tree: ``num_nodes`` matches every per-node array; internal nodes have two
  distinct children in ``[1, n)``; leaves have ``left == right == -1`` (vector-leaf trees: ``right``
  is the row in ``leaf_weights``); parents agree with the children (XGBoost dereferences them while
  loading); every node has at most one parent and the root none, so no cycle is reachable from the
  root; every internal node is reachable and depth is capped (XGBoost's ``MaxDepth`` recurses);
  split features are below ``num_feature``; categorical splits are listed once, in order, with
  segments inside ``categories`` and categories in ``[0, 2**24)``.
* Category encoder (``cats``): offsets, segments and the sorted index are consistent.
* gblinear: ``weights`` has ``(num_feature + 1) * n_outputs`` entries.

The checks are NumPy over all trees at once. UBJ trees are read by the cheapest path that is exact:
numeric trees as ``save_raw("ubj")`` writes them are compared byte for byte with a template per node
count and their arrays sliced out directly; other trees in XGBoost's key order (categorical,
vector-leaf, pruned) have only their headers read; anything else goes through the generic decoder.
The caps below bound memory and recursion for hostile files; they are far above real models.
"""

from __future__ import annotations

import json
import re
import struct
from itertools import chain
from typing import Any

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

__all__ = ["validate"]

MAX_TREES = 1_000_000
MAX_TOTAL_NODES = 100_000_000
MAX_TREE_NODES = 2**31 - 1
MAX_TREE_DEPTH = 10_000  # XGBoost 3.2 overflows the stack in MaxDepth() somewhere below 1e6.
MAX_FEATURES = 100_000_000  # the predictor allocates num_feature slots per thread
MAX_OUTPUTS = 1_000_000
MAX_NESTING = 64  # XGBoost models nest about 8 deep
MAX_UBJ_VALUES = 20_000_000  # generic (non-typed) UBJ values decoded into Python objects
MAX_CATEGORY = 1 << 24  # XGBoost's OutOfRangeCat(): categories are exact in float32
MAX_CAT_BITSET_BYTES = 512 << 20  # bitsets XGBoost builds for categorical splits while loading
_SPLIT_INDEX_TYPES = (">i4", ">i8")

_ROOT_PARENTS = (-1, 2**31 - 1)  # how XGBoost writes the root's parent (vector-leaf / scalar)


class _Bad(Exception):
    """Internal: what is wrong, turned into MalformedArtifactError by validate()."""


def validate(data: bytes, fmt: str, *, path: str) -> None:
    """Raise MalformedArtifactError unless ``data`` is a structurally sound XGBoost model in ``fmt``.

    ``fmt`` is ``"ubj"`` or ``"json"``. Never raises anything else for any input bytes.
    """
    try:
        if fmt not in ("ubj", "json"):
            raise _Bad(f"unknown XGBoost model format {fmt!r} (expected 'ubj' or 'json')")
        if not isinstance(data, bytes):
            data = bytes(data)
        _sniff(data, fmt)
        doc = _UBJDecoder(data).decode() if fmt == "ubj" else _load_json(data)
        _check_document(doc)
    except _Bad as exc:
        raise _fail(path, str(exc)) from None
    except RecursionError:
        raise _fail(path, "the model is nested too deeply to be an XGBoost model") from None
    except MemoryError:
        raise _fail(path, "the model is too large to validate in memory") from None
    except MalformedArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: only MalformedArtifactError escapes
        raise _fail(path, f"the model could not be validated ({type(exc).__name__}: {str(exc)[:200]})") from None


def _fail(path: str, what: str) -> MalformedArtifactError:
    return MalformedArtifactError(
        f"{path}: {what}. XGBoost's native loader does not check this and can crash the process on "
        "it; the file is corrupt or was crafted — do not load it, re-save the model with XGBoost.",
        path=path,
    )


# --------------------------------------------------------------------------------------------------
# Format sniffing and JSON
# --------------------------------------------------------------------------------------------------

_C_SPACE = b" \t\n\v\f\r"


def _sniff(data: bytes, fmt: str) -> None:
    """Require that XGBoost's own format sniffing (c_api.cc DispatchModelType) agrees with ``fmt``."""
    if len(data) < 2 or data[0] != 0x7B:  # '{'
        raise _Bad(f"the file does not start with an XGBoost {fmt.upper()} object")
    rest = data[1:65].lstrip(_C_SPACE)
    first = rest[:1]
    if fmt == "json":
        if first != b'"':
            raise _Bad("the file is not an XGBoost JSON model (XGBoost would not read it as JSON)")
    elif not first.isalpha():
        raise _Bad("the file is not an XGBoost UBJ model (XGBoost would not read it as UBJ)")


# A real \u escape: a backslash-u preceded by an even number of backslashes.
_ESCAPE_U = re.compile(rb"(?<!\\)((?:\\\\)*)\\u")


def _load_json(data: bytes) -> Any:
    if b"\\u" in data:
        # XGBoost's JSON reader keeps "\uXXXX" literally; make Python read it the same way.
        data = _ESCAPE_U.sub(rb"\1\\\\u", data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"the JSON model is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise
    except ValueError as exc:
        raise _Bad(f"the JSON model does not parse ({str(exc)[:120]})") from None


# --------------------------------------------------------------------------------------------------
# UBJ (XGBoost's dialect, src/common/json.cc UBJReader)
# --------------------------------------------------------------------------------------------------

_Q = struct.Struct(">q")
_TYPED = {  # typed-array element marker -> NumPy dtype (XGBoost F32/F64/I8/U8/I16/I32/I64 arrays)
    0x64: np.dtype(">f4"),
    0x44: np.dtype(">f8"),
    0x69: np.dtype("i1"),
    0x55: np.dtype("u1"),
    0x49: np.dtype(">i2"),
    0x6C: np.dtype(">i4"),
    0x4C: np.dtype(">i8"),
}
_SCALARS = {  # scalar marker -> (struct, size)
    0x69: struct.Struct(">b"),
    0x55: struct.Struct(">B"),
    0x49: struct.Struct(">h"),
    0x6C: struct.Struct(">i"),
    0x4C: struct.Struct(">q"),
    0x43: struct.Struct(">b"),  # 'C': XGBoost reads a (signed) char as an integer
    0x64: struct.Struct(">f"),
    0x44: struct.Struct(">d"),
}


class _UBJDecoder:
    """Decode XGBoost's UBJ into dict / list / int / float / str / bool / None / NumPy arrays.

    Typed arrays become read-only big-endian NumPy views (their dtype records the UBJ type, which
    XGBoost's loaders care about); generic arrays become lists.
    """

    __slots__ = ("buf", "end", "values")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.end = len(buf)
        self.values = 0

    def decode(self) -> Any:
        value, pos = self._value(0, 0, None)
        if pos != self.end:
            raise _Bad(f"the UBJ model has {self.end - pos} unexpected bytes after its end")
        return value

    def _need(self, pos: int, n: int) -> None:
        if n < 0 or pos + n > self.end:
            raise _Bad(f"the UBJ model is truncated at byte {pos}")

    def _count(self, pos: int, what: str) -> int:
        """Read XGBoost's 'L' int64 length at ``pos`` (the marker itself is at ``pos``)."""
        self._need(pos, 9)
        if self.buf[pos] != 0x4C:
            raise _Bad(f"a UBJ {what} length at byte {pos} is not an int64 ('L'), which XGBoost requires")
        n = _Q.unpack_from(self.buf, pos + 1)[0]
        if n < 0:
            raise _Bad(f"a UBJ {what} at byte {pos} declares a negative length")
        return n

    def _value(self, pos: int, depth: int, key: str | None) -> tuple[Any, int]:
        buf = self.buf
        if pos >= self.end:
            raise _Bad(f"the UBJ model is truncated at byte {pos}")
        m = buf[pos]
        if m == 0x7B:  # '{'
            return self._object(pos + 1, depth + 1)
        if m == 0x5B:  # '['
            return self._array(pos + 1, depth + 1, key)
        scalar = _SCALARS.get(m)
        if scalar is not None:
            self._need(pos + 1, scalar.size)
            return scalar.unpack_from(buf, pos + 1)[0], pos + 1 + scalar.size
        if m == 0x53:  # 'S'
            n = self._count(pos + 1, "string")
            start = pos + 10
            self._need(start, n)
            return buf[start : start + n].decode("latin-1"), start + n
        if m == 0x5A:  # 'Z'
            return None, pos + 1
        if m == 0x54:  # 'T'
            return True, pos + 1
        if m == 0x46:  # 'F'
            return False, pos + 1
        raise _Bad(f"the UBJ model has marker {chr(m)!r} at byte {pos}, which XGBoost's reader does not accept")

    def _object(self, pos: int, depth: int) -> tuple[dict, int]:
        if depth > MAX_NESTING:
            raise _Bad(f"the UBJ model nests deeper than {MAX_NESTING} levels")
        buf = self.buf
        out: dict = {}
        while True:
            if pos >= self.end:
                raise _Bad(f"the UBJ model is truncated at byte {pos} (unterminated object)")
            if buf[pos] == 0x7D:  # '}'
                return out, pos + 1
            n = self._count(pos, "object key")
            start = pos + 9
            self._need(start, n)
            key = buf[start : start + n].decode("latin-1")
            if key in out:
                raise _Bad(f"the UBJ model repeats the key {key[:40]!r} in one object")
            self.values += 1
            if self.values > MAX_UBJ_VALUES:
                raise _Bad("the UBJ model holds too many values")
            out[key], pos = self._value(start + n, depth, key)

    def _array(self, pos: int, depth: int, key: str | None) -> tuple[Any, int]:
        if depth > MAX_NESTING:
            raise _Bad(f"the UBJ model nests deeper than {MAX_NESTING} levels")
        buf = self.buf
        if pos >= self.end:
            raise _Bad(f"the UBJ model is truncated at byte {pos} (unterminated array)")
        m = buf[pos]
        if m == 0x24:  # '$': typed array, XGBoost requires '#L' count after the type
            self._need(pos, 2)
            dtype = _TYPED.get(buf[pos + 1])
            if dtype is None:
                raise _Bad(f"the UBJ model has a typed array of type {chr(buf[pos + 1])!r} at byte {pos}, "
                           "which XGBoost does not support")
            self._need(pos, 3)
            if buf[pos + 2] != 0x23:
                raise _Bad(f"a UBJ typed array at byte {pos} has no '#' count")
            n = self._count(pos + 3, "typed array")
            start = pos + 12
            if n > (self.end - start) // dtype.itemsize:
                raise _Bad(f"a UBJ typed array at byte {pos} declares {n} elements but only "
                           f"{self.end - start} bytes remain")
            return np.frombuffer(buf, dtype, n, start), start + n * dtype.itemsize
        if m == 0x23:  # '#': counted generic array
            n = self._count(pos + 1, "array")
            start = pos + 10
            if n > self.end - start:
                raise _Bad(f"a UBJ array at byte {pos} declares {n} elements but only "
                           f"{self.end - start} bytes remain")
            self.values += n
            if self.values > MAX_UBJ_VALUES:
                raise _Bad("the UBJ model holds too many values")
            if key == "trees" and n:
                fast = _fast_trees(self, start, n, depth) or _scan_trees(self, start, n, depth)
                if fast is not None:
                    return fast
            ints = _int_runs(buf, start, n)
            if ints is not None:
                return ints
            out = []
            append = out.append
            value = self._value
            for _ in range(n):
                item, start = value(start, depth, None)
                append(item)
            return out, start
        out = []
        while True:  # plain array up to ']'
            if pos >= self.end:
                raise _Bad(f"the UBJ model is truncated at byte {pos} (unterminated array)")
            if buf[pos] == 0x5D:
                return out, pos + 1
            self.values += 1
            if self.values > MAX_UBJ_VALUES:
                raise _Bad("the UBJ model holds too many values")
            item, pos = self._value(pos, depth, None)
            out.append(item)


_INT_WIDTH = {0x69: ("i1", 1), 0x49: (">i2", 2), 0x6C: (">i4", 4), 0x4C: (">i8", 8)}


def _int_runs(buf: bytes, start: int, n: int) -> tuple[list, int] | None:
    """Fast path for a counted generic array of integer scalars (``tree_info``, ``iteration_indptr``).

    Decodes runs of equally-marked integers with NumPy; returns (list of int, end) or None when the
    array is anything else (it is then decoded one value at a time).
    """
    out: list = []
    pos = start
    left = n
    end = len(buf)
    for _ in range(8):
        if not left:
            return out, pos
        if pos >= end:
            return None
        width = _INT_WIDTH.get(buf[pos])
        if width is None:
            return None
        dtype, size = width
        step = size + 1
        markers = buf[pos : pos + step * left : step]
        run = len(markers) - len(markers.lstrip(markers[:1]))
        if pos + step * run > end:
            run = (end - pos) // step
            if run == 0:
                return None
        block = np.frombuffer(buf, np.uint8, step * run, pos).reshape(run, step)[:, 1:]
        out.extend(np.ascontiguousarray(block).view(dtype).ravel().tolist())
        pos += step * run
        left -= run
    return (out, pos) if not left else None


# ---- canonical tree layout (what XGBoost 3.2 writes for a numeric, non-vector-leaf tree) ----------

def _key(name: bytes) -> bytes:
    return b"L" + _Q.pack(len(name)) + name


_ID_MARKER = {1: b"i", 2: b"I", 4: b"l"}
# Node arrays sliced out of canonical trees (all int32), in the order _tree_layout reports them.
_FAST_FIELDS = ("left_children", "right_children", "parents", "split_indices")
_BASE_WEIGHTS_COUNT_AT = 1 + 9 + len(b"base_weights") + 5  # "{", key, "[$d#L" -> the int64 count


_Q0 = _Q.pack(0)
# The canonical tree, key by key (std::map order): (constant bytes up to a payload, bytes per node of
# that payload, field name). Every count in a numeric tree is num_nodes except the empty categories.
_TREE_SPEC = (
    (b"{" + _key(b"base_weights") + b"[$d#L", 4, "base_weights"),
    (_key(b"categories") + b"[$l#L" + _Q0 + _key(b"categories_nodes") + b"[$l#L" + _Q0
     + _key(b"categories_segments") + b"[$L#L" + _Q0 + _key(b"categories_sizes") + b"[$L#L" + _Q0
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
_TP_HEAD = (_key(b"tree_param") + b"{" + _key(b"num_deleted") + b"SL" + _Q.pack(1) + b"0"
            + _key(b"num_feature") + b"SL")
_TP_NODES = _key(b"num_nodes") + b"SL"
_TP_TAIL = _key(b"size_leaf_vector") + b"SL" + _Q.pack(1) + b"1}}"
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
    count = _Q.pack(n)
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
    tail = _TP_HEAD + _Q.pack(len(num_feature)) + num_feature + _TP_NODES + _Q.pack(len(digits)) + digits + _TP_TAIL
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


class _Forest:
    """All trees of a gbtree model, node arrays concatenated (checked by _check_forest)."""

    __slots__ = (
        "n", "ids", "num_feature", "slv", "num_deleted", "left", "right", "parents", "split_index",
        "split_type", "leaf_rows", "cat_counts", "cat_nodes", "cat_segments", "cat_sizes",
        "cat_lengths", "categories",
    )


# The tree_param key of tree 0 (id_size 1): then '{', "num_deleted": "0", the num_feature key and "SL".
_NF_LEN_FROM_TREE_PARAM = len(_key(b"tree_param") + b"{" + _key(b"num_deleted") + b"SL") + 8 + 1 + len(
    _key(b"num_feature") + b"SL")


def _fast_trees(dec: _UBJDecoder, start: int, count: int, depth: int) -> tuple[_Forest, int] | None:
    """Read ``count`` canonical trees starting at ``start``; None if any tree is not canonical.

    Each tree is compared byte for byte (outside its array payloads) with the template XGBoost's
    writer produces for its node count, so the arrays found here are exactly the ones XGBoost's
    reader will see. Anything else (categorical or vector-leaf trees, pruned trees, ...) returns
    None and goes to _scan_trees, then to the generic decoder.
    """
    buf = dec.buf
    if depth + 2 > MAX_NESTING or count > MAX_TREES:
        return None
    try:
        # num_feature string of tree 0 (all trees of a canonical file share it)
        n0 = _Q.unpack_from(buf, start + _BASE_WEIGHTS_COUNT_AT)[0]
        if not 1 <= n0 <= (len(buf) - start) // _NODE_BYTES:  # the tree must fit in what is left
            return None
        nf_len_at = start + _tree_layout(n0, 1, b"0")[5] + _NF_LEN_FROM_TREE_PARAM
        nf_len = _Q.unpack_from(buf, nf_len_at)[0]
        if not 1 <= nf_len <= 10:
            return None
        nf_bytes = buf[nf_len_at + 8 : nf_len_at + 8 + nf_len]
        if len(nf_bytes) != nf_len or not nf_bytes.isdigit():
            return None

        unpack_count = _Q.unpack_from
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
    f = _Forest()
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


def _scan_trees(dec: _UBJDecoder, start: int, count: int, depth: int) -> tuple[_Forest, int] | None:
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
    unpack_count = _Q.unpack_from
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

    f = _Forest()
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


# --------------------------------------------------------------------------------------------------
# Generic value helpers (work on the output of json.loads and of _UBJDecoder)
# --------------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,12}", re.ASCII)


def _obj(value: Any, what: str) -> dict:
    if type(value) is not dict:
        raise _Bad(f"{what} is not an object")
    return value


def _get(d: dict, key: str, what: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise _Bad(f"{what} has no {key!r}") from None


def _string(value: Any, what: str) -> str:
    if type(value) is not str:
        raise _Bad(f"{what} is not a string")
    return value


def _int(value: Any, what: str) -> int:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise _Bad(f"{what} is not a 64-bit integer")
    return value


def _decimal(value: Any, what: str, lo: int, hi: int) -> int:
    """XGBoost keeps numeric parameters as strings and parses them with stoi/dmlc: plain digits only."""
    text = _string(value, what)
    if not _DIGITS.fullmatch(text):
        raise _Bad(f"{what} is {text[:30]!r}, not a plain decimal number")
    number = int(text)
    if not lo <= number <= hi:
        raise _Bad(f"{what} is {number}, outside [{lo}, {hi}]")
    return number


def _ints(value: Any, what: str, dtypes: tuple[str, ...] | None) -> np.ndarray:
    """An integer array: a typed UBJ array of one of ``dtypes``, or a generic array of integers."""
    if type(value) is np.ndarray:
        if dtypes is None or value.dtype.str not in dtypes:
            raise _Bad(f"{what} is a typed array of the wrong type ({value.dtype.str})")
        return value
    if type(value) is not list:
        raise _Bad(f"{what} is not an array")
    return _int_list(value, what)


def _int_list(value: list, what: str) -> np.ndarray:
    if not value:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError):
        raise _Bad(f"{what} holds values that are not integers") from None
    if arr.dtype.kind != "i" or arr.ndim != 1:
        raise _Bad(f"{what} holds values that are not 64-bit integers")
    return arr


def _length(value: Any, what: str, dtypes: tuple[str, ...] | None) -> int:
    """Length of an array whose values XGBoost reads but that cannot misdirect it (floats, flags)."""
    if type(value) is np.ndarray:
        if dtypes is None or value.dtype.str not in dtypes:
            raise _Bad(f"{what} is a typed array of the wrong type ({value.dtype.str})")
        return len(value)
    if type(value) is not list:
        raise _Bad(f"{what} is not an array")
    return len(value)


# --------------------------------------------------------------------------------------------------
# Document checks
# --------------------------------------------------------------------------------------------------

def _check_document(doc: Any) -> None:
    root = _obj(doc, "the model file")
    if "version" in root:
        version = root["version"]
        if type(version) is not list or len(version) < 3 or any(type(v) is not int for v in version[:3]):
            raise _Bad("the model's 'version' is not a list of three integers")
    learner = _obj(_get(root, "learner", "the model file"), "'learner'")
    mparam = _obj(_get(learner, "learner_model_param", "'learner'"), "'learner_model_param'")
    num_feature = _decimal(_get(mparam, "num_feature", "'learner_model_param'"), "num_feature", 0, MAX_FEATURES)
    num_class = _decimal(_get(mparam, "num_class", "'learner_model_param'"), "num_class", 0, MAX_OUTPUTS)
    num_target = 1
    if "num_target" in mparam:
        num_target = _decimal(mparam["num_target"], "num_target", 1, MAX_OUTPUTS)
    if num_class > 1 and num_target > 1:
        raise _Bad("the model has both several classes and several targets, which XGBoost does not support")
    n_outputs = max(num_class, num_target, 1)
    if "boost_from_average" in mparam:
        text = _string(mparam["boost_from_average"], "boost_from_average")
        if not re.fullmatch(r"-?[0-9]{1,10}", text, re.ASCII):
            raise _Bad("boost_from_average is not an integer")
    _check_base_score(_get(mparam, "base_score", "'learner_model_param'"), n_outputs)

    objective = _obj(_get(learner, "objective", "'learner'"), "'objective'")
    if not _string(_get(objective, "name", "'objective'"), "the objective name"):
        raise _Bad("the objective name is empty")

    attributes = _obj(_get(learner, "attributes", "'learner'"), "'attributes'")
    if any(type(v) is not str for v in attributes.values()):
        raise _Bad("an entry of 'attributes' is not a string")
    for key in ("feature_names", "feature_types"):
        if key in learner:
            names = learner[key]
            if type(names) is not list or any(type(v) is not str for v in names):
                raise _Bad(f"'{key}' is not a list of strings")
            if names and len(names) != num_feature:
                raise _Bad(f"'{key}' has {len(names)} entries for {num_feature} features")

    booster = _obj(_get(learner, "gradient_booster", "'learner'"), "'gradient_booster'")
    name = _string(_get(booster, "name", "'gradient_booster'"), "the gradient booster name")
    if name == "gbtree":
        _check_gbtree(booster, num_feature, n_outputs)
    elif name == "dart":
        inner = _obj(_get(booster, "gbtree", "the dart booster"), "the dart booster's 'gbtree'")
        if _string(_get(inner, "name", "the dart booster's 'gbtree'"), "the dart booster's name") != "gbtree":
            raise _Bad("the dart booster does not wrap a gbtree")
        num_trees = _check_gbtree(inner, num_feature, n_outputs)
        weight_drop = _get(booster, "weight_drop", "the dart booster")
        if type(weight_drop) is not list or len(weight_drop) != num_trees:
            raise _Bad(f"dart 'weight_drop' does not have one weight per tree ({num_trees} trees)")
    elif name == "gblinear":
        model = _obj(_get(booster, "model", "'gradient_booster'"), "the gblinear model")
        n_weights = _length(_get(model, "weights", "the gblinear model"), "gblinear weights", (">f4",))
        expected = (num_feature + 1) * n_outputs
        if n_weights != expected:
            raise _Bad(f"gblinear has {n_weights} weights; (num_feature + 1) * outputs = {expected}")
        if "boosted_rounds" in model:
            _int(model["boosted_rounds"], "gblinear boosted_rounds")
    else:
        raise _Bad(f"the gradient booster is {str(name)[:40]!r}, not gbtree, dart or gblinear")


_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|NaN|[-+]?Infinity"
_BASE_SCORE = re.compile(rf"\[?(?:{_NUMBER})(?:,(?:{_NUMBER}))*\]?", re.ASCII)


def _check_base_score(value: Any, n_outputs: int) -> None:
    text = "".join(_string(value, "base_score").split())  # XGBoost drops whitespace
    text = text.replace("(", "[", 1) if text.startswith("(") else text
    text = text[:-1] + "]" if text.endswith(")") else text
    bracketed = text[:1] == "[" and text[-1:] == "]"
    if not _BASE_SCORE.fullmatch(text) or (not bracketed and not re.fullmatch(_NUMBER, text)):
        raise _Bad(f"base_score {text[:40]!r} is not a number or a [list] of numbers")
    count = text.count(",") + 1
    if count == 1 and n_outputs > 1:
        count = n_outputs  # XGBoost broadcasts a scalar intercept (pre-3.1 models)
    if count != n_outputs:
        raise _Bad(f"base_score has {count} values for {n_outputs} model outputs")


def _check_gbtree(booster: dict, num_feature: int, n_outputs: int) -> int:
    model = _obj(_get(booster, "model", "the gbtree booster"), "the gbtree model")
    mparam = _obj(_get(model, "gbtree_model_param", "the gbtree model"), "'gbtree_model_param'")
    num_trees = _decimal(_get(mparam, "num_trees", "'gbtree_model_param'"), "num_trees", 0, MAX_TREES)
    _decimal(_get(mparam, "num_parallel_tree", "'gbtree_model_param'"), "num_parallel_tree", 1, MAX_TREES)
    trees = _get(model, "trees", "the gbtree model")
    if type(trees) is _Forest:
        forest = trees
    else:
        if type(trees) is not list:
            raise _Bad("'trees' is not an array")
        if len(trees) > MAX_TREES:
            raise _Bad(f"the model has {len(trees)} trees (cap {MAX_TREES})")
        forest = _forest_from_dicts(trees)
    count = len(forest.n)
    if count != num_trees:
        raise _Bad(f"num_trees says {num_trees} but the model holds {count} trees")

    tree_info = _get(model, "tree_info", "the gbtree model")
    if type(tree_info) is not list:
        raise _Bad("'tree_info' is not an array of integers")
    info = _int_list(tree_info, "'tree_info'")
    if len(info) != count:
        raise _Bad(f"'tree_info' has {len(info)} entries for {count} trees")
    if count and (info.min() < 0 or info.max() >= n_outputs):
        raise _Bad(f"'tree_info' names an output group outside [0, {n_outputs})")
    if "iteration_indptr" in model:
        indptr = model["iteration_indptr"]
        if type(indptr) is not list:
            raise _Bad("'iteration_indptr' is not an array of integers")
        ptr = _int_list(indptr, "'iteration_indptr'")
        if len(ptr) == 0 or ptr[0] != 0 or ptr[-1] != count or np.any(np.diff(ptr) < 0):
            raise _Bad(f"'iteration_indptr' does not rise from 0 to num_trees ({count})")
    if "cats" in model:
        _check_cats(_obj(model["cats"], "'cats'"))
    _check_forest(forest, num_feature, n_outputs)
    return count


# ---- trees from generic (JSON / non-canonical UBJ) values ------------------------------------------

_TREE_KEYS = frozenset((
    "base_weights", "default_left", "id", "left_children", "loss_changes", "parents",
    "right_children", "split_conditions", "split_indices", "sum_hessian", "tree_param",
))
_CAT_KEYS = ("categories", "categories_nodes", "categories_segments", "categories_sizes")
_I32 = (">i4",)
_I64 = (">i8",)
_U8 = ("|u1",)
_F32 = (">f4",)
_CAT_DTYPES = {"categories": _I32, "categories_nodes": _I32, "categories_segments": _I64, "categories_sizes": _I64}


# Per-node arrays and the typed-array types XGBoost's tree loader asks for when the file is typed.
_NODE_ARRAYS = (
    ("left_children", _I32), ("right_children", _I32), ("parents", _I32),
    ("split_indices", _SPLIT_INDEX_TYPES), ("loss_changes", _F32), ("sum_hessian", _F32),
    ("split_conditions", _F32), ("default_left", _U8),
)
_INT_NODE_ARRAYS = ("left_children", "right_children", "parents", "split_indices")


def _forest_from_dicts(trees: list) -> _Forest:
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
            raise _Bad(f"{what} is not an object")
        if not _TREE_KEYS <= tree.keys():
            raise _Bad(f"{what} has no {sorted(_TREE_KEYS - tree.keys())[0]!r}")
        tp = _obj(tree["tree_param"], f"{what}'s tree_param")
        n = _decimal(_get(tp, "num_nodes", f"{what}'s tree_param"), f"{what}'s num_nodes", 1, MAX_TREE_NODES)
        nf[t] = _decimal(_get(tp, "num_feature", f"{what}'s tree_param"), f"{what}'s num_feature", 0, 2**32 - 1)
        k = _decimal(_get(tp, "size_leaf_vector", f"{what}'s tree_param"), f"{what}'s size_leaf_vector", 0,
                     MAX_OUTPUTS)
        if "num_deleted" in tp:
            nd[t] = _decimal(tp["num_deleted"], f"{what}'s num_deleted", 0, n - 1)
        total += n
        if total > MAX_TOTAL_NODES:
            raise _Bad(f"the model has more than {MAX_TOTAL_NODES} nodes in total")
        n_list[t] = n
        slv[t] = k
        ids[t] = _int(tree["id"], f"{what}'s id")
        # XGBoost reads either all typed arrays (UBJ as written) or all generic ones (JSON).
        typed = type(tree["parents"]) is ndarray

        def array(key: str, dtypes: tuple) -> Any:
            value = _get(tree, key, what)
            if typed:
                if type(value) is not ndarray:
                    raise _Bad(f"{what}'s {key} mixes typed and untyped arrays")
                if value.dtype.str not in dtypes:
                    raise _Bad(f"{what}'s {key} is a typed array of the wrong type ({value.dtype.str})")
            elif type(value) is not list:
                raise _Bad(f"{what}'s {key} is not an array" + (" (mixes typed and untyped arrays)"
                                                                  if type(value) is ndarray else ""))
            return value

        for key, dtypes in _NODE_ARRAYS:
            value = array(key, dtypes)
            if len(value) != n:
                raise _Bad(f"{what}'s {key} has {len(value)} entries, num_nodes is {n}")
        for key in _INT_NODE_ARRAYS:
            fields[key].append(tree[key])
        bw = len(array("base_weights", _F32))
        if k > 1:  # vector leaf
            if bw == 0 or bw % n:
                raise _Bad(f"{what}'s base_weights has {bw} entries, not a positive multiple of {n} nodes")
            lw = len(array("leaf_weights", _F32))
            if lw == 0 or lw % k:
                raise _Bad(f"{what}'s leaf_weights has {lw} entries, not a positive multiple of {k} targets")
            leaf_rows[t] = lw // k
        elif bw != n:
            raise _Bad(f"{what}'s base_weights has {bw} entries, num_nodes is {n}")

        if "split_type" in tree:
            split_type = array("split_type", _U8)
            if len(split_type) != n:
                raise _Bad(f"{what}'s split_type has {len(split_type)} entries, num_nodes is {n}")
            fields["split_type"].append(split_type)
            parts = [array(key, _CAT_DTYPES[key]) for key in _CAT_KEYS]
            if not len(parts[1]) == len(parts[2]) == len(parts[3]):
                raise _Bad(f"{what}'s categories_nodes, categories_segments and categories_sizes differ in length")
            cat_counts[t] = len(parts[1])
            cat_lengths[t] = len(parts[0])
            for key, value in zip(_CAT_KEYS, parts):
                if len(value):
                    cats[key].append(value)
        else:
            fields["split_type"].append(np.zeros(n, dtype=np.uint8))

    f = _Forest()
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
        return _int_list(list(chain.from_iterable(parts)), what)
    return np.concatenate([
        (_int_list(p, what) if type(p) is list else p).astype(np.int64, copy=False) for p in parts
    ])


# ---- vectorised tree checks ------------------------------------------------------------------------

def _where(nodes: np.ndarray, offsets: np.ndarray, what: str) -> _Bad:
    """Name the first offending node: ``nodes`` is a boolean mask or global node indices."""
    g = int(np.flatnonzero(nodes)[0]) if nodes.dtype == bool else int(nodes[0])
    t = int(np.searchsorted(offsets, g, side="right") - 1)
    return _Bad(f"tree {t}, node {g - int(offsets[t])}: {what}")


def _node_ints(arr: np.ndarray, what: str) -> np.ndarray:
    """Node-indexed integers as native int32 (XGBoost stores them as int32)."""
    if arr.dtype.itemsize > 4 and arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
        raise _Bad(f"{what} holds a value outside the 32-bit range XGBoost stores it in")
    return arr.astype(np.int32, copy=False)


def _check_forest(f: _Forest, num_feature: int, n_outputs: int) -> None:
    count = len(f.n)
    if count == 0:
        return
    if not np.array_equal(np.sort(f.ids), np.arange(count)):
        raise _Bad("the tree ids are not 0..num_trees-1 each once (XGBoost indexes its tree list with them)")
    n = f.n
    total = int(n.sum())  # <= MAX_TOTAL_NODES < 2**31
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    starts = offsets[:-1]

    scalar = f.slv <= 1
    vector_ok = scalar | (f.slv == n_outputs)
    if not vector_ok.all():
        t = int(np.flatnonzero(~vector_ok)[0])
        raise _Bad(f"tree {t} has vector leaves of size {int(f.slv[t])} for {n_outputs} model outputs")
    if np.any(f.num_deleted >= n):
        raise _Bad("a tree reports more deleted nodes than it has")

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
        raise _Bad(f"tree {t}: the root has a parent ({int(root_parent[t])})")
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
        raise _Bad(f"{unreachable} internal nodes cannot be reached from their tree's root "
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
            raise _Bad(f"a tree is deeper than {MAX_TREE_DEPTH} levels (XGBoost recurses once per level)")
        frontier = np.concatenate((child_l[frontier], child_r[frontier]))


def _check_categorical(f: _Forest, offsets: np.ndarray, total: int) -> None:
    split_type = f.split_type
    kc = f.cat_counts
    if not kc.any():
        if split_type.any():  # XGBoost only writes split_type 1 for listed categorical nodes
            raise _where(split_type != 0, offsets, "split_type is set but categories_nodes is empty")
        return
    if split_type.size and (split_type.min() < 0 or split_type.max() > 1):
        raise _where((split_type < 0) | (split_type > 1), offsets, "split_type is neither 0 nor 1")
    count = len(f.n)
    tc = np.repeat(np.arange(count), kc)
    nodes = f.cat_nodes
    if np.any((nodes < 0) | (nodes >= f.n[tc])):
        raise _Bad("categories_nodes names a node outside its tree")
    same_tree = tc[1:] == tc[:-1]
    if np.any(same_tree & (np.diff(nodes) <= 0)):
        raise _Bad("categories_nodes is not strictly increasing (XGBoost matches it in node order)")
    listed = np.zeros(total, dtype=bool)
    listed[offsets[:-1][tc] + nodes] = True
    if not np.array_equal(listed, split_type == 1):
        raise _where(listed != (split_type == 1), offsets,
                     "split_type and categories_nodes disagree on which nodes are categorical")
    segments, sizes = f.cat_segments, f.cat_sizes
    if np.any(sizes < 1) or np.any(segments < 0) or np.any(segments > f.cat_lengths[tc] - sizes):
        raise _Bad("a categorical split's segment lies outside 'categories'")
    cats = f.categories
    if cats.size and (cats.min() < 0 or cats.max() >= MAX_CATEGORY):
        raise _Bad(f"a categorical split uses a category outside [0, {MAX_CATEGORY})")
    # Memory XGBoost allocates for split bitsets: at most nodes * (max category + 1) bits per tree.
    lens = f.cat_lengths
    has = np.flatnonzero(lens > 0)
    if has.size:
        starts = np.zeros(count, dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        max_cat = np.maximum.reduceat(cats, starts[has])
        words = (max_cat + 32) // 32
        if int((words * kc[has]).sum()) * 4 > MAX_CAT_BITSET_BYTES:
            raise _Bad("the categorical splits would need more than "
                       f"{MAX_CAT_BITSET_BYTES >> 20} MiB of bitsets")


# ---- category encoder (learner 'cats', used to recode DataFrame input) -----------------------------

_CAT_INDEX_TYPES = {  # CatIndexType -> typed UBJ arrays XGBoost accepts for it
    9: ("|i1",), 10: ("|u1",), 11: (">i2",), 12: (">i2",), 13: _I32, 14: _I32, 15: _I64, 16: _I64,
}


def _check_cats(cats: dict) -> None:
    enc = _get(cats, "enc", "'cats'")
    if type(enc) is not list:
        raise _Bad("'cats.enc' is not an array")
    sizes = []
    for i, column in enumerate(enc):
        what = f"'cats.enc[{i}]'"
        column = _obj(column, what)
        if "offsets" in column:
            offsets = _ints(column["offsets"], f"{what} offsets", _I32)
            n_values = _length(_get(column, "values", what), f"{what} values", ("|i1",))
            if len(offsets):
                if offsets[0] != 0 or offsets[-1] != n_values or np.any(np.diff(offsets) < 0):
                    raise _Bad(f"{what} string offsets do not run from 0 to the number of characters")
                sizes.append(len(offsets) - 1)
            else:
                if n_values:
                    raise _Bad(f"{what} has characters but no offsets")
                sizes.append(0)
        else:
            kind = _int(_get(column, "type", what), f"{what} type")
            if kind not in _CAT_INDEX_TYPES:
                raise _Bad(f"{what} has unknown category type {kind}")
            values = _get(column, "values", what)
            if type(values) is np.ndarray:
                if values.dtype.str not in _CAT_INDEX_TYPES[kind]:
                    raise _Bad(f"{what} values have the wrong typed-array type")
                sizes.append(len(values))
            else:
                sizes.append(len(_ints(values, f"{what} values", None)))
    segments = _ints(_get(cats, "feature_segments", "'cats'"), "'cats.feature_segments'", _I32).astype(np.int64)
    if len(segments) == 0:
        if enc:
            raise _Bad("'cats' has encoders but no feature_segments")
        n_total = 0
    else:
        if len(segments) != len(enc) + 1 or segments[0] != 0 or not np.array_equal(np.diff(segments), sizes):
            raise _Bad("'cats.feature_segments' does not match the per-feature category counts")
        n_total = int(segments[-1])
        if n_total >= 2**31:
            raise _Bad("'cats' has too many categories")
    sorted_idx = _ints(_get(cats, "sorted_idx", "'cats'"), "'cats.sorted_idx'", _I32).astype(np.int64)
    if len(sorted_idx):
        if len(sorted_idx) != n_total:
            raise _Bad(f"'cats.sorted_idx' has {len(sorted_idx)} entries for {n_total} categories")
        seg_of = np.repeat(np.arange(len(sizes)), sizes)
        seg_len = np.asarray(sizes, dtype=np.int64)[seg_of]
        if np.any((sorted_idx < 0) | (sorted_idx >= seg_len)):
            raise _Bad("'cats.sorted_idx' points outside its feature's categories")
        glob = segments[:-1][seg_of] + sorted_idx
        if not np.array_equal(np.sort(glob), np.arange(n_total)):
            raise _Bad("'cats.sorted_idx' is not a permutation within each feature")
