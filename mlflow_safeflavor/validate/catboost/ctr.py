"""The model parts after the core: CatBoost's static CTR provider (``static_provider_v1``).

Layout (ctr_data.cpp, ctr_value_table.cpp): a ui32 table count, then per table a ui32 size and a
``TCtrValueTable`` FlatBuffer of that size. CatBoost reads these FlatBuffers with a bare ``GetRoot``
— no verifier — and dereferences ``IndexHashRaw`` and ``CTRBlob`` unconditionally. At predict time
(static_ctr_provider.cpp ``CalcCtrs``) it hashes each object's categorical values, probes the
table's open-addressing hash (``TDenseIndexHashView``: 12-byte buckets, ``2**k`` of them, probing
until a bucket whose hash is all ones) and reads the CTR blob at the bucket's index, times the
number of target classes for ``Borders``/``Buckets`` CTRs, and at ``TargetBorderIdx`` inside it.

So every table must be a well-formed FlatBuffer with both vectors, a power-of-two bucket count with
at least one empty bucket (else the probe never stops), every used bucket index inside the blob
for the table's CTR type, the class count and each CTR's target index consistent, one table per CTR
base, and a table for every CTR base the trees use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from mlflow_safeflavor.validate.catboost.flatbuf import Bad, File, Tables, Unsupported, ragged
from mlflow_safeflavor.validate.catboost.schema import CTR_BASE, CTR_VALUE_TABLE

PART_ID = "static_provider_v1"
BORDERS, BUCKETS, MEAN_BINARIZED, MEAN_FLOAT, COUNTER, FEATURE_FREQ = range(6)
BUCKET_BYTES = 12  # NCatboost::TBucket: ui64 hash, ui32 index, packed
MAX_CLASSES = 1 << 16
_ALL_ONES = 0xFFFFFFFF


@dataclass
class Parts:
    """The CTR value tables after the core, checked on their own (see :func:`read_parts`)."""

    end: int  # where the model parts end
    bases: Tables | None = None  # each table's TModelCtrBase, decoded later with the core's (decode_bases)
    ctr_type: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    classes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def read_parts(file: File, pos: int, part_ids: list[str]) -> Parts:
    """Check everything after the core at ``pos``: exactly the parts ``part_ids`` announce."""
    for part in part_ids:
        if part != PART_ID:
            raise Unsupported(f"carries a {part.rstrip(chr(0))!r} model part (text or embedding processing data)")
    if len(part_ids) > 1:
        raise Bad("announces the CTR model part more than once")
    parts = _read_tables(file, pos) if part_ids else Parts(pos)
    if parts.end != file.size:
        raise Bad(f"has {file.size - parts.end} bytes after its last model part")
    return parts


def check(features: dict, parts: Parts, keys: list[tuple]) -> None:
    """One table per CTR base; every CTR the trees use has its table; target indices fit its classes."""
    tables = dict(zip(keys, zip(parts.ctr_type.tolist(), parts.classes.tolist())))
    if len(tables) != len(keys):
        raise Bad("has two CTR tables for the same CTR")
    _match(features, tables)


def _read_sizes(file: File, pos: int) -> tuple[list[int], list[int], int]:
    """Walk the size-prefixed CTR tables: their (start, end) positions and the end of the part."""
    data, size = file.data, file.size
    if pos + 4 > size:
        raise Bad("ends inside the CTR table count")
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if count * 12 > size - pos:
        raise Bad(f"declares {count} CTR tables, more than the file holds")
    starts, ends = [], []
    for i in range(count):
        if pos + 4 > size:
            raise Bad(f"ends inside the size of CTR table {i}")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n > size - pos:
            raise Bad(f"declares a {n}-byte CTR table {i} past the end of the file")
        starts.append(pos)
        pos += n
        ends.append(pos)
    return starts, ends, pos


def _read_tables(file: File, pos: int) -> Parts:
    starts, ends, pos = _read_sizes(file, pos)
    if not starts:
        return Parts(pos)
    root = file.roots(np.array(starts, np.int64), np.array(ends, np.int64), CTR_VALUE_TABLE, "the CTR tables")
    n = len(root)
    rows, base = root.table(0, CTR_BASE, "ModelCtrBase")
    buckets, blob = root.vector(1, 1, "IndexHashRaw"), root.vector(2, 1, "CTRBlob")
    if len(rows) != n or len(buckets.rows) != n or len(blob.rows) != n:
        raise Bad("has a CTR table without its base, hash index or values (CatBoost dereferences them)")
    ctr_type = base.scalar(1, "byte", 0, "CtrType")
    classes = root.scalar(4, "int", 0, "TargetClassesCount").astype(np.int64)
    if ((classes < 0) | (classes > MAX_CLASSES)).any():
        raise Bad("has a CTR table with a negative or huge number of target classes")
    if ((ctr_type == BUCKETS) & (classes < 1)).any():
        raise Bad("has a Buckets CTR table without target classes")
    record = np.where((ctr_type == MEAN_BINARIZED) | (ctr_type == MEAN_FLOAT), 8, 4)
    if (buckets.count % BUCKET_BYTES != 0).any() or (blob.count % record != 0).any():
        raise Bad("has a CTR table whose hash index or values have a size CatBoost does not write")
    n_buckets = buckets.count // BUCKET_BYTES
    if ((n_buckets == 0) | (n_buckets & (n_buckets - 1) != 0)).any():
        raise Bad("has a CTR table whose number of hash buckets is not a power of two")
    # Every bucket is three ui32 words: hash low, hash high, index (gathered for all tables at once).
    at = ragged(buckets.start, n_buckets, BUCKET_BYTES) >> 2
    u32 = file.u32
    empty = (u32[at] == _ALL_ONES) & (u32[1:][at] == _ALL_ONES)
    bounds = n_buckets.cumsum() - n_buckets
    n_empty = np.add.reduceat(empty, bounds)
    if (n_empty == 0).any():
        raise Bad("has a CTR table without an empty hash bucket (CatBoost's lookup would never stop)")
    top = np.maximum.reduceat(np.where(empty, 0, u32[2:][at]), bounds).astype(np.int64)  # highest used index
    stride = np.where(ctr_type == BUCKETS, classes, np.where(ctr_type == BORDERS, np.maximum(classes, 2), 1))
    if ((n_empty < n_buckets) & ((top + 1) * stride > blob.count // record)).any():
        raise Bad("has a CTR table whose hash bucket points past its values")
    return Parts(pos, base, ctr_type, classes)


def _match(f: dict, tables: dict[tuple, tuple[int, int]]) -> None:
    """Every CTR the trees use has its table, and its target index fits the table's classes."""
    bases = f["bases"].keys
    found = [tables.get(k) for k in bases]
    if None in found:
        raise Bad("uses a CTR whose value table is missing (CatBoost would dereference a missing table or "
                  "provider at predict time)")
    if not bases:
        return
    ctr_type, classes = (np.array(v, np.int64) for v in zip(*found))  # per CTR feature
    uses_target = (ctr_type == BUCKETS) | ((ctr_type == BORDERS) & (classes > 2))
    if (uses_target & (f["ctr_target_border"] >= classes)).any():
        raise Bad("has a CTR whose target index is not below its table's number of target classes")
