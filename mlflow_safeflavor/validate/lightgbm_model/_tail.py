"""What follows the trees: the parameters block (LightGBM builds ``Booster.params`` JSON from it) and
the ``pandas_categorical`` line the Python package reads."""

from __future__ import annotations

import json
import re

from mlflow_safeflavor.validate._common import Refused

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


def check_zero_tree_tail(tail: str) -> None:
    """Without trees LightGBM reads the rest of the file as header lines, so none may look like one."""
    for line in tail.split("\n"):
        if not line or line in ("end of trees", "feature_importances:", "parameters:", "end of parameters"):
            continue
        if line.startswith("[") and "=" not in line:
            continue
        if line.startswith("pandas_categorical:"):
            continue
        raise Refused(f"unexpected line after the (empty) tree section: {line[:40]!r}")


def _alternatives(names: frozenset[str]) -> str:
    return "|".join(sorted(names))


# One parameters-block line as check_tail's loop accepts it: empty, 'parameters:', or a
# '[name: value]' line whose value suits its name. The value's shape picks the one alternative
# that can match (most values are a number, which suits every name but the nested-list ones),
# so the name lists are only read, as lookaheads, for the lines that hold something else, and a
# line that fails gives the matcher nothing to retry in the lines before it.
_NUMERIC_NAMES = _alternatives(_NUMERIC_PARAMS)
_LIST_NAMES = _alternatives(_NUMERIC_LIST_PARAMS)
_NESTED_NAMES = _alternatives(_NESTED_LIST_PARAMS)
_TWO_OR_MORE = rf"{_JSON_NUMBER}(?:,{_JSON_NUMBER})+"
_NESTED_NOT_EMPTY = rf"\[(?:{_JSON_NUMBER}(?:,{_JSON_NUMBER})*)?\](?:,\[(?:{_JSON_NUMBER}(?:,{_JSON_NUMBER})*)?\])*"
_GOOD_LINE = (
    r"(?:\[[a-z0-9_]+: \]"
    rf"|\[(?!(?:{_NESTED_NAMES}): )[a-z0-9_]+: {_JSON_NUMBER}\]"
    rf"|\[(?!(?:{_NUMERIC_NAMES}|{_NESTED_NAMES}): )[a-z0-9_]+: {_TWO_OR_MORE}\]"
    rf"|\[(?!(?:{_NUMERIC_NAMES}|{_LIST_NAMES}): )[a-z0-9_]+: {_NESTED_NOT_EMPTY}\]"
    rf"|\[(?!(?:{_NUMERIC_NAMES}|{_LIST_NAMES}|{_NESTED_NAMES}): )[a-z0-9_]+: "
    rf"(?!(?:{_JSON_NUMBER}|{_TWO_OR_MORE}|{_NESTED_NOT_EMPTY})\](?:\n|\Z))[^\"\\\x00-\x1f\x7f]+\]"
    r"|parameters:|)"
)
_GOOD_BLOCK = re.compile(rf"{_GOOD_LINE}(?:\n{_GOOD_LINE})*")


def check_tail(tail: str) -> None:
    """The parameters block (LightGBM builds Booster.params JSON from it)."""
    # The common case in one regular expression over the whole block; the loop below, which
    # names the first bad line, decides alone whenever that does not match.
    begin = tail.find("\nparameters:\n")
    stop = tail.find("\nend of parameters\n")
    if 0 <= begin and begin + 13 <= stop and not tail.startswith(("parameters:\n", "end of parameters\n")):
        if "\nend of parameters\n" not in tail[: begin + 1] and _GOOD_BLOCK.fullmatch(tail, begin + 13, stop):
            return
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
            raise Refused(f"malformed parameter line {line[:60]!r}")
        name, value = m.groups()
        if not value:
            continue
        if _UNSAFE_PARAM_CHARS.search(value):
            raise Refused(f"parameter {name} has a quote, backslash or control character")
        if name in _NUMERIC_PARAMS:
            ok = _JSON_NUMBER_RE.fullmatch(value) is not None
        elif name in _NUMERIC_LIST_PARAMS:
            ok = _NUMBER_LIST_RE.fullmatch(value) is not None
        elif name in _NESTED_LIST_PARAMS:
            ok = _NESTED_LIST_RE.fullmatch(value) is not None
        else:
            ok = True
        if not ok:
            raise Refused(f"parameter {name} has a malformed value {value[:40]!r}")


def check_pandas_categorical(text: str) -> None:
    """Mirror lightgbm.basic._load_pandas_categorical: the last line must be valid if present."""
    key = "pandas_categorical:"
    idx = text.rfind("\n", 0, -len(key))
    last_line = text[idx:].strip()
    if not last_line.startswith(key):
        return
    try:
        value = json.loads(last_line[len(key) :])
    except (ValueError, RecursionError):
        raise Refused("the pandas_categorical line is not valid JSON")
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, list) for v in value):
        raise Refused("pandas_categorical is not a list of category lists")
    for categories in value:
        if not all(isinstance(c, (str, int, float, bool)) or c is None for c in categories):
            raise Refused("pandas_categorical holds a category that is not a plain value")
