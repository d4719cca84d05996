"""The LightGBM validator's bulk paths: the skeleton proof for canonical tree sections and the
digit-wise integer parsing. Each case here is a near miss the bulk path must still refuse, or a
legal oddity it must read exactly as the line-by-line path does."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_safeflavor.errors import MalformedArtifactError
from mlflow_safeflavor.validate.lightgbm_model import _header, _text, validate
from test_validate_lightgbm import _small_regression, fix_tree_sizes, get_field, set_field

lgb = pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def model() -> str:
    X = np.random.default_rng(4).normal(size=(400, 6))
    y = X[:, 0] - 2 * X[:, 1] + np.sin(X[:, 2])
    return lgb.train({"verbose": -1, "seed": 0, "num_leaves": 15}, lgb.Dataset(X, y), 12).model_to_string()


def _lines_outside(text: str) -> int | None:
    """_tree_lines' 'outside' count for ``text``: None when the skeleton proof accepted the section."""
    data = text.encode()
    p0 = data.find(b"\nTree=") + 1
    sizes = _header.parse_header(data[:p0].decode())["tree_sizes"]
    region = data[p0 : p0 + sum(sizes)]
    a = np.frombuffer(region, dtype=np.uint8)
    newlines = np.flatnonzero(a == 10)
    return _text._tree_lines(region, a, newlines, sizes, region.translate(None, _text._SKELETON_DROP))[3]


def _refused(text: str) -> str:
    with pytest.raises(MalformedArtifactError) as info:
        validate(text, path="m/model.txt")
    return info.value.message


def test_model_to_string_takes_the_skeleton_path(model):
    validate(model, path="m/model.txt")
    assert _lines_outside(model) is None


def test_reordered_block_takes_the_line_path_and_still_loads(model):
    """LightGBM reads a block's fields in any order; such a block is checked line by line."""
    start = model.index("\nTree=1\n") + 1
    end = model.index("\nTree=2\n") + 1
    block = model[start:end].split("\n")
    i, j = next(k for k, line in enumerate(block) if line.startswith("split_gain=")), next(
        k for k, line in enumerate(block) if line.startswith("threshold=")
    )
    block[i], block[j] = block[j], block[i]
    text = model[:start] + "\n".join(block) + model[end:]
    assert _lines_outside(text) is not None
    validate(text, path="m/model.txt")
    lgb.Booster(model_str=text)


@pytest.mark.parametrize(
    "old,new",
    [
        ("num_leaves=", "num_l3aves="),  # a digit where the key has an 'e': same skeleton
        ("num_leaves=", "num_l.aves="),
        ("leaf_value=", "leaf_valu5="),
        ("internal_weight=", "int-rnal_weight="),
        ("num_leaves=", "num_lavs=eee"),  # 'e's moved past the '=': same skeleton, '=' misplaced
        ("threshold=", "thr1eshold="),
        ("split_feature=", "split_f eature="),
    ],
)
def test_key_near_misses_refused(model, old, new):
    text = fix_tree_sizes(model.replace("\n" + old, "\n" + new, 1))
    assert text != model
    _refused(text)


@pytest.mark.parametrize("value", ["1.5x", "1,5", "0x10", "nan", "inf", "1_0", "１", "1\t"])
def test_value_with_a_non_number_character_refused(model, value):
    values = get_field(model, 3, "leaf_value")
    values[2] = value
    _refused(set_field(model, 3, "leaf_value", " ".join(values)))


def test_blank_line_holding_a_number_refused(model):
    start = model.index("\nTree=2\n") + 1
    end = model.index("\nTree=3\n") + 1
    block = model[start:end]
    assert block.endswith("\n\n")
    _refused(fix_tree_sizes(model[:start] + block[:-1] + "7\n" + model[end:]))


def test_integer_fields_parse_like_before(model):
    """Zero padding is legal (LightGBM reads it), also beyond the 18 digits the bulk parser takes."""
    values = get_field(model, 0, "left_child")
    for pad in (3, 17, 25):
        padded = [("-" if v.startswith("-") else "") + v.lstrip("-").rjust(pad, "0") for v in values]
        text = set_field(model, 0, "left_child", " ".join(padded))
        validate(text, path="m/model.txt")
        assert lgb.Booster(model_str=text).predict(np.zeros((2, 6))).shape == (2,)


@pytest.mark.parametrize("value", ["99999999999999999999", "-2147483649", "2147483648", "1-2", "--1", "+1", "1.0", "1e1", "-"])
def test_bad_integer_refused(model, value):
    values = get_field(model, 0, "right_child")
    values[0] = value
    _refused(set_field(model, 0, "right_child", " ".join(values)))


@pytest.mark.parametrize("key,value", [("num_leaves", "4.0"), ("num_leaves", "1234567890"), ("num_cat", "-0"), ("is_linear", "2"), ("num_leaves", "")])
def test_bad_small_ints_refused(key, value):
    text = _small_regression()
    _refused(set_field(text, 1, key, value))


@pytest.mark.parametrize("head", ["Tree=01", "Tree=1 ", "Tree=2", "Tree=+1", "Tree=10", "Tree=1x"])
def test_a_tree_head_that_is_not_its_index_refused(model, head):
    """Every 'Tree=i' head is compared at once: leading zeros, other numbers and trailing bytes fail,
    even when tree_sizes was recomputed to fit the edited blocks."""
    text = fix_tree_sizes(model.replace("\nTree=1\n", f"\n{head}\n", 1))
    assert "does not point at 'Tree=1'" in _refused(text)


def test_tree_heads_past_ten_are_read_digit_by_digit():
    """Indices of one, two and three digits: a model of 120 trees passes, a head off by one digit does not."""
    X = np.random.default_rng(5).normal(size=(200, 3))
    text = lgb.train({"verbose": -1, "num_leaves": 3, "min_data_in_leaf": 5}, lgb.Dataset(X, X[:, 0]), 120).model_to_string()
    validate(text, path="m/model.txt")
    assert "Tree=105" in _refused(text.replace("\nTree=105\n", "\nTree=115\n"))


# Parameters blocks the one-expression fast path must leave to the line loop (refused there), and
# odd but legal lines it may accept or leave, as long as the verdict is the loop's.
_PARAMS = [
    ("[num_leaves: x]", False),
    ("[num_leaves: 1,2]", False),
    ("[label_gain: 1,,2]", False),
    ("[interaction_constraints: 5]", False),
    ("[interaction_constraints: [1],2]", False),
    ('[boosting: gb"dt]', False),
    ("[boosting: gb\\dt]", False),
    ("[Num_leaves: 1]", False),
    ("[num_leaves:1]", False),
    ("[num_leaves: 1] ", False),
    ("[interaction_constraints: ]", True),
    ("[interaction_constraints: [1,2],[3]]", True),
    ("[label_gain: 1]", True),
    ("[label_gain: 0,1,3,7]", True),
    ("[my_setting: 1]x]", True),
    ("[my_setting: [1],x]", True),
    ("[my_setting: ]", True),
    ("[max_bin_by_feature: ]", True),
    ("parameters:", True),
    ("", True),
]


@pytest.mark.parametrize("line,legal", _PARAMS)
def test_parameter_lines_fast_path_agrees_with_the_line_loop(model, line, legal, monkeypatch):
    from mlflow_safeflavor.validate.lightgbm_model import _tail

    tail = model[model.index("end of trees\n"):]
    edited = tail.replace("\nparameters:\n", f"\nparameters:\n{line}\n", 1)
    verdicts = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(_tail, "_GOOD_BLOCK", _tail.re.compile(r"(?!)"))  # never matches: the loop decides
        try:
            _tail.check_tail(edited)
            verdicts.append(True)
        except _tail.Refused:
            verdicts.append(False)
    assert verdicts == [legal, legal]
