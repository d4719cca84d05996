"""Decode CatBoost's model core (``TModelCore``, model.fbs / features.fbs / ctr_data.fbs) into arrays.

Field slots follow the schema CatBoost 1.2 writes (``TModelTrees::FBSerialize`` and friends).
Per-feature values come back as one array per field over all features, ragged vectors (borders,
one-hot values) as one concatenated array plus a count per feature. Every string is checked to be
strict UTF-8: Python decodes feature names, class names and metadata later, and a bad byte would
surface as an untyped ``UnicodeDecodeError`` at predict time. Nothing here judges the values;
trees.py, ctr.py and info.py do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlflow_safeflavor.validate.catboost.flatbuf import Bad, File, Table, Tables, Vectors, ragged

FORMAT_VERSION = "FlabuffersModel_v1"  # model.cpp CURRENT_CORE_FORMAT_STRING

_EMPTY = np.empty(0, np.int64)
STEP = np.dtype([("left", "<u2"), ("right", "<u2")])  # TNonSymmetricTreeStepNode

# Inline size of each field, per table type (schema order; offsets to tables, vectors, strings are 4).
KEY_VALUE = (4, 4)  # Key, Value
FLOAT_FEATURE = (1, 4, 4, 4, 4, 1)  # HasNans, Index, FlatIndex, Borders, FeatureId, NanValueTreatment
CAT_FEATURE = (4, 4, 4, 1)  # Index, FlatIndex, FeatureId, UsedInModel
ONE_HOT_FEATURE = (4, 4, 4)  # Index, Values, StringValues
CTR_FEATURE = (4, 4)  # Ctr, Borders
MODEL_CTR = (4, 4, 4, 4, 4, 4)  # Base, TargetBorderIdx, PriorNum, PriorDenom, Shift, Scale
CTR_BASE = (4, 1, 4)  # FeatureCombination, CtrType, TargetBorderClassifierIdx
COMBINATION = (4, 4, 4)  # CatFeatures, FloatSplits, OneHotSplits
CTR_VALUE_TABLE = (4, 4, 4, 4, 4)  # ModelCtrBase, IndexHashRaw, CTRBlob, CounterDenominator, TargetClassesCount

# TModelTrees field slots, in model.fbs order.
(_DIM, _SPLITS, _SIZES, _STARTS, _CATS, _FLOATS, _ONE_HOTS, _CTRS, _LEAVES, _WEIGHTS, _STEPS, _LEAF_IDS,
 _TEXTS, _ESTIMATED, _SCALE, _BIAS, _MULTI_BIAS, _REPACKED, _EMBEDDINGS) = range(19)


@dataclass
class Ragged:
    """Concatenated per-row vectors: ``values`` and the ``counts`` per row."""

    values: np.ndarray
    counts: np.ndarray

    def head(self, n: int) -> Ragged:
        """The first ``n`` rows."""
        return Ragged(self.values[: int(self.counts[:n].sum())], self.counts[:n])

    @classmethod
    def read(cls, tables: Tables, slot: int, dtype: str, name: str) -> Ragged:
        vec = tables.vector(slot, 4, name)
        return cls(vec.values(dtype), vec.counts(len(tables)))


@dataclass
class Bases:
    """CTR bases (``TModelCtrBase``): one per CTR feature of the core, one per CTR value table."""

    keys: list[tuple]  # see read_bases
    cats: Ragged  # categorical feature indices of each projection
    float_splits: Ragged  # int32 positions in the file of each (index, border) float split
    one_hot_splits: Ragged  # int32 positions in the file of each (index, value) one-hot split


@dataclass
class Core:
    info: dict[str, str]
    part_ids: list[str]
    trees: dict[str, object]  # dim, scale, bias, multi_bias and the tree vectors
    features: dict[str, object]  # float_*, cat_*, one_hot_*, ctr_* arrays, unsupported kinds


def read_core(file: File, start: int, end: int) -> Core:
    root = file.root(start, end, "the model core")
    version = root.string(0, "FormatVersion")
    if version != FORMAT_VERSION:
        # CatBoost dereferences a missing FormatVersion while building the error message for it.
        raise Bad(f"has format version {version!r}, not {FORMAT_VERSION!r}")
    entries = [(kv.string(0, "Key"), kv.string(1, "Value")) for kv in root.table_list(2, "InfoMap")]
    info = dict(entries)
    if None in info or None in info.values():
        raise Bad("has a metadata entry without its key or value")
    if len(info) != len(entries):
        raise Bad("repeats a metadata key")
    part_ids = root.strings(3, "ModelPartIds")
    trees = root.table(1, "ModelTrees")
    if trees is None:
        raise Bad("has no trees")
    return Core(info, part_ids, _read_trees(trees), _read_features(trees))


def _read_trees(t: Table) -> dict[str, object]:
    out = {"dim": t.scalar(_DIM, "int", 0, "ApproxDimension"), "scale": t.scalar(_SCALE, "double", 1.0, "Scale"),
           "bias": t.scalar(_BIAS, "double", 0.0, "Bias")}
    for name, slot, dtype, align in (("splits", _SPLITS, "<i4", 4), ("sizes", _SIZES, "<i4", 4),
                                     ("starts", _STARTS, "<i4", 4), ("leaves", _LEAVES, "<f8", 8),
                                     ("weights", _WEIGHTS, "<f8", 8), ("multi_bias", _MULTI_BIAS, "<f8", 8),
                                     ("steps", _STEPS, STEP, 4), ("leaf_ids", _LEAF_IDS, "<u4", 4)):
        out[name] = t.array(slot, dtype, name, align)
    out["repacked"] = t.count(_REPACKED, 4, "RepackedBins") if t.has(_REPACKED) else None
    return out


def _read_features(t: Table) -> dict[str, object]:
    f: dict[str, object] = {"file": t.file}
    floats = t.tables(_FLOATS, FLOAT_FEATURE, "FloatFeatures")
    f["float_index"] = floats.scalar(1, "int", -1, "Index")
    f["float_flat"] = floats.scalar(2, "int", -1, "FlatIndex")
    f["float_nan"] = floats.scalar(5, "byte", 0, "NanValueTreatment")
    f["float_borders"] = Ragged.read(floats, 3, "<f4", "Borders")
    floats.string(4, "FeatureId").check_utf8()

    cats = t.tables(_CATS, CAT_FEATURE, "CatFeatures")
    f["cat_index"] = cats.scalar(0, "int", -1, "Index")
    f["cat_flat"] = cats.scalar(1, "int", -1, "FlatIndex")
    f["cat_used"] = cats.scalar(3, "bool", 1, "UsedInModel") != 0
    cats.string(2, "FeatureId").check_utf8()

    one_hots = t.tables(_ONE_HOTS, ONE_HOT_FEATURE, "OneHotFeatures")
    f["one_hot_index"] = one_hots.scalar(0, "int", -1, "Index")
    f["one_hot_values"] = Ragged.read(one_hots, 1, "<i4", "Values")
    f["one_hot_names"] = _EMPTY
    if len(one_hots):
        names = one_hots.strings(2, "StringValues")
        names.check_utf8()
        f["one_hot_names"] = np.bincount(names.rows, minlength=len(one_hots))

    ctrs = t.tables(_CTRS, CTR_FEATURE, "CtrFeatures")
    f["ctr_borders"] = Ragged.read(ctrs, 1, "<f4", "Borders")
    f["ctr_target_border"], f["ctr_priors"], f["base_tables"] = _EMPTY, _EMPTY, None
    if len(ctrs):
        rows, ctr = ctrs.table(0, MODEL_CTR, "Ctr")
        if len(rows) != len(ctrs):
            raise Bad("has a CTR feature without its CTR (CatBoost dereferences it while loading)")
        rows, base = ctr.table(0, CTR_BASE, "Base")  # one row per CTR, shared bases included
        if len(rows) != len(ctr):
            raise Bad("has a CTR without its base (feature combination)")
        f["base_tables"] = base  # decoded together with the CTR tables' bases: decode_bases()
        f["ctr_target_border"] = ctr.scalar(1, "int", 0, "TargetBorderIdx")
        f["ctr_priors"] = ctr.floats((2, 3, 4, 5), (0.0, 1.0, 0.0, 1.0))  # PriorNum, PriorDenom, Shift, Scale

    f["unsupported"] = [kind for slot, kind in ((_TEXTS, "text"), (_EMBEDDINGS, "embedding"), (_ESTIMATED, "estimated"))
                        if t.count(slot, 4, kind)]
    return f


def decode_bases(features: dict, table_bases: Tables | None) -> list[tuple]:
    """Decode the CTR features' bases and the CTR value tables' bases in one pass.

    Sets ``features["bases"]`` and returns the tables' keys, in table order.
    """
    parts = [b for b in (features["base_tables"], table_bases) if b is not None]
    if not parts:
        features["bases"] = Bases([], *(Ragged(_EMPTY, _EMPTY) for _ in range(3)))
        return []
    n = len(features["base_tables"]) if features["base_tables"] is not None else 0
    bases = read_bases(Tables.concat(parts))
    heads = (r.head(n) for r in (bases.cats, bases.float_splits, bases.one_hot_splits))
    features["bases"] = Bases(bases.keys[:n], *heads)
    return bases.keys[n:]


def read_bases(base: Tables) -> Bases:
    """Decode CTR bases (one row per base table) into the keys CatBoost compares them by.

    A key is (categorical features, float splits, one-hot splits, CtrType, TargetBorderClassifierIdx),
    the three vectors as their raw bytes (CatBoost serializes a base from the same object in the
    core and in its table, so equal bases have equal bytes).
    """
    n = len(base)
    rows, comb = base.table(0, COMBINATION, "FeatureCombination")
    (c0, cn), (f0, fn), (o0, on) = (_per_base(comb.vector(slot, elem, name), rows, n, elem) for slot, elem, name in
                                    ((0, 4, "CatFeatures"), (1, 8, "FloatSplits"), (2, 8, "OneHotSplits")))
    raw = base.file.raw
    types, classifiers = base.scalar(1, "byte", 0, "CtrType"), base.scalar(2, "int", 0, "TargetBorderClassifierIdx")
    keys = [(raw[a : a + b], raw[c : c + d], raw[e : e + g], t, k) for a, b, c, d, e, g, t, k in
            zip(c0.tolist(), cn.tolist(), f0.tolist(), fn.tolist(), o0.tolist(), on.tolist(),
                types.tolist(), classifiers.tolist())]
    return Bases(keys, Ragged(base.file.i32[ragged(c0, cn // 4, 4) >> 2], cn // 4),
                 Ragged(ragged(f0, fn // 8, 8) >> 2, fn // 8), Ragged(ragged(o0, on // 8, 8) >> 2, on // 8))


def _per_base(vec: Vectors, comb_rows: np.ndarray, n: int, elem: int) -> tuple[np.ndarray, np.ndarray]:
    """A vector field of each base's combination: (first byte, byte length) per base, (0, 0) if absent."""
    start, length = np.zeros(n, np.int64), np.zeros(n, np.int64)
    where = comb_rows[vec.rows]
    start[where], length[where] = vec.start, vec.count * elem
    return start, length
