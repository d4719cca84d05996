"""Numbers read from environment variables, validated in one place with one kind of error."""

from __future__ import annotations

import os

from mlflow_safeflavor.errors import InvalidArgumentError


def env_number(name: str, default: float, *, minimum: float | None = None) -> float:
    """The number in environment variable ``name``, or ``default`` when it is unset or empty.

    The number must be positive, or at least ``minimum`` when one is given; otherwise
    InvalidArgumentError names the variable.
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r} is not a number.") from None
    if minimum is None and not value > 0:
        raise InvalidArgumentError(f"{name}={raw!r} must be positive.")
    if minimum is not None and not value >= minimum:
        raise InvalidArgumentError(f"{name}={raw!r} must be at least {minimum:g}.")
    return value
