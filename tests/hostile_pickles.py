"""Pickles built to exhaust a scanner rather than to run code (issue 18), plus nesting tricks.

Each builder returns the file's bytes; ``posix.system`` payloads would create ``marker`` if
anything ran them. The sizes in the names are those of the issue's table; ``scale`` shrinks the
expensive ones for tests (the benchmark builds them full size).
"""

from __future__ import annotations

import bz2
import pickle
import zlib
from pathlib import Path

from pickle_corpus import _call, _global, _unicode


def _binint(n: int) -> bytes:
    return pickle.BININT + n.to_bytes(4, "little", signed=True)


def bytearray_memo_20x() -> bytes:
    """``bytearray`` memoised, then called 20 times with 2**30 (the issue's 226-byte file)."""
    body = pickle.PROTO + b"\x04" + _global("builtins", "bytearray") + pickle.MEMOIZE + pickle.POP
    for _ in range(20):
        body += pickle.BINGET + b"\x00" + pickle.LONG1 + b"\x05" + (2**30).to_bytes(5, "little") + pickle.TUPLE1 + pickle.REDUCE + pickle.POP
    return body + pickle.NONE + pickle.STOP


def bytes_newobj() -> bytes:
    """``bytes.__new__(bytes, 2**30)`` through NEWOBJ instead of REDUCE."""
    return (pickle.PROTO + b"\x04" + _global("builtins", "bytes") + pickle.LONG1 + b"\x05" + (2**30).to_bytes(5, "little")
            + pickle.TUPLE1 + pickle.NEWOBJ + pickle.STOP)


def list_of_range(n: int = 10**8, kind: str = "list") -> bytes:
    """``list(range(n))`` (the issue's 45-byte file); ``kind`` also tuple, set, frozenset."""
    return (pickle.PROTO + b"\x04" + _global("builtins", kind) + _global("builtins", "range") + _binint(n)
            + pickle.TUPLE1 + pickle.REDUCE + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def none_pops(megabytes: float = 16, compress: bool = True) -> bytes:
    """``megabytes`` of ``N0`` (push None, pop it) opcodes, bz2-compressed like a joblib file."""
    n = int(megabytes * 1024 * 1024) // 2
    raw = pickle.PROTO + b"\x04" + b"N0" * n + pickle.NONE + pickle.STOP
    return bz2.compress(raw, 9) if compress else raw


def distinct_imports(n: int = 20_000) -> bytes:
    """``n`` different module names imported (the issue's 150 KB file)."""
    body = pickle.PROTO + b"\x02"
    for i in range(n):
        body += pickle.GLOBAL + f"m{i}\nf\n".encode() + pickle.POP
    return body + pickle.NONE + pickle.STOP


def gzip_bomb(decompressed: int = 4 * 1024**3) -> bytes:
    """A valid gzip stream of a pickle header and ``decompressed`` zero bytes (4.3 MB for 4 GiB).

    After a full flush deflate output no longer refers to earlier data, so one compressed 16 MiB
    block of zeros is repeated instead of compressing gigabytes; the trailer's CRC is computed.
    """
    chunk = bytes(16 * 1024 * 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = comp.compress(b"\x80\x04") + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(decompressed, len(chunk))
    tail_comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = tail_comp.compress(chunk[:rest]) + tail_comp.flush()
    crc = zlib.crc32(b"\x80\x04")
    for _ in range(blocks):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(chunk[:rest], crc)
    size = (2 + decompressed) & 0xFFFFFFFF
    return head + block * blocks + tail + crc.to_bytes(4, "little") + size.to_bytes(4, "little")


def call_chain(n: int = 100_000) -> bytes:
    """A refused callable called ``n`` times in a chain (``f()()()...``) through the memo."""
    body = pickle.PROTO + b"\x04" + _global("mypkg", "f") + pickle.MEMOIZE + pickle.POP
    body += pickle.BINGET + b"\x00"
    for _ in range(n):
        body += pickle.EMPTY_TUPLE + pickle.REDUCE
    return body + pickle.STOP


def empty_sets(n: int = 1_000_000) -> bytes:
    """``n`` empty sets kept on the stack (the largest object one opcode makes)."""
    return pickle.PROTO + b"\x04" + pickle.MARK + pickle.EMPTY_SET * n + pickle.TUPLE + pickle.STOP


def nested_in_bytes(marker: Path, depth: int) -> bytes:
    """A ``posix.system`` pickle wrapped ``depth`` times as the bytes payload of a plain pickle."""
    data = _call("posix", "system", f"touch {marker}")
    for _ in range(depth):
        data = pickle.dumps({"cache": data}, protocol=4)
    return data


def nested_truncated(marker: Path) -> bytes:
    """A nested binary pickle that imports posix.system, then breaks before its STOP opcode would."""
    inner = _call("posix", "system", f"touch {marker}")[:-1] + pickle.POP + pickle.POP + pickle.POP + pickle.STOP
    return pickle.dumps({"cache": inner}, protocol=4)


def nested_garbled_then_payload(marker: Path) -> bytes:
    """A nested pickle whose first half does not parse for us; the payload comes after the break."""
    inner = (pickle.PROTO + b"\x04" + pickle.NONE + pickle.NONE + pickle.NEWOBJ  # None.__new__: fails here
             + _global("posix", "system") + _unicode(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    return pickle.dumps({"cache": inner}, protocol=4)


def protocol2_bytes_nested(marker: Path) -> bytes:
    """A protocol-2 pickle: its bytes are ``_codecs.encode(text, 'latin1')``, hiding a payload."""
    return pickle.dumps({"cache": _call("posix", "system", f"touch {marker}")}, protocol=2)
