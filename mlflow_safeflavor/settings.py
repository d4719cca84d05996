"""Numbers read from environment variables, validated in one place with one kind of error."""

from __future__ import annotations

import os

from mlflow_safeflavor.errors import InvalidArgumentError


def env_number(name: str, default: float) -> float:
    """The positive number in environment variable ``name``, or ``default`` when it is unset or empty.

    Raises InvalidArgumentError naming the variable when it is not a positive number.
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r} is not a number.") from None
    if not value > 0:
        raise InvalidArgumentError(f"{name}={raw!r} must be positive.")
    return value
