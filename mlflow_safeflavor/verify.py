"""The full verification of a model directory, as a structured result.

``verify_model`` runs the loader's own steps (:mod:`mlflow_safeflavor.loader`) — files, signature,
MLmodel, the pyfunc configuration (``loader_module`` is ours, no other flavors, no shipped code,
no pickle anywhere), record, digests, trust, and building the model — and records each outcome
instead of stopping, so the CLI can print a full report and the registry gate can reuse the
result. It refuses exactly what ``load_model`` refuses.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor import integrity
from mlflow_safeflavor import loader as _loader
from mlflow_safeflavor.errors import SafeFlavorError
from mlflow_safeflavor.integrity import tree_digest  # noqa: F401 - re-exported (registry digests)
from mlflow_safeflavor.signing import SIGNATURE_FILE


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


def verify_local(
    path: str | os.PathLike,
    *,
    public_key: Any = None,
    trusted_types: Iterable[str] | None = None,
    require_signature: bool | None = None,
) -> VerifyResult:
    """Verify a local model directory by the loader's own steps; never raises for problems in the artifact.

    Every step of :data:`mlflow_safeflavor.loader.STEP_NAMES` runs as it does for ``load_model``
    (the model is built, so structural validation and the first use are checked too); each outcome
    becomes a :class:`Check`, and independent checks go on after a failure.
    """
    root = Path(os.path.abspath(os.fspath(path)))
    result = VerifyResult(root=str(root))
    try:
        progress = _loader.run(
            root,
            _loader.Options(trusted_types=trusted_types, public_key=public_key, require_signature=require_signature),
            record=result.add,
        )
    except SafeFlavorError as exc:  # the directory itself is not there
        result.add("files", False, exc.message)
        return result
    if progress.signature is not None:
        result.signed_by = progress.signature.key
    if progress.record is not None:
        result.codec, result.model_class = progress.record.codec, progress.record.model_class
        if progress.blobs:
            result.files = {n: progress.record.files[n] for n in sorted(progress.record.files)}
        if progress.model is not None and progress.record.onnx is not None:
            _check_onnx(result, progress.record, progress.blobs, root)
    if progress.listing:
        try:
            result.tree_digest = integrity.tree_digest(
                progress.files, [n for n in progress.listing if n != SIGNATURE_FILE]
            )
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
    return verify_local(
        _loader.download(model_uri, dst_path), public_key=public_key, trusted_types=trusted_types,
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
