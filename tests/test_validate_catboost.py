"""The structural validator of CatBoost models (mlflow_safeflavor.validate.catboost).

CatBoost 1.2 verifies the FlatBuffer framing of a ``.cbm`` model core but trusts the indices inside
it, and reads the CTR tables after the core without any verification: a crafted file kills the
process that loads or first uses it (SIGSEGV, SIGABRT) or makes it spin forever. ``validate()``
must accept every model CatBoost writes (except text/embedding models, refused by design), refuse
every crafted payload with MalformedArtifactError (and nothing else), and whatever it accepts must
load and predict without killing the process. Crafted payloads are edited in place with the small
FlatBuffer navigator below, written independently of the validator's reader.
"""

from __future__ import annotations

import random
import struct
import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
from helpers import died_at, run_raw
from hostile import replace_payload

import mlflow_safeflavor as sf
from mlflow_safeflavor.errors import MalformedArtifactError
from mlflow_safeflavor.validate.catboost_model import validate

cb = pytest.importorskip("catboost")

PATH = "runs:/abc/model/model.cbm"
KW = {"verbose": 0, "allow_writing_files": False, "thread_count": 1, "random_seed": 0}
CATS = ["city", "kind", "zone"]


# --------------------------------------------------------------------------------------------
# Helpers


def refused(data: bytes, *, unsupported: bool = False) -> MalformedArtifactError:
    with pytest.raises(MalformedArtifactError) as info:
        validate(data, path=PATH)
    err = info.value
    assert err.message.startswith(f"{PATH}: model.cbm "), err.message
    assert "re-save the model" in err.message, err.message
    assert ("cannot vouch" in err.message) == unsupported, err.message
    assert err.path == PATH
    return err


def _u32(d, p):
    return struct.unpack_from("<I", d, p)[0]


def _put(d: bytearray, p: int, fmt: str, value) -> None:
    struct.pack_into(fmt, d, p, value)


class FB:
    """Navigate a FlatBuffer inside a bytearray; every position is absolute in the file."""

    def __init__(self, data: bytearray, base: int):
        self.d, self.base = data, base

    def root(self) -> int:
        return self.base + _u32(self.d, self.base)

    def vtable(self, table: int) -> int:
        return table - struct.unpack_from("<i", self.d, table)[0]

    def slot(self, table: int, slot: int) -> int:
        """Position of the vtable entry of field ``slot``."""
        return self.vtable(table) + 4 + 2 * slot

    def field(self, table: int, slot: int) -> int | None:
        vt = self.vtable(table)
        if 4 + 2 * slot >= struct.unpack_from("<H", self.d, vt)[0]:
            return None
        off = struct.unpack_from("<H", self.d, vt + 4 + 2 * slot)[0]
        return table + off if off else None

    def deref(self, at: int) -> int:
        return at + _u32(self.d, at)

    def table(self, table: int, slot: int) -> int:
        return self.deref(self.field(table, slot))

    def vector(self, table: int, slot: int) -> tuple[int, int]:
        """(first element position, count)."""
        v = self.table(table, slot)
        return v + 4, _u32(self.d, v)

    def tables(self, table: int, slot: int) -> list[int]:
        start, n = self.vector(table, slot)
        return [self.deref(start + 4 * i) for i in range(n)]


# TModelTrees slots (model.fbs) and TModelCore's ModelTrees slot.
SPLITS, SIZES, STARTS, CAT_FEATURES, FLOATS, ONE_HOTS, CTRS, LEAVES, WEIGHTS, STEPS, LEAF_IDS = range(1, 12)


def trees(d: bytearray) -> tuple[FB, int]:
    fb = FB(d, 8)
    return fb, fb.table(fb.root(), 1)


def ctr_tables(d: bytes) -> list[tuple[int, int]]:
    """(start, size) of each CTR table after the core."""
    pos = 8 + _u32(d, 4)
    count, pos, out = _u32(d, pos), pos + 4, []
    for _ in range(count):
        size = _u32(d, pos)
        out.append((pos + 4, size))
        pos += 4 + size
    return out


RAW_LOAD = textwrap.dedent(
    """
    import sys, numpy as np, pandas as pd, catboost
    blob = open(sys.argv[1], "rb").read()
    try:
        model = catboost.CatBoostClassifier().load_model(blob=blob)
        cats = set(model.get_cat_feature_indices())
        rng = np.random.default_rng(0)
        X = pd.DataFrame({name: rng.choice(["a", "b", "c1", "c7", "z3"], 300) if i in cats else rng.normal(size=300) * 3
                          for i, name in enumerate(model.feature_names_)})
        raw = model.predict(X, prediction_type="RawFormulaVal")
        model.predict(X)
    except catboost.CatBoostError as exc:
        print("CatBoostError:", str(exc).splitlines()[0])
        sys.exit(3)
    print("survived", np.asarray(raw, dtype=float).ravel()[:64].tolist())
    """
)



def raw_catboost(tmp_path, data: bytes, timeout: float = 120) -> subprocess.CompletedProcess:
    """Load and predict with plain CatBoost in a child process (no validation)."""
    model = tmp_path / "raw.cbm"
    model.write_bytes(data)
    return run_raw(RAW_LOAD, [str(model)], timeout=timeout)


def _bytes(model) -> bytes:
    return bytes(model._serialize_model())


# --------------------------------------------------------------------------------------------
# Models CatBoost writes


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[::17, 2] = np.nan
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(6)])
    df["city"] = rng.choice([f"c{i}" for i in range(20)], n)
    df["kind"] = rng.choice(["a", "b", "c"], n)
    df["zone"] = rng.choice([f"z{i}" for i in range(8)], n)
    y = ((X[:, 0] + (df["city"].str[1:].astype(int) % 3 == 0)) > 0.3).astype(int)
    y3 = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])
    reg = X[:, 0] * 2 + np.nan_to_num(X[:, 2]) + (df["kind"] == "a") + rng.normal(size=n) * 0.1
    return X, df, y, y3, reg


def _legit_models() -> dict[str, bytes]:
    X, df, y, y3, reg = _frame()
    groups = np.repeat(np.arange(len(X) // 20), 20)
    kw = {"iterations": 10, **KW}
    m: dict[str, object] = {
        "classifier_default": cb.CatBoostClassifier(iterations=40, **KW).fit(X, y),
        "classifier_cat_features": cb.CatBoostClassifier(iterations=40, **KW).fit(df, y, cat_features=CATS),
        "regressor_cat_features": cb.CatBoostRegressor(**kw).fit(df, reg, cat_features=CATS),
        "ranker_cat_features": cb.CatBoostRanker(**kw).fit(df, y3, group_id=groups, cat_features=CATS),
        "ranker_pairlogit": cb.CatBoostRanker(loss_function="PairLogit", **kw).fit(X, y3, group_id=groups),
        "multiclass_cat_features": cb.CatBoostClassifier(**kw).fit(df, y3, cat_features=CATS),
        "multiclass_string_labels": cb.CatBoostClassifier(**kw).fit(X, np.array(["lo", "mid", "hi"])[y3]),
        "multiclass_declared_classes": cb.CatBoostClassifier(class_names=["0", "1", "2", "3"], **kw).fit(
            X, y3.astype(str)),
        "multiclass_classes_count": cb.CatBoostClassifier(classes_count=5, **kw).fit(X, y3),
        "multilabel": cb.CatBoostClassifier(loss_function="MultiLogloss", **kw).fit(X, np.c_[y, 1 - y, y]),
        "binary_bool_labels": cb.CatBoostClassifier(**kw).fit(X, y.astype(bool)),
        "binary_target_border": cb.CatBoostClassifier(target_border=0.0, **kw).fit(X, X[:, 0] + 0.1),
        "crossentropy": cb.CatBoostClassifier(loss_function="CrossEntropy", **kw).fit(
            X, np.clip(X[:, 0] / 4 + 0.5, 0, 1)),
        "one_hot": cb.CatBoostClassifier(one_hot_max_size=30, **kw).fit(df, y, cat_features=CATS),
        "ctr_types": cb.CatBoostClassifier(simple_ctr=["Borders", "Buckets", "Counter"],
                                           combinations_ctr=["Borders", "Counter"], **kw).fit(df, y, cat_features=CATS),
        "multiclass_ctr_buckets": cb.CatBoostClassifier(simple_ctr=["Buckets", "Borders"], **kw).fit(
            df, y3, cat_features=CATS),
        "regressor_ctr_counter": cb.CatBoostRegressor(simple_ctr=["Borders", "Counter"], **kw).fit(
            df, reg, cat_features=CATS),
        "regressor_ctr_mean": cb.CatBoostRegressor(simple_ctr=["BinarizedTargetMeanValue"], **kw).fit(
            df, reg, cat_features=CATS),
        "depthwise": cb.CatBoostRegressor(grow_policy="Depthwise", depth=4, **kw).fit(df, reg, cat_features=CATS),
        "lossguide": cb.CatBoostClassifier(grow_policy="Lossguide", max_leaves=12, **kw).fit(df, y, cat_features=CATS),
        "lossguide_multiclass": cb.CatBoostClassifier(grow_policy="Lossguide", max_leaves=8, **kw).fit(X, y3),
        "nan_mode_max": cb.CatBoostRegressor(nan_mode="Max", **kw).fit(X, reg),
        "border_count_1024": cb.CatBoostRegressor(border_count=1024, **kw).fit(X, reg),
        "uncertainty": cb.CatBoostRegressor(loss_function="RMSEWithUncertainty", **kw).fit(X, reg),
        "multi_rmse": cb.CatBoostRegressor(loss_function="MultiRMSE", **kw).fit(X, np.c_[reg, -reg]),
        "quantile_params": cb.CatBoostRegressor(loss_function="Quantile:alpha=0.8", **kw).fit(X, reg),
        "depth_10": cb.CatBoostRegressor(depth=10, iterations=3, **KW).fit(X, reg),
        "ignored_features": cb.CatBoostRegressor(ignored_features=[1, 3], **kw).fit(X, reg),
        "unicode_names": cb.CatBoostRegressor(**kw).fit(
            df.rename(columns={"x0": "température", "city": "ville_é"}), reg, cat_features=["ville_é", "kind", "zone"]),
        "one_tree": cb.CatBoostRegressor(iterations=1, depth=1, **KW).fit(X, reg),
    }
    shrunk = cb.CatBoostRegressor(**kw).fit(df, reg, cat_features=CATS)
    shrunk.shrink(8, 2)
    m["shrunk"] = shrunk
    dropped = cb.CatBoostRegressor(**kw).fit(df, reg, cat_features=CATS)
    dropped.drop_unused_features()
    m["drop_unused_features"] = dropped
    scaled = cb.CatBoostRegressor(**kw).fit(X, reg)
    scaled.set_scale_and_bias(0.5, 1.5)
    m["scale_and_bias"] = scaled
    a = cb.CatBoostRegressor(**kw).fit(df, reg, cat_features=CATS)
    b = cb.CatBoostRegressor(**{**kw, "random_seed": 1}).fit(df, reg, cat_features=CATS)
    m["sum_models"] = cb.sum_models([a, b])
    asym = cb.CatBoostClassifier(**kw).fit(df, y, cat_features=CATS)
    asym._convert_to_asymmetric_representation()
    m["converted_to_asymmetric"] = asym
    m["ctr_combinations"] = _combinations_model()
    return {name: _bytes(model) for name, model in m.items()}


def _combinations_model():
    """Enough trees and levels for CTRs over combinations with float and one-hot splits (~2 s)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 6))
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    for j, k in enumerate((50, 3, 300)):
        df[f"c{j}"] = rng.integers(0, k, len(df)).astype(str)
    y = ((X[:, 0] + X[:, 1] * X[:, 2] + (df["c0"].astype(int) % 3 == 0) + (df["c1"] == "1")) > 0.3).astype(int)
    return cb.CatBoostClassifier(iterations=200, one_hot_max_size=4, **KW).fit(df, y, cat_features=["c0", "c1", "c2"])


@pytest.fixture(scope="module")
def legit() -> dict[str, bytes]:
    return _legit_models()


LEGIT_NAMES = [
    "classifier_default", "classifier_cat_features", "regressor_cat_features", "ranker_cat_features",
    "ranker_pairlogit", "multiclass_cat_features", "multiclass_string_labels", "multiclass_declared_classes",
    "multiclass_classes_count", "multilabel", "binary_bool_labels", "binary_target_border", "crossentropy",
    "one_hot", "ctr_types", "multiclass_ctr_buckets", "regressor_ctr_counter", "regressor_ctr_mean", "depthwise",
    "lossguide",
    "lossguide_multiclass", "nan_mode_max", "border_count_1024", "uncertainty", "multi_rmse", "quantile_params",
    "depth_10", "ignored_features", "unicode_names", "one_tree", "shrunk", "drop_unused_features",
    "scale_and_bias", "sum_models", "converted_to_asymmetric", "ctr_combinations",
]  # fmt: skip


@pytest.mark.parametrize("name", LEGIT_NAMES)
def test_models_catboost_writes_validate(legit, name):
    data = legit[name]
    validate(data, path=PATH)
    assert cb.CatBoost().load_model(blob=data).tree_count_ >= 1  # and they are CatBoost models


def test_legit_models_cover_what_they_claim(legit):
    def parts(name):
        return len(legit[name]) > 8 + _u32(legit[name], 4)

    for name in ("classifier_cat_features", "ctr_types", "multiclass_ctr_buckets", "lossguide", "sum_models"):
        assert parts(name), f"{name} has no CTR tables"
    assert not parts("one_hot") and not parts("classifier_default")
    for name in ("depthwise", "lossguide", "lossguide_multiclass", "converted_to_asymmetric"):
        fb, t = trees(bytearray(legit[name]))
        assert fb.vector(t, STEPS)[1] > 0, f"{name} is not non-symmetric"
    fb, t = trees(bytearray(legit["one_hot"]))
    assert fb.vector(t, ONE_HOTS)[1] > 0
    assert 0 in _ctr_types(legit["classifier_cat_features"])  # Borders
    assert 1 in _ctr_types(legit["ctr_types"]) and 1 in _ctr_types(legit["multiclass_ctr_buckets"])  # Buckets
    assert 2 in _ctr_types(legit["regressor_ctr_mean"])  # BinarizedTargetMeanValue
    assert 4 in _ctr_types(legit["regressor_ctr_counter"])  # Counter
    assert _combination_splits(legit["ctr_combinations"], 1) and _combination_splits(legit["ctr_combinations"], 2)


def _combination_splits(data: bytes, slot: int) -> list[int]:
    """Positions of the float (slot 1) or one-hot (slot 2) splits in the CTR features' projections."""
    d = bytearray(data)
    fb, t = trees(d)
    out = []
    for c in fb.tables(t, CTRS):
        comb = fb.table(fb.table(fb.table(c, 0), 0), 0)  # Ctr -> Base -> FeatureCombination
        if fb.field(comb, slot):
            start, n = fb.vector(comb, slot)
            out += [start + 8 * i for i in range(n)]
    return out


def _ctr_types(data: bytes) -> set[int]:
    types = set()
    for start, _ in ctr_tables(data):
        g = FB(data, start)
        at = g.field(g.table(g.root(), 0), 1)  # TCtrValueTable.ModelCtrBase.CtrType (absent: Borders)
        types.add(data[at] if at else 0)
    return types


def test_zoo_models_validate(cases):
    for name in ("cb_base", "cb_clf_cat", "cb_reg", "cb_ranker"):
        validate(_bytes(cases[name].model), path=PATH)


def test_text_features_are_refused_as_unsupported():
    rng = np.random.default_rng(0)
    words = rng.choice(["good day", "bad day", "so so", "very good"], 200)
    df = pd.DataFrame({"text": words, "x": rng.normal(size=200)})
    model = cb.CatBoostClassifier(iterations=5, **KW).fit(df, rng.integers(0, 2, 200), text_features=["text"])
    err = refused(_bytes(model), unsupported=True)
    assert "text" in err.message


# --------------------------------------------------------------------------------------------
# Crafted payloads: name -> (base model, edit in place)


def _split(d, value, i=3):
    fb, t = trees(d)
    _put(d, fb.vector(t, SPLITS)[0] + 4 * i, "<i", value)


def _first_size(d, value):
    fb, t = trees(d)
    _put(d, fb.vector(t, SIZES)[0], "<i", value)


def _float_field(d, slot, value, which=-1):
    fb, t = trees(d)
    _put(d, fb.field(fb.tables(t, FLOATS)[which], slot), "<i", value)


def _vector_count(d, slot, count):
    fb, t = trees(d)
    _put(d, fb.table(t, slot), "<I", count)


def _nan_border(d):
    fb, t = trees(d)
    for f in fb.tables(t, FLOATS):
        start, n = fb.vector(f, 3)
        if n > 1:
            _put(d, start + 4, "<f", float("nan"))
            return
    raise AssertionError("no borders")


def _unsorted_borders(d):
    fb, t = trees(d)
    for f in fb.tables(t, FLOATS):
        start, n = fb.vector(f, 3)
        if n > 1:
            a, b = struct.unpack_from("<ff", d, start)
            struct.pack_into("<ff", d, start, b, a)
            return
    raise AssertionError("no borders")


def _bad_utf8_feature_name(d):
    fb, t = trees(d)
    start, _ = fb.vector(fb.tables(t, FLOATS)[0], 4)
    d[start] = 0xFF


def _vtable_past_end(d):
    fb, t = trees(d)
    _put(d, t, "<i", -4 * len(d))


def _field_past_table(d):
    fb, t = trees(d)
    _put(d, fb.slot(t, SPLITS), "<H", 0xFFF0)


def _no_format_version(d):
    fb = FB(d, 8)
    _put(d, fb.slot(fb.root(), 0), "<H", 0)


def _start_offset(d, value, i=1):
    fb, t = trees(d)
    _put(d, fb.vector(t, STARTS)[0] + 4 * i, "<i", value)


def _splits_alias_leaves(d):
    """TreeSplits' offset re-pointed at the LeafValues vector: two fields share (overlap) bytes."""
    fb, t = trees(d)
    at = fb.field(t, SPLITS)
    _put(d, at, "<I", fb.table(t, LEAVES) - at)


def _splits_alias_into_weights(d):
    """TreeSplits re-pointed into the middle of LeafWeights, keeping the same count: overlapping objects."""
    fb, t = trees(d)
    at, (_, n) = fb.field(t, SPLITS), fb.vector(t, SPLITS)
    weights, _ = fb.vector(t, WEIGHTS)
    target = weights + 64
    _put(d, target, "<I", n)
    _put(d, at, "<I", target - at)


def _ctr_without_ctr(d):
    """The first CTR feature re-pointed at the float features' vtable, whose slot 0 is empty."""
    fb, t = trees(d)
    ctr, flt = fb.tables(t, CTRS)[0], fb.tables(t, FLOATS)[0]
    _put(d, ctr, "<i", ctr - fb.vtable(flt))


def _ctr_table_field(d, slot, value, fmt="<I", table=0):
    start, _ = ctr_tables(d)[table]
    g = FB(d, start)
    _put(d, g.field(g.root(), slot), fmt, value)


def _ctr_table_drop_field(d, slot, table=0):
    start, _ = ctr_tables(d)[table]
    g = FB(d, start)
    _put(d, g.slot(g.root(), slot), "<H", 0)


def _buckets(d, table=0):
    start, _ = ctr_tables(d)[table]
    g = FB(d, start)
    first, n = g.vector(g.root(), 1)
    return [first + 12 * i for i in range(n // 12)]


def _full(d, p):
    return struct.unpack_from("<Q", d, p)[0] != 2**64 - 1


def _bucket_index(d, value):
    p = next(p for p in _buckets(d) if _full(d, p))
    _put(d, p + 8, "<I", value)


def _no_empty_bucket(d):
    for k, p in enumerate(_buckets(d)):
        if not _full(d, p):
            _put(d, p, "<Q", 0x1234567 + k)


def _ctr_tables_gone(d):
    pos = 8 + _u32(d, 4)
    _put(d, pos, "<I", 0)
    del d[pos + 4 :]


def _ctr_target_border(d, value):
    fb, t = trees(d)
    for c in fb.tables(t, CTRS):
        at = fb.field(fb.table(c, 0), 1)
        if at:
            _put(d, at, "<i", value)
            return
    raise AssertionError("no CTR with a TargetBorderIdx field")


def _ctr_classes(d, value):
    for start, _ in ctr_tables(d):
        g = FB(d, start)
        at = g.field(g.root(), 4)
        if at:
            _put(d, at, "<i", value)
            return
    raise AssertionError("no table with TargetClassesCount")


def _one_hot_index(d, value):
    fb, t = trees(d)
    _put(d, fb.field(fb.tables(t, ONE_HOTS)[0], 0), "<i", value)


def _step(d, value, node=0, side=1):
    fb, t = trees(d)
    _put(d, fb.vector(t, STEPS)[0] + 4 * node + 2 * side, "<H", value)


def _leaf_id(d, value):
    """Set the leaf id of the first node where a walk can stop (a zero step on either side)."""
    fb, t = trees(d)
    steps, n = fb.vector(t, STEPS)
    node = next(i for i in range(n) if 0 in struct.unpack_from("<HH", d, steps + 4 * i))
    _put(d, fb.vector(t, LEAF_IDS)[0] + 4 * node, "<I", value)


def _text(old: bytes, new: bytes):
    """An edit replacing every ``old`` with ``new`` (same length, so no offset moves)."""

    def edit(d):
        assert len(old) == len(new) and old in d
        d[:] = d.replace(old, new)

    return edit


def _bucket_bytes(d, value):
    """Overwrite the byte length of the first CTR table's hash index."""
    g = FB(d, ctr_tables(d)[0][0])
    _put(d, g.table(g.root(), 1), "<I", value)


def _dimension(d, value):
    fb, t = trees(d)
    _put(d, fb.field(t, 0), "<i", value)


CRAFTED = {
    # tree structure
    "split_index_far_out_of_range": ("classifier_cat_features", lambda d: _split(d, 50_000_000)),
    "split_index_just_out_of_range": ("classifier_default", lambda d: _split(d, 5000)),
    "split_index_negative": ("classifier_cat_features", lambda d: _split(d, -100_000)),
    "tree_size_deeper_than_16": ("classifier_cat_features", lambda d: _first_size(d, 30)),
    "tree_sizes_not_summing": ("classifier_default", lambda d: _first_size(d, 7)),
    "tree_size_negative": ("classifier_cat_features", lambda d: _first_size(d, -5)),
    "start_offset_huge": ("classifier_default", lambda d: _start_offset(d, 100_000_000, i=0)),
    "start_offset_off_by_one": ("classifier_default", lambda d: _start_offset(d, 7)),
    "leaf_values_half": ("classifier_default", lambda d: _vector_count(d, LEAVES, 40 * 32)),
    "leaf_values_one_short": ("classifier_default", lambda d: _vector_count(d, LEAVES, 40 * 64 - 1)),
    "leaf_values_empty": ("classifier_default", lambda d: _vector_count(d, LEAVES, 0)),
    "leaf_weights_short": ("classifier_default", lambda d: _vector_count(d, WEIGHTS, 10)),
    "tree_sizes_short": ("classifier_default", lambda d: _vector_count(d, SIZES, 39)),
    "dimension_zero": ("classifier_default", lambda d: _dimension(d, 0)),
    "dimension_negative": ("classifier_default", lambda d: _dimension(d, -3)),
    # non-symmetric trees
    "step_leaves_its_tree": ("lossguide", lambda d: _step(d, 60000)),
    "step_into_next_tree": ("lossguide", lambda d: _step(d, 200)),
    "leaf_id_far_out_of_range": ("lossguide", lambda d: _leaf_id(d, 50_000_000)),
    "leaf_id_unset_on_terminal_node": ("lossguide", lambda d: _leaf_id(d, 0xFFFFFFFF)),
    "steps_short": ("lossguide", lambda d: _vector_count(d, STEPS, 5)),
    "leaf_ids_short": ("lossguide", lambda d: _vector_count(d, LEAF_IDS, 5)),
    "leaf_id_misaligned_multiclass": ("lossguide_multiclass", lambda d: _leaf_id(d, 1)),
    # features
    "float_index_huge": ("classifier_default", lambda d: _float_field(d, 1, 2_000_000_000)),
    "float_index_unsorted": ("classifier_default", lambda d: _float_field(d, 1, 40_000_000, which=0)),
    "float_flat_index_huge": ("classifier_default", lambda d: _float_field(d, 2, 2_000_000_000)),
    "float_flat_index_negative": ("classifier_default", lambda d: _float_field(d, 2, -7, which=0)),
    "float_flat_index_clashes_with_categorical": ("classifier_cat_features", lambda d: _float_field(d, 2, 7, which=-1)),
    "nan_value_treatment_unknown": ("nan_mode_max", lambda d: _float_field_byte(d)),
    "nan_border": ("classifier_default", _nan_border),
    "borders_unsorted": ("classifier_default", _unsorted_borders),
    "bad_utf8_feature_name": ("classifier_cat_features", _bad_utf8_feature_name),
    "one_hot_for_unknown_categorical_feature": ("one_hot", lambda d: _one_hot_index(d, 77)),
    "ctr_projection_float_split_unknown": ("ctr_combinations",
                                           lambda d: _put(d, _combination_splits(d, 1)[0] + 4, "<f", 12345.5)),
    "ctr_projection_one_hot_split_unknown": ("ctr_combinations",
                                             lambda d: _put(d, _combination_splits(d, 2)[0] + 4, "<i", 0x7654321)),
    "ctr_projection_unknown_categorical_feature": ("classifier_cat_features", lambda d: _projection_cat(d, 9)),
    # FlatBuffer framing
    "vector_length_huge": ("classifier_default", lambda d: _vector_count(d, SPLITS, 0x7FFFFFFF)),
    "vector_length_negative": ("classifier_default", lambda d: _vector_count(d, LEAVES, 0xFFFFFFF0)),
    "vtable_offset_past_end": ("classifier_default", _vtable_past_end),
    "field_offset_past_table": ("classifier_default", _field_past_table),
    "root_offset_past_end": ("classifier_default", lambda d: _put(d, 8, "<I", 0x7FFFFFF0)),
    "core_size_past_end": ("classifier_default", lambda d: _put(d, 4, "<I", len(d))),
    "core_size_short": ("classifier_default", lambda d: _put(d, 4, "<I", _u32(d, 4) - 8)),
    "no_format_version": ("classifier_default", _no_format_version),
    "vectors_overlap": ("classifier_default", _splits_alias_leaves),
    "vector_inside_another": ("classifier_default", _splits_alias_into_weights),
    "trailing_bytes": ("classifier_default", lambda d: d.extend(b"\0" * 16)),
    # CTR features and tables
    "ctr_feature_without_ctr": ("classifier_cat_features", _ctr_without_ctr),
    "ctr_tables_missing": ("classifier_cat_features", _ctr_tables_gone),
    "ctr_table_hash_index_offset_outside": ("classifier_cat_features", lambda d: _ctr_table_field(d, 1, 0x10000000)),
    "ctr_table_without_values": ("classifier_cat_features", lambda d: _ctr_table_drop_field(d, 2)),
    "ctr_table_without_hash_index": ("classifier_cat_features", lambda d: _ctr_table_drop_field(d, 1)),
    "ctr_table_root_outside": ("classifier_cat_features", lambda d: _put(d, ctr_tables(d)[0][0], "<I", 0x00FFFFFF)),
    "ctr_table_size_past_end": ("classifier_cat_features", lambda d: _put(d, ctr_tables(d)[-1][0] - 4, "<I", 10**8)),
    "ctr_table_count_huge": ("classifier_cat_features", lambda d: _put(d, 8 + _u32(d, 4), "<I", 10**6)),
    "ctr_bucket_index_far_out_of_range": ("classifier_cat_features", lambda d: _bucket_index(d, 40_000_000)),
    "ctr_bucket_index_just_out_of_range": ("classifier_cat_features", lambda d: _bucket_index(d, 31)),
    "ctr_hash_without_empty_bucket": ("classifier_cat_features", _no_empty_bucket),
    "ctr_hash_bucket_count_not_power_of_two": ("classifier_cat_features", lambda d: _bucket_bytes(d, 12 * 48)),
    "ctr_target_border_out_of_range": ("multiclass_ctr_buckets", lambda d: _ctr_target_border(d, 1_000_000)),
    "ctr_target_classes_negative": ("multiclass_ctr_buckets", lambda d: _ctr_classes(d, -1000)),
    "ctr_target_classes_too_many_for_values": ("multiclass_ctr_buckets", lambda d: _ctr_classes(d, 100)),
    # options the first predict parses
    "loss_function_unknown_key": ("classifier_default", _text(b'"loss_function":{"type"', b'"loss_function":{"t:pe"')),
    "loss_function_unknown_name": ("classifier_default", _text(b'"type":"Logloss"', b'"type":"Loglost"')),
    "params_not_json": ("classifier_default", _text(b'{"detailed_profile"', b'["detailed_profile"')),
    "class_names_fewer_than_dimensions": ("multiclass_cat_features",
                                          _text(b'"class_names":[0,1,2]', b'"class_names":[0,1]  ')),
    "class_to_label_fewer_than_dimensions": ("multiclass_cat_features",
                                             _text(b'"class_to_label":[0,1,2]', b'"class_to_label":[0,1]  ')),
    "class_to_label_out_of_range": ("multiclass_cat_features",
                                    _text(b'"class_to_label":[0,1,2]', b'"class_to_label":[0,1,7]')),
    "binary_with_three_classes": ("classifier_default",
                                  _text(b'"classes_count":0,"class_names":[0,1]', b'"classes_count":3,"class_names":[   ]')),
    "bad_utf8_metadata": ("classifier_default", _text(b"model_guid", b"model_gu\xffd")),
}


def _projection_cat(d, value):
    fb, t = trees(d)
    comb = fb.table(fb.table(fb.table(fb.tables(t, CTRS)[0], 0), 0), 0)
    _put(d, fb.vector(comb, 0)[0], "<i", value)


def _float_field_byte(d):
    fb, t = trees(d)
    for f in fb.tables(t, FLOATS):
        at = fb.field(f, 5)
        if at:
            d[at] = 7
            return
    raise AssertionError("no float feature with a NaN treatment")


def crafted(legit, case: str) -> bytes:
    base, edit = CRAFTED[case]
    d = bytearray(legit[base])
    edit(d)
    assert bytes(d) != legit[base]
    return bytes(d)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_payload_refused(legit, case):
    refused(crafted(legit, case))


# Measured with catboost 1.2.10: plain CatBoost dies by a signal on each of these (load or
# first predict), or never returns.
LIVE = [
    "split_index_far_out_of_range", "split_index_negative", "tree_size_deeper_than_16", "tree_size_negative",
    "vectors_overlap", "step_leaves_its_tree", "leaf_id_far_out_of_range", "ctr_feature_without_ctr",
    "ctr_table_hash_index_offset_outside", "ctr_table_without_values", "ctr_target_border_out_of_range",
    "class_names_fewer_than_dimensions",
]  # fmt: skip
HANGS = ["ctr_hash_without_empty_bucket"]
# Plain CatBoost loads and predicts these without a word, from out-of-range memory or wrong offsets.
SILENT = ["start_offset_huge", "tree_sizes_not_summing", "ctr_bucket_index_far_out_of_range",
          "split_index_just_out_of_range"]


@pytest.mark.parametrize("case", LIVE)
def test_payload_kills_raw_catboost_but_not_validate(legit, tmp_path, case):
    data = crafted(legit, case)
    proc = raw_catboost(tmp_path, data)
    assert "survived" not in proc.stdout, f"CatBoost survived {case}: {proc.stdout} {proc.stderr[-300:]}"
    assert "CatBoostError" not in proc.stdout, f"CatBoost rejected {case} cleanly: {proc.stdout}"
    assert proc.returncode < 0, f"{case}: expected death by a signal, got exit {proc.returncode}: {proc.stderr[-300:]}"
    refused(data)


@pytest.mark.parametrize("case", HANGS)
def test_payload_hangs_raw_catboost_but_not_validate(legit, tmp_path, case):
    data = crafted(legit, case)
    with pytest.raises(subprocess.TimeoutExpired):
        raw_catboost(tmp_path, data, timeout=10)
    refused(data)


@pytest.mark.parametrize("case", SILENT)
def test_payload_misleads_raw_catboost_but_not_validate(legit, tmp_path, case):
    base = legit[CRAFTED[case][0]]
    data = crafted(legit, case)
    good, bad = raw_catboost(tmp_path, base), raw_catboost(tmp_path, data)
    assert good.stdout.startswith("survived"), good.stdout + good.stderr[-300:]
    assert bad.returncode == 0 and bad.stdout.startswith("survived"), f"{case}: {bad.returncode} {bad.stdout}"
    if case in ("start_offset_huge", "tree_sizes_not_summing"):
        assert bad.stdout != good.stdout, "the corrupted model should predict differently"
    refused(data)


# --------------------------------------------------------------------------------------------
# Through the safe loader, in a worker process that must stay alive


@pytest.fixture(scope="module")
def saved(legit, tmp_path_factory):
    """The crafted payloads' base models saved with the safe flavor (one directory per base)."""
    root = tmp_path_factory.mktemp("cb-saved")
    out = {}
    for base in sorted({b for b, _ in CRAFTED.values()}):
        model = cb.CatBoostClassifier().load_model(blob=legit[base])
        path = root / base
        sf.save_model(model, path)
        replace_payload(path, "model.cbm", legit[base])  # the exact bytes the payloads are crafted from
        out[base] = path
    return out


@pytest.mark.parametrize("case", LIVE + HANGS + SILENT + ["loss_function_unknown_key", "class_to_label_out_of_range"])
def test_safe_loader_refuses_and_the_process_survives(saved, legit, worker, tmp_path, case):
    import shutil

    base = CRAFTED[case][0]
    model_dir = tmp_path / "m"
    shutil.copytree(saved[base], model_dir)
    replace_payload(model_dir, "model.cbm", crafted(legit, case))  # digest recomputed, as an attacker would
    reply = worker.load(model_dir)
    assert reply["outcome"] == "refused", reply
    assert reply["type"] == "MalformedArtifactError" and "model.cbm" in reply["message"], reply
    assert worker.load(saved[base])["outcome"] == "loaded"  # same worker, still alive


def test_fuzz_regression_options_json_flip_is_a_typed_refusal(cases, worker, tmp_path):
    """tests/test_fuzz.py once leaked a CatBoostError at predict for this mutation of cb_clf_cat:
    ('flip', 0.41253180816461016, 67, 46) on model.cbm, digest recomputed. The flip turns
    params.loss_function's "type" into "t:pe", which CatBoost only parses at the first predict."""
    case = cases["cb_clf_cat"]
    model_dir = tmp_path / "m"
    sf.save_model(case.model, model_dir)
    data = (model_dir / "model.cbm").read_bytes()
    i = int(0.41253180816461016 * len(data))
    mutated = data[:i] + bytes([data[i] ^ 67]) + data[i + 1 :]
    assert b'"loss_function":{"t:pe":"Logloss"' in mutated  # the mutation still lands where it did
    replace_payload(model_dir, "model.cbm", mutated)
    X = case.X[:20]
    reply = worker.load(model_dir, X={"data": X.to_numpy().tolist(), "columns": list(X.columns)})
    assert reply["outcome"] == "refused" and reply["type"] == "MalformedArtifactError", reply
    assert "loss" in reply["message"] and "re-save the model" in reply["message"], reply


# --------------------------------------------------------------------------------------------
# Arbitrary bytes and random mutations


@pytest.mark.parametrize("data", [b"", b"CBM1", b"CBM1\0\0\0\0", b"CBM1\x08\0\0\0" + b"\0" * 8, b"XXXX" + b"\0" * 64,
                                  b"CBM1\xff\xff\xff\xff" + b"\0" * 64, bytes(range(256)) * 4])
def test_garbage_refused(data):
    refused(data)


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    d = bytearray(data)
    n = len(d)
    kind = rnd.choice(["flip", "set", "truncate", "insert", "delete", "duplicate", "word", "word", "half"])
    i = rnd.randrange(n)
    if kind == "flip":
        d[i] ^= 1 << rnd.randrange(8)
    elif kind == "set":
        d[i] = rnd.randrange(256)
    elif kind == "truncate":
        del d[i:]
    elif kind == "insert":
        d[i:i] = bytes([rnd.randrange(256)]) * rnd.randint(1, 32)
    elif kind == "delete":
        del d[i : i + rnd.randint(1, 32)]
    elif kind == "duplicate":
        d[i:i] = d[i : i + rnd.randint(1, 128)]
    elif kind == "word":
        p = rnd.randrange(0, n - 4) & ~3
        old = struct.unpack_from("<i", d, p)[0]
        value = rnd.choice([0, 1, -1, 2, 0x7FFFFFFF, -0x80000000, 0xFFFF, old + 1, old - 1, old * 2,
                            rnd.randrange(-64, 4096)])
        struct.pack_into("<I", d, p, value & 0xFFFFFFFF)
    else:
        p = rnd.randrange(0, n - 2) & ~1
        struct.pack_into("<H", d, p, rnd.choice([0, 2, 4, 8, 0xFFFF, rnd.randrange(1024)]))
    return bytes(d)


CRASH_CHECK = textwrap.dedent(
    """
    import sys, numpy as np, pandas as pd, catboost
    paths = sys.argv[1:]
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        print(i, flush=True)
        try:
            model = catboost.CatBoostClassifier().load_model(blob=open(path, "rb").read())
            cats = set(model.get_cat_feature_indices())
            X = pd.DataFrame({n: rng.choice(["a", "c1", "c7", "z3"], 100) if j in cats else rng.normal(size=100) * 3
                              for j, n in enumerate(model.feature_names_)})
            model.predict(X, prediction_type="RawFormulaVal")
            model.predict(X)
            model.predict(X.iloc[:1])
        except Exception as exc:  # a clean error is fine; only a dead process is not
            print("error", type(exc).__name__, flush=True)
    print("done", flush=True)
    """
)


def test_random_mutations_refused_cleanly_or_load_safely(legit, tmp_path):
    """300 seeded mutations of three small models (CTRs, non-symmetric trees, one-hot):
    validate() passes or raises MalformedArtifactError, never another exception; the mutants it
    passes are loaded and predicted by plain CatBoost, one after the other in one child process,
    which must not die. Deterministic: the same mutants every run."""
    rnd = random.Random(20261205)
    bases = [legit["classifier_cat_features"], legit["lossguide"], legit["one_hot"]]
    passed, n_refused = [], 0
    for k in range(300):
        data = _mutate(bases[k % 3], rnd)
        try:
            validate(data, path=PATH)
        except MalformedArtifactError as err:
            assert err.message.startswith(f"{PATH}: model.cbm ")
            n_refused += 1
            continue
        if data not in bases:
            path = tmp_path / f"mutant{len(passed)}.cbm"
            path.write_bytes(data)
            passed.append(path)
    assert n_refused > 100 and passed
    proc = run_raw(CRASH_CHECK, [str(p) for p in passed], timeout=600)
    index = died_at(proc)
    if index is not None:
        pytest.fail(f"plain CatBoost died (exit {proc.returncode}) on validated mutant {passed[index]}; "
                    f"stderr: {proc.stderr[-500:]}")


def test_validation_reads_without_copying(legit):
    """validate() takes bytes and memoryviews alike (the codec hands it the bytes it hashed)."""
    data = legit["classifier_cat_features"]
    validate(memoryview(data), path=PATH)
    validate(bytearray(data), path=PATH)


def test_error_names_the_problem(legit):
    err = refused(crafted(legit, "split_index_far_out_of_range"))
    assert "split index" in err.message
    err = refused(crafted(legit, "ctr_hash_without_empty_bucket"))
    assert "empty hash bucket" in err.message
    err = refused(crafted(legit, "loss_function_unknown_key"))
    assert "loss" in err.message


def test_text_feature_models_are_refused_at_save_and_nothing_is_written(tmp_path):
    """The loader refuses text/embedding processing data it cannot validate, so save says so first."""
    import catboost
    import pandas as pd

    df = pd.DataFrame({"t": ["good movie", "bad film", "great", "awful"] * 10, "x": [float(i) for i in range(40)]})
    model = catboost.CatBoostClassifier(iterations=5, verbose=0).fit(df, [1, 0, 1, 0] * 10, text_features=["t"])
    with pytest.raises(sf.UnsupportedModelError, match="text features"):
        sf.save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []
