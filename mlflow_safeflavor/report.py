"""A non-raising look at a model directory: what the loader would check and decide.

``inspect_model`` runs the loader's own steps (:mod:`mlflow_safeflavor.loader`), structural
validation included, and records each outcome instead of stopping at the first failure, so a
person can see everything that is wrong at once, and "would load" is the loader's own verdict.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor import loader as _loader
from mlflow_safeflavor.errors import SafeFlavorError
from mlflow_safeflavor.record import FLAVOR_NAME


@dataclass
class FileStatus:
    """One payload file: recorded digest, actual digest and a status word."""

    name: str
    recorded: str
    actual: str | None
    status: str  # ok | mismatch | refused
    problem: str | None = None


@dataclass
class Inspection:
    """What ``inspect_model`` found; ``would_load`` is the local policy's verdict."""

    root: str
    flavors: list[str] = field(default_factory=list)
    loader_module: str | None = None
    codec: str | None = None
    model_class: str | None = None
    library_versions: dict[str, str] = field(default_factory=dict)
    predict_method: str | None = None
    files: list[FileStatus] = field(default_factory=list)
    declared: list[str] = field(default_factory=list)
    required: list[str] | None = None
    decision: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def would_load(self) -> bool:
        """True when every check passed and the trust decision allows the model."""
        return not self.errors and self.decision is not None and self.decision.startswith("allowed")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {**asdict(self), "would_load": self.would_load}


def inspect_local(
    path: str | Path,
    *,
    trusted_types: Iterable[str] | None = None,
    public_key: Any = None,
) -> Inspection:
    """Inspect a local model directory by the loader's own steps; never raises for the artifact.

    Every step of ``load_model`` runs in the same order — files, signature, MLmodel, pyfunc
    configuration, record, digests, payload inspection, trust, and the structural validation and
    build (whose result is dropped) — so "would load" means exactly that ``load_model`` in this
    process, with this policy, would succeed.
    """
    root = Path(os.path.abspath(os.fspath(path)))
    report = Inspection(root=str(root))

    def record(step: str, ok: bool, detail: str) -> None:
        # Digest failures are listed per file below; the trust verdict is ``decision``.
        if not ok and step not in ("digests", "trust"):
            report.errors.append(detail)

    try:
        progress = _loader.run(root, _loader.Options(trusted_types=trusted_types, public_key=public_key),
                               record=record)
    except SafeFlavorError as exc:
        report.errors.append(exc.message)
        return report
    flavors = progress.mlmodel.get("flavors") if isinstance(progress.mlmodel.get("flavors"), dict) else {}
    report.flavors = sorted(str(k) for k in flavors)
    pyfunc = flavors.get("python_function")
    report.loader_module = pyfunc.get("loader_module") if isinstance(pyfunc, dict) else None
    rec = progress.record
    if rec is not None:
        report.codec, report.model_class = rec.codec, rec.model_class
        report.library_versions, report.predict_method = rec.library_versions, rec.predict_method
        report.declared = list(rec.trusted_types)
    for check in progress.digests:
        problem = check.error.message if check.error is not None else None
        report.files.append(FileStatus(check.name, check.recorded, check.actual, check.status, problem))
        if check.status == "mismatch":
            report.errors.append(f"{root / check.name}: digest mismatch")
        elif problem:
            report.errors.append(problem)
    if progress.required is not None:
        report.required = sorted(progress.required)
    if progress.decision is not None:
        report.decision = progress.decision.explain()
    return report


def inspect_model(model_uri: str, *, trusted_types: Iterable[str] | None = None, dst_path: str | None = None) -> Inspection:
    """Download ``model_uri`` (any MLflow URI) and inspect it (see :func:`inspect_local`).

    Returns an :class:`Inspection` listing flavors, codec, file digests, the declared and required
    trust lists and what this process's policy would decide; artifact problems are recorded in
    ``errors`` rather than raised.
    """
    return inspect_local(_loader.download(model_uri, dst_path), trusted_types=trusted_types)


def format_inspection(report: Inspection) -> str:
    """Render an inspection as the plain-text report the CLI prints."""
    lines = [f"model:          {report.root}"]
    lines.append(f"flavors:        {', '.join(report.flavors) or '-'}")
    lines.append(f"loader_module:  {report.loader_module or '-'}")
    if report.codec:
        lines.append(f"codec:          {report.codec} ({report.model_class})")
        lines.append(
            "libraries:      " + ", ".join(f"{k} {v}" for k, v in sorted(report.library_versions.items()))
        )
        lines.append(f"predict_method: {report.predict_method}")
    if report.files:
        lines.append("files:")
        for f in report.files:
            lines.append(f"  [{f.status:8}] {f.name}  {f.recorded}")
            if f.status == "mismatch":
                lines.append(f"             actual {f.actual}")
    lines.append(f"declared trust: {', '.join(report.declared) or '(nothing beyond skops defaults)'}")
    if report.required is not None:
        lines.append(f"payload needs:  {', '.join(report.required) or '(nothing beyond skops defaults)'}")
    if report.decision:
        lines.append(f"local policy:   {report.decision}")
    for err in report.errors:
        lines.append(f"ERROR: {err}")
    lines.append(f"verdict:        {'would load' if report.would_load else 'REFUSED'}")
    if FLAVOR_NAME not in report.flavors and not report.errors:
        lines.append("note: not a safe-flavor model")
    return "\n".join(lines)
