"""The ``safeflavor`` section of MLmodel: read it safely and check its schema before use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlflow_safeflavor import integrity
from mlflow_safeflavor.codecs import CODEC_MODULES
from mlflow_safeflavor.codecs.base import PREDICT_METHODS
from mlflow_safeflavor.errors import MalformedArtifactError

FLAVOR_NAME = "safeflavor"
FORMAT_VERSION = 1
MAX_FILES = 256
MAX_TRUSTED = 1000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Record:
    """A checked ``safeflavor`` section; ``raw`` keeps codec-specific keys such as components."""

    codec: str
    model_class: str
    files: dict[str, str]
    trusted_types: tuple[str, ...]
    predict_method: str
    library_versions: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Codec-facing view: the record behaves like the raw mapping."""
        return self.raw.get(key, default)


def read_mlmodel(root: Path, files: "integrity.ModelFiles | None" = None) -> dict[str, Any]:
    """Read ``root/MLmodel`` with the safe file reader and parse it as plain YAML data."""
    files = files or integrity.ModelFiles(root)
    data = files.read("MLmodel", max_bytes=integrity.MLMODEL_MAX_BYTES)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=loader)  # noqa: S506 - a SafeLoader
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise MalformedArtifactError(
            f"{root}/MLmodel is not valid YAML ({type(exc).__name__}). Re-save the model.",
            path=str(root),
        ) from None
    if not isinstance(doc, dict):
        raise MalformedArtifactError(f"{root}/MLmodel is not a YAML mapping.", path=str(root))
    return doc


def parse_record(doc: dict[str, Any], *, root: Path) -> Record:
    """Check the ``safeflavor`` flavor of a parsed MLmodel and return it as a :class:`Record`."""
    where = f"{root}/MLmodel"
    flavors = doc.get("flavors")
    section = flavors.get(FLAVOR_NAME) if isinstance(flavors, dict) else None
    if not isinstance(section, dict):
        raise MalformedArtifactError(
            f"{where} has no '{FLAVOR_NAME}' flavor: this is not a model saved with "
            "mlflow_safeflavor (convert it with `mlflow-safeflavor convert`, or load it with the "
            "flavor that saved it if you trust it).",
            path=str(root),
        )

    def bad(key: str, want: str) -> MalformedArtifactError:
        return MalformedArtifactError(
            f"{where}: safeflavor.{key} must be {want}, found {section.get(key)!r:.120}. The file "
            "was altered or written by another tool; re-save the model.",
            path=str(root),
        )

    version = section.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise MalformedArtifactError(
            f"{where}: safeflavor.format_version is {version!r}; this mlflow-safeflavor reads "
            f"version {FORMAT_VERSION}. Upgrade mlflow-safeflavor or re-save the model.",
            path=str(root),
        )
    codec = section.get("codec")
    if not isinstance(codec, str) or codec not in CODEC_MODULES:
        raise MalformedArtifactError(
            f"{where}: unknown codec {codec!r:.80}; supported: {sorted(CODEC_MODULES)}. The file "
            "was altered or written by a newer mlflow-safeflavor.",
            path=str(root),
        )
    model_class = section.get("model_class")
    if not isinstance(model_class, str) or not _IDENT.match(model_class):
        raise bad("model_class", "a class key such as 'XGBClassifier' (never an import path)")
    files = section.get("files")
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_FILES:
        raise bad("files", f"a mapping of 1..{MAX_FILES} file names to sha256 digests")
    for name in files:
        integrity.check_relative_name(name, root=root)
        if name == "MLmodel":
            raise bad("files", "payload files only (not MLmodel)")
    trusted = section.get("trusted_types", [])
    if not isinstance(trusted, list) or len(trusted) > MAX_TRUSTED or not all(isinstance(t, str) for t in trusted):
        raise bad("trusted_types", "a list of type names")
    method = section.get("predict_method", "predict")
    if method not in PREDICT_METHODS:
        raise bad("predict_method", f"one of {PREDICT_METHODS}")
    versions = section.get("library_versions", {})
    if not isinstance(versions, dict):
        raise bad("library_versions", "a mapping")
    return Record(
        codec=codec,
        model_class=model_class,
        files=dict(files),
        trusted_types=tuple(trusted),
        predict_method=method,
        library_versions={str(k): str(v) for k, v in versions.items()},
        raw=dict(section),
    )
