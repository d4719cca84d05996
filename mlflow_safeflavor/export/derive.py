"""Exports derived where a model is deployed: made from the verified checkpoint, cached locally.

A model saved with the default (checkpoint only) has no ``model.onnx``. ``mlflow-safeflavor serve
--backend auto|onnx`` then makes one here: the checkpoint's bytes *that passed every check*
(digests, signature, trust decision) are written to a private directory, converted and
agreement-checked in the bounded converter worker exactly as at save time, and the result is
cached under ``$MLFLOW_SAFEFLAVOR_CACHE_DIR`` (default ``~/.cache/mlflow-safeflavor``) in
``onnx/<key>/``, keyed by the payload's digests, the input example, and the versions of this
package and of the converter packages. A derived export trusts nothing new: it is our own output
from a model that already passed, and nothing is ever read from an artifact's own ``model.onnx``.

Reuse checks the cached file's SHA-256 against its entry and runs the ONNX checks again before a
session is built; an entry that fails is discarded and derived afresh. Entries are written to a
temporary directory in the cache and renamed into place, so a reader sees a whole entry or none.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow_safeflavor.errors import MalformedArtifactError, SafeFlavorError, UnsupportedModelError

ENV_CACHE = "MLFLOW_SAFEFLAVOR_CACHE_DIR"
ENTRY = "entry.json"
ENTRY_MAX_BYTES = 1 << 20
_logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where derived exports live: ``$MLFLOW_SAFEFLAVOR_CACHE_DIR/onnx`` or ``~/.cache/mlflow-safeflavor/onnx``."""
    base = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "mlflow-safeflavor")
    return Path(base) / "onnx"


def _versions() -> dict[str, str]:
    from mlflow_safeflavor._version import __version__
    from mlflow_safeflavor.export import EXTRA_MODULES

    out = {"mlflow-safeflavor": __version__}
    for name in EXTRA_MODULES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def _example(root: Path, mlmodel: dict[str, Any]) -> tuple[Any, str]:
    """The model's input example (as save_model had it) and a digest of it; (None, "") without one."""
    if not mlmodel.get("saved_input_example_info"):
        return None, ""
    try:
        from mlflow.models import Model

        example = Model.from_dict(mlmodel).load_input_example(str(root))
    except Exception as exc:  # noqa: BLE001 - an unreadable example only weakens the check's input
        _logger.info("mlflow_safeflavor: deriving the ONNX export without the input example (%s)", exc)
        return None, ""
    import numpy as np
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        text = example.to_json(orient="split", double_precision=15) + str(list(map(str, example.dtypes)))
    elif isinstance(example, np.ndarray) and example.dtype.kind in "fiub":
        text = f"{example.dtype}{example.shape}" + example.tobytes().hex()
    else:
        return None, ""
    return example, hashlib.sha256(text.encode()).hexdigest()


def cache_key(record: Any, required: Any, example_digest: str) -> str:
    """The cache key: what the export is a function of (payload, trust, example, tool versions)."""
    doc = {
        "codec": record.codec, "model_class": record.model_class,
        "files": {n: d for n, d in sorted(record.files.items()) if n != "model.onnx"},
        "trusted": sorted(required), "example": example_digest, "versions": _versions(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:40]


def _load_entry(entry_dir: Path) -> tuple[bytes, Any] | None:
    """A cached export whose bytes match its entry's digest, with its parsed record; else None."""
    from mlflow_safeflavor import integrity
    from mlflow_safeflavor.record import parse_onnx

    try:
        raw = (entry_dir / ENTRY).read_bytes()
        if len(raw) > ENTRY_MAX_BYTES:
            raise ValueError("entry too large")
        doc = json.loads(raw)
        data = (entry_dir / "model.onnx").read_bytes()
        if not isinstance(doc, dict) or integrity.sha256_digest(data) != doc.get("sha256"):
            raise ValueError("model.onnx does not match the digest in its entry")
        record = parse_onnx(doc.get("record"), files={"model.onnx": doc["sha256"]}, root=entry_dir)
    except (OSError, ValueError, KeyError, TypeError, MalformedArtifactError) as exc:
        _logger.warning("mlflow_safeflavor: discarding the cached ONNX export %s (%s)", entry_dir,
                        getattr(exc, "message", exc))
        return None
    return data, record


def _store(entry_dir: Path, data: bytes, record: dict[str, Any]) -> None:
    """Write the entry into a temporary directory beside it and rename it into place."""
    from mlflow_safeflavor import integrity

    entry_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry_dir.parent))
    try:
        (tmp / "model.onnx").write_bytes(data)
        doc = {"sha256": integrity.sha256_digest(data), "record": record, "created": time.time()}
        (tmp / ENTRY).write_text(json.dumps(doc, indent=1))
        shutil.rmtree(entry_dir, ignore_errors=True)  # a discarded entry, if any
        try:
            os.rename(tmp, entry_dir)
        except OSError:
            pass  # another process stored the same entry first: theirs is as good
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def derived_runner(progress: Any, *, strict: bool) -> Any:
    """An :class:`~mlflow_safeflavor.export.runtime.OnnxRunner` for a verified model without an export.

    ``progress`` holds what the loader's steps established: ``root``, ``mlmodel``, ``record``,
    ``blobs`` (the digest-checked bytes) and ``decision`` (enforced). Returns None when no export
    can be made (missing extra, no converter, disagreement, time limit), with a log line saying
    why — or, with ``strict`` (``--backend onnx``), raises UnsupportedModelError.
    """
    from mlflow_safeflavor import export
    from mlflow_safeflavor.export.runtime import OnnxRunner

    root, record = Path(progress.root), progress.record

    def fail(reason: str) -> None:
        if strict:
            raise UnsupportedModelError(
                f"{root}: backend='onnx' but no ONNX export can be derived from the checkpoint: {reason}. "
                "Serve with --backend auto (the native model answers) or --backend native.", path=str(root))
        _logger.warning("mlflow_safeflavor: %s is served by the native model: no ONNX export (%s).", root, reason)

    missing = export.missing_extra()
    if missing:
        fail(f"the onnx extra is not installed (missing {', '.join(missing)}; pip install 'mlflow-safeflavor[onnx]')")
        return None
    example, example_digest = _example(root, progress.mlmodel)
    entry_dir = cache_dir() / cache_key(record, progress.decision.required, example_digest)
    where = str(entry_dir / "model.onnx")
    cached = _load_entry(entry_dir) if (entry_dir / ENTRY).exists() else None
    if cached is not None:
        try:
            runner = OnnxRunner(cached[0], cached[1].spec(), path=where)
            _logger.info("mlflow_safeflavor: using the derived ONNX export %s", where)
            return runner
        except SafeFlavorError as exc:
            _logger.warning("mlflow_safeflavor: discarding the cached ONNX export %s (%s)", entry_dir, exc.message)
    started = time.perf_counter()
    made = _derive(progress, example)
    if isinstance(made, str):
        fail(made)
        return None
    data, onnx_record = made
    _store(entry_dir, data, onnx_record)
    _logger.warning("mlflow_safeflavor: derived an ONNX export for %s in %.1f s (cached in %s)", root,
                    time.perf_counter() - started, entry_dir)
    from mlflow_safeflavor.record import parse_onnx

    spec = parse_onnx(onnx_record, files={"model.onnx": ""}, root=entry_dir).spec()
    return OnnxRunner(data, spec, path=where)


def _derive(progress: Any, example: Any) -> tuple[bytes, dict[str, Any]] | str:
    """Convert and check in the worker; the export's bytes and record, or the reason there are none."""
    from mlflow_safeflavor import export, integrity

    record = progress.record
    checkpoint = {k: v for k, v in record.raw.items() if k != "onnx"}
    checkpoint.update(files=[n for n in record.files if n != export.FILE],
                      trusted_types=sorted(progress.decision.required))
    private = Path(tempfile.mkdtemp(prefix="safeflavor-derive-"))
    try:
        for name in checkpoint["files"]:
            integrity.check_relative_name(name, root=private)
            target = private / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(progress.blobs[name])
        request = {"dir": str(private), "record": checkpoint, "example": export._write_example(example, private)}
        reply = export._WORKER.call(request, export.timeout_seconds())
        if not reply.get("ok"):
            stage = reply.get("stage", "convert")
            what = "does not agree with the checkpoint" if stage == "agree" else "could not be made"
            return f"the export {what}: {reply.get('reason', 'unknown reason')}"
        return (private / export.FILE).read_bytes(), reply["record"]
    finally:
        shutil.rmtree(private, ignore_errors=True)
