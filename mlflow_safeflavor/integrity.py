"""Safe file access under a model root: path checks, size caps, read-once digests.

Every payload byte the loader parses comes from :class:`ModelFiles`, which opens each file once
(without following symlinks), refuses anything that is not a plain regular file with a single link,
hashes the bytes it read and hands back those same bytes — there is no check-then-reopen window.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import threading
from pathlib import Path

from dataclasses import dataclass
from typing import Any, Iterable

from mlflow_safeflavor.errors import IntegrityError, InvalidArgumentError, MalformedArtifactError, SafeFlavorError

ENV_MAX_FILE_BYTES = "MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES"
ENV_MAX_TOTAL_BYTES = "MLFLOW_SAFEFLAVOR_MAX_TOTAL_BYTES"
DEFAULT_MAX_FILE_BYTES = 4 * 1024**3
DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3
MLMODEL_MAX_BYTES = 1024**2

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256(?:parts)?:[0-9a-f]{64}$")
PARTS_PREFIX = "sha256parts:"
PART_BYTES = 1 << 20
# Files at least this large are recorded with the parts digest (format 3): below it one SHA-256
# takes under ~5 ms and threads would not pay.
PARTS_MIN_BYTES = 8 << 20
_PARTS_TAG = b"mlflow-safeflavor sha256parts v1\0"
MAX_HASH_THREADS = 8


def sha256_digest(data: bytes) -> str:
    """Return ``sha256:<hex>`` of ``data``, the form MLmodel records."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hash_threads() -> int:
    try:
        return max(1, min(MAX_HASH_THREADS, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):  # not Linux
        return max(1, min(MAX_HASH_THREADS, os.cpu_count() or 1))


def parts_digest(data: bytes | memoryview) -> str:
    """Return ``sha256parts:<hex>``: one SHA-256 over a tag, the length and each 1 MiB part's SHA-256.

    The parts are hashed on every usable core at once (hashlib releases the GIL), so a large file
    is checked in a fraction of the time one sequential SHA-256 takes, with the same strength: two
    inputs with equal digests would need a SHA-256 collision in a part or in the list. Threads are
    started per call rather than pooled, so the function is safe after ``fork`` (Spark workers).
    """
    view = memoryview(data).cast("B")
    n = len(view)
    starts = range(0, n, PART_BYTES)
    hashes: list[bytes] = [b""] * len(starts)

    def work(first: int, last: int) -> None:
        for i in range(first, last):
            hashes[i] = hashlib.sha256(view[starts[i]:starts[i] + PART_BYTES]).digest()

    k = min(_hash_threads(), len(starts))
    bounds = [len(starts) * j // max(k, 1) for j in range(k + 1)]
    started = []
    for j in range(1, k):
        thread = threading.Thread(target=work, args=(bounds[j], bounds[j + 1]), daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (a process or memory limit): hash it here
            work(bounds[j], bounds[j + 1])
            continue
        started.append(thread)
    if k:
        work(bounds[0], bounds[1])
    for thread in started:
        thread.join()
    return _combine(n, hashes)


def _combine(size: int, part_hashes: list[bytes]) -> str:
    """The ``sha256parts:`` digest from the file's length and its parts' SHA-256, in order."""
    outer = hashlib.sha256(_PARTS_TAG + size.to_bytes(8, "little"))
    outer.update(b"".join(part_hashes))
    return PARTS_PREFIX + outer.hexdigest()


class PartsWriter:
    """A binary file wrapper that computes the ``sha256parts:`` digest of what is written through it.

    ``save_model`` writes large files through it so that their digest needs no second read; the
    pieces may have any size, the parts are cut at the same 1 MiB boundaries as
    :func:`parts_digest`, which gives the same value for the same bytes.
    """

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._part = hashlib.sha256()
        self._filled = 0
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: Any) -> int:
        """Write ``data`` (any C-contiguous buffer) to the file and feed it to the digest."""
        view = memoryview(data)
        if view.nbytes == 0:
            return 0
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        self._fh.write(view)
        pos, n = 0, len(view)
        while pos < n:
            take = min(n - pos, PART_BYTES - self._filled)
            self._part.update(view[pos:pos + take])
            pos += take
            self._filled += take
            if self._filled == PART_BYTES:
                self._parts.append(self._part.digest())
                self._part, self._filled = hashlib.sha256(), 0
        self.size += n
        return n

    def digest(self) -> str:
        """``sha256parts:<hex>`` of everything written so far."""
        parts = self._parts + ([self._part.digest()] if self._filled else [])
        return _combine(self.size, parts)


def file_digest(data: bytes) -> str:
    """The digest ``save_model`` records for a payload file: the parts form for large files."""
    return parts_digest(data) if len(data) >= PARTS_MIN_BYTES else sha256_digest(data)


def _cap(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgumentError(
            f"{env}={raw!r} is not an integer number of bytes; set it to a whole number (e.g. "
            f"{default}) or unset it."
        ) from None
    return max(value, 1)


def check_relative_name(name: object, *, root: Path) -> str:
    """Validate a file name taken from MLmodel: relative, forward slashes, no dot segments.

    Raises IntegrityError naming the offending entry; the name is never joined before this passes.
    """
    if not isinstance(name, str) or not name:
        raise IntegrityError(f"{root}/MLmodel lists a file name that is not a string: {name!r}.")
    segments = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or len(segments) > 4
        or not all(_SEGMENT.match(s) and s not in (".", "..") for s in segments)
    ):
        raise IntegrityError(
            f"{root}/MLmodel lists the path {name!r}, which is not a plain relative file name "
            "inside the model directory (absolute paths, '..', backslashes and unusual characters "
            "are refused). Re-save the model with mlflow_safeflavor.save_model."
        )
    return name


def _open_regular(root: Path, name: str) -> int:
    """Open ``root/name`` read-only, refusing symlinks in any segment, links, FIFOs and devices."""
    return _open_checked(root, name)[0]


def _open_checked(root: Path, name: str) -> tuple[int, os.stat_result]:
    """:func:`_open_regular`, also returning the open file's status (its size, for the reader)."""
    # Paths as strings: pathlib's "/" costs ~10 us a call on a cold cache, twice per file read.
    current = str(root)
    for segment in name.split("/")[:-1]:
        current = f"{current}/{segment}"
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise IntegrityError(
                f"{root / name}: missing (the directory {segment!r} does not exist). The model "
                "directory is incomplete; download or re-save it."
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise IntegrityError(
                f"{current}: expected a plain directory, found a symlink or special file; "
                "model directories must hold only regular files."
            )
    path = f"{root}/{name}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise IntegrityError(
            f"{path}: missing. The model directory is incomplete; download or re-save it."
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise IntegrityError(f"{path}: is a symlink; model files must be regular files.")
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityError(
            f"{path}: is not a regular file (FIFO, device, socket or directory); refused."
        )
    if st.st_nlink != 1:
        raise IntegrityError(
            f"{path}: has {st.st_nlink} hard links; copy the model directory instead of linking "
            "its files."
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot be opened safely ({exc.strerror}).") from None
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode) or (st2.st_ino, st2.st_dev) != (st.st_ino, st.st_dev):
        os.close(fd)
        raise IntegrityError(f"{path}: changed while being opened; refused.")
    return fd, st2


def _check_listed_name(name: str, *, root: Path) -> None:
    """Names found by walking the directory: any characters, but still no escape from the root."""
    segments = name.split("/")
    if name.startswith("/") or "\x00" in name or any(s in ("", ".", "..") for s in segments):
        raise IntegrityError(f"{root}: refusing the path {name!r}.")


def read_file(root: Path, name: str, *, max_bytes: int | None = None, listed: bool = False) -> bytes:
    """Read one file under ``root`` safely and return its bytes (size-capped, never follows links).

    ``listed`` marks a name that came from walking the directory rather than from MLmodel: such
    names may hold any characters (``.gitattributes``), but never leave the root.
    """
    if listed:
        _check_listed_name(name, root=root)
    else:
        check_relative_name(name, root=root)
    limit = max_bytes if max_bytes is not None else _cap(ENV_MAX_FILE_BYTES, DEFAULT_MAX_FILE_BYTES)
    fd, st = _open_checked(root, name)
    try:
        # Plain read(2) calls on the descriptor: a buffered reader costs ~1 ms more on a 27 MB
        # file, and a file object would stat the file twice more. Ask for what the file holds
        # (plus one byte to notice growth), not for the cap: CPython reserves the size up front.
        want = min(limit, st.st_size) + 1
        data = os.read(fd, want)
        # Read on only after a short read: a file that holds what fstat said needs no second
        # read(2) to find its end (one more system call per file, ~30 us on a cold cache).
        if len(data) < want - 1 and data:
            # One read(2) returns at most ~2 GiB: read on until the end or ``want``.
            parts, got = [data], len(data)
            while got < want and (more := os.read(fd, want - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
    except OSError as exc:
        raise IntegrityError(f"{root / name}: read failed ({exc.strerror}).") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise IntegrityError(
            f"{root / name}: larger than the {limit}-byte cap; raise {ENV_MAX_FILE_BYTES} if this "
            "model is legitimately that large."
        )
    return data


MAX_LISTED_FILES = 10_000
MAX_DEPTH = 16


class ModelFiles:
    """Read-once access to one model directory: every file is read at most once and cached.

    The signature check, the digest check and the codecs all see the same bytes, so nothing is
    checked on one read and parsed from another.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, bytes] = {}
        self._sha256: dict[str, str] = {}
        self._total = 0
        self._total_cap = _cap(ENV_MAX_TOTAL_BYTES, DEFAULT_MAX_TOTAL_BYTES)

    def read(self, name: str, *, max_bytes: int | None = None, listed: bool = False) -> bytes:
        """Return the bytes of ``root/name``, reading the file on first use only."""
        if name not in self._cache:
            data = read_file(self.root, name, max_bytes=max_bytes, listed=listed)
            self._total += len(data)
            if self._total > self._total_cap:
                raise IntegrityError(
                    f"{self.root}: model files exceed the {self._total_cap}-byte total cap; raise "
                    f"{ENV_MAX_TOTAL_BYTES} if this model is legitimately that large."
                )
            self._cache[name] = data
        return self._cache[name]

    def sha256(self, name: str, *, listed: bool = False) -> str:
        """``sha256:<hex>`` of ``root/name``'s bytes as :meth:`read` returns them, hashed once.

        A load that requires a signature hashes every file for it, then checks the payload's
        recorded digests: both read the same cached bytes, so the second check reuses the hash.
        """
        if name not in self._sha256:
            self._sha256[name] = sha256_digest(self.read(name, listed=listed))
        return self._sha256[name]

    def head(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes of a listed file (from the cache when it was read whole)."""
        if name in self._cache:
            return self._cache[name][:size]
        fd = _open_regular(self.root, name)
        try:
            return os.read(fd, size)
        finally:
            os.close(fd)

    def listing(self) -> list[str]:
        """Every file under the root as a relative name, refusing symlinks and special files.

        Hidden files and directories (``.git*``, ``.github/``) are listed like any other: a
        signature covers the whole directory.
        """
        out: list[str] = []
        stack = [(self.root, "", 0)]
        while stack:
            directory, prefix, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise IntegrityError(f"{directory}: directories nest deeper than {MAX_DEPTH}; refused.")
            with os.scandir(directory) as entries:
                for entry in entries:
                    rel = f"{prefix}{entry.name}"
                    # The entry's type from the directory itself (d_type; lstat only where the file
                    # system does not say): no system call per file. Every file read later is
                    # lstat-ed and fstat-ed again when it is opened.
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), rel + "/", depth + 1))
                    elif entry.is_file(follow_symlinks=False):
                        out.append(rel)
                    else:
                        kind = "a symlink" if entry.is_symlink() else "a FIFO, device or socket"
                        raise IntegrityError(
                            f"{self.root / rel}: is {kind}, not a regular file; model directories must "
                            "hold only regular files. Remove it or obtain a clean copy of the model."
                        )
                    if len(out) > MAX_LISTED_FILES:
                        raise IntegrityError(f"{self.root}: more than {MAX_LISTED_FILES} files; refused.")
        return sorted(out)


@dataclass
class FileCheck:
    """One payload file's digest check: the recorded and actual digests, the bytes, or the error."""

    name: str
    recorded: str
    actual: str | None = None
    data: bytes | None = None
    error: SafeFlavorError | None = None

    @property
    def status(self) -> str:
        """``ok``, ``mismatch`` (read, wrong digest) or ``refused`` (not read: bad name, kind or size)."""
        if self.error is None:
            return "ok"
        return "mismatch" if self.actual is not None else "refused"


def _check_one(files: ModelFiles, name: str, expected: object) -> FileCheck:
    root = files.root
    check = FileCheck(str(name), str(expected))
    try:
        check_relative_name(name, root=root)
        if not isinstance(expected, str) or not _DIGEST.match(expected):
            raise MalformedArtifactError(
                f"{root}/MLmodel: the digest recorded for {name!r} is not 'sha256:<64 hex>' "
                "(or 'sha256parts:<64 hex>'). "
                "Re-save the model with mlflow_safeflavor.save_model."
            )
        data = files.read(name)
    except SafeFlavorError as exc:
        check.error = exc
        return check
    check.actual = parts_digest(data) if expected.startswith(PARTS_PREFIX) else files.sha256(name)
    if hmac.compare_digest(check.actual, expected):
        check.data = data
    else:
        check.error = IntegrityError(
            f"{root / name}: digest mismatch (MLmodel records {expected}, the file hashes to "
            f"{check.actual}). The file was changed after saving; do not load it — obtain the "
            "original model or re-save it."
        )
    return check


def check_digests(files: ModelFiles, digests: dict[str, str]) -> list[FileCheck]:
    """Check every ``name -> sha256:…`` of ``digests`` against the bytes read; never raises for the artifact.

    Each :class:`FileCheck` holds the bytes when they match, else the error a loader raises (a
    missing file, a mismatch, a disallowed file kind or a size cap).
    """
    return [_check_one(files, name, expected) for name, expected in digests.items()]


def verify_digests(files: ModelFiles, digests: dict[str, str]) -> dict[str, bytes]:
    """Return the bytes of every file in ``digests`` after :func:`check_digests`; raise the first failure."""
    out: dict[str, bytes] = {}
    for check in check_digests(files, digests):
        if check.error is not None:
            raise check.error
        out[check.name] = check.data  # type: ignore[assignment]
    return out


def tree_digest(files: ModelFiles, names: Iterable[str]) -> str:
    """One SHA-256 over every named file: ``sha256(name NUL sha256(file) LF ...)``, names sorted."""
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode("utf-8") + b"\0" + files.sha256(name, listed=True).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def read_verified(root: Path, digests: dict[str, str]) -> dict[str, bytes]:
    """Read and digest-check ``digests``' files under ``root`` (see :func:`verify_digests`)."""
    return verify_digests(ModelFiles(root), digests)
