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
The caps (:mod:`._caps`) bound memory and recursion for hostile files; they are far above real models.

The package reads in the order a file is checked: :mod:`._decode` (format sniffing, JSON, UBJ) with
its fast tree readers :mod:`._ubj_trees`; :mod:`._schema` (keys, types and sizes of the document,
over the typed reads of :mod:`._values`); :mod:`._structure` (indices, cycles, depth, features).
"""

from __future__ import annotations

from mlflow_safeflavor.validate._common import Refused, malformed, run_checks
from mlflow_safeflavor.validate.xgboost_model._caps import (
    MAX_CAT_BITSET_BYTES,
    MAX_CATEGORY,
    MAX_FEATURES,
    MAX_NESTING,
    MAX_OUTPUTS,
    MAX_TOTAL_NODES,
    MAX_TREE_DEPTH,
    MAX_TREE_NODES,
    MAX_TREES,
    MAX_UBJ_VALUES,
)
from mlflow_safeflavor.validate.xgboost_model._decode import UBJDecoder, load_json, sniff
from mlflow_safeflavor.validate.xgboost_model._schema import check_document

__all__ = [
    "MAX_CATEGORY",
    "MAX_CAT_BITSET_BYTES",
    "MAX_FEATURES",
    "MAX_NESTING",
    "MAX_OUTPUTS",
    "MAX_TOTAL_NODES",
    "MAX_TREES",
    "MAX_TREE_DEPTH",
    "MAX_TREE_NODES",
    "MAX_UBJ_VALUES",
    "validate",
]

_ADVICE = ("XGBoost's native loader does not check this and can crash the process on it; the file is "
           "corrupt or was crafted — do not load it, re-save the model with XGBoost.")


def validate(data: bytes, *, path: str, fmt: str) -> None:
    """Raise MalformedArtifactError unless ``data`` is a structurally sound XGBoost model in ``fmt``.

    ``fmt`` is ``"ubj"`` or ``"json"``. Never raises anything else for any input bytes.
    """
    run_checks(lambda: _check(data, fmt), lambda what: malformed(path, what, _ADVICE), _unexpected)


def _check(data: bytes, fmt: str) -> None:
    if fmt not in ("ubj", "json"):
        raise Refused(f"unknown XGBoost model format {fmt!r} (expected 'ubj' or 'json')")
    if not isinstance(data, bytes):
        data = bytes(data)
    sniff(data, fmt)
    check_document(UBJDecoder(data).decode() if fmt == "ubj" else load_json(data))


def _unexpected(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "the model is nested too deeply to be an XGBoost model"
    if isinstance(exc, MemoryError):
        return "the model is too large to validate in memory"
    return f"the model could not be validated ({type(exc).__name__}: {str(exc)[:200]})"
