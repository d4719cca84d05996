"""Structural checks of a skops zip before skops reads it.

skops itself decides which *types* a file uses; this module refuses the container tricks around
that: duplicate or unreferenced members, names skops never writes, object-dtype (pickled) arrays,
pickles in raw members, zip bombs, schemas nested past a depth cap and unknown protocol values.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any, Iterator

import numpy as np

from mlflow_safeflavor.errors import MalformedArtifactError

MAX_MEMBERS = 200_000
MAX_SCHEMA_BYTES = 256 * 1024**2
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
MAX_RATIO = 200
MAX_DEPTH = 200
_MEMBER = re.compile(r"^[0-9A-Za-z-]{1,64}\.(npy|npz|bin)$")


def _fail(path: str, problem: str) -> MalformedArtifactError:
    return MalformedArtifactError(
        f"{path}: model.skops {problem}. It was not written by skops/mlflow-safeflavor or was "
        "tampered with; do not load it — re-save the model.",
        path=path,
    )


def looks_like_pickle(head: bytes) -> bool:
    """True if ``head`` starts like a pickle stream of protocol 2 or later (``\\x80 <proto>``)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _npy_has_objects(fh: Any) -> bool:
    """Read only the .npy header from ``fh`` and say whether its dtype holds Python objects.

    An object dtype's descr always contains a capital ``O`` (``'|O'``), and nothing else in a
    header does (keys ``descr``/``fortran_order``/``shape``, values ``True``/``False``, digits):
    headers without one skip numpy's parser, which runs ``ast.literal_eval`` (~50 µs a member).
    """
    head = fh.read(10)
    if len(head) == 10 and head[:6] == b"\x93NUMPY" and head[6] == 1:
        text = fh.read(int.from_bytes(head[8:10], "little"))
        if b"O" not in text:
            return False
        fh = io.BytesIO(head + text)
    else:  # version 2/3 headers (over 64 KiB) or garbage: numpy's own parser decides
        fh = io.BytesIO(head + fh.read(1024**2))
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    return dtype.hasobject


def _schema_files(schema: Any) -> Iterator[str]:
    """Yield every ``file`` entry of the schema, iteratively (bounded depth, no recursion).

    Only containers are pushed (most schema values are strings): this walk runs on every load.
    """
    stack = [(schema, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            raise ValueError("depth")
        if type(node) is dict:
            name = node.get("file")
            if type(name) is str:
                yield name
            values = node.values()
        else:
            values = node
        for value in values:
            if type(value) is dict or type(value) is list:
                push((value, depth + 1))


def check(data: bytes, *, path: str) -> None:
    """Raise MalformedArtifactError unless ``data`` is a skops zip with no container tricks."""
    open_checked(data, path=path)


def open_checked(data: bytes, *, path: str) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    """Check ``data`` like :func:`check` and return the open zip and its parsed schema.

    The caller hands both to skops' ``get_tree`` so that schema.json is read and parsed once.
    """
    from skops.io._protocol import PROTOCOL

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise _fail(path, "is not a readable zip file") from None
    if len(infos) > MAX_MEMBERS:
        raise _fail(path, f"has more than {MAX_MEMBERS} members")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise _fail(path, "has duplicate member names")
    total = 0
    for info in infos:
        if info.filename != "schema.json" and not _MEMBER.match(info.filename):
            raise _fail(path, f"has a member skops never writes: {info.filename!r:.80}")
        if info.flag_bits & 0x1:
            raise _fail(path, "has an encrypted member")
        total += info.file_size
        if total > MAX_UNCOMPRESSED_BYTES or (
            info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1024**2
        ):
            raise _fail(path, "declares sizes that would expand past the cap (zip bomb)")
    if "schema.json" not in names:
        raise _fail(path, "has no schema.json")
    try:
        raw = zf.read("schema.json")
        if len(raw) > MAX_SCHEMA_BYTES:
            raise _fail(path, "has an oversized schema.json")
        schema = json.loads(raw)
        referenced = set(_schema_files(schema))
    except MalformedArtifactError:
        raise
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError, EOFError):
        raise _fail(path, f"has a schema.json that is not valid JSON or nests deeper than {MAX_DEPTH}") from None
    if not isinstance(schema, dict) or not isinstance(schema.get("protocol"), int) or isinstance(
        schema["protocol"], bool
    ) or not (0 <= schema["protocol"] <= PROTOCOL):
        raise _fail(path, f"has a protocol value skops {PROTOCOL} would not write")
    members = set(names) - {"schema.json"}
    if members - referenced:
        raise _fail(path, f"has members the schema does not reference: {sorted(members - referenced)[:5]}")
    if referenced - members:
        raise _fail(path, "references members that are missing")
    for name in members:
        try:
            _check_member(zf, name)
        except MalformedArtifactError:
            raise
        except (ValueError, zipfile.BadZipFile, OSError, EOFError):
            raise _fail(path, f"has a corrupt member {name!r}") from None
    return zf, schema


def _check_member(zf: zipfile.ZipFile, name: str) -> None:
    # Only headers are read: the whole payload's digest was already checked, and reading every
    # array here would double the cost of loading.
    if name.endswith(".npy"):
        with zf.open(name) as fh:
            if _npy_has_objects(fh):
                raise MalformedArtifactError(
                    f"model.skops member {name!r} is an object-dtype array, which numpy stores as a "
                    "pickle; refused."
                )
    elif name.endswith(".npz"):
        inner = zipfile.ZipFile(io.BytesIO(zf.read(name)))
        if len(inner.infolist()) > 64:
            raise ValueError("too many arrays")
        for info in inner.infolist():
            if info.file_size > MAX_UNCOMPRESSED_BYTES:
                raise ValueError("too big")
            if not info.filename.endswith(".npy"):
                raise MalformedArtifactError(f"model.skops member {name!r} holds a non-array member; refused.")
            with inner.open(info.filename) as fh:
                if _npy_has_objects(fh):
                    raise MalformedArtifactError(
                        f"model.skops member {name!r} holds a pickled (object-dtype) array; refused."
                    )
    else:
        with zf.open(name) as fh:
            if looks_like_pickle(fh.read(2)):
                raise MalformedArtifactError(f"model.skops member {name!r} is a pickle stream; refused.")
