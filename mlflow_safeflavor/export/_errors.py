"""The export's internal refusal, in its own module so that every converter step can raise it."""

from __future__ import annotations


class NotConvertible(Exception):
    """The model (or its input) has no faithful ONNX form; the message says why."""
