"""Checks of a CatBoost ``.cbm`` container before CatBoost parses it.

CatBoost verifies the model's flatbuffer, but over the size the file *declares*: a truncated file
makes it read past the end of the buffer it was given (measured: sometimes a clean error, sometimes
a load of garbage, sometimes SIGSEGV, depending on what lies after the buffer in memory). The
declared core size must therefore match the bytes we hold exactly.
"""

from __future__ import annotations

import struct

from mlflow_safeflavor.errors import MalformedArtifactError

MAGIC = b"CBM1"
MAX_CORE = 8 * 1024**3


def validate(data: bytes, *, path: str) -> None:
    """Raise MalformedArtifactError unless ``data`` is ``CBM1`` + a 4-byte size + exactly that many bytes."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise MalformedArtifactError(
            f"{path}: model.cbm does not start with CatBoost's CBM1 header; it is not a CatBoost "
            "model or was truncated. Do not load it; re-save the model.",
            path=path,
        )
    (core,) = struct.unpack("<I", data[4:8])
    if core == 0 or core > MAX_CORE or len(data) != 8 + core:
        raise MalformedArtifactError(
            f"{path}: model.cbm declares a {core}-byte model core but holds {len(data) - 8} bytes "
            "after its header (truncated or padded). CatBoost would read past the buffer; do not "
            "load it, re-save the model.",
            path=path,
        )
