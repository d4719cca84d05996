"""The structural validator of LightGBM text models (mlflow_safeflavor.validate.lightgbm_model).

LightGBM 4.x parses ``model_to_string()`` text without bounds checks: a crafted file aborts or
segfaults the process that loads it. ``validate()`` must accept every model LightGBM writes, refuse
every crafted payload with MalformedArtifactError (and nothing else), and whatever it accepts must
load and predict without killing the process.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
from helpers import died_at, run_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_safeflavor.errors import MalformedArtifactError
from mlflow_safeflavor.validate.lightgbm_model import validate

lgb = pytest.importorskip("lightgbm")

PATH = "runs:/abc/model/model.txt"
P = {"verbose": -1, "seed": 0, "deterministic": True}


# --------------------------------------------------------------------------------------------
# Helpers


def fix_tree_sizes(text: str) -> str:
    """Recompute tree_sizes from the blocks, as a careful attacker would after editing a tree."""
    start = text.index("\nTree=") + 1
    end = text.index("\nend of trees\n") + 1
    blocks = [b for b in re.split(r"(?m)^(?=Tree=)", text[start:end]) if b]
    sizes = " ".join(str(len(b.encode())) for b in blocks)
    return re.sub(r"(?m)^tree_sizes=.*$", lambda _: "tree_sizes=" + sizes, text, count=1)


def _block(text: str, tree: int) -> tuple[int, int]:
    start = text.index(f"\nTree={tree}\n") + 1
    nxt = text.find("\nTree=", start)
    return start, (nxt + 1 if nxt >= 0 else text.index("\nend of trees\n") + 1)


def get_field(text: str, tree: int, key: str) -> list[str]:
    start, end = _block(text, tree)
    return re.search(rf"(?m)^{key}=(.*)$", text[start:end]).group(1).split(" ")


def set_field(text: str, tree: int, key: str, value: str | None, *, fix: bool = True) -> str:
    """Replace (or with None, delete) one field of one tree; keep tree_sizes consistent."""
    start, end = _block(text, tree)
    line = "" if value is None else f"{key}={value}\n"
    block, n = re.subn(rf"(?m)^{key}=.*\n", lambda _: line, text[start:end], count=1)
    assert n == 1, (tree, key)
    out = text[:start] + block + text[end:]
    return fix_tree_sizes(out) if fix else out


def set_value(text: str, tree: int, key: str, index: int, value: str) -> str:
    values = get_field(text, tree, key)
    values[index] = value
    return set_field(text, tree, key, " ".join(values))


def set_header(text: str, key: str, value: str | None) -> str:
    line = "" if value is None else f"{key}={value}\n"
    out, n = re.subn(rf"(?m)^{key}=.*\n", lambda _: line, text, count=1)
    assert n == 1, key
    return out


def refused(text) -> MalformedArtifactError:
    with pytest.raises(MalformedArtifactError) as info:
        validate(text, path=PATH)
    err = info.value
    assert err.message.startswith(f"{PATH}: "), err.message
    assert "do not load it" in err.message and "re-save the model" in err.message, err.message
    assert err.path == PATH
    return err


RAW_LOAD = textwrap.dedent(
    """
    import sys, numpy as np, lightgbm as lgb
    text = open(sys.argv[1], encoding="utf-8", newline="").read()
    try:
        booster = lgb.Booster(model_str=text)
        X = np.random.default_rng(0).normal(size=(300, booster.num_feature())) * 3
        X[::7, 0] = np.nan
        booster.predict(X)
    except lgb.basic.LightGBMError as exc:
        print("LightGBMError:", str(exc).splitlines()[0])
        sys.exit(3)
    print("survived")
    """
)



def raw_lightgbm(tmp_path, text: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Load and predict with plain LightGBM in a child process (no validation)."""
    model = tmp_path / "model.txt"
    model.write_bytes(text.encode("utf-8"))
    return run_raw(RAW_LOAD, [str(model)], timeout=timeout)


# --------------------------------------------------------------------------------------------
# Models LightGBM writes


def _data(n=600, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X[:, 0] + np.sin(2 * X[:, 1]) + 0.1 * rng.normal(size=n)
    return X, y


def _small_regression() -> str:
    # The model the liveness tests corrupt (its crashes were measured with lightgbm 4.7.0).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = X[:, 0] + rng.normal(size=300) * 0.1
    return lgb.train({**P, "objective": "regression", "num_leaves": 4}, lgb.Dataset(X, y), 2).model_to_string()


def _categorical_frame(n=800, seed=1):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 40, n)
    df = pd.DataFrame({"city": pd.Categorical(codes), "x": rng.normal(size=n), "z": rng.normal(size=n)})
    y = (codes % 3 == 0) * 2.0 + (codes % 7 == 1) + 0.3 * df["x"].to_numpy() + 0.05 * rng.normal(size=n)
    return df, y


def _legit_models() -> dict[str, str]:
    X, y = _data()
    yb = (y > 0).astype(int)
    y3 = np.digitize(y, [-0.7, 0.7])
    models: dict[str, lgb.Booster | str] = {}
    models["regression"] = lgb.train({**P, "num_leaves": 15}, lgb.Dataset(X, y), 20)
    models["binary"] = lgb.LGBMClassifier(n_estimators=15, num_leaves=7, **P).fit(X, yb).booster_
    models["multiclass"] = lgb.LGBMClassifier(n_estimators=10, num_leaves=7, **P).fit(X, y3).booster_
    models["multiclassova"] = lgb.train({**P, "objective": "multiclassova", "num_class": 3}, lgb.Dataset(X, y3), 5)
    group = [20] * (len(X) // 20)
    models["lambdarank"] = lgb.LGBMRanker(n_estimators=10, num_leaves=7, min_child_samples=5, **P).fit(X, y3, group=group).booster_
    models["rank_xendcg"] = lgb.train({**P, "objective": "rank_xendcg"}, lgb.Dataset(X, y3, group=group), 5)
    df, yc = _categorical_frame()
    models["categorical_pandas"] = lgb.train({**P, "min_data_per_group": 5, "cat_smooth": 1}, lgb.Dataset(df, yc), 15)
    Xc = df.assign(city=df["city"].cat.codes).to_numpy(dtype=float)
    models["categorical_feature"] = lgb.train(
        {**P, "min_data_per_group": 5, "cat_smooth": 1}, lgb.Dataset(Xc, yc, categorical_feature=[0]), 15
    )
    models["categorical_sklearn"] = lgb.LGBMRegressor(n_estimators=10, min_data_per_group=5, cat_smooth=1, **P).fit(df, yc).booster_
    models["linear_tree"] = lgb.train({**P, "linear_tree": True, "num_leaves": 7}, lgb.Dataset(X, y), 10)
    models["linear_tree_categorical"] = lgb.train(
        {**P, "linear_tree": True, "min_data_per_group": 5, "cat_smooth": 1}, lgb.Dataset(Xc, yc, categorical_feature=[0]), 8
    )
    models["single_leaf"] = lgb.train({**P, "min_data_in_leaf": 100_000}, lgb.Dataset(X, y), 3)
    models["single_leaf_linear"] = lgb.train({**P, "min_data_in_leaf": 100_000, "linear_tree": True}, lgb.Dataset(X, y), 3)
    train, valid = lgb.Dataset(X[:400], y[:400]), lgb.Dataset(X[400:], y[400:])
    early = lgb.train(
        {**P, "num_leaves": 31, "learning_rate": 0.3},
        train,
        200,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(3, verbose=False)],
        keep_training_booster=True,  # keep the trees past best_iteration
    )
    assert 0 < early.best_iteration < 200
    models["early_stopping_best_iteration"] = early.model_to_string()  # cut at best_iteration
    models["early_stopping_all"] = early.model_to_string(num_iteration=-1)
    models["dart"] = lgb.train({**P, "boosting": "dart"}, lgb.Dataset(X, y), 10)
    models["random_forest"] = lgb.train({**P, "boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.6}, lgb.Dataset(X, y), 5)
    models["monotone"] = lgb.train({**P, "monotone_constraints": [1, 0, -1, 0, 0]}, lgb.Dataset(X, y), 5)
    models["interaction_constraints"] = lgb.train({**P, "interaction_constraints": [[0, 1], [2, 3]]}, lgb.Dataset(X, y), 5)
    models["custom_objective"] = lgb.train(
        {**P, "objective": lambda preds, ds: (preds - ds.get_label(), np.ones_like(preds))}, lgb.Dataset(X, y), 5
    )
    models["no_trees"] = lgb.Booster(params={**P}, train_set=lgb.Dataset(X, y))
    named = pd.DataFrame(X, columns=["température", "size_m²", "a", "b", "c"])  # non-ASCII names
    models["unicode_feature_names"] = lgb.train({**P}, lgb.Dataset(named, y), 5)
    models["small_regression"] = _small_regression()
    return {k: v if isinstance(v, str) else v.model_to_string(num_iteration=-1) for k, v in models.items()}


@pytest.fixture(scope="module")
def legit() -> dict[str, str]:
    return _legit_models()


@pytest.fixture(scope="module")
def small(legit) -> str:
    return legit["small_regression"]


@pytest.fixture(scope="module")
def cat_model(legit) -> str:
    return legit["categorical_feature"]


LEGIT_NAMES = [
    "regression", "binary", "multiclass", "multiclassova", "lambdarank", "rank_xendcg",
    "categorical_pandas", "categorical_feature", "categorical_sklearn", "linear_tree",
    "linear_tree_categorical", "single_leaf", "single_leaf_linear", "early_stopping_best_iteration",
    "early_stopping_all", "dart", "random_forest", "monotone", "interaction_constraints",
    "custom_objective", "no_trees", "unicode_feature_names", "small_regression",
]  # fmt: skip


@pytest.mark.parametrize("name", LEGIT_NAMES)
def test_models_lightgbm_writes_validate(legit, name):
    text = legit[name]
    validate(text, path=PATH)
    # And they are what they claim: LightGBM loads them and predicts like the original text.
    booster = lgb.Booster(model_str=text)
    X = np.random.default_rng(5).normal(size=(50, booster.num_feature()))
    np.testing.assert_array_equal(booster.predict(X), lgb.Booster(model_str=booster.model_to_string()).predict(X))


def test_legit_models_cover_what_they_claim(legit):
    assert "num_cat=0" in legit["regression"] and "num_cat=1" not in legit["regression"]
    for name in ("categorical_pandas", "categorical_feature", "categorical_sklearn", "linear_tree_categorical"):
        assert re.search(r"(?m)^num_cat=[1-9]", legit[name]), name
    assert "pandas_categorical:[[" in legit["categorical_pandas"]
    assert re.search(r"(?m)^is_linear=1", legit["linear_tree"])
    assert re.search(r"(?m)^leaf_features=\d", legit["linear_tree"])
    assert set(re.findall(r"(?m)^num_leaves=(\d+)", legit["single_leaf"])) == {"1"}
    best, everything = legit["early_stopping_best_iteration"], legit["early_stopping_all"]
    assert best.count("\nTree=") < everything.count("\nTree=")
    assert "objective=multiclass num_class:3" in legit["multiclass"]
    assert "objective=lambdarank" in legit["lambdarank"]
    assert "\nTree=" not in legit["no_trees"]


def test_validation_is_what_the_codec_stores(legit):
    """The codec writes model_to_string(num_iteration=-1) as UTF-8; that round-trips too."""
    for name in ("regression", "categorical_pandas", "linear_tree"):
        text = legit[name].encode("utf-8").decode("utf-8")
        validate(text, path=PATH)


# --------------------------------------------------------------------------------------------
# Crafted payloads


def _first_size(text: str) -> int:
    return int(re.search(r"(?m)^tree_sizes=(\d+)", text).group(1))


def _with_first_size(text: str, size: int) -> str:
    return re.sub(r"(?m)^tree_sizes=\d+", f"tree_sizes={size}", text, count=1)


TREE_SIZES = {
    "too_big": lambda t: _with_first_size(t, _first_size(t) + 100),
    "too_small": lambda t: _with_first_size(t, _first_size(t) - 100),
    "off_by_one_up": lambda t: _with_first_size(t, _first_size(t) + 1),
    "off_by_one_down": lambda t: _with_first_size(t, _first_size(t) - 1),
    "negative": lambda t: _with_first_size(t, -5),
    "huge": lambda t: _with_first_size(t, 10**15),
    "one_too_many": lambda t: set_header(t, "tree_sizes", re.search(r"(?m)^tree_sizes=(.*)$", t).group(1) + " 100"),
    "one_too_few": lambda t: set_header(t, "tree_sizes", re.search(r"(?m)^tree_sizes=(\d+)", t).group(1)),
    "missing": lambda t: set_header(t, "tree_sizes", None),
    "not_a_number": lambda t: _with_first_size(t, 0).replace("tree_sizes=0", "tree_sizes=abc", 1),
    "edited_tree_without_fixing": lambda t: set_field(t, 0, "leaf_value", "1 2 3 4", fix=False),
    "crlf_line_endings": lambda t: t.replace("\n", "\r\n"),
}


@pytest.mark.parametrize("case", sorted(TREE_SIZES))
def test_wrong_tree_sizes_refused(small, case):
    err = refused(TREE_SIZES[case](small))
    assert "tree_sizes" in err.message or "carriage" in err.message


def _leaf_child(text: str, tree: int = 0) -> tuple[str, int]:
    for key in ("left_child", "right_child"):
        values = get_field(text, tree, key)
        for i, v in enumerate(values):
            if int(v) < 0:
                return key, i
    raise AssertionError("no leaf child")


def _internal_child(text: str, tree: int = 0) -> tuple[str, int]:
    for key in ("left_child", "right_child"):
        values = get_field(text, tree, key)
        for i, v in enumerate(values):
            if int(v) > 0:
                return key, i
    raise AssertionError("no internal child")


# The liveness tests below need LightGBM to fault, not just to read a stray heap word, so these
# point hundreds of megabytes past the arrays (a small overrun only usually crashes).
def craft_child_out_of_range(t):
    return set_value(t, 0, "left_child", 0, "100000000")


def craft_feature_out_of_range(t):
    return set_value(t, 0, "split_feature", 0, "100000000")


STRUCTURE = {
    "child_out_of_range": lambda t: set_value(t, 0, "left_child", 0, "1000"),
    "child_far_out_of_range": craft_child_out_of_range,
    "child_equal_to_num_internal": lambda t: set_value(t, 0, "right_child", 0, str(len(get_field(t, 0, "left_child")))),
    "leaf_out_of_range": lambda t: set_value(t, 0, *_leaf_child(t), "-100000"),
    "leaf_equal_to_num_leaves": lambda t: set_value(t, 0, *_leaf_child(t), str(-len(get_field(t, 0, "leaf_value")) - 1)),
    "cycle_child_points_to_root": lambda t: set_value(t, 0, *_internal_child(t), "0"),
    "self_loop": lambda t: set_value(t, 0, "left_child", 0, "0"),
    "leaf_referenced_twice": lambda t: set_value(t, 0, "left_child", 0, get_field(t, 0, "right_child")[-1]),
    "split_feature_out_of_range": lambda t: set_value(t, 0, "split_feature", 0, "100000"),
    "split_feature_far_out_of_range": craft_feature_out_of_range,
    "split_feature_just_past_max": lambda t: set_value(t, 0, "split_feature", 0, "5"),
    "split_feature_negative": lambda t: set_value(t, 0, "split_feature", 0, "-3"),
    "decision_type_categorical_without_categories": lambda t: set_value(t, 0, "decision_type", 0, "1"),
    "decision_type_out_of_range": lambda t: set_value(t, 0, "decision_type", 0, "127"),
    "num_leaves_huge": lambda t: set_field(t, 0, "num_leaves", "2000000000"),
    "num_leaves_over_cap": lambda t: set_field(t, 0, "num_leaves", "131073"),
    "num_leaves_zero": lambda t: set_field(t, 0, "num_leaves", "0"),
    "num_leaves_negative": lambda t: set_field(t, 0, "num_leaves", "-4"),
    "num_leaves_one_more_than_arrays": lambda t: set_field(t, 0, "num_leaves", "5"),
    "num_leaves_one_less_than_arrays": lambda t: set_field(t, 0, "num_leaves", "3"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_bad_tree_structure_refused(small, case):
    refused(STRUCTURE[case](small))


ARRAYS = {
    "leaf_value_one_short": lambda t: set_field(t, 0, "leaf_value", " ".join(get_field(t, 0, "leaf_value")[:-1])),
    "threshold_one_long": lambda t: set_field(t, 0, "threshold", " ".join(get_field(t, 0, "threshold") + ["0.5"])),
    "left_child_one_short": lambda t: set_field(t, 0, "left_child", " ".join(get_field(t, 0, "left_child")[:-1])),
    "split_feature_one_long": lambda t: set_field(t, 0, "split_feature", " ".join(get_field(t, 0, "split_feature") + ["0"])),
    "leaf_weight_empty": lambda t: set_field(t, 0, "leaf_weight", ""),
    "internal_count_one_short": lambda t: set_field(t, 0, "internal_count", " ".join(get_field(t, 0, "internal_count")[:-1])),
    # Same number of spaces, one value less for LightGBM (which drops empty pieces): abort.
    "double_space": lambda t: set_field(t, 0, "leaf_value", (lambda v: v[0] + "  " + " ".join(v[1:-1]))(get_field(t, 0, "leaf_value"))),
    "trailing_space": lambda t: set_field(t, 0, "leaf_value", " ".join(get_field(t, 0, "leaf_value")) + " "),
    "threshold_not_a_number": lambda t: set_value(t, 0, "threshold", 0, "abc"),
    "threshold_lone_minus": lambda t: set_value(t, 0, "threshold", 0, "-"),
    "threshold_starts_with_dot": lambda t: set_value(t, 0, "threshold", 0, ".5"),
    "threshold_nan": lambda t: set_value(t, 0, "threshold", 0, "nan"),
    "leaf_value_inf": lambda t: set_value(t, 0, "leaf_value", 0, "inf"),
    "split_gain_double_sign": lambda t: set_value(t, 0, "split_gain", 0, "1--2"),
    "split_gain_hex": lambda t: set_value(t, 0, "split_gain", 0, "0x1p3"),
    "left_child_float": lambda t: set_value(t, 0, "left_child", 0, "1.5"),
    "left_child_minus_inside": lambda t: set_value(t, 0, "left_child", 0, "1-1"),
    "shrinkage_garbage": lambda t: set_field(t, 0, "shrinkage", "fast"),
}


@pytest.mark.parametrize("case", sorted(ARRAYS))
def test_bad_arrays_and_numbers_refused(small, case):
    refused(ARRAYS[case](small))


MISSING = {
    "leaf_value": lambda t: set_field(t, 0, "leaf_value", None),
    "num_leaves": lambda t: set_field(t, 0, "num_leaves", None),
    "num_cat": lambda t: set_field(t, 1, "num_cat", None),
    "left_child": lambda t: set_field(t, 1, "left_child", None),
    "right_child": lambda t: set_field(t, 0, "right_child", None),
    "split_feature": lambda t: set_field(t, 0, "split_feature", None),
    "threshold": lambda t: set_field(t, 0, "threshold", None),
    "header_num_class": lambda t: set_header(t, "num_class", None),
    "header_max_feature_idx": lambda t: set_header(t, "max_feature_idx", None),
    "header_feature_names": lambda t: set_header(t, "feature_names", None),
    "header_feature_infos": lambda t: set_header(t, "feature_infos", None),
    "header_label_index": lambda t: set_header(t, "label_index", None),
    "header_version": lambda t: set_header(t, "version", None),
    "end_of_trees": lambda t: t.replace("end of trees\n", "", 1),
    "blank_line_after_last_tree": lambda t: fix_tree_sizes(t.replace("\n\n\nend of trees", "\nend of trees", 1)),
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_keys_refused(small, case):
    refused(MISSING[case](small))


HEADER = {
    "objective_empty": lambda t: set_header(t, "objective", ""),
    "objective_without_equals": lambda t: t.replace("objective=regression\n", "objective\n", 1),
    "objective_unknown": lambda t: set_header(t, "objective", "foo"),
    "objective_multiclass_mismatch": lambda t: set_header(t, "objective", "multiclass num_class:500"),
    "num_tree_per_iteration_above_num_class": lambda t: set_header(t, "num_tree_per_iteration", "3"),
    "num_tree_per_iteration_zero": lambda t: set_header(t, "num_tree_per_iteration", "0"),
    "num_class_zero": lambda t: set_header(t, "num_class", "0"),
    "feature_names_count": lambda t: set_header(t, "feature_names", "a b"),
    "max_feature_idx_negative": lambda t: set_header(t, "max_feature_idx", "-1"),
    "max_feature_idx_not_a_number": lambda t: set_header(t, "max_feature_idx", "4x"),
    "duplicate_header_key": lambda t: t.replace("label_index=0\n", "label_index=0\nlabel_index=0\n", 1),
    "unknown_header_key": lambda t: t.replace("label_index=0\n", "label_index=0\nboost_from_average\n", 1),
}


@pytest.mark.parametrize("case", sorted(HEADER))
def test_bad_header_refused(small, case):
    refused(HEADER[case](small))


def test_tree_count_not_a_multiple_of_trees_per_iteration_refused(small):
    """Three trees, two per iteration (LightGBM itself would silently ignore the last one)."""
    text = set_header(set_header(small, "num_class", "2"), "num_tree_per_iteration", "2")
    text = set_header(text, "objective", "multiclass num_class:2")
    start, end = _block(text, 1)
    text = fix_tree_sizes(text[:end] + text[start:end].replace("Tree=1", "Tree=2", 1) + text[end:])
    err = refused(text)
    assert "multiple" in err.message
    start, end = _block(text, 2)
    validate(fix_tree_sizes(text[:start] + text[end:]), path=PATH)  # two trees: fine


def test_categorical_payloads_refused(cat_model):
    tree = next(i for i in range(50) if get_field(cat_model, i, "num_cat")[0] != "0")
    num_cat = int(get_field(cat_model, tree, "num_cat")[0])
    node = next(i for i, d in enumerate(get_field(cat_model, tree, "decision_type")) if int(d) & 1)
    bounds = get_field(cat_model, tree, "cat_boundaries")
    words = get_field(cat_model, tree, "cat_threshold")
    payloads = {
        "category_set_out_of_range": set_value(cat_model, tree, "threshold", node, str(num_cat)),
        "category_set_far_out_of_range": set_value(cat_model, tree, "threshold", node, "1000000"),
        "category_set_negative": set_value(cat_model, tree, "threshold", node, "-1"),
        "category_set_fraction": set_value(cat_model, tree, "threshold", node, "0.5"),
        "boundaries_past_words": set_field(cat_model, tree, "cat_boundaries", " ".join(bounds[:-1] + ["200000"])),
        "boundaries_not_from_zero": set_field(cat_model, tree, "cat_boundaries", " ".join(["1"] + bounds[1:])),
        "boundaries_decreasing": set_field(
            set_field(cat_model, tree, "num_cat", str(num_cat + 2)),
            tree,
            "cat_boundaries",
            " ".join(bounds[:-1] + ["2", "1", bounds[-1]]),
        ),
        "boundaries_count": set_field(cat_model, tree, "cat_boundaries", " ".join(bounds + [bounds[-1]])),
        "words_one_short": set_field(cat_model, tree, "cat_threshold", " ".join(words[:-1])),
        # (Any digits are harmless there: LightGBM reads the bitset words as uint32 and wraps.)
        "word_negative": set_value(cat_model, tree, "cat_threshold", 0, "-1"),
        "word_not_an_integer": set_value(cat_model, tree, "cat_threshold", 0, "1.5"),
        "num_cat_larger": set_field(cat_model, tree, "num_cat", str(num_cat + 2)),
        "num_cat_zero_with_categorical_split": set_field(cat_model, tree, "num_cat", "0"),
        "cat_fields_missing": set_field(set_field(cat_model, tree, "cat_threshold", None), tree, "cat_boundaries", None),
    }
    for name, text in payloads.items():
        assert text != cat_model, name
        refused(text)


def test_linear_payloads_refused(legit):
    text = legit["linear_tree"]
    tree = next(i for i in range(50) if re.search(r"\d", " ".join(get_field(text, i, "leaf_features"))))
    start, end = _block(text, tree)
    features = re.search(r"(?m)^leaf_features=(.*)$", text[start:end]).group(1)
    first = features.split(" ")[0]
    payloads = {
        "feature_out_of_range": set_field(text, tree, "leaf_features", features.replace(first, "100000", 1)),
        "feature_just_past_max": set_field(text, tree, "leaf_features", features.replace(first, "5", 1)),
        "feature_negative": set_field(text, tree, "leaf_features", features.replace(first, "-1", 1)),
        "num_features_negative": set_value(text, tree, "num_features", 0, "-1"),
        "num_features_too_big": set_value(text, tree, "num_features", 0, "100000"),
        "coefficients_missing": set_field(text, tree, "leaf_coeff", None),
        "leaf_const_short": set_field(text, tree, "leaf_const", " ".join(get_field(text, tree, "leaf_const")[:-1])),
        "is_linear_two": set_field(text, tree, "is_linear", "2"),
    }
    for name, payload in payloads.items():
        assert payload != text, name
        refused(payload)


def _chain_tree(text: str, leaves: int) -> str:
    """Replace tree 0 by a well-formed chain: node i splits off leaf i and continues to node i+1."""
    n = leaves - 1

    def join(values):
        return " ".join(map(str, values))

    block = (
        f"Tree=0\nnum_leaves={leaves}\nnum_cat=0\nsplit_feature={join([i % 5 for i in range(n)])}\n"
        f"split_gain={join([1] * n)}\nthreshold={join([i - n // 2 for i in range(n)])}\n"
        f"decision_type={join([2] * n)}\nleft_child={join([~i for i in range(n)])}\n"
        f"right_child={join([i + 1 for i in range(n - 1)] + [~n])}\nleaf_value={join([0.5] * leaves)}\n"
        f"leaf_weight={join([1] * leaves)}\nleaf_count={join([1] * leaves)}\ninternal_value={join([0] * n)}\n"
        f"internal_weight={join([2] * n)}\ninternal_count={join([2] * n)}\nis_linear=0\nshrinkage=1\n\n\n"
    )
    start, end = _block(text, 0)
    return fix_tree_sizes(text[:start] + block + text[end:])


def test_depth_limit(small):
    validate(_chain_tree(small, 1500), path=PATH)  # deep but within the limit
    err = refused(_chain_tree(small, 20_000))  # dump_model() overflows the C++ stack at ~10,000
    assert "deeper" in err.message


GARBAGE = {
    "empty": "",
    "hello": "hello",
    "just_tree": "tree",
    "tree_header_only": "tree\nversion=v4\n",
    "json": '{"tree_info": []}',
    "binary": bytes(range(256)).decode("latin-1"),
    "nul_byte": "tree\x00version=v4",
    "lone_surrogate": "tree\ud800",
    "tree_marker_first": "Tree=0\nnum_leaves=1\n\n",
    "end_of_trees_only": "end of trees\n",
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_text_refused(case):
    refused(GARBAGE[case])


@pytest.mark.parametrize("value", [None, b"tree\nversion=v4", 42, ["tree"]])
def test_non_text_refused(value):
    refused(value)


def test_other_payloads_refused(small, legit):
    payloads = {
        "nul_inside_tree": fix_tree_sizes(small.replace("num_leaves=4", "num_leaves=4\x00", 1)),
        "duplicate_tree_field": set_field(small, 0, "shrinkage", "1\nleft_child=50 -1 -2"),
        "unknown_tree_field": set_field(small, 0, "shrinkage", "1\nk0=1"),
        "tree_index_wrong": fix_tree_sizes(small.replace("\nTree=1\n", "\nTree=7\n", 1)),
        "parameter_breaks_json": small.replace("[data: ]", '[data: a"b]', 1),
        "parameter_number_garbage": small.replace("[learning_rate: 0.1]", "[learning_rate: nan]", 1),
        "parameter_line_malformed": small.replace("[boosting: gbdt]", "[boosting gbdt]", 1),
        "pandas_categorical_not_json": re.sub(r"pandas_categorical:.*$", "pandas_categorical:[[1", small),
        "pandas_categorical_nested_deep": re.sub(r"pandas_categorical:.*$", "pandas_categorical:" + "[" * 100_000, small),
        "zero_trees_tail_sets_objective": legit["no_trees"].replace("end of trees\n", "end of trees\nobjective=\n", 1),
        "monotone_constraints_count": legit["monotone"].replace("monotone_constraints=1 0 -1 0 0", "monotone_constraints=1 0", 1),
    }
    for name, text in payloads.items():
        assert text != small and text != legit["no_trees"], name
        refused(text)


# --------------------------------------------------------------------------------------------
# The payloads are live: plain LightGBM dies on them, validate() refuses them in-process


LIVE = {
    "tree_sizes_off_by_one": lambda t: _with_first_size(t, _first_size(t) + 1),
    "child_out_of_range": craft_child_out_of_range,
    "feature_out_of_range": craft_feature_out_of_range,
}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_payload_kills_raw_lightgbm_but_not_validate(small, tmp_path, case):
    """Measured with lightgbm 4.7.0: LightGBM does not reject any of these with LightGBMError.

    A wrong tree_sizes makes the OpenMP tree-parsing loop throw, which ends in std::terminate
    (SIGABRT); a child or feature index out of range is read out of bounds at predict (SIGSEGV;
    a small overrun such as left_child=1000 reads heap garbage and usually, not always, faults).
    Here the raw load + predict runs in a child process; validate() refuses the same text here.
    """
    text = LIVE[case](small)
    proc = raw_lightgbm(tmp_path, text)
    assert "survived" not in proc.stdout, f"LightGBM survived {case}: {proc.stdout} {proc.stderr[-300:]}"
    assert "LightGBMError" not in proc.stdout, f"LightGBM rejected {case} cleanly: {proc.stdout}"
    assert proc.returncode < 0, f"{case}: expected death by a signal, got exit {proc.returncode}: {proc.stderr[-300:]}"
    refused(text)
    # The untouched model loads fine in the same harness.
    assert raw_lightgbm(tmp_path, small).stdout.strip() == "survived"


def test_cycle_hangs_raw_lightgbm_but_not_validate(small, tmp_path):
    """A child pointing back at the root: LightGBM's predict loops forever (no crash, no error)."""
    text = STRUCTURE["cycle_child_points_to_root"](small)
    with pytest.raises(subprocess.TimeoutExpired):
        raw_lightgbm(tmp_path, text, timeout=8)
    refused(text)


# --------------------------------------------------------------------------------------------
# Random mutations


def _mutation_bases(legit) -> list[str]:
    """Small models with categorical and linear trees; most of the parameters block trimmed."""
    X, y = _data(300, 4, seed=3)
    X[:, 3] = np.abs(np.round(X[:, 3] * 3))
    y = y + (X[:, 3] % 2)
    cat = lgb.train(
        {**P, "num_leaves": 4, "min_data_per_group": 5, "cat_smooth": 1, "max_cat_to_onehot": 2},
        lgb.Dataset(X, y, categorical_feature=[3]),
        3,
    ).model_to_string()
    linear = lgb.train({**P, "num_leaves": 3, "linear_tree": True}, lgb.Dataset(X, y), 2).model_to_string()
    multi = lgb.train({**P, "objective": "multiclass", "num_class": 3, "num_leaves": 3}, lgb.Dataset(X, np.digitize(y, [-0.5, 0.5])), 2).model_to_string()

    def trim(text):
        keep = ("[boosting", "[objective", "[num_leaves", "[learning_rate", "[metric", "[interaction_constraints", "[linear_tree", "[data: ", "[label_gain")
        lines = [line for line in text.split("\n") if not line.startswith("[") or line.startswith(keep)]
        return "\n".join(lines)

    bases = [trim(cat), trim(linear), trim(multi)]
    for base in bases:
        validate(base, path=PATH)
    return bases


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_REPLACEMENTS = ["0", "1", "-1", "2", "3", "-2", "-3", "-4", "5", "7", "100", "-100", "2147483647", "-2147483648",
                 "4294967296", "99999999999", "0.5", "-0.5", "1e300", "-0", "131072", "2000"]  # fmt: skip
_CHARS = list("0123456789-+. \n=eaz_[]:\t,") + ["\r", "\x00", "Tree=", "nan", "é", "\n\n", "  "]


@st.composite
def mutants(draw, bases: list[str]):
    text = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["char", "number", "number", "number", "delete_line", "duplicate_line", "swap_lines"]))
        if kind == "char":
            i = draw(st.integers(0, len(text) - 1))
            op = draw(st.sampled_from(["replace", "insert", "delete"]))
            ch = "" if op == "delete" else draw(st.sampled_from(_CHARS))
            text = text[:i] + ch + text[i + (op != "insert") :]
        elif kind == "number":
            numbers = list(_NUMBER.finditer(text))
            m = numbers[draw(st.integers(0, len(numbers) - 1))]
            new = draw(st.sampled_from(_REPLACEMENTS) | st.integers(-70, 70).map(str))
            text = text[: m.start()] + new + text[m.end() :]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            if kind == "delete_line":
                del lines[i]
            elif kind == "duplicate_line":
                lines.insert(i, lines[i])
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    if draw(st.booleans()):
        try:  # an attacker who edits a tree fixes tree_sizes too
            text = fix_tree_sizes(text)
        except (ValueError, AttributeError):
            pass
    return text


CRASH_CHECK = textwrap.dedent(
    """
    import json, sys, numpy as np, lightgbm as lgb
    texts = json.load(open(sys.argv[1], encoding="utf-8"))
    rng = np.random.default_rng(0)
    for i, text in enumerate(texts):
        print(i, flush=True)
        try:
            booster = lgb.Booster(model_str=text)
            X = rng.normal(size=(200, booster.num_feature())) * 3
            X[:, -1] = np.abs(np.round(X[:, -1]))
            X[::5, 0] = np.nan
            booster.predict(X)
            booster.predict(X, pred_leaf=True)
            try:
                booster.predict(X[:20], pred_contrib=True)
            except lgb.basic.LightGBMError:
                pass  # not implemented for linear trees
            booster.dump_model()
        except Exception as exc:  # a clean error is fine; only a dead process is not
            print("error", type(exc).__name__, flush=True)
    print("done", flush=True)
    """
)


def test_random_mutations_refused_cleanly_or_load_safely(legit, tmp_path):
    """~200 random mutations: validate() passes or raises MalformedArtifactError, never another
    exception; then up to 30 distinct mutants it passed are loaded, predicted and dumped by plain
    LightGBM, one after the other in one child process, which must not die."""
    bases = _mutation_bases(legit)
    passed: dict[str, None] = {}
    refused_count = [0]

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutants(bases))
    def check(text):
        try:
            validate(text, path=PATH)
        except MalformedArtifactError as err:
            assert err.message.startswith(f"{PATH}: ")
            refused_count[0] += 1
            return
        if text not in bases and len(passed) < 30:
            passed[text] = None

    check()
    assert refused_count[0] > 0
    mutants_file = tmp_path / "mutants.json"
    mutants_file.write_text(json.dumps(list(passed)), encoding="utf-8")
    proc = run_raw(CRASH_CHECK, [str(mutants_file)], timeout=600)
    index = died_at(proc)
    if index is not None:
        text = list(passed)[index] if index >= 0 else ""
        base = min(bases, key=lambda b: abs(len(b) - len(text)))
        diff = [(a, b) for a, b in zip(base.split("\n"), text.split("\n")) if a != b][:5]
        pytest.fail(
            f"plain LightGBM died (exit {proc.returncode}) on validated mutant #{index}; first "
            f"differing lines (base, mutant): {diff!r}; stderr: {proc.stderr[-500:]}"
        )
