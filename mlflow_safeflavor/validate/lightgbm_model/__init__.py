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
LightGBM. The tree section is checked as a whole rather than tree by tree (see :mod:`._text`).

The package reads in the order a file is checked: :mod:`._header` (the lines before the trees),
:mod:`._text` (the tree section cut into fields and numbers), :mod:`._trees` (the trees' structure),
:mod:`._tail` (the parameters block and ``pandas_categorical``); the caps are in :mod:`._caps`.
"""

from __future__ import annotations

from typing import Any

from mlflow_safeflavor.errors import MalformedArtifactError
from mlflow_safeflavor.validate._common import Refused, malformed, run_checks
from mlflow_safeflavor.validate.lightgbm_model._caps import MAX_CLASSES, MAX_DEPTH, MAX_FEATURES, MAX_LEAVES, MAX_TREES
from mlflow_safeflavor.validate.lightgbm_model._header import parse_header
from mlflow_safeflavor.validate.lightgbm_model._tail import check_pandas_categorical, check_tail, check_zero_tree_tail
from mlflow_safeflavor.validate.lightgbm_model._trees import check_trees

__all__ = ["MAX_CLASSES", "MAX_DEPTH", "MAX_FEATURES", "MAX_LEAVES", "MAX_TREES", "validate"]

_ADVICE = ("LightGBM does not check this and can crash the process (abort or segfault) or hang loading "
           "it; the file was crafted or corrupted — do not load it, re-save the model.")


def validate(data: str, *, path: str, encoded: bytes | None = None) -> None:
    """Refuse ``data`` (the model text) unless it is structurally a LightGBM model LightGBM can load safely.

    ``encoded`` may pass ``data.encode("utf-8")`` when the caller already holds those bytes (the
    codec decoded them from the file), which saves encoding a large model again. Raises
    :class:`MalformedArtifactError` (and nothing else) for any problem, whatever ``data`` is.
    """
    run_checks(lambda: _check(data, encoded), lambda what: _fail(path, what), _unexpected)


def _fail(path: str, what: str) -> MalformedArtifactError:
    return malformed(path, f"model.txt is not a LightGBM model as model_to_string() writes it: {what}", _ADVICE)


def _unexpected(exc: Exception) -> str:
    return f"it could not be checked ({type(exc).__name__})"


def _check(text: Any, encoded: bytes | None = None) -> None:
    if not isinstance(text, str):
        raise Refused("it is not text")
    if isinstance(encoded, bytes):
        data = encoded
    else:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("it is not valid Unicode text") from None
    # LightGBM reads header lines until the first line that starts with "Tree=" (with no tree
    # at all, to the end of the file).
    first_tree = data.find(b"\nTree=")
    if first_tree < 0:
        end = data.find(b"\nend of trees\n")
        if end < 0:
            raise Refused("the 'end of trees' line is missing")
        p0 = tail_start = end + 1
    else:
        p0 = first_tree + 1
    _plain_text(data, 0, p0)  # the tree section's characters are checked with its numbers
    header = parse_header(data[:p0].decode("utf-8"))

    n_trees = len(header["tree_sizes"])
    if first_tree < 0:
        if n_trees:
            raise Refused(f"tree_sizes lists {n_trees} trees but the file has none")
        _plain_text(data, tail_start, len(data))
        check_zero_tree_tail(data[tail_start:].decode("utf-8"))
    else:
        if n_trees == 0:
            raise Refused("tree_sizes is empty but the file has trees")
        if n_trees % header["num_tree_per_iteration"]:
            raise Refused(
                f"{n_trees} trees is not a multiple of num_tree_per_iteration="
                f"{header['num_tree_per_iteration']}"
            )
        tail_start = p0 + sum(header["tree_sizes"])
        if not data.startswith(b"end of trees\n", tail_start):
            raise Refused(
                "tree_sizes does not add up to the tree section (the trees must be followed by "
                "'end of trees' exactly where tree_sizes says they end)"
            )
        _plain_text(data, tail_start, len(data))
        check_trees(data[p0:tail_start], header["tree_sizes"], header["max_feature_idx"])
    check_tail(data[tail_start:].decode("utf-8"))
    check_pandas_categorical(text)


def _plain_text(data: bytes, start: int, end: int) -> None:
    """No NUL and no carriage return in ``data[start:end]`` (the header or what follows the trees)."""
    if data.find(b"\x00", start, end) >= 0:
        raise Refused("it contains a NUL byte")
    if data.find(b"\r", start, end) >= 0:
        # LightGBM writes "\n" only; tree_sizes counts bytes, so CRLF text cannot load.
        raise Refused("it contains carriage returns (was it saved with Windows line endings?)")
