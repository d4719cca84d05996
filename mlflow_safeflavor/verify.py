"""The full verification of a model directory, as a structured result.

``verify_model`` runs every check the loader runs — and the ones that matter before a model is
promoted or served: no other flavors whose loaders may unpickle, no pickle files anywhere, no
``code/`` directories, ``loader_module`` is ours — and records each outcome instead of stopping,
so the CLI can print a full report and the registry gate can reuse the result.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor import integrity, policy
from mlflow_safeflavor.errors import SafeFlavorError
from mlflow_safeflavor.record import FLAVOR_NAME, parse_record, read_mlmodel

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".dill", ".cloudpickle", ".sav")
ALLOWED_FLAVORS = {"python_function", FLAVOR_NAME}


@dataclass
class Check:
    """One named check with its outcome and a sentence about it."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    """Everything ``verify_model`` found; ``ok`` is True only if every check passed."""

    root: str
    checks: list[Check] = field(default_factory=list)
    codec: str | None = None
    model_class: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    tree_digest: str | None = None
    signed_by: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output and registry tags."""
        return {**asdict(self), "ok": self.ok}


def tree_digest(files: integrity.ModelFiles, names: Iterable[str]) -> str:
    """One SHA-256 over every artifact file: ``sha256(name NUL sha256(file) LF ...)``, names sorted."""
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode("utf-8") + b"\0" + integrity.sha256_digest(files.read(name, listed=True)).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _looks_pickled(name: str, data: bytes) -> str | None:
    from mlflow_safeflavor.validate.skops_zip import looks_like_pickle

    if name.lower().endswith(PICKLE_SUFFIXES):
        return "has a pickle file name"
    if looks_like_pickle(data[:2]):
        return "starts like a pickle stream"
    if data[:6] == b"\x93NUMPY" and b"'descr': '|O'" in data[:256]:
        return "is an object-dtype numpy array (a pickle inside)"
    return None


def verify_local(
    path: str | os.PathLike,
    *,
    public_key: Any = None,
    trusted_types: Iterable[str] | None = None,
    require_signature: bool | None = None,
) -> VerifyResult:
    """Verify a local model directory; never raises for problems in the artifact."""
    from mlflow_safeflavor import signing
    from mlflow_safeflavor.codecs import get_codec

    root = Path(os.path.abspath(os.fspath(path)))
    result = VerifyResult(root=str(root))
    files = integrity.ModelFiles(root)
    try:
        listing = files.listing()
    except (SafeFlavorError, OSError) as exc:
        result.add("files", False, getattr(exc, "message", str(exc)))
        return result
    result.add("files", True, f"{len(listing)} regular files, no symlinks or special files")

    try:
        keys = signing.configured_keys(public_key)
    except SafeFlavorError as exc:
        result.add("signature", False, exc.message)
        keys = None
    if keys:
        try:
            sig = signing.verify_directory(files, keys)
            result.signed_by = sig.key
            result.add("signature", True, f"valid, by {sig.key}, over {sig.files} files")
        except SafeFlavorError as exc:
            result.add("signature", False, exc.message)
    elif keys is not None:
        present = signing.SIGNATURE_FILE in listing
        ok = not require_signature
        result.add("signature", ok, ("present but " if present else "") + "not checked (no public key configured)")

    try:
        doc = read_mlmodel(root, files)
    except SafeFlavorError as exc:
        result.add("mlmodel", False, exc.message)
        return result
    flavors = doc.get("flavors") if isinstance(doc.get("flavors"), dict) else {}
    pyfunc = flavors.get("python_function") if isinstance(flavors.get("python_function"), dict) else {}
    loader = pyfunc.get("loader_module")
    result.add("loader_module", loader == "mlflow_safeflavor",
               f"loader_module is {loader!r}" + ("" if loader == "mlflow_safeflavor" else
               " — mlflow.pyfunc.load_model would import that module instead of ours"))
    others = sorted(set(map(str, flavors)) - ALLOWED_FLAVORS)
    result.add("other_flavors", not others,
               "none" if not others else f"other flavors present: {others} (their loaders may unpickle)")
    code_dirs = sorted({n.split("/")[0] for n in listing if n.split("/")[0] == "code" or "/code/" in f"/{n}"})
    code_keys = [k for k in ("code", "model_code_path") if pyfunc.get(k)]
    result.add("code", not code_dirs and not code_keys,
               "no code/ directories" if not code_dirs and not code_keys else f"code shipped with the model: {code_dirs or code_keys}")
    pickles = []
    for name in listing:
        if name == signing.SIGNATURE_FILE:
            continue
        try:
            reason = _looks_pickled(name, files.read(name, listed=True))
        except SafeFlavorError as exc:
            reason = exc.message
        if reason:
            pickles.append(f"{name} {reason}")
    result.add("pickle", not pickles, "no pickle anywhere in the directory" if not pickles else "; ".join(pickles[:10]))

    try:
        record = parse_record(doc, root=root)
    except SafeFlavorError as exc:
        result.add("record", False, exc.message)
        return result
    result.codec, result.model_class = record.codec, record.model_class
    result.add("record", True, f"codec {record.codec}, model class {record.model_class}")
    try:
        blobs = integrity.verify_digests(files, record.files)
        result.files = {n: record.files[n] for n in sorted(record.files)}
        result.add("digests", True, f"{len(blobs)} payload files match MLmodel")
    except SafeFlavorError as exc:
        result.add("digests", False, exc.message)
        return result
    try:
        codec = get_codec(record.codec, path=str(root))
        required = codec.required_types(blobs, record, path=str(root))
        decision = policy.decide(required, record.trusted_types, policy.loading_policy(trusted_types))
        result.add("trust", decision.ok, decision.explain())
    except SafeFlavorError as exc:
        result.add("trust", False, exc.message)
        return result
    if decision.ok:
        try:
            codec.load(blobs, record, trusted=list(decision.required), path=str(root))
            result.add("validation", True, "payload structure valid; model builds")
        except SafeFlavorError as exc:
            result.add("validation", False, exc.message)
    if record.onnx is not None:
        _check_onnx(result, record, blobs, root)
    try:
        result.tree_digest = tree_digest(files, [n for n in listing if n != signing.SIGNATURE_FILE])
    except SafeFlavorError as exc:
        result.add("files", False, exc.message)
    return result


def _check_onnx(result: VerifyResult, record: Any, blobs: dict[str, bytes], root: Path) -> None:
    """The ONNX export gets the loader's checks (structure, external data, domains, checker, session)."""
    import importlib.util

    spec = record.onnx
    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")):
        result.add("onnx", True, f"{spec.file} present (digest checked); not validated here: the onnx extra is not installed")
        return
    from mlflow_safeflavor.export.runtime import OnnxRunner

    try:
        OnnxRunner(blobs[spec.file], spec.spec(), path=str(root / spec.file), threads=1)
    except SafeFlavorError as exc:
        result.add("onnx", False, exc.message)
        return
    diffs = ", ".join(f"{m} {d:.2g}" for m, d in spec.max_abs_diff.items())
    result.add("onnx", True, f"{spec.file} ({spec.converter}) valid; agreed at save on {spec.sample_size} rows "
                             f"(largest differences: {diffs})")


def verify_model(
    model_uri: str,
    *,
    public_key: Any = None,
    trusted_types: Iterable[str] | None = None,
    require_signature: bool | None = None,
    dst_path: str | None = None,
) -> VerifyResult:
    """Download ``model_uri`` and verify it completely (see :func:`verify_local`).

    Returns a :class:`VerifyResult` with one :class:`Check` per step — files, signature, MLmodel,
    loader_module, other flavors, code, pickle, record, digests, trust, validation — and a digest
    over all artifact files for the registry gate.
    """
    from mlflow_safeflavor.flavor import _download

    return verify_local(
        _download(model_uri, dst_path), public_key=public_key, trusted_types=trusted_types,
        require_signature=require_signature,
    )


def format_result(result: VerifyResult) -> str:
    """Render a VerifyResult as the CLI's report."""
    lines = [f"model: {result.root}"]
    if result.codec:
        lines.append(f"codec: {result.codec} ({result.model_class})")
    for name, digest in result.files.items():
        lines.append(f"  {name}  {digest}")
    for c in result.checks:
        lines.append(f"[{'PASS' if c.ok else 'FAIL'}] {c.name:<14} {c.detail}")
    if result.tree_digest:
        lines.append(f"artifact digest: {result.tree_digest}")
    lines.append("verdict: " + ("OK" if result.ok else f"FAILED ({', '.join(c.name for c in result.failures)})"))
    return "\n".join(lines)
