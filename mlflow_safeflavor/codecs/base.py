"""The codec protocol and the small value types codecs exchange with the flavor layer."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Protocol

from mlflow_safeflavor.errors import MalformedArtifactError

PREDICT_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function")


@dataclass(frozen=True)
class Saved:
    """What a codec wrote: file names (relative to the model dir) and the record to put in MLmodel."""

    files: tuple[str, ...]
    model_class: str
    library_versions: dict[str, str]
    trusted_types: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # Digests (``integrity.file_digest`` form) the codec computed while writing, by file name, so
    # that a large file is not read back; files missing here are read back and hashed.
    digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Inspected:
    """A payload read and checked once, nothing built yet: what it needs trusted, and how to build it.

    ``required`` is the set of type names the payload needs trusted beyond the library's own
    defaults (empty for the native GBDT formats). ``build(trusted)`` builds the model; it refuses
    (UntrustedTypesError) if ``trusted`` does not cover ``required``, and may be called once.
    """

    required: set[str]
    build: Callable[[list[str]], Any]


def inspect_by_load(codec: "Codec", blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Inspected:
    """``inspect`` for codecs whose payload needs no types trusted: the checks run in ``load``."""
    return Inspected(
        required=codec.required_types(blobs, record, path=path),
        build=lambda trusted: codec.load(blobs, record, trusted=trusted, path=path),
    )


class Codec(Protocol):
    """One library's storage: detect, save, inspect (required types + build), load from verified bytes.

    ``inspect`` is the load path: read and check the payload once, return what it needs
    trusted and a ``build``. ``required_types`` and ``load`` are thin wrappers kept for callers
    that take the two steps separately.
    """

    name: str
    classes: Mapping[str, tuple[str, str]]

    def accepts(self, model: Any) -> bool: ...

    def save(self, model: Any, directory: Path, *, prefix: str = "", options: Mapping[str, Any]) -> Saved: ...

    def inspect(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Inspected: ...

    def required_types(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> set[str]: ...

    def load(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, trusted: list[str], path: str) -> Any: ...


def resolve_class(classes: Mapping[str, tuple[str, str]], key: object, *, codec: str, path: str) -> type:
    """Import the class a fixed-table key names; an unknown key is a malformed artifact.

    The module and attribute come from our table, never from the artifact.
    """
    if not isinstance(key, str) or key not in classes:
        raise MalformedArtifactError(
            f"{path}: model_class {key!r} is not a known {codec} model class "
            f"(known: {', '.join(sorted(classes))}). The MLmodel file was altered or written by "
            "a newer mlflow-safeflavor; re-save the model or upgrade.",
            path=path,
        )
    module, attr = classes[key]
    return getattr(import_fixed(module), attr)


def import_fixed(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for a module named by one of our fixed tables.

    A module already imported comes straight from ``sys.modules``: importlib's Python frames
    cost ~20 us a call on a cold cache, and every load looks up its codec and class this way.
    """
    module = sys.modules.get(name)
    return module if module is not None else importlib.import_module(name)


def class_key(classes: Mapping[str, tuple[str, str]], model: Any) -> str | None:
    """Return the table key for ``type(model)`` if it is exactly one of the table's classes."""
    cls = type(model)
    for key, (module, attr) in classes.items():
        if cls.__name__ == attr and cls.__module__.split(".")[0] == module.split(".")[0]:
            try:
                if getattr(importlib.import_module(module), attr) is cls:
                    return key
            except (ImportError, AttributeError):
                continue
    return None
