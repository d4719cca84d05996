"""Structural check of a LightGBM text model (``Booster.model_to_string()``) before LightGBM parses it.

LightGBM's loader trusts the text. Measured with lightgbm 4.7.0 (``Booster(model_str=...)`` then
``predict``), crafted text kills the process instead of raising ``LightGBMError``:

* ``tree_sizes`` off by even one byte, or any parse error inside a tree (a wrong array length, a
  bad number, a missing key): the trees are parsed in an OpenMP loop and the error escapes it,
  so the process gets SIGABRT ("terminate called without an active exception");
* a child, leaf or feature index out of range, a categorical split in a tree without categories,
  ``num_leaves=0``, an empty ``objective``: SIGSEGV or heap corruption at load or predict;
* ``num_tree_per_iteration`` larger than ``num_class``, or a ``multiclass num_class:K`` objective
  that disagrees with the header: heap overflow when predicting; ``num_tree_per_iteration=0``: SIGFPE;
* a child pointing back up the tree: ``predict`` never returns;
* a well-formed but very deep tree: ``dump_model()`` and ``predict(pred_contrib=True)`` overflow
  the C++ stack (SIGSEGV at depth 10,000 and 60,000 respectively).

This module mirrors the loader (``GBDT::LoadModelFromString`` in ``src/boosting/gbdt_model_text.cpp``
and ``Tree::Tree(const char*, size_t*)`` in ``src/io/tree.cpp``, plus what the Python ``Booster``
does with the parameters block and the ``pandas_categorical`` line) closely enough to refuse all of
that, while accepting what ``model_to_string`` writes. It is pure Python and NumPy and never imports
LightGBM. The tree section is checked as a whole rather than tree by tree (see "Trees" below).
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any, NoReturn

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

# Limits. LightGBM itself refuses num_leaves > 131072 when training.
MAX_LEAVES = 131_072
MAX_TREES = 2_000_000
MAX_CLASSES = 100_000
MAX_FEATURES = 50_000_000
# dump_model()/pred_contrib recurse once per level in C++ (and json.loads once more in Python).
MAX_DEPTH = 2_000
_INT32_MAX = 2**31 - 1

# Keys LightGBM's header loop interprets; every other header line is refused.
_HEADER_KEYS = (
    "version",
    "num_class",
    "num_tree_per_iteration",
    "label_index",
    "max_feature_idx",
    "objective",
    "average_output",
    "feature_names",
    "monotone_constraints",
    "feature_infos",
    "tree_sizes",
)
_REQUIRED_HEADER = ("version", "num_class", "label_index", "max_feature_idx", "feature_names", "feature_infos", "tree_sizes")
_VERSIONS = {"v2", "v3", "v4"}

# Objective names LightGBM's ObjectiveFunction factory accepts when loading, and their options.
_MULTICLASS_OBJECTIVES = {"multiclass", "multiclassova"}
_OBJECTIVES = {
    "regression",
    "regression_l1",
    "huber",
    "fair",
    "poisson",
    "quantile",
    "mape",
    "gamma",
    "tweedie",
    "binary",
    "multiclass",
    "multiclassova",
    "cross_entropy",
    "cross_entropy_lambda",
    "lambdarank",
    "rank_xendcg",
    "custom",
}
_OBJECTIVE_OPTION = re.compile(r"[a-z_]+(?::[-+.0-9a-z_]+)?")

# The fields of a tree block, in the order model_to_string writes them (lightgbm >= 3.1).
_TREE_KEYS = (
    "num_leaves",
    "num_cat",
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "leaf_value",
    "leaf_weight",
    "leaf_count",
    "internal_value",
    "internal_weight",
    "internal_count",
    "cat_boundaries",
    "cat_threshold",
    "is_linear",
    "leaf_const",
    "num_features",
    "leaf_features",
    "leaf_coeff",
    "shrinkage",
)
_K = {key: i for i, key in enumerate(_TREE_KEYS)}
_TREE_KEYS_B = {key.encode(): i for i, key in enumerate(_TREE_KEYS)}

_FLOAT = r"-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?"
_FLOAT_RE = re.compile(_FLOAT)
_INT_TEXT = re.compile(r"-?[0-9]{1,10}")
_MONOTONE = re.compile(r"(?:-1|0|1)(?: (?:-1|0|1))*")

# Parameters block: "[name: value]". LightGBM turns these into JSON for Booster.params and Python
# json.loads() it, so a value must not break that JSON.
_PARAM_LINE = re.compile(r"\[([a-z0-9_]+): (.*)\]")
_JSON_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_JSON_NUMBER_RE = re.compile(_JSON_NUMBER)
_NUMBER_LIST_RE = re.compile(f"(?:{_JSON_NUMBER}(?:,{_JSON_NUMBER})*)?")
_NESTED_LIST_RE = re.compile(
    rf"(?:\[(?:{_JSON_NUMBER}(?:,{_JSON_NUMBER})*)?\](?:,\[(?:{_JSON_NUMBER}(?:,{_JSON_NUMBER})*)?\])*)?"
)
_UNSAFE_PARAM_CHARS = re.compile(r'["\\\x00-\x1f\x7f]')
# Parameters LightGBM 4.x types as numbers (int, double, bool) or numeric vectors.
_NUMERIC_PARAMS = frozenset(
    """num_iterations learning_rate num_leaves num_threads seed deterministic force_col_wise
    force_row_wise histogram_pool_size max_depth min_data_in_leaf min_sum_hessian_in_leaf
    bagging_fraction pos_bagging_fraction neg_bagging_fraction bagging_freq bagging_seed
    bagging_by_query feature_fraction feature_fraction_bynode feature_fraction_seed extra_trees
    extra_seed early_stopping_round early_stopping_min_delta first_metric_only max_delta_step
    lambda_l1 lambda_l2 linear_lambda min_gain_to_split drop_rate max_drop skip_drop
    xgboost_dart_mode uniform_drop drop_seed top_rate other_rate min_data_per_group
    max_cat_threshold cat_l2 cat_smooth max_cat_to_onehot top_k monotone_penalty refit_decay_rate
    cegb_tradeoff cegb_penalty_split path_smooth verbosity saved_feature_importance_type
    use_quantized_grad num_grad_quant_bins quant_train_renew_leaf stochastic_rounding linear_tree
    max_bin min_data_in_bin bin_construct_sample_cnt data_random_seed is_enable_sparse
    enable_bundle use_missing zero_as_missing feature_pre_filter pre_partition two_round header
    precise_float_parser objective_seed num_class is_unbalance scale_pos_weight sigmoid
    boost_from_average reg_sqrt alpha fair_c poisson_max_delta_step tweedie_variance_power
    lambdarank_truncation_level lambdarank_norm lambdarank_position_bias_regularization
    multi_error_top_k num_machines local_listen_port time_out gpu_platform_id gpu_device_id
    gpu_use_dp num_gpu""".split()
)
_NUMERIC_LIST_PARAMS = frozenset(
    """monotone_constraints feature_contri cegb_penalty_feature_lazy cegb_penalty_feature_coupled
    max_bin_by_feature categorical_feature label_gain eval_at auc_mu_weights""".split()
)
_NESTED_LIST_PARAMS = frozenset({"interaction_constraints"})


class _Refused(Exception):
    """Internal: carries the description of what is wrong."""


def _bad(what: str) -> NoReturn:
    raise _Refused(what)


def _fail(path: str, what: str) -> MalformedArtifactError:
    return MalformedArtifactError(
        f"{path}: model.txt is not a LightGBM model as model_to_string() writes it: {what}. "
        "LightGBM does not check this and can crash the process (abort or segfault) or hang "
        "loading it; the file was crafted or corrupted — do not load it, re-save the model.",
        path=path,
    )


def validate(text: str, *, path: str) -> None:
    """Refuse ``text`` unless it is structurally a LightGBM model LightGBM can load safely.

    Raises :class:`MalformedArtifactError` (and nothing else) for any problem, whatever ``text`` is.
    """
    try:
        _validate(text)
    except _Refused as exc:
        raise _fail(path, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any surprise on hostile input is a refusal too
        raise _fail(path, f"it could not be checked ({type(exc).__name__})") from None


# --------------------------------------------------------------------------------------------
# Whole file


def _validate(text: Any) -> None:
    if not isinstance(text, str):
        _bad("it is not text")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        _bad("it is not valid Unicode text")
    if b"\x00" in data:
        _bad("it contains a NUL byte")
    if b"\r" in data:
        # LightGBM writes "\n" only; tree_sizes counts bytes, so CRLF text cannot load.
        _bad("it contains carriage returns (was it saved with Windows line endings?)")

    # LightGBM reads header lines until the first line that starts with "Tree=" (with no tree
    # at all, to the end of the file).
    first_tree = data.find(b"\nTree=")
    if first_tree < 0:
        end = data.find(b"\nend of trees\n")
        if end < 0:
            _bad("the 'end of trees' line is missing")
        p0 = tail_start = end + 1
    else:
        p0 = first_tree + 1
    header = _parse_header(data[:p0].decode("utf-8"))

    n_trees = len(header["tree_sizes"])
    if first_tree < 0:
        if n_trees:
            _bad(f"tree_sizes lists {n_trees} trees but the file has none")
        _check_zero_tree_tail(data[tail_start:].decode("utf-8"))
    else:
        if n_trees == 0:
            _bad("tree_sizes is empty but the file has trees")
        if n_trees % header["num_tree_per_iteration"]:
            _bad(
                f"{n_trees} trees is not a multiple of num_tree_per_iteration="
                f"{header['num_tree_per_iteration']}"
            )
        tail_start = p0 + sum(header["tree_sizes"])
        if not data.startswith(b"end of trees\n", tail_start):
            _bad(
                "tree_sizes does not add up to the tree section (the trees must be followed by "
                "'end of trees' exactly where tree_sizes says they end)"
            )
        _check_trees(data[p0:tail_start], header["tree_sizes"], header["max_feature_idx"])
    _check_tail(data[tail_start:].decode("utf-8"))
    _check_pandas_categorical(text)


# --------------------------------------------------------------------------------------------
# Header


def _parse_int(value: str, what: str, lo: int, hi: int) -> int:
    if not _INT_TEXT.fullmatch(value):
        _bad(f"{what} is not an integer ({value[:40]!r})")
    number = int(value)
    if not lo <= number <= hi:
        _bad(f"{what}={number} is out of range [{lo}, {hi}]")
    return number


def _tokens(value: str) -> list[str]:
    """LightGBM's Common::Split(str, ' '): empty pieces are dropped."""
    return [piece for piece in value.split(" ") if piece]


def _count_tokens(value: str) -> int:
    """len(_tokens(value)) without building the pieces (feature_names can be millions long)."""
    if len(value) < 100_000:
        return len(_tokens(value))
    b = np.frombuffer(value.encode("utf-8"), dtype=np.uint8) != 32
    return int(b[0]) + int(np.count_nonzero(b[1:] & ~b[:-1]))


def _parse_header(header_text: str) -> dict[str, Any]:
    lines = header_text.split("\n")
    if lines[0] != "tree":
        _bad("the first line is not 'tree'")
    raw: dict[str, str] = {}
    seen_blank = False
    for line in lines[1:]:
        if not line:
            seen_blank = True
            continue
        if seen_blank:
            _bad(f"unexpected header line after a blank line ({line[:40]!r})")
        # Mirror LightGBM: split on '=', drop empty pieces.
        parts = [piece for piece in line.split("=") if piece]
        if not parts:
            _bad(f"malformed header line {line[:40]!r}")
        key = parts[0]
        if len(parts) == 1:
            value = ""
        elif len(parts) == 2:
            value = parts[1]
        elif key == "feature_names" and line.startswith("feature_names="):
            value = line[len("feature_names=") :]
        else:
            _bad(f"header line {line[:40]!r} has more than one '='")
        if key not in _HEADER_KEYS:
            _bad(f"unknown header line {line[:40]!r}")
        if key in raw:
            _bad(f"header key {key!r} appears twice")
        if line != (key if key == "average_output" else f"{key}={value}"):
            _bad(f"header line {line[:40]!r} is not in 'key=value' form")
        raw[key] = value
    for key in _REQUIRED_HEADER:
        if key not in raw:
            _bad(f"the header has no {key}")

    if raw["version"] not in _VERSIONS:
        _bad(f"unknown model version {raw['version'][:20]!r}")
    num_class = _parse_int(raw["num_class"], "num_class", 1, MAX_CLASSES)
    ntpi = num_class
    if "num_tree_per_iteration" in raw:
        ntpi = _parse_int(raw["num_tree_per_iteration"], "num_tree_per_iteration", 1, MAX_CLASSES)
    if ntpi != num_class:
        # Predict sizes its output by num_class and writes num_tree_per_iteration values.
        _bad(f"num_tree_per_iteration={ntpi} differs from num_class={num_class}")
    _parse_int(raw["label_index"], "label_index", 0, _INT32_MAX)
    max_feature_idx = _parse_int(raw["max_feature_idx"], "max_feature_idx", 0, MAX_FEATURES - 1)
    n_features = max_feature_idx + 1
    if _count_tokens(raw["feature_names"]) != n_features:
        _bad(f"feature_names does not list max_feature_idx + 1 = {n_features} names")
    if _count_tokens(raw["feature_infos"]) != n_features:
        _bad(f"feature_infos does not list max_feature_idx + 1 = {n_features} entries")
    if "monotone_constraints" in raw:
        constraints = raw["monotone_constraints"]
        if not _MONOTONE.fullmatch(constraints) or constraints.count(" ") + 1 != n_features:
            _bad("monotone_constraints is not one of -1/0/1 per feature")
    if "average_output" in raw and raw["average_output"]:
        _bad("average_output has a value")
    if "objective" in raw:
        _check_objective(raw["objective"], num_class)

    sizes_text = raw["tree_sizes"]
    if sizes_text and not re.fullmatch(r"[0-9]{1,12}(?: [0-9]{1,12})*", sizes_text):
        _bad("tree_sizes is not a list of sizes")
    sizes = [int(s) for s in sizes_text.split(" ")] if sizes_text else []
    if len(sizes) > MAX_TREES:
        _bad(f"the model has {len(sizes)} trees (limit {MAX_TREES})")
    return {
        "num_class": num_class,
        "num_tree_per_iteration": ntpi,
        "max_feature_idx": max_feature_idx,
        "tree_sizes": sizes,
    }


def _check_objective(value: str, num_class: int) -> None:
    tokens = _tokens(value)
    if not tokens:
        _bad("objective is empty")
    name, options = tokens[0], tokens[1:]
    if name not in _OBJECTIVES:
        _bad(f"unknown objective {name[:40]!r}")
    for option in options:
        if not _OBJECTIVE_OPTION.fullmatch(option):
            _bad(f"malformed objective option {option[:40]!r}")
    fields = dict(option.split(":", 1) for option in options if ":" in option)
    if "sigmoid" in fields:
        if not _FLOAT_RE.fullmatch(fields["sigmoid"]) or not 0 < float(fields["sigmoid"]) < float("inf"):
            _bad(f"objective sigmoid {fields['sigmoid'][:20]!r} is not a positive number")
    if name in _MULTICLASS_OBJECTIVES:
        k = fields.get("num_class")
        if k is None or not _INT_TEXT.fullmatch(k) or int(k) != num_class:
            # The objective converts num_class:K outputs in a buffer of num_class values.
            _bad(f"objective {value[:60]!r} does not say num_class:{num_class}")
        if num_class < 2:
            _bad(f"objective {name} needs num_class >= 2")
    elif name != "custom" and num_class != 1:
        _bad(f"objective {name} with num_class={num_class}")


# --------------------------------------------------------------------------------------------
# Trees
#
# LightGBM cuts the tree section at tree_sizes and parses every block on its own. Here the whole
# section is scanned once with NumPy for its separators ('\n', ' ') and signs ('-', '+'), the only
# bytes <= 45 it may hold. The line breaks give every block's lines: a block in model_to_string's
# exact layout (the common case) has its field names compared vectorised; any other block is
# parsed line by line. Every field's value is then known by its span, and the numbers of the whole
# section are checked together: their characters, the bytes around separators and signs, and how
# many values each field holds. Only the fields that define the tree's shape are parsed.

# How many values a field holds.
_SCALAR, _INTERNAL, _LEAF, _CAT_BOUNDS, _FREE = range(5)
_RULE = {
    "num_leaves": _SCALAR,
    "num_cat": _SCALAR,
    "split_feature": _INTERNAL,
    "split_gain": _INTERNAL,
    "threshold": _INTERNAL,
    "decision_type": _INTERNAL,
    "left_child": _INTERNAL,
    "right_child": _INTERNAL,
    "leaf_value": _LEAF,
    "leaf_weight": _LEAF,
    "leaf_count": _LEAF,
    "internal_value": _INTERNAL,
    "internal_weight": _INTERNAL,
    "internal_count": _INTERNAL,
    "cat_boundaries": _CAT_BOUNDS,
    "cat_threshold": _FREE,  # checked with the categories
    "is_linear": _SCALAR,
    "leaf_const": _FREE,  # linear trees only: one per leaf (set in _check_trees)
    "num_features": _FREE,
    "leaf_features": _FREE,  # checked by _check_linear
    "leaf_coeff": _FREE,
    "shrinkage": _SCALAR,
}
_RULES = np.array([_RULE[key] for key in _TREE_KEYS])
# leaf_features/leaf_coeff are written with double spaces; they are checked per tree instead.
_LOOSE = np.array([key in ("leaf_features", "leaf_coeff") for key in _TREE_KEYS])

# model_to_string's block layouts (lightgbm >= 3.1): "Tree=i", the fields, two blank lines.
_CAT_KEYS = ("cat_boundaries", "cat_threshold")
_LINEAR_KEYS = ("leaf_const", "num_features", "leaf_features", "leaf_coeff")
_PLAIN = tuple(k for k in _TREE_KEYS if k not in _CAT_KEYS + _LINEAR_KEYS)
_WITH_CAT = _PLAIN[:14] + _CAT_KEYS + _PLAIN[14:]  # before is_linear
_LAYOUTS = (
    _PLAIN,
    _WITH_CAT,
    _PLAIN[:15] + _LINEAR_KEYS + _PLAIN[15:],  # after is_linear
    _WITH_CAT[:17] + _LINEAR_KEYS + _WITH_CAT[17:],
)
_LAYOUT_LINES = np.array([len(layout) + 3 for layout in _LAYOUTS])
_WIDTH = max(len(k) for k in _TREE_KEYS) + 1


_NUMBER_BYTES = b"0123456789.e+- \n"


def _outside_value(key: bytes) -> int:
    """Bytes of a line's 'key=' part that are not among _NUMBER_BYTES."""
    return len(key.translate(None, _NUMBER_BYTES))


def _layout_tables() -> tuple[np.ndarray, ...]:
    prefix, mask, field, start, blank, outside = [], [], [], [], [], []
    for layout in _LAYOUTS:
        rows = [b"Tree="] + [k.encode() + b"=" for k in layout] + [b"", b""]
        for i, row in enumerate(rows):
            prefix.append(list(row.ljust(_WIDTH, b"\0")))
            mask.append([True] * len(row) + [False] * (_WIDTH - len(row)))
            field.append(_K[layout[i - 1]] if 0 < i <= len(layout) else -1)
            start.append(len(row))
            blank.append(not row)
            outside.append(_outside_value(row))
    base = np.concatenate(([0], np.cumsum(_LAYOUT_LINES)[:-1]))
    return (
        np.array(prefix, dtype=np.uint8),
        np.array(mask, dtype=bool),
        np.array(field),
        np.array(start),
        np.array(blank),
        np.array(outside),
        base,
    )


_PREFIX, _PREFIX_MASK, _ROW_FIELD, _ROW_VALUE_START, _ROW_BLANK, _ROW_OUTSIDE, _LAYOUT_BASE = _layout_tables()


def _tree_lines(region: bytes, a: np.ndarray, newlines: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, ...]:
    """Every line of the section: its tree, field (-1: the Tree= line or a blank line), value start.

    Also returns how many bytes outside numbers the lines' 'key=' parts hold (for the character
    check). Blocks in model_to_string's layout are checked vectorised, others line by line.
    """
    n = len(sizes)
    offsets = np.concatenate(([0], np.cumsum(np.array(sizes, dtype=np.int64))))
    for i, off in enumerate(offsets[:-1].tolist()):
        if not region.startswith(b"Tree=%d\n" % i, off):
            _bad(f"tree_sizes does not point at 'Tree={i}' (tree {i} should start at byte {off})")
    if a[offsets[1:] - 1].min(initial=10) != 10:
        _bad("a tree does not end with a line break where tree_sizes says it ends")
    if region[-2:] != b"\n\n":
        _bad(f"tree {n - 1} is not followed by a blank line")
    first_line = np.searchsorted(newlines, offsets[:-1])
    per_block = np.diff(np.append(first_line, newlines.size))
    line_block = np.repeat(np.arange(n), per_block)
    line_start = np.concatenate(([0], newlines[:-1] + 1))
    line_no = np.arange(newlines.size) - first_line[line_block]

    layout = np.full(n, -1)
    for k, lines in enumerate(_LAYOUT_LINES.tolist()):
        layout[per_block == lines] = k
    canonical = layout[line_block] >= 0
    row = np.where(canonical, _LAYOUT_BASE[layout[line_block]] + line_no, 0)
    idx = np.minimum(line_start[:, None] + np.arange(_WIDTH), a.size - 1)
    wrong = ((a[idx] != _PREFIX[row]) & _PREFIX_MASK[row]).any(axis=1)
    wrong |= _ROW_BLANK[row] & (newlines != line_start)
    slow = np.zeros(n, dtype=bool)
    slow[line_block[~canonical | wrong]] = True

    field = _ROW_FIELD[row]
    value_start = line_start + _ROW_VALUE_START[row]
    outside = int(_ROW_OUTSIDE[row][~slow[line_block]].sum())
    for t in np.flatnonzero(slow).tolist():
        lines = slice(int(first_line[t]), int(first_line[t] + per_block[t]))
        f, v, o = _block_lines_slow(region, line_start[lines], newlines[lines], t)
        field[lines], value_start[lines] = f, v
        outside += o
    return line_block, field, value_start, outside


def _block_lines_slow(region: bytes, starts: np.ndarray, ends: np.ndarray, t: int) -> tuple[list, list, int]:
    """A block not in model_to_string's exact layout (LightGBM takes its fields in any order)."""
    fields, value_starts, outside = [-1], [int(starts[0]) + 5], _outside_value(b"Tree=")  # checked by the caller
    seen: set[int] = set()
    blank = False
    for s, e in zip(starts[1:].tolist(), ends[1:].tolist()):
        line = region[s:e]
        if not line:
            blank = True  # LightGBM stops reading the tree at the first blank line
            fields.append(-1)
            value_starts.append(s)
            continue
        if blank:
            _bad(f"tree {t} has a line after its blank line: {line[:40]!r}")
        key, sep, _ = line.partition(b"=")
        index = _TREE_KEYS_B.get(key) if sep else None
        if index is None:
            _bad(f"tree {t} has an unknown line {line[:40]!r}")
        if index in seen:
            _bad(f"tree {t} has {key.decode()} twice")
        seen.add(index)
        fields.append(index)
        value_starts.append(s + len(key) + 1)
        outside += _outside_value(key + b"=")
    if not blank:
        _bad(f"tree {t} is not followed by a blank line")
    return fields, value_starts, outside


def _small_ints(values: list[bytes], what: str, lo: int, hi: int) -> np.ndarray:
    """One small non-negative integer per tree (num_leaves, num_cat, is_linear)."""
    for i, v in enumerate(values):
        if not (v and len(v) <= 9 and v.isdigit()):
            _bad(f"tree {i} has a malformed {what} {v[:20]!r}")
    array = np.array(list(map(int, values)), dtype=np.int64)
    if array.size and (array.min() < lo or array.max() > hi):
        tree = int(np.argmax((array < lo) | (array > hi)))
        _bad(f"tree {tree} has {what}={int(array[tree])} (allowed {lo}..{hi})")
    return array


def _values(region: bytes, spans: np.ndarray, key: str, trees: np.ndarray | None = None) -> list[bytes]:
    col = spans[:, _K[key]] if trees is None else spans[trees, _K[key]]
    return [region[s:e] for s, e in col.tolist()]


def _parse_ints(
    region: bytes,
    spans: np.ndarray,
    keys: tuple[str, ...],
    trees: np.ndarray,
    per_tree: np.ndarray,
    lo: int = -_INT32_MAX - 1,
    hi: int = _INT32_MAX,
) -> list[np.ndarray]:
    """Integer fields ``keys`` of ``trees``, concatenated per field; their lengths were checked."""
    total = int(per_tree[trees].sum())
    if total == 0:
        return [np.zeros(0, dtype=np.int64) for _ in keys]
    joined = b" ".join([piece for key in keys for piece in _values(region, spans, key, trees)])
    # Digits, spaces and a '-' that starts a value only: every value then parses, and a '-' inside
    # a value ("1-2") can only add values, which the total below catches.
    if joined.translate(None, b"0123456789 -"):
        _bad(f"a tree's {'/'.join(keys)} holds a value that is not an integer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = np.fromstring(joined, dtype=np.int64, sep=" ")
    if array.size != total * len(keys):
        _bad(f"a tree's {'/'.join(keys)} holds a value that is not an integer")
    if array.min() < lo or array.max() > hi:
        _bad(f"a tree's {'/'.join(keys)} has a value outside [{lo}, {hi}]")
    return [array[i * total : (i + 1) * total] for i in range(len(keys))]


def _check_trees(region: bytes, sizes: list[int], max_feature_idx: int) -> None:
    n = len(sizes)
    a = np.frombuffer(region, dtype=np.uint8)
    # Separators and signs ('\n' 10, ' ' 32, '+' 43, '-' 45: the only bytes <= 45 allowed).
    pos = np.flatnonzero(a <= 45)
    c = a.take(pos)
    is_newline = c == 10
    newlines = pos[is_newline]
    line_block, field, value_start, outside = _tree_lines(region, a, newlines, sizes)

    # Characters: besides digits, '.', 'e', ' ', '\n', '+', '-', the section holds only the
    # "Tree=" and field names of its lines (no letters, quotes, controls, non-ASCII in a value).
    if len(region.translate(None, _NUMBER_BYTES)) != outside:
        _bad("a tree has a value with a character that is not part of a number")

    kv = np.flatnonzero(field >= 0)
    spans = np.full((n, len(_TREE_KEYS), 2), -1, dtype=np.int64)
    spans[line_block[kv], field[kv], 0] = value_start[kv]
    spans[line_block[kv], field[kv], 1] = newlines[kv]

    for key in ("num_leaves", "num_cat", "leaf_value"):
        missing = spans[:, _K[key], 0] < 0
        if missing.any():  # LightGBM: Log::Fatal inside the parallel loop, i.e. abort
            _bad(f"tree {int(np.argmax(missing))} has no {key}")
    L = _small_ints(_values(region, spans, "num_leaves"), "num_leaves", 1, MAX_LEAVES)
    num_cat = _small_ints(_values(region, spans, "num_cat"), "num_cat", 0, MAX_LEAVES)
    linear = np.zeros(n, dtype=bool)
    has_linear = spans[:, _K["is_linear"], 0] >= 0
    if has_linear.any():
        flags = _values(region, spans, "is_linear", np.flatnonzero(has_linear))
        linear[has_linear] = _small_ints(flags, "is_linear", 0, 1).astype(bool)
    # LightGBM stops reading a single-leaf, non-linear tree after num_cat, leaf_value,
    # shrinkage and is_linear; it reads no array whose length is 0.
    parsed = (L > 1) | linear
    for key in ("left_child", "right_child", "split_feature", "threshold"):
        missing = (spans[:, _K[key], 0] < 0) & parsed
        if missing.any():
            _bad(f"tree {int(np.argmax(missing))} has no {key}")
    num_cat = np.where(parsed, num_cat, 0)
    if np.any(num_cat > L - 1):
        t = int(np.argmax(num_cat > L - 1))
        _bad(f"tree {t} has num_cat={int(num_cat[t])} but only {int(L[t]) - 1} splits")
    no_cat_fields = (spans[:, _K["cat_boundaries"], 0] < 0) | (spans[:, _K["cat_threshold"], 0] < 0)
    if np.any((num_cat > 0) & no_cat_fields):
        _bad(f"tree {int(np.argmax((num_cat > 0) & no_cat_fields))} has num_cat > 0 but no cat_boundaries/cat_threshold")

    n_int = L - 1
    expected = np.full((n, len(_TREE_KEYS)), -1, dtype=np.int64)
    expected[:, _RULES == _SCALAR] = 1
    expected[:, _RULES == _INTERNAL] = np.where(parsed & (n_int > 0), n_int, -1)[:, None]
    expected[:, _RULES == _LEAF] = np.where(parsed, L, -1)[:, None]
    expected[:, _K["leaf_value"]] = L
    expected[:, _K["cat_boundaries"]] = np.where(num_cat > 0, num_cat + 1, -1)
    expected[:, _K["leaf_const"]] = np.where(linear, L, -1)
    expected[:, _K["num_features"]] = np.where(linear, L, -1)
    counts = _check_numbers(region, a, pos, c, is_newline, spans, kv, line_block, field, value_start, newlines, expected)

    # Structure: children, features, decision types.
    split_trees = np.flatnonzero(n_int > 0)  # every such tree is parsed
    total = int(n_int.sum())
    keys: tuple[str, ...] = ("left_child", "right_child", "split_feature", "decision_type")
    has_dt = spans[split_trees, _K["decision_type"], 0] >= 0
    if not has_dt.all():
        keys = keys[:3]
    left, right, feature, *rest = _parse_ints(region, spans, keys, split_trees, n_int)
    if rest:
        decision = rest[0]
    else:  # decision_type is optional; LightGBM uses 0 (numerical split) where it is absent
        (given,) = _parse_ints(region, spans, ("decision_type",), split_trees[has_dt], n_int)
        node_off = np.concatenate(([0], np.cumsum(n_int)))
        decision = np.zeros(total, dtype=np.int64)
        where = [np.arange(node_off[t], node_off[t + 1]) for t in split_trees[has_dt].tolist()]
        decision[np.concatenate(where or [np.zeros(0, dtype=np.int64)])] = given

    categorical = np.zeros(0, dtype=bool)
    if total:
        tree_of = np.repeat(np.arange(n), n_int)
        if feature.min() < 0 or feature.max() > max_feature_idx:
            i = int(np.argmax((feature < 0) | (feature > max_feature_idx)))
            _bad(f"tree {int(tree_of[i])} splits on feature {int(feature[i])} but max_feature_idx is {max_feature_idx}")
        if decision.min() < 0 or decision.max() > 11:
            # Bits: 1 categorical, 2 default-left, (x >> 2) & 3 missing type 0..2.
            i = int(np.argmax((decision < 0) | (decision > 11)))
            _bad(f"tree {int(tree_of[i])} has decision_type {int(decision[i])}")
        _check_children(left, right, L, n_int, tree_of)
        categorical = (decision & 1).astype(bool)
        if categorical.any() and np.any(categorical & (num_cat[tree_of] == 0)):
            t = int(tree_of[int(np.argmax(categorical & (num_cat[tree_of] == 0)))])
            _bad(f"tree {t} has a categorical split but num_cat=0")
        if int(n_int.max()) >= MAX_DEPTH:
            _check_depth(left, right, n_int, tree_of)

    if np.any(num_cat > 0):
        _check_categories(region, spans, counts, num_cat, categorical, n_int)
    if linear.any():
        _check_linear(region, spans, linear, L, max_feature_idx)


def _check_numbers(
    region: bytes,
    a: np.ndarray,
    pos: np.ndarray,
    c: np.ndarray,
    is_newline: np.ndarray,
    spans: np.ndarray,
    kv: np.ndarray,
    line_block: np.ndarray,
    field: np.ndarray,
    value_start: np.ndarray,
    newlines: np.ndarray,
    expected: np.ndarray,
) -> np.ndarray:
    """Every value is a list of plain decimal numbers of the field's length; returns the lengths.

    LightGBM aborts (SIGABRT) on a count mismatch in threshold/leaf_value/leaf_weight and on a
    number it cannot parse in any field ("-", ".", "e5", "1--2"), so: a value starts with a digit
    or '-'; '-' and '+' are followed by a digit; a space is followed by a digit or '-' (so no empty
    values and no trailing space). The characters were checked by the caller.
    """
    loose = _LOOSE[field[kv]]
    if loose.any():
        # leaf_features/leaf_coeff (linear trees) are written with double spaces; skip their bytes.
        line_of = np.cumsum(is_newline) - is_newline
        skip_line = np.zeros(newlines.size, dtype=bool)
        skip_line[kv[loose]] = True
        keep = ~skip_line[line_of] | is_newline
        pos, c = pos[keep], c[keep]
        is_newline = c == 10
        kv = kv[~loose]
    # The section ends with a blank line, so every byte but the last '\n' has a next byte.
    inner = pos[:-1]
    nxt = a.take(inner + 1)
    cc = c[:-1]
    bad = (nxt - 48) >= 10  # the next byte is not a digit (uint8 arithmetic wraps)
    bad &= cc != 10  # '\n' is followed by the next line's name, matched already
    bad &= (cc != 32) | (nxt != 45)  # ' ' may also be followed by '-'
    if bad.any():
        p = int(inner[int(np.argmax(bad))])
        _bad(f"{_where(spans, p)} has a malformed number near {region[max(p - 12, 0) : p + 12]!r}")

    starts, ends = value_start[kv], newlines[kv]
    nonempty = ends > starts
    first = a[np.minimum(starts, a.size - 1)]
    bad_start = nonempty & ((first - 48) >= 10) & (first != 45)
    if bad_start.any():
        _bad(f"{_where(spans, int(starts[int(np.argmax(bad_start))]))} does not start with a number")

    want = expected[line_block[kv], field[kv]]
    # Spaces on each line: the specials from just after the previous line's '\n' to its own.
    line_first = np.flatnonzero(is_newline)[:-1] + 1
    per_line = np.add.reduceat(c == 32, np.concatenate(([0], line_first)), dtype=np.int32)
    got = per_line[kv] + nonempty
    check = want >= 0
    if not np.array_equal(got[check], want[check]):
        i = int(np.flatnonzero(check & (got != want))[0])
        _bad(f"{_where(spans, int(starts[i]))} has {int(got[i])} values, expected {int(want[i])}")
    counts = np.full(expected.shape, -1, dtype=np.int64)
    counts[line_block[kv], field[kv]] = got
    return counts


def _where(spans: np.ndarray, position: int) -> str:
    """'tree T field' for a byte position, for error messages."""
    tree = max(int(np.searchsorted(spans[:, 0, 0], position, side="right")) - 1, 0)
    inside = np.flatnonzero((spans[tree, :, 0] <= position) & (position <= spans[tree, :, 1]))
    return f"tree {tree} {_TREE_KEYS[int(inside[0])] if inside.size else 'line'}"


def _check_children(left: np.ndarray, right: np.ndarray, L: np.ndarray, n_int: np.ndarray, tree_of: np.ndarray) -> None:
    """Every child in range and after its parent; every node and leaf reached exactly once."""
    total = left.size
    node_off = np.concatenate(([0], np.cumsum(n_int)))
    base = np.tile(node_off[tree_of], 2)
    local = np.tile(np.arange(total) - node_off[tree_of], 2)
    leaves = np.tile(L[tree_of], 2)
    child = np.concatenate((left, right))
    # An internal child (>= 0) comes after its parent (LightGBM numbers a node after its parent)
    # and is < num_leaves - 1; a leaf child ~l (< 0) has 0 <= l < num_leaves, i.e. child >= -L.
    to_node = child >= 0
    bad = (child < -leaves) | (child > leaves - 2) | (to_node & (child <= local))
    if bad.any():
        i = int(np.argmax(bad))
        side = "left_child" if i < total else "right_child"
        t = int(tree_of[i % total])
        _bad(
            f"tree {t} node {int(local[i])} has {side}={int(child[i])}, out of range or not after "
            f"its parent (num_leaves={int(L[t])})"
        )
    # Every node but the root (never a child: children point forward) is the child of exactly
    # one node; then each split tree has exactly num_leaves leaf slots, and all must differ.
    internal_in = np.bincount((base + child)[to_node], minlength=total)
    if not np.array_equal(internal_in, local[:total] != 0):
        i = int(np.argmax(internal_in != (local[:total] != 0)))
        _bad(f"tree {int(tree_of[i])} node {int(local[i])} is the child of {int(internal_in[i])} nodes")
    leaf_off = np.concatenate(([0], np.cumsum(L)))
    leaf_in = np.bincount((np.tile(leaf_off[tree_of], 2) + ~child)[~to_node], minlength=int(leaf_off[-1]))
    if leaf_in.max(initial=0) > 1:
        i = int(np.argmax(leaf_in))
        t = int(np.searchsorted(leaf_off, i, side="right") - 1)
        _bad(f"tree {t} leaf {i - int(leaf_off[t])} is the child of {int(leaf_in[i])} nodes")


def _check_depth(left: np.ndarray, right: np.ndarray, n_int: np.ndarray, tree_of: np.ndarray) -> None:
    """Refuse trees deeper than MAX_DEPTH (pointer jumping over the already-checked parent links)."""
    total = left.size
    base = np.concatenate(([0], np.cumsum(n_int)))[tree_of]
    parent = np.arange(total)
    for child in (left, right):
        src = np.flatnonzero(child >= 0)
        parent[base[src] + child[src]] = src
    # dist[v] = min(depth(v), 2**k) and anc[v] = the 2**k-th ancestor (a root stays put).
    dist = (parent != np.arange(total)).astype(np.int64)
    anc = parent
    for _ in range(int(np.ceil(np.log2(MAX_DEPTH))) + 1):
        dist = dist + dist[anc]
        anc = anc[anc]
    # Leaves are one level below their parent node; the root is level 0.
    if np.any(parent[anc] != anc) or int(dist.max()) + 1 > MAX_DEPTH:
        t = int(tree_of[int(np.argmax(dist))])
        _bad(f"tree {t} is deeper than {MAX_DEPTH} levels")


def _segments(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of consecutive segments of the given sizes."""
    ends = np.cumsum(sizes)
    return ends - sizes, ends


def _check_categories(
    region: bytes, spans: np.ndarray, counts: np.ndarray, num_cat: np.ndarray, categorical: np.ndarray, n_int: np.ndarray
) -> None:
    """cat_boundaries run 0 <= b[0] <= ... <= b[num_cat] = len(cat_threshold); categorical splits
    name a category set 0 <= threshold < num_cat (the predictor indexes cat_boundaries with it)."""
    trees = np.flatnonzero(num_cat > 0)
    n_words = counts[trees, _K["cat_threshold"]]
    (bounds,) = _parse_ints(region, spans, ("cat_boundaries",), trees, num_cat + 1, 0, _INT32_MAX)
    first, end = _segments(num_cat[trees] + 1)
    step_ok = np.diff(bounds) >= 0
    step_ok[end[:-1] - 1] = True  # from one tree's last boundary to the next tree's first
    bad = (bounds[first] != 0) | (bounds[end - 1] != n_words)
    if bad.any() or not step_ok.all():
        t = int(trees[int(np.argmax(bad))]) if bad.any() else int(trees[np.searchsorted(end, np.argmax(~step_ok), side="right")])
        _bad(f"tree {t} cat_boundaries do not rise from 0 to the number of cat_threshold words")
    # The words are bitsets read as uint32 (any value is harmless); digits only, as written.
    words = b" ".join(_values(region, spans, "cat_threshold", trees))
    if words.translate(None, b"0123456789 "):
        _bad("a tree's cat_threshold holds a value that is not a 32-bit word")

    # The category set of every categorical split: a small integer below the tree's num_cat.
    node_off = np.concatenate(([0], np.cumsum(n_int)))
    tree_of = np.repeat(np.arange(n_int.size), n_int)
    cat_trees = trees[np.bincount(tree_of[categorical], minlength=n_int.size)[trees] > 0]
    if cat_trees.size == 0:
        return
    text = b" ".join(_values(region, spans, "threshold", cat_trees))
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
        _bad(f"tree {int(tree[i])} has a categorical split on category set {token!r} (num_cat={int(num_cat[tree[i]])})")


def _check_linear(region: bytes, spans: np.ndarray, linear: np.ndarray, L: np.ndarray, max_feature_idx: int) -> None:
    """Linear leaves: sum(num_features) feature indices in range, as many coefficients.

    LightGBM reads them only where num_features is present: leaf_features with
    StringToArrayFast<int> and leaf_coeff with StringToArray<double> (which aborts unless it finds
    exactly that many values); both are written with double spaces between leaves.
    """
    trees = np.flatnonzero(linear & (spans[:, _K["num_features"], 0] >= 0))
    if trees.size == 0:
        return
    # num_features holds num_leaves values (checked with the other arrays).
    (num_features,) = _parse_ints(region, spans, ("num_features",), trees, L, 0, max_feature_idx + 1)
    total = np.add.reduceat(num_features, _segments(L[trees])[0])
    used, total = trees[total > 0], total[total > 0]
    if used.size == 0:
        return
    missing = (spans[used, _K["leaf_features"], 0] < 0) | (spans[used, _K["leaf_coeff"], 0] < 0)
    if missing.any():  # predicting would read a coefficient for every leaf feature
        _bad(f"tree {int(used[int(np.argmax(missing))])} has num_features but not both leaf_features and leaf_coeff")
    feats = _loose_values(region, spans, "leaf_features", used)
    coeffs = _loose_values(region, spans, "leaf_coeff", used)
    if feats.translate(None, b"0123456789 \n"):
        _bad("a linear tree's leaf_features holds a value that is not a feature index")
    for name, buf in (("leaf_features", feats), ("leaf_coeff", coeffs)):
        found = _count_loose(buf)
        if not np.array_equal(found, total):
            i = int(np.argmax(found != total))
            _bad(f"tree {int(used[i])} {name} holds {int(found[i])} values, expected sum(num_features) = {int(total[i])}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = np.fromstring(feats, dtype=np.int64, sep=" ")
    if features.size != int(total.sum()) or features.max() > max_feature_idx:
        _bad(f"a linear tree uses a feature beyond max_feature_idx={max_feature_idx}")


def _loose_values(region: bytes, spans: np.ndarray, key: str, trees: np.ndarray) -> bytes:
    return b"\n".join(_values(region, spans, key, trees)) + b"\n"


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
        _bad("a linear tree has a malformed number")
    signs = np.flatnonzero((b == 45) | (b == 43))
    if signs.size and not np.all((b.take(np.minimum(signs + 1, b.size - 1)) - 48) < 10):
        _bad("a linear tree has a malformed number")
    line_first = np.concatenate(([0], np.flatnonzero(b == 10)[:-1] + 1))
    return np.add.reduceat(start, line_first, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# After the trees


def _check_zero_tree_tail(tail: str) -> None:
    """Without trees LightGBM reads the rest of the file as header lines, so none may look like one."""
    for line in tail.split("\n"):
        if not line or line in ("end of trees", "feature_importances:", "parameters:", "end of parameters"):
            continue
        if line.startswith("[") and "=" not in line:
            continue
        if line.startswith("pandas_categorical:"):
            continue
        _bad(f"unexpected line after the (empty) tree section: {line[:40]!r}")


def _check_tail(tail: str) -> None:
    """The parameters block (LightGBM builds Booster.params JSON from it)."""
    in_params = False
    for line in tail.split("\n"):
        if not line:
            continue
        if line == "parameters:":
            in_params = True
            continue
        if line == "end of parameters":
            break
        if not in_params:
            continue
        m = _PARAM_LINE.fullmatch(line)
        if m is None:
            _bad(f"malformed parameter line {line[:60]!r}")
        name, value = m.groups()
        if not value:
            continue
        if _UNSAFE_PARAM_CHARS.search(value):
            _bad(f"parameter {name} has a quote, backslash or control character")
        if name in _NUMERIC_PARAMS:
            ok = _JSON_NUMBER_RE.fullmatch(value) is not None
        elif name in _NUMERIC_LIST_PARAMS:
            ok = _NUMBER_LIST_RE.fullmatch(value) is not None
        elif name in _NESTED_LIST_PARAMS:
            ok = _NESTED_LIST_RE.fullmatch(value) is not None
        else:
            ok = True
        if not ok:
            _bad(f"parameter {name} has a malformed value {value[:40]!r}")


def _check_pandas_categorical(text: str) -> None:
    """Mirror lightgbm.basic._load_pandas_categorical: the last line must be valid if present."""
    key = "pandas_categorical:"
    idx = text.rfind("\n", 0, -len(key))
    last_line = text[idx:].strip()
    if not last_line.startswith(key):
        return
    try:
        value = json.loads(last_line[len(key) :])
    except (ValueError, RecursionError):
        _bad("the pandas_categorical line is not valid JSON")
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, list) for v in value):
        _bad("pandas_categorical is not a list of category lists")
    for categories in value:
        if not all(isinstance(c, (str, int, float, bool)) or c is None for c in categories):
            _bad("pandas_categorical holds a category that is not a plain value")
