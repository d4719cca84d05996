"""Small assertions shared by the unit tests."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd


def as_array(x: Any) -> np.ndarray:
    if isinstance(x, (pd.DataFrame, pd.Series)):
        return x.to_numpy()
    return np.asarray(x)


def assert_same(expected: Any, actual: Any) -> None:
    """Identical predictions: same shape, exactly equal values (labels or floats)."""
    e, a = as_array(expected), as_array(actual)
    assert e.shape == a.shape, (e.shape, a.shape)
    if e.dtype.kind in "fc" or a.dtype.kind in "fc":
        np.testing.assert_array_equal(e.astype(float), a.astype(float))
    else:
        assert e.tolist() == a.tolist()


def native_predict(model: Any, method: str, X: Any) -> Any:
    """Call ``method`` the way a user of the library would (Boosters need a DMatrix for xgboost)."""
    if type(model).__module__.startswith("xgboost") and type(model).__name__ == "Booster":
        import xgboost

        return model.predict(xgboost.DMatrix(X))
    return getattr(model, method)(X)


def iter_blobs(root: Path) -> Iterator[tuple[str, bytes]]:
    """Every file under ``root`` and, recursively, every member of every zip among them."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            yield from _expand(str(path.relative_to(root)), path.read_bytes())


def _expand(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    yield name, data
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.namelist():
                yield from _expand(f"{name}!{member}", zf.read(member))


def pickle_findings(name: str, data: bytes) -> list[str]:
    """Reasons ``data`` holds a pickle: a pickle stream header, or an object-dtype .npy array."""
    found = []
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        found.append(f"{name}: starts like a pickle stream (protocol {data[1]})")
    if data[:6] == b"\x93NUMPY":
        fh = io.BytesIO(data)
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = reader(fh)
        if dtype.hasobject:
            found.append(f"{name}: object-dtype numpy array (stored as a pickle)")
    if name.rsplit(".", 1)[-1].lower() in ("pkl", "pickle", "joblib"):
        found.append(f"{name}: pickle file extension")
    if b"cnumpy.core.multiarray\n_reconstruct" in data or b"\x8c\x15numpy.core.multiarray" in data:
        found.append(f"{name}: contains numpy pickle opcodes")
    return found


def write_ec_keypair(directory: Path, stem: str, curve: Any = None) -> tuple[Path, Path]:
    """Write a fresh EC key pair as ``<stem>.pem`` (PKCS8 private) and ``<stem>.pub`` (SPKI); P-256 by default."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(curve or ec.SECP256R1())
    priv, pub = Path(directory) / f"{stem}.pem", Path(directory) / f"{stem}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _no_core_dumps() -> None:  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_raw(script: str, args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -c script *args`` in a child without core dumps: a raw library may die in it."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_no_core_dumps if sys.platform != "win32" else None,
    )


def died_at(proc: subprocess.CompletedProcess) -> int | None:
    """None when a crash-check child got through ('done', exit 0); else the last item index it printed (-1: none)."""
    lines = proc.stdout.split()
    if proc.returncode == 0 and "done" in lines:
        return None
    last = [x for x in lines if x.isdigit()]
    return int(last[-1]) if last else -1
