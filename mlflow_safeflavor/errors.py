"""Errors raised on purpose by mlflow-safeflavor.

Every refusal is a :class:`SafeFlavorError`, itself an ``MlflowException`` so MLflow's REST layer
and scoring server turn it into a normal JSON error. Security outcomes get their own subclasses so
a caller can tell a tampered model from a bad argument.
"""

from __future__ import annotations

from typing import Any, Iterable

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED


class SafeFlavorError(MlflowException):
    """Base of every error mlflow-safeflavor raises on purpose.

    The message names the file (when there is one), the problem and the fix.
    """

    default_error_code = INVALID_PARAMETER_VALUE

    def __init__(self, message: str, *, path: str | None = None, **kwargs) -> None:
        self.path = path
        kwargs.setdefault("error_code", self.default_error_code)
        super().__init__(message, **kwargs)

    def diagnostics(self) -> str:
        """Return the message a person can act on (the same text as ``str(err)``)."""
        return self.message


class UntrustedTypesError(SafeFlavorError):
    """The payload needs types the loading side's policy does not allow (or MLmodel hides)."""

    default_error_code = PERMISSION_DENIED

    def __init__(self, message: str, *, types: list[str] | None = None, **kwargs) -> None:
        self.types = sorted(types or [])
        super().__init__(message, **kwargs)


class IntegrityError(SafeFlavorError):
    """A file is missing, has the wrong digest, the wrong kind, or escapes the model directory."""

    default_error_code = PERMISSION_DENIED


class SignatureError(IntegrityError):
    """A signature is required but missing, invalid, or made with a key the loader does not trust."""


class UnsupportedModelError(SafeFlavorError):
    """The object cannot be stored by this flavor without pickle."""


class MalformedArtifactError(SafeFlavorError):
    """The MLmodel file or a payload is not what this flavor writes (bad schema or structure)."""


class InvalidArgumentError(SafeFlavorError):
    """A caller passed an argument of the wrong type or value."""


class PickleRefusedError(UntrustedTypesError):
    """A pickle would import something outside the allowlist (or cannot be scanned); never loaded.

    ``findings`` holds every refused import or construct the static scan found, so a caller can
    show all of them at once instead of fixing one at a time.
    """

    def __init__(self, message: str, *, findings: list[str] | None = None, **kwargs) -> None:
        self.findings = list(findings or [])
        super().__init__(message, types=self.findings, **kwargs)


class ConversionError(SafeFlavorError):
    """A conversion ran but its result cannot be trusted: predictions differ, or the isolated
    conversion process crashed or timed out. Nothing was written or registered."""


class MissingDependencyError(SafeFlavorError):
    """Building the model needs a Python package that is not installed where it is loaded."""


class PromotionRejectedError(SafeFlavorError):
    """A model version failed the gate: it gets no protected alias and a ``safeflavor.rejected`` tag."""

    default_error_code = PERMISSION_DENIED

    def __init__(self, message: str, *, failed: Iterable[str] = (), **kwargs: Any) -> None:
        self.failed = list(failed)
        super().__init__(message, **kwargs)
