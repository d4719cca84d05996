"""The page's private scratch space: one ``mkdtemp`` directory (mode 0700) per app, removed at exit.

Layout::

    <root>/uploads/<32 hex>/model.pkl|.pickle|.joblib   the uploaded pickle, under our name
                           /sample.csv|.json|.parquet|.npy   the optional sample rows
    <root>/jobs/<32 hex>/...                             a job's work and its output (the zip)

Ids are ``secrets.token_hex(16)`` and are checked against that shape before any path is built,
so nothing a client sends — file names included — becomes part of a path. An upload is deleted
when its scan refuses it, when the conversion that uses it ends (either way), or after the TTL;
a job's files when its zip is downloaded or after the TTL.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A fresh random id (128 bits, hex)."""
    return secrets.token_hex(16)


def valid_id(value: object) -> bool:
    """True when ``value`` has the exact shape of an id this module hands out."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


@dataclass
class StoredFile:
    """One uploaded file: where we put it and what the client called it (for display only)."""

    field: str
    path: Path
    display: str
    size: int
    content_type: str


@dataclass
class Upload:
    """An upload waiting for its conversion (its scan allowed every import)."""

    id: str
    dir: Path
    files: dict[str, StoredFile] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)


class Workspace:
    """Owns the private temporary directory and the uploads held in it."""

    def __init__(self, ttl_seconds: float, tmp_dir: str | None = None) -> None:
        self.ttl = ttl_seconds
        self.root = Path(tempfile.mkdtemp(prefix="safeflavor-ui-", dir=tmp_dir))  # mode 0700
        self.uploads_dir = self.root / "uploads"
        self.jobs_dir = self.root / "jobs"
        for d in (self.uploads_dir, self.jobs_dir):
            d.mkdir(mode=0o700)
        self._uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()

    # -- uploads ------------------------------------------------------------------------------
    def new_upload_dir(self) -> tuple[str, Path]:
        """A fresh, empty upload directory (0700) and its id."""
        upload_id = new_id()
        path = self.uploads_dir / upload_id
        path.mkdir(mode=0o700)
        return upload_id, path

    def keep(self, upload: Upload, *, max_held_bytes: int | None = None) -> bool:
        """Hold an accepted upload until it is converted or its TTL passes.

        Returns False (and holds nothing) when holding it would take the uploads waiting for a
        conversion past ``max_held_bytes`` together: the caller deletes it and says so.
        """
        self.sweep()
        size = sum(f.size for f in upload.files.values())
        with self._lock:
            if max_held_bytes is not None and self._held_bytes() + size > max_held_bytes:
                return False
            self._uploads[upload.id] = upload
        return True

    def _held_bytes(self) -> int:
        return sum(f.size for u in self._uploads.values() for f in u.files.values())

    def held_bytes(self) -> int:
        """Bytes held on disk by the accepted uploads waiting for a conversion."""
        with self._lock:
            return self._held_bytes()

    def take(self, upload_id: object) -> Upload | None:
        """Remove and return a held upload (the caller deletes it after use), or None."""
        if not valid_id(upload_id):
            return None
        self.sweep()
        with self._lock:
            return self._uploads.pop(upload_id, None)  # type: ignore[arg-type]

    def job_dir(self, job_id: str) -> Path:
        """A job's private directory (created, 0700)."""
        if not valid_id(job_id):
            raise ValueError("not a job id")
        path = self.jobs_dir / job_id
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    @staticmethod
    def remove(path: Path | None) -> None:
        """Delete a file or directory tree if it is there."""
        if path is None:
            return
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def sweep(self) -> None:
        """Delete uploads held longer than the TTL."""
        cutoff = time.monotonic() - self.ttl
        with self._lock:
            stale = [u for u in self._uploads.values() if u.created < cutoff]
            for u in stale:
                del self._uploads[u.id]
        for u in stale:
            self.remove(u.dir)

    def held(self) -> int:
        """How many accepted uploads wait for a conversion."""
        with self._lock:
            return len(self._uploads)

    def close(self) -> None:
        """Delete everything (at shutdown)."""
        with self._lock:
            self._uploads.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Every file still under the workspace, relative to its root (for tests and /api/status)."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


def private_file(path: Path) -> int:
    """Create ``path`` exclusively (0600, never following a symlink) and return its descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
