"""What the structural validators share: how they refuse, and how they name an offending index.

A validator's checks raise :class:`Refused` with a sentence saying what is wrong; its entry point
runs them through :func:`run_checks`, which turns that sentence (or any surprise that hostile bytes
provoke) into the one public error, :class:`~mlflow_safeflavor.errors.MalformedArtifactError`.
The index helpers work on the layout every validator here uses for a forest: the per-tree arrays
concatenated, with ``offsets`` marking where each tree starts.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

INT32_MAX = 2**31 - 1  # native loaders keep node indices, counts and offsets as int32


class Refused(Exception):
    """Internal: what is wrong with the payload, in words; never leaves a validator's entry point."""


def malformed(path: str, what: str, advice: str) -> MalformedArtifactError:
    """The public refusal: ``"<path>: <what>. <advice>"`` (advice: why it matters, what to do)."""
    return MalformedArtifactError(f"{path}: {what}. {advice}", path=path)


def run_checks(
    check: Callable[[], None],
    fail: Callable[[str], MalformedArtifactError],
    unexpected: Callable[[Exception], str],
) -> None:
    """Run ``check()``; whatever the payload, only :class:`MalformedArtifactError` escapes.

    A :class:`Refused` becomes ``fail(its sentence)``; any other exception (hostile input can
    provoke a ``RecursionError``, ``MemoryError``, ``OverflowError``, ...) becomes
    ``fail(unexpected(exc))``.
    """
    try:
        check()
    except Refused as exc:
        raise fail(str(exc)) from None
    except MalformedArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: only MalformedArtifactError escapes
        raise fail(unexpected(exc)) from None


def offsets_of(sizes: np.ndarray | list[int]) -> np.ndarray:
    """Where each of consecutive parts of the given sizes starts, then the total: ``[0, s0, s0+s1, ...]``."""
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def locate(starts: np.ndarray, index: int) -> tuple[int, int]:
    """(part, position inside that part) of a global ``index``, given the parts' :func:`offsets_of`."""
    part = int(np.searchsorted(starts, index, side="right") - 1)
    return part, index - int(starts[part])


def first_outside(values: np.ndarray, lo: int, hi: int) -> int | None:
    """Index of the first value outside ``[lo, hi]``, or None (the usual case costs one min and max)."""
    if values.size == 0 or (values.min() >= lo and values.max() <= hi):
        return None
    return int(np.argmax((values < lo) | (values > hi)))
