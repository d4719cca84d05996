"""The columnar tree file (``trees.safetensors``): parse its container and check its arrays.

The file is a safetensors file — an 8-byte little-endian header length, a JSON header naming each
array's dtype, shape and byte range, then one buffer — written and read by our own code (no
dependency: the container is 20 lines, and reading it ourselves gives zero-copy views over the
bytes whose digest was checked). Everything here runs on those views, vectorised, before any
object is built: a child index that points backwards or past its tree, a split feature past the
tree's width or a bitset index past its predictor's bitsets would make scikit-learn's Cython
``predict`` read outside its arrays (SIGSEGV), so nothing that fails these checks reaches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

MAX_HEADER_BYTES = 16 * 1024**2
MAX_TREES = 10_000_000
MAX_NODES = 1_000_000_000
MAX_NODES_PER_TREE = 50_000_000
MAX_FEATURES = 100_000_000
MAX_OUTPUTS = 100_000
MAX_CLASSES = 10_000_000
MAX_SLOTS = 100_000
LAYOUT = 1
_DTYPES = {"F64": "<f8", "I64": "<i8", "U32": "<u4", "U8": "|u1"}
_CODES = {np.dtype(v).str: k for k, v in _DTYPES.items()}

# The fields of scikit-learn's node records (``sklearn.tree._tree.NODE_DTYPE`` and HGB's
# ``PREDICTOR_RECORD_DTYPE``) and their exact dtypes. Tree nodes are stored as the records
# themselves (``node.records``, one row of bytes per node, layout recorded in the file): a
# tree's slice goes to ``Tree.__setstate__`` without being reassembled, and when the installed
# scikit-learn lays the record out differently the fields are copied by name. HGB nodes are few
# and stored one column per field.
TREE_FIELDS: dict[str, str] = {
    "left_child": "<i8", "right_child": "<i8", "feature": "<i8", "threshold": "<f8",
    "impurity": "<f8", "n_node_samples": "<i8", "weighted_n_node_samples": "<f8",
    "missing_go_to_left": "|u1",
}
HGB_FIELDS: dict[str, str] = {
    "value": "<f8", "count": "<u4", "feature_idx": "<i8", "num_threshold": "<f8",
    "missing_go_to_left": "|u1", "left": "<u4", "right": "<u4", "gain": "<f8", "depth": "<u4",
    "is_leaf": "|u1", "bin_threshold": "|u1", "is_categorical": "|u1", "bitset_idx": "<u4",
}
# Arrays every file holds (possibly empty), with their dtype and number of dimensions.
BASE_ARRAYS: dict[str, tuple[str, int]] = {
    "tree.node_offsets": ("<i8", 1), "tree.n_features": ("<i8", 1), "tree.n_outputs": ("<i8", 1),
    "tree.n_classes": ("<i8", 1), "tree.max_depth": ("<i8", 1), "tree.value": ("<f8", 1),
    "node.records": ("|u1", 2),
    "hgb.node_offsets": ("<i8", 1), "hgb.n_features": ("<i8", 1),
    "hgb.binned_bitsets": ("<u4", 2), "hgb.binned_offsets": ("<i8", 1),
    "hgb.raw_bitsets": ("<u4", 2), "hgb.raw_offsets": ("<i8", 1),
    **{f"hgbnode.{k}": (v, 1) for k, v in HGB_FIELDS.items()},
}


def fail(path: str, what: str) -> MalformedArtifactError:
    """The one refusal of this module: names the file, the problem and what to do."""
    return MalformedArtifactError(
        f"{path}: trees.safetensors {what}. It was not written by mlflow-safeflavor or was "
        "tampered with; predicting with it could read outside the trees' arrays — do not load "
        "it, re-save the model.",
        path=path,
    )


# ------------------------------------------------------------------------------ container


def dump(arrays: Mapping[str, list[np.ndarray]], dtypes: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]],
         metadata: Mapping[str, str], fh: Any) -> None:
    """Write a safetensors file to the binary file ``fh``; each array is written from its parts.

    Parts are written one after another (never concatenated in memory first: a buffer of the
    whole file costs more in page faults than the writes), largest items first so every array
    starts aligned to its item size, and the header is padded to 8 bytes.
    """
    def align(name: str) -> int:
        row = np.dtype(dtypes[name]).itemsize * int(np.prod(shapes[name][1:], dtype=np.int64))
        return 8 if row and row % 8 == 0 else np.dtype(dtypes[name]).itemsize

    order = sorted(arrays, key=lambda n: (-align(n), n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in order:
        size = int(np.prod(shapes[name], dtype=np.int64)) * np.dtype(dtypes[name]).itemsize
        header[name] = {"dtype": _CODES[np.dtype(dtypes[name]).str], "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    for name in order:
        for part in arrays[name]:
            fh.write(np.ascontiguousarray(part, dtype=dtypes[name]).reshape(-1).view(np.uint8).data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load(data: bytes, *, path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a safetensors file into read-only zero-copy views and its string metadata.

    Refuses a header that lies: a length past the file, non-JSON, an unknown dtype, a shape
    whose size is not its byte range, ranges that overlap, leave gaps or do not end exactly at
    the end of the buffer (the rules of safetensors' own parser).
    """
    if len(data) < 8:
        raise fail(path, "is shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise fail(path, f"declares a {n}-byte header, past its cap or the end of the file")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise fail(path, "has a header that is not valid JSON") from None
    if not isinstance(header, dict):
        raise fail(path, "has a header that is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise fail(path, "has __metadata__ that is not a string-to-string map")
    buf = memoryview(data)[8 + n:]
    spans = []
    for name, spec in header.items():
        ok = (isinstance(spec, dict) and set(spec) == {"dtype", "shape", "data_offsets"}
              and spec["dtype"] in _DTYPES and isinstance(spec["shape"], list) and len(spec["shape"]) <= 4
              and all(_is_int(d) and d >= 0 for d in spec["shape"])
              and isinstance(spec["data_offsets"], list) and len(spec["data_offsets"]) == 2
              and all(_is_int(o) for o in spec["data_offsets"]))
        if not ok:
            raise fail(path, f"has a malformed entry for {name!r:.80}")
        begin, end = spec["data_offsets"]
        count = 1
        for d in spec["shape"]:
            count *= d
        if not 0 <= begin <= end <= len(buf) or count * np.dtype(_DTYPES[spec["dtype"]]).itemsize != end - begin:
            raise fail(path, f"gives {name!r:.80} a byte range that is out of the file or not its shape's size")
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise fail(path, f"has arrays that overlap or leave a gap (at {name!r:.80})")
        cursor = end
    if cursor != len(buf):
        raise fail(path, "has bytes after its last array")
    arrays = {}
    for begin, end, name in spans:
        spec = header[name]
        arr = np.frombuffer(buf, dtype=_DTYPES[spec["dtype"]], count=(end - begin) // np.dtype(_DTYPES[spec["dtype"]]).itemsize, offset=begin)
        arrays[name] = arr.reshape(spec["shape"])
    return arrays, meta


# ---------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Checked:
    """Arrays that passed every check, and the derived per-tree offsets into ``tree.value``."""

    arrays: dict[str, np.ndarray]
    slots: list[dict[str, Any]]
    value_offsets: np.ndarray
    class_offsets: np.ndarray


def expect(arrays: Mapping[str, np.ndarray], wanted: Mapping[str, tuple[str, int]], *, path: str) -> None:
    """The file holds exactly the ``wanted`` arrays, each with its exact dtype and dimensions."""
    if set(arrays) != set(wanted):
        odd = sorted(set(arrays) ^ set(wanted))[:5]
        raise fail(path, f"does not hold exactly the arrays its layout needs (differs at {odd})")
    for name, (dtype, ndim) in wanted.items():
        if arrays[name].dtype.str != np.dtype(dtype).str or arrays[name].ndim != ndim:
            raise fail(path, f"stores {name!r} as {arrays[name].dtype.str}/{arrays[name].ndim}-D, not {dtype}/{ndim}-D")


def offsets(arr: np.ndarray, total: int, *, name: str, path: str, min_step: int = 1, max_step: int = MAX_NODES_PER_TREE) -> np.ndarray:
    """``arr`` starts at 0, ends at ``total`` and steps by ``min_step``..``max_step``; returns the steps."""
    if len(arr) < 1 or arr[0] != 0 or arr[-1] != total:
        raise fail(path, f"has {name} that do not cover exactly its data")
    steps = np.diff(arr)
    if len(steps) and (steps.min() < min_step or steps.max() > max_step):
        raise fail(path, f"has {name} that are not increasing or exceed the per-tree cap")
    return steps


def _check_structure(children: tuple[np.ndarray, np.ndarray], leaf: np.ndarray, feature: np.ndarray,
                     n_features: np.ndarray, counts: np.ndarray, starts: np.ndarray, *, what: str, path: str) -> None:
    """Every inner node's children lie after it and inside its own tree; its feature is in range.

    Whole-array passes, as few as possible (these run on every load): an inner node at tree-local
    index ``i`` of a tree of ``n`` nodes needs ``i < child < n``, i.e. ``0 <= child - i - 1 <
    n - i - 1``, one unsigned comparison; leaves are masked out with ``inner`` (no gather, no
    ``np.where``, which costs as much as three of these passes).
    """
    local1 = np.arange(1, len(leaf) + 1, dtype=np.int64)
    local1 -= np.repeat(starts, counts)
    room = np.repeat(counts, counts)
    room -= local1
    room_u = room.view(np.uint64)
    inner = ~leaf
    for child in children:
        step = child - local1
        bad = step.view(np.uint64) >= room_u
        bad &= inner
        if np.any(bad):
            # The slow path names which rule failed.
            if np.any((child >= room + local1) & inner):
                raise fail(path, f"has a {what}child index past the end of its tree")
            raise fail(path, f"has a {what}child index pointing backwards (a cycle)")
    del local1, room, room_u
    lo, hi = int(n_features.min()), int(n_features.max())
    limit = hi if lo == hi else np.repeat(n_features, counts).astype(np.uint64)
    feat = np.asarray(feature, dtype=np.int64)
    bad = feat.view(np.uint64) >= limit  # negative indices become huge
    bad &= inner
    if np.any(bad):
        raise fail(path, f"has a {what}split on a feature index out of range")


def node_dtype(doc: Any, *, path: str) -> np.dtype:
    """The node record layout the file declares: exactly our fields and dtypes, inside the record."""
    ok = isinstance(doc, dict) and set(doc) == {"names", "formats", "offsets", "itemsize"} and all(
        isinstance(doc[k], list) and len(doc[k]) == len(TREE_FIELDS) for k in ("names", "formats", "offsets")
    ) and type(doc["itemsize"]) is int and 0 < doc["itemsize"] <= 256
    if ok:
        ok = sorted(doc["names"]) == sorted(TREE_FIELDS) and all(
            TREE_FIELDS[n] == f and type(o) is int and o >= 0 for n, f, o in zip(doc["names"], doc["formats"], doc["offsets"])
        )
    if ok:
        spans = sorted((o, o + np.dtype(f).itemsize) for f, o in zip(doc["formats"], doc["offsets"]))
        ok = spans[-1][1] <= doc["itemsize"] and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    if not ok:
        raise fail(path, "declares a node record layout that is not scikit-learn's tree node")
    return np.dtype({"names": doc["names"], "formats": doc["formats"], "offsets": doc["offsets"], "itemsize": doc["itemsize"]})


def node_fields(records: np.ndarray, dtype: np.dtype, *, path: str) -> dict[str, np.ndarray]:
    """Zero-copy views of the node records (``node.view``) and of each field (``node.<field>``)."""
    if records.shape[1] != dtype.itemsize:
        raise fail(path, f"has node records of {records.shape[1]} bytes for a {dtype.itemsize}-byte layout")
    view = records.reshape(-1).view(dtype)
    return {"node.view": view, **{f"node.{f}": view[f] for f in TREE_FIELDS}}


def check_trees(a: Mapping[str, np.ndarray], *, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Check the ``tree.*``/``node.*`` arrays; return per-tree offsets into value and n_classes."""
    n_nodes = len(a["node.left_child"])
    if n_nodes > MAX_NODES or any(len(a[f"node.{f}"]) != n_nodes for f in TREE_FIELDS):
        raise fail(path, "has node columns of different lengths or past the node cap")
    counts = offsets(a["tree.node_offsets"], n_nodes, name="node offsets", path=path)
    n_trees = len(counts)
    if n_trees > MAX_TREES or any(len(a[k]) != n_trees for k in ("tree.n_features", "tree.n_outputs", "tree.max_depth")):
        raise fail(path, "has per-tree arrays whose lengths differ from its tree count")
    if n_trees == 0:
        if len(a["tree.n_classes"]) or len(a["tree.value"]):
            raise fail(path, "holds tree values but no trees")
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    n_features, n_outputs = a["tree.n_features"], a["tree.n_outputs"]
    if n_features.min() < 1 or n_features.max() > MAX_FEATURES or n_outputs.min() < 1 or n_outputs.max() > MAX_OUTPUTS:
        raise fail(path, "has a tree with a feature or output count out of range")
    class_offsets = np.concatenate(([0], np.cumsum(n_outputs)))
    n_classes = a["tree.n_classes"]
    if len(n_classes) != class_offsets[-1] or n_classes.min() < 1 or n_classes.max() > MAX_CLASSES:
        raise fail(path, "has class counts that do not match its trees' outputs")
    # Checked step by step so that no product can overflow int64.
    width = n_outputs * np.maximum.reduceat(n_classes, class_offsets[:-1])
    if np.any(width > len(a["tree.value"])):
        raise fail(path, "declares tree values larger than the file")
    sizes = counts * width
    if np.any(sizes > len(a["tree.value"])):
        raise fail(path, "declares tree values larger than the file")
    value_offsets = np.concatenate(([0], np.cumsum(sizes)))
    if value_offsets[-1] != len(a["tree.value"]):
        raise fail(path, "has tree values whose size does not match its trees' shapes")
    depth = a["tree.max_depth"]
    if np.any(depth < 0) or np.any(depth >= counts):
        raise fail(path, "has a tree whose max_depth is out of range")
    # The node fields are strided views into the records: checked a group of trees at a time so
    # that each group's records stay in cache across the passes over their fields.
    offs = a["tree.node_offsets"]
    words = _leading_words(a)
    for t0, t1 in _groups(offs):
        lo, hi = int(offs[t0]), int(offs[t1])
        # Contiguous copies: each later pass over a strided view of the 64-byte records costs
        # about ten passes over a plain array. With scikit-learn's own layout the four fields
        # are the first four 8-byte words of a record and come out in one transposing copy.
        if words is not None:
            block = words[lo:hi, :4].T.copy()
            left, right, feature, threshold = block[0], block[1], block[2], block[3].view(np.float64)
        else:
            left = np.ascontiguousarray(a["node.left_child"][lo:hi])
            right = np.ascontiguousarray(a["node.right_child"][lo:hi])
            feature = np.ascontiguousarray(a["node.feature"][lo:hi])
            threshold = a["node.threshold"][lo:hi]
        leaf = left == -1
        if not np.array_equal(leaf, right == -1):
            raise fail(path, "has a node with exactly one child")
        # scikit-learn appends children after their parent: forward edges within the tree also
        # prove there is no cycle.
        _check_structure((left, right), leaf, feature, n_features[t0:t1], counts[t0:t1],
                         offs[t0:t1] - lo, what="", path=path)
        # +inf is a real threshold (the split that sends only missing values right); NaN is not.
        nan = np.isnan(threshold)
        if nan.any() and np.any(nan & ~leaf):
            raise fail(path, "has a NaN split threshold")
    return value_offsets, class_offsets


def _leading_words(a: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The node records as rows of little-endian 8-byte words when left_child, right_child,
    feature and threshold are words 0-3 (scikit-learn's layout), else None."""
    view, records = a["node.view"], a["node.records"]
    fields = view.dtype.fields
    standard = all(fields[name][1] == 8 * i for i, name in enumerate(("left_child", "right_child", "feature", "threshold")))
    if not standard or records.shape[1] % 8 or records.shape[1] < 32 or not records.flags.c_contiguous:
        return None
    return records.reshape(-1).view("<i8").reshape(len(records), -1)


def _groups(node_offsets: np.ndarray, size: int = 1 << 15) -> list[tuple[int, int]]:
    """Consecutive tree ranges of about ``size`` nodes each (one tree when it is larger)."""
    out, t0, n = [], 0, len(node_offsets) - 1
    while t0 < n:
        t1 = int(np.searchsorted(node_offsets, node_offsets[t0] + size, side="right")) - 1
        t1 = min(max(t1, t0 + 1), n)
        out.append((t0, t1))
        t0 = t1
    return out


def check_predictors(a: Mapping[str, np.ndarray], *, path: str) -> None:
    """Check the HGB ``hgb.*``/``hgbnode.*`` arrays: children, features, thresholds, bitset indices."""
    n_nodes = len(a["hgbnode.left"])
    if n_nodes > MAX_NODES or any(len(a[f"hgbnode.{f}"]) != n_nodes for f in HGB_FIELDS):
        raise fail(path, "has HGB node columns of different lengths or past the node cap")
    counts = offsets(a["hgb.node_offsets"], n_nodes, name="HGB node offsets", path=path)
    n_pred = len(counts)
    if n_pred > MAX_TREES or len(a["hgb.n_features"]) != n_pred:
        raise fail(path, "has per-predictor arrays whose lengths differ from its predictor count")
    bitsets = {}
    for kind in ("binned", "raw"):
        arr = a[f"hgb.{kind}_bitsets"]
        if arr.shape[1:] != (8,):
            raise fail(path, f"has {kind} bitsets that are not 8 words wide")
        steps = offsets(a[f"hgb.{kind}_offsets"], len(arr), name=f"{kind} bitset offsets", path=path, min_step=0)
        if len(steps) != n_pred:
            raise fail(path, f"has {kind} bitset offsets for another number of predictors")
        bitsets[kind] = steps
    if n_pred == 0:
        return
    n_features = a["hgb.n_features"]
    if n_features.min() < 1 or n_features.max() > MAX_FEATURES:
        raise fail(path, "has a predictor with a feature count out of range")
    leaf = a["hgbnode.is_leaf"] != 0
    _check_structure((a["hgbnode.left"], a["hgbnode.right"]), leaf, a["hgbnode.feature_idx"], n_features, counts,
                     a["hgb.node_offsets"][:-1], what="histogram-boosting ", path=path)
    inner = ~leaf
    cat = inner & (a["hgbnode.is_categorical"] != 0)
    if np.any(np.isnan(a["hgbnode.num_threshold"][inner & ~cat])):
        raise fail(path, "has a NaN histogram-boosting threshold")
    if np.any(cat):
        bidx = a["hgbnode.bitset_idx"][cat].astype(np.int64)
        for steps in bitsets.values():
            if np.any(bidx >= np.repeat(steps, counts)[cat]):
                raise fail(path, "has a categorical bitset index out of range")
