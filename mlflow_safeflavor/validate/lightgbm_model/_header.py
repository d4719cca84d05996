"""The header of a LightGBM text model (the lines before the first ``Tree=``), read the way
``GBDT::LoadModelFromString`` reads it: known keys once each, counts that agree with each other, an
objective LightGBM's factory accepts."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mlflow_safeflavor.validate._common import INT32_MAX, Refused
from mlflow_safeflavor.validate.lightgbm_model._caps import MAX_CLASSES, MAX_FEATURES, MAX_TREES

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

_FLOAT = r"-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?"
_FLOAT_RE = re.compile(_FLOAT)
_INT_TEXT = re.compile(r"-?[0-9]{1,10}")
_MONOTONE = re.compile(r"(?:-1|0|1)(?: (?:-1|0|1))*")
_SIZES = re.compile(r"[0-9]{1,12}(?: [0-9]{1,12})*")


def _parse_int(value: str, what: str, lo: int, hi: int) -> int:
    if not _INT_TEXT.fullmatch(value):
        raise Refused(f"{what} is not an integer ({value[:40]!r})")
    number = int(value)
    if not lo <= number <= hi:
        raise Refused(f"{what}={number} is out of range [{lo}, {hi}]")
    return number


def _tokens(value: str) -> list[str]:
    """LightGBM's Common::Split(str, ' '): empty pieces are dropped."""
    return [piece for piece in value.split(" ") if piece]


def _count_tokens(value: str) -> int:
    """len(_tokens(value)) without building the pieces (feature_names can be millions long)."""
    if len(value) < 100_000:
        pieces = value.split(" ")
        return len(pieces) - pieces.count("")
    b = np.frombuffer(value.encode("utf-8"), dtype=np.uint8) != 32
    return int(b[0]) + int(np.count_nonzero(b[1:] & ~b[:-1]))


def parse_header(header_text: str) -> dict[str, Any]:
    lines = header_text.split("\n")
    if lines[0] != "tree":
        raise Refused("the first line is not 'tree'")
    raw: dict[str, str] = {}
    seen_blank = False
    for line in lines[1:]:
        if not line:
            seen_blank = True
            continue
        if seen_blank:
            raise Refused(f"unexpected header line after a blank line ({line[:40]!r})")
        # Mirror LightGBM: split on '=', drop empty pieces.
        parts = [piece for piece in line.split("=") if piece]
        if not parts:
            raise Refused(f"malformed header line {line[:40]!r}")
        key = parts[0]
        if len(parts) == 1:
            value = ""
        elif len(parts) == 2:
            value = parts[1]
        elif key == "feature_names" and line.startswith("feature_names="):
            value = line[len("feature_names=") :]
        else:
            raise Refused(f"header line {line[:40]!r} has more than one '='")
        if key not in _HEADER_KEYS:
            raise Refused(f"unknown header line {line[:40]!r}")
        if key in raw:
            raise Refused(f"header key {key!r} appears twice")
        if line != (key if key == "average_output" else f"{key}={value}"):
            raise Refused(f"header line {line[:40]!r} is not in 'key=value' form")
        raw[key] = value
    for key in _REQUIRED_HEADER:
        if key not in raw:
            raise Refused(f"the header has no {key}")

    if raw["version"] not in _VERSIONS:
        raise Refused(f"unknown model version {raw['version'][:20]!r}")
    num_class = _parse_int(raw["num_class"], "num_class", 1, MAX_CLASSES)
    ntpi = num_class
    if "num_tree_per_iteration" in raw:
        ntpi = _parse_int(raw["num_tree_per_iteration"], "num_tree_per_iteration", 1, MAX_CLASSES)
    if ntpi != num_class:
        # Predict sizes its output by num_class and writes num_tree_per_iteration values.
        raise Refused(f"num_tree_per_iteration={ntpi} differs from num_class={num_class}")
    _parse_int(raw["label_index"], "label_index", 0, INT32_MAX)
    max_feature_idx = _parse_int(raw["max_feature_idx"], "max_feature_idx", 0, MAX_FEATURES - 1)
    n_features = max_feature_idx + 1
    if _count_tokens(raw["feature_names"]) != n_features:
        raise Refused(f"feature_names does not list max_feature_idx + 1 = {n_features} names")
    if _count_tokens(raw["feature_infos"]) != n_features:
        raise Refused(f"feature_infos does not list max_feature_idx + 1 = {n_features} entries")
    if "monotone_constraints" in raw:
        constraints = raw["monotone_constraints"]
        if not _MONOTONE.fullmatch(constraints) or constraints.count(" ") + 1 != n_features:
            raise Refused("monotone_constraints is not one of -1/0/1 per feature")
    if "average_output" in raw and raw["average_output"]:
        raise Refused("average_output has a value")
    if "objective" in raw:
        _check_objective(raw["objective"], num_class)

    sizes_text = raw["tree_sizes"]
    if sizes_text and not _SIZES.fullmatch(sizes_text):
        raise Refused("tree_sizes is not a list of sizes")
    sizes = list(map(int, sizes_text.split(" "))) if sizes_text else []
    if len(sizes) > MAX_TREES:
        raise Refused(f"the model has {len(sizes)} trees (limit {MAX_TREES})")
    return {
        "num_class": num_class,
        "num_tree_per_iteration": ntpi,
        "max_feature_idx": max_feature_idx,
        "tree_sizes": sizes,
    }


def _check_objective(value: str, num_class: int) -> None:
    tokens = _tokens(value)
    if not tokens:
        raise Refused("objective is empty")
    name, options = tokens[0], tokens[1:]
    if name not in _OBJECTIVES:
        raise Refused(f"unknown objective {name[:40]!r}")
    for option in options:
        if not _OBJECTIVE_OPTION.fullmatch(option):
            raise Refused(f"malformed objective option {option[:40]!r}")
    fields = dict(option.split(":", 1) for option in options if ":" in option)
    if "sigmoid" in fields:
        if not _FLOAT_RE.fullmatch(fields["sigmoid"]) or not 0 < float(fields["sigmoid"]) < float("inf"):
            raise Refused(f"objective sigmoid {fields['sigmoid'][:20]!r} is not a positive number")
    if name in _MULTICLASS_OBJECTIVES:
        k = fields.get("num_class")
        if k is None or not _INT_TEXT.fullmatch(k) or int(k) != num_class:
            # The objective converts num_class:K outputs in a buffer of num_class values.
            raise Refused(f"objective {value[:60]!r} does not say num_class:{num_class}")
        if num_class < 2:
            raise Refused(f"objective {name} needs num_class >= 2")
    elif name != "custom" and num_class != 1:
        raise Refused(f"objective {name} with num_class={num_class}")

