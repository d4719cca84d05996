"""Read a pickle/joblib file's bytes once, under a size cap, undoing joblib's compression.

The cap is the smallest of the per-file cap (``MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES``), the scan cap
(``MLFLOW_SAFEFLAVOR_SCAN_MAX_MB``) and whatever the caller passes (the web page passes its upload
cap). It bounds the decompressed stream too: a small compressed file cannot grow past it, and the
decompressor is never asked for more than the cap plus one byte.
"""

from __future__ import annotations

import bz2
import errno
import lzma
import os
import stat
import zlib
from pathlib import Path
from typing import Any

from mlflow_safeflavor.errors import InvalidArgumentError, MalformedArtifactError
from mlflow_safeflavor.integrity import DEFAULT_MAX_FILE_BYTES, ENV_MAX_FILE_BYTES, _cap
from mlflow_safeflavor.migrate.budget import ENV_SCAN_MAX_MB, ScanLimits

_PIECE = 16 * 1024 * 1024
# joblib's compressors, by the magic bytes their streams start with.
_COMPRESSION = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x78", "zlib"),
)


def stream_cap(max_bytes: int | None = None, setting: str | None = None, limits: ScanLimits | None = None) -> tuple[int, str]:
    """The byte cap for one scan and the setting that raises it."""
    limits = limits or ScanLimits.from_env()
    caps = [(_cap(ENV_MAX_FILE_BYTES, DEFAULT_MAX_FILE_BYTES), ENV_MAX_FILE_BYTES), (limits.max_bytes, ENV_SCAN_MAX_MB)]
    if max_bytes is not None:
        caps.append((max(1, int(max_bytes)), setting or "max_bytes="))
    return min(caps, key=lambda c: c[0])


def read_pickle_bytes(path: str | os.PathLike, *, label: str | None = None, cap: tuple[int, str] | None = None) -> tuple[bytes, str]:
    """Read a pickle/joblib file (decompressing joblib's compressors) under the size cap.

    The file is opened once without following a symlink and must be a regular file. Returns the
    raw pickle stream and a container label; raises InvalidArgumentError for a missing, linked or
    special file and MalformedArtifactError for one that is too large, a decompression bomb, or a
    compressor we do not read.
    """
    p = Path(path)
    label = label or str(p)
    limit, setting = cap or stream_cap()
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgumentError(f"{label}: is a symbolic link; only regular files are read (pass the file itself).", path=label) from None
        raise InvalidArgumentError(f"{label}: cannot read the file ({exc.strerror}).", path=label) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgumentError(f"{label}: not a regular file.", path=label)
        if st.st_size > limit:
            raise MalformedArtifactError(f"{label}: {st.st_size} bytes is over the {limit}-byte cap ({setting}).", path=label)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise MalformedArtifactError(f"{label}: grew past the {limit}-byte cap while being read ({setting}).", path=label)
    return decompress(data, label=label, cap=(limit, setting))


def decompress(data: bytes, *, label: str, cap: tuple[int, str] | None = None) -> tuple[bytes, str]:
    """Undo joblib's compression (if any) with a bound on the decompressed size."""
    limit, setting = cap or stream_cap()
    if len(data) > limit:
        raise MalformedArtifactError(f"{label}: {len(data)} bytes is over the {limit}-byte cap ({setting}).", path=label)
    if data[:1] == b"\x80" or not data:
        return data, "pickle"
    if data[:2] == b"ZF":
        raise MalformedArtifactError(
            f"{label}: a joblib < 0.10 compressed file; this legacy format is not read. Load and "
            "re-dump it with a current joblib in an isolated environment you trust.",
            path=label,
        )
    for magic, kind in _COMPRESSION:
        if data.startswith(magic):
            break
    else:
        return data, "pickle"
    if kind == "lz4":
        raise MalformedArtifactError(
            f"{label}: lz4-compressed joblib files are not read (no lz4 decoder is installed "
            "with mlflow-safeflavor); re-dump with compress=('zlib', 3).",
            path=label,
        )
    dec: Any
    if kind == "zlib":
        dec = zlib.decompressobj()
    elif kind == "gzip":
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif kind == "bz2":
        dec = bz2.BZ2Decompressor()
    else:
        dec = lzma.LZMADecompressor()
    # In pieces, so a bomb is stopped holding the cap plus one piece, never the decompressor's
    # doubling buffer for the whole cap.
    pieces: list[bytes] = []
    total = 0
    try:
        if kind in ("zlib", "gzip"):
            pending = data
            while True:
                piece = dec.decompress(pending, _PIECE)
                pending = dec.unconsumed_tail
                total += len(piece)
                pieces.append(piece)
                if total > limit or dec.eof or not (pending or piece):
                    break
        else:
            piece = dec.decompress(data, max_length=_PIECE)
            while True:
                total += len(piece)
                pieces.append(piece)
                if total > limit or dec.eof or dec.needs_input:
                    break
                piece = dec.decompress(b"", max_length=_PIECE)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise MalformedArtifactError(f"{label}: corrupt {kind} stream ({exc}).", path=label) from None
    if total > limit:
        raise MalformedArtifactError(
            f"{label}: decompresses to more than {limit} bytes ({setting}); refused as a possible "
            "decompression bomb.",
            path=label,
        )
    return b"".join(pieces), f"joblib ({kind})"
