"""Checks of a CatBoost ``.cbm`` container before CatBoost parses it.

CatBoost verifies the model's flatbuffer, but over the size the file *declares*: a truncated file
makes it read past the end of the buffer it was given (measured: sometimes a clean error, sometimes
a load of garbage, sometimes SIGSEGV, depending on what lies after the buffer in memory). The
declared core size (and the sizes of any extra model parts) must account for exactly the bytes we
hold.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from mlflow_safeflavor.errors import MalformedArtifactError

MAGIC = b"CBM1"
MAX_CORE = 8 * 1024**3
MAX_PARTS = 64


def validate(data: bytes, *, path: str) -> None:
    """Raise MalformedArtifactError unless ``data`` is ``CBM1`` + a 4-byte size + exactly that many bytes."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise MalformedArtifactError(
            f"{path}: model.cbm does not start with CatBoost's CBM1 header; it is not a CatBoost "
            "model or was truncated. Do not load it; re-save the model.",
            path=path,
        )
    (core,) = struct.unpack("<I", data[4:8])
    end = 8 + core
    if core == 0 or core > MAX_CORE or end > len(data):
        _truncated(path, f"declares a {core}-byte model core but holds {len(data) - 8} bytes after its header")
    if end == len(data):
        return
    # Models with categorical CTR tables carry extra parts: a ui32 count, then per part a ui32
    # size and that many bytes. They must account for every remaining byte.
    if end + 4 > len(data):
        _truncated(path, "has trailing bytes that are not a model-parts table")
    (parts,) = struct.unpack("<I", data[end : end + 4])
    pos = end + 4
    if parts == 0 or parts > MAX_PARTS:
        _truncated(path, f"declares {parts} model parts")
    for _ in range(parts):
        if pos + 4 > len(data):
            _truncated(path, "ends inside its model-parts table")
        (size,) = struct.unpack("<I", data[pos : pos + 4])
        pos += 4 + size
        if size == 0 or pos > len(data):
            _truncated(path, f"declares a {size}-byte model part past the end of the file")
    if pos != len(data):
        _truncated(path, f"has {len(data) - pos} bytes after its last model part")


def _truncated(path: str, what: str) -> NoReturn:
    raise MalformedArtifactError(
        f"{path}: model.cbm {what} (truncated, padded or crafted). CatBoost would read past the "
        "buffer; do not load it, re-save the model.",
        path=path,
    )
