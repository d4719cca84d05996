"""The ``safeflavor`` section of MLmodel: read it safely and check its schema before use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlflow_safeflavor import _block_yaml, integrity
from mlflow_safeflavor.codecs import CODEC_MODULES
from mlflow_safeflavor.codecs.base import PREDICT_METHODS
from mlflow_safeflavor.errors import MalformedArtifactError

FLAVOR_NAME = "safeflavor"
# 2: scikit-learn tree estimators are stored as columns in trees.safetensors (``columnar``).
# 3: payload files of 8 MiB or more are recorded with a ``sha256parts:`` digest (integrity.py).
# Every version in READABLE_VERSIONS still loads. Save writes the lowest version that can describe
# the model (``format_for``), so a model that needs nothing new stays readable by older releases.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAX_FILES = 256
MAX_TRUSTED = 1000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def format_for(digests: dict[str, str]) -> int:
    """The format version ``save_model`` writes for a model with these file digests."""
    return 3 if any(d.startswith(integrity.PARTS_PREFIX) for d in digests.values()) else 2


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
    onnx: "OnnxRecord | None" = None

    def get(self, key: str, default: Any = None) -> Any:
        """Codec-facing view: the record behaves like the raw mapping."""
        return self.raw.get(key, default)


def read_mlmodel(root: Path, files: "integrity.ModelFiles | None" = None) -> dict[str, Any]:
    """Read ``root/MLmodel`` with the safe file reader and parse it as plain YAML data."""
    files = files or integrity.ModelFiles(root)
    data = files.read("MLmodel", max_bytes=integrity.MLMODEL_MAX_BYTES)
    try:
        doc = safe_load(data.decode("utf-8"))
    except Exception as exc:
        # YAMLError, RecursionError, and what SafeConstructor raises on a scalar its resolver
        # matched but Python cannot build: a date like 2001-13-45, an int of 5,000 digits.
        raise MalformedArtifactError(
            f"{root}/MLmodel is not valid YAML ({type(exc).__name__}). Re-save the model.",
            path=str(root),
        ) from None
    if not isinstance(doc, dict):
        raise MalformedArtifactError(f"{root}/MLmodel is not a YAML mapping.", path=str(root))
    return doc


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_T + t for t in ("str", "int", "float", "bool", "null"))


class _NotPlain(Exception):
    """The document uses something :func:`_build` leaves to PyYAML's constructor."""


def safe_load(text: str) -> Any:
    """``yaml.load(text, Loader=CSafeLoader)`` (``SafeLoader`` without libyaml), value for value.

    The block form MLflow writes is read line by line by :mod:`._block_yaml` (which resolves and
    builds every scalar with PyYAML's own resolvers and constructors). Any other text is composed
    by PyYAML; a document of plain mappings, sequences and scalars with their default tags,
    without anchors shared by two places, is then built directly, each scalar by the very
    constructor SafeLoader uses. Anything else (aliases, merge keys, other tags) goes through
    SafeLoader's own constructor.
    """
    try:
        return _block_yaml.load(text)  # the form MLflow writes, read line by line
    except _block_yaml.NotBlock:
        pass
    loader = _SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return _build(loader, node, set())
        except (_NotPlain, RecursionError):
            return loader.construct_document(node)
    finally:
        loader.dispose()


def _build(loader: Any, node: Any, seen: set[int]) -> Any:
    if id(node) in seen:  # an alias: SafeLoader builds the object once and shares it
        raise _NotPlain
    seen.add(id(node))
    tag = node.tag
    if isinstance(node, yaml.ScalarNode):
        if tag == _T + "str":  # SafeConstructor.construct_yaml_str returns the scalar's text
            return node.value
        if tag not in _SCALAR_TAGS:
            raise _NotPlain
        return loader.yaml_constructors[tag](loader, node)
    if isinstance(node, yaml.MappingNode) and tag == _T + "map":
        out = {}
        for key, value in node.value:
            # Only plain scalar keys: merge ('<<') and value ('=') keys carry their own tags.
            if not isinstance(key, yaml.ScalarNode) or key.tag not in _SCALAR_TAGS:
                raise _NotPlain
            out[_build(loader, key, seen)] = _build(loader, value, seen)
        return out
    if isinstance(node, yaml.SequenceNode) and tag == _T + "seq":
        return [_build(loader, item, seen) for item in node.value]
    raise _NotPlain


# Every key a release of this package has written into the safeflavor section.
KNOWN_KEYS = frozenset({
    "format_version", "codec", "model_class", "library_versions", "files", "trusted_types", "predict_method",
    "safeflavor_version", "components", "columnar", "onnx", "model_format",
})

# What every release wrote; a section without one of them was cut short.
REQUIRED_KEYS = frozenset({
    "format_version", "codec", "model_class", "library_versions", "files", "trusted_types", "predict_method",
    "safeflavor_version",
})


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

    unknown = sorted(map(str, set(section) - KNOWN_KEYS))
    if unknown:
        # An unknown key is a renamed or injected one: dropping "components" this way would load a
        # pipeline without its boosted step (found by make fuzz).
        raise MalformedArtifactError(
            f"{where}: safeflavor has keys this format does not define: {', '.join(unknown)[:200]}. The "
            "file was altered or written by a newer mlflow-safeflavor; re-save the model or upgrade.",
            path=str(root),
        )
    missing = sorted(REQUIRED_KEYS - set(section))
    if missing:
        # Every release writes these: a section without them was cut short or edited. A truncated
        # MLmodel ending in "model_class: CatBoost" (from CatBoostClassifier) would otherwise load
        # as another class (found by make fuzz).
        raise MalformedArtifactError(
            f"{where}: safeflavor lacks {', '.join(missing)}, which save_model always writes. The file "
            "was truncated or altered; re-save the model.",
            path=str(root),
        )
    version = section.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise MalformedArtifactError(
            f"{where}: safeflavor.format_version is {version!r:.40}; this mlflow-safeflavor reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}. Upgrade mlflow-safeflavor or re-save the model.",
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
    for name, digest in files.items():
        integrity.check_relative_name(name, root=root)
        if name == "MLmodel":
            raise bad("files", "payload files only (not MLmodel)")
        if version < 3 and isinstance(digest, str) and digest.startswith(integrity.PARTS_PREFIX):
            raise bad("files", f"'sha256:' digests in format {version} ('sha256parts:' came with format 3)")
    trusted = section.get("trusted_types", [])
    if not isinstance(trusted, list) or len(trusted) > MAX_TRUSTED or not all(isinstance(t, str) for t in trusted):
        raise bad("trusted_types", "a list of type names")
    method = section.get("predict_method", "predict")
    if method not in PREDICT_METHODS:
        raise bad("predict_method", f"one of {PREDICT_METHODS}")
    versions = section.get("library_versions", {})
    if not isinstance(versions, dict):
        raise bad("library_versions", "a mapping")
    onnx = parse_onnx(section["onnx"], files=files, root=root) if "onnx" in section else None
    return Record(
        codec=codec,
        model_class=model_class,
        files=dict(files),
        trusted_types=tuple(trusted),
        predict_method=method,
        library_versions={str(k): str(v) for k, v in versions.items()},
        raw=dict(section),
        onnx=onnx,
    )


# ----------------------------------------------------------------------------------- onnx


ONNX_FILE = "model.onnx"
ONNX_CONVERTERS = ("skl2onnx", "onnxmltools", "catboost")
ONNX_METHODS = ("predict", "predict_proba")
ONNX_TYPES = ("float", "int", "string")
MAX_COLUMNS = 100_000
# Records written before crossover_rows existed: the export answers batches below this many rows,
# the native model larger ones (onnxruntime was measured 3-9× slower at 10k rows for XGBoost and
# CatBoost, and 5-20× faster at one row, docs/onnx.md).
LEGACY_CROSSOVER_ROWS = 1000
MAX_CROSSOVER_ROWS = 1 << 40


@dataclass(frozen=True)
class OnnxRecord:
    """The checked ``onnx`` sub-record: a claim about ``model.onnx`` that the loader verifies.

    The file must be among the digested files; how it is fed (``inputs``) and which methods it
    answers (``methods``) decide whether a call may use it; the rest documents the save-time
    agreement check (converter versions, opset, sample size, largest difference, tolerance).
    """

    file: str
    converter: str
    versions: dict[str, str]
    opset: dict[str, int]
    inputs: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    sample_size: int
    max_abs_diff: dict[str, float]
    tolerance: dict[str, float]
    agreed: bool
    # Optional in MLmodel: the batch size from which ``backend="auto"`` uses the native model
    # (null: the export at every size; absent, in older records: LEGACY_CROSSOVER_ROWS).
    crossover_rows: int | None = LEGACY_CROSSOVER_ROWS

    def spec(self) -> dict[str, Any]:
        """What :class:`mlflow_safeflavor.export.runtime.OnnxRunner` needs."""
        return {"inputs": self.inputs, "methods": self.methods, "crossover_rows": self.crossover_rows}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and v >= 0


def parse_onnx(doc: Any, *, files: dict[str, Any], root: Path) -> OnnxRecord:
    """Check the ``onnx`` sub-record strictly (exact keys, types, ranges) and return it.

    Raises MalformedArtifactError naming the key; the file it names must be ``model.onnx`` and
    listed (so digested) in ``files``.
    """
    where = f"{root}/MLmodel"

    def bad(key: str, want: str) -> MalformedArtifactError:
        found = doc.get(key) if isinstance(doc, dict) else doc
        return MalformedArtifactError(
            f"{where}: safeflavor.onnx{'.' + key if key else ''} must be {want}, found {found!r:.120}. "
            "The file was altered or written by another tool; re-save the model (or with onnx=False).",
            path=str(root),
        )

    keys = {f for f in OnnxRecord.__dataclass_fields__} - {"crossover_rows"}
    if not isinstance(doc, dict) or set(doc) - {"crossover_rows"} != keys:
        raise bad("", f"a mapping with exactly the keys {sorted(keys)} (and optionally crossover_rows)")
    if doc["file"] != ONNX_FILE or ONNX_FILE not in files:
        raise bad("file", f"{ONNX_FILE!r}, listed with its digest in safeflavor.files")
    if doc["converter"] not in ONNX_CONVERTERS:
        raise bad("converter", f"one of {ONNX_CONVERTERS}")
    versions = doc["versions"]
    if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()):
        raise bad("versions", "a mapping of package names to version strings")
    opset = doc["opset"]
    if not isinstance(opset, dict) or not opset or not all(isinstance(k, str) and _is_int(v) and 0 < v < 1000 for k, v in opset.items()):
        raise bad("opset", "a mapping of operator domains to opset versions")
    inputs = doc["inputs"]
    if not _inputs_ok(inputs):
        raise bad("inputs", "{kind: matrix|columns, columns, types, width} describing the export's input")
    methods = doc["methods"]
    if not isinstance(methods, dict) or not methods or not all(
        m in ONNX_METHODS and isinstance(v, dict) and set(v) == {"output", "kind", "ndim"}
        and isinstance(v["output"], str) and 0 < len(v["output"]) <= 256
        and v["kind"] in ("label", "value") and v["ndim"] in (1, 2)
        for m, v in methods.items()
    ):
        raise bad("methods", f"a mapping of methods in {ONNX_METHODS} to {{output, kind, ndim}}")
    if not _is_int(doc["sample_size"]) or doc["sample_size"] < 1:
        raise bad("sample_size", "a positive integer")
    diffs = doc["max_abs_diff"]
    if not isinstance(diffs, dict) or set(diffs) != set(methods) or not all(_is_num(v) for v in diffs.values()):
        raise bad("max_abs_diff", "one non-negative number per method")
    tol = doc["tolerance"]
    if not isinstance(tol, dict) or set(tol) != {"rtol", "atol"} or not all(_is_num(v) for v in tol.values()):
        raise bad("tolerance", "{rtol, atol} as non-negative numbers")
    if not isinstance(doc["agreed"], bool):
        raise bad("agreed", "true or false")
    crossover = doc.get("crossover_rows", LEGACY_CROSSOVER_ROWS)
    if crossover is not None and not (_is_int(crossover) and 1 <= crossover <= MAX_CROSSOVER_ROWS):
        raise bad("crossover_rows", "a positive number of rows, or null")
    return OnnxRecord(
        file=ONNX_FILE, converter=doc["converter"], versions=dict(versions), opset=dict(opset),
        inputs=dict(inputs), methods={m: dict(v) for m, v in methods.items()}, sample_size=doc["sample_size"],
        max_abs_diff={m: float(v) for m, v in diffs.items()},
        tolerance={k: float(v) for k, v in tol.items()}, agreed=doc["agreed"], crossover_rows=crossover,
    )


def _inputs_ok(inputs: Any) -> bool:
    if not isinstance(inputs, dict) or set(inputs) != {"kind", "columns", "types", "width"}:
        return False
    width, columns, types = inputs["width"], inputs["columns"], inputs["types"]
    if not _is_int(width) or not 0 < width <= MAX_COLUMNS:
        return False
    if columns is not None and (not isinstance(columns, list) or len(columns) != width
                                or not all(isinstance(c, str) for c in columns)):
        return False
    if inputs["kind"] == "matrix":
        return types is None
    if inputs["kind"] == "columns":
        return (columns is not None and isinstance(types, list) and len(types) == width
                and all(t in ONNX_TYPES for t in types))
    return False
