"""The steps of ``save_model``, each a function: check arguments, write the payload, export, write MLmodel.

``flavor.save_model`` (MLflow's surface) runs them in order inside :func:`staging`, which writes to
a temporary directory beside the target and moves it into place only when every step succeeded,
so an error leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mlflow_safeflavor import integrity
from mlflow_safeflavor._version import __version__
from mlflow_safeflavor.codecs.base import PREDICT_METHODS, Codec, Saved
from mlflow_safeflavor.errors import InvalidArgumentError, SafeFlavorError, UnsupportedModelError
from mlflow_safeflavor.record import FLAVOR_NAME, format_for, parse_record
from mlflow_safeflavor.validate.skops_zip import looks_like_pickle

_logger = logging.getLogger(__name__)
# Keys MLflow's Model.log forwards to every flavor's save_model; they do not concern storage.
IGNORED_SAVE_KWARGS = frozenset({"validate_serving_input", "prompts", "resources", "auth_policy", "serving_input"})


def check_arguments(path: Any, *, predict_method: str, signature: Any, metadata: Any, kwargs: dict[str, Any]) -> Path:
    """Refuse arguments of the wrong type or value before anything is written; return the target directory."""
    from mlflow.models.signature import ModelSignature

    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a str or os.PathLike, got {type(path).__name__}.")
    if predict_method not in PREDICT_METHODS:
        raise InvalidArgumentError(f"predict_method={predict_method!r} is not one of {PREDICT_METHODS}.")
    if signature is not None and signature is not False and not isinstance(signature, ModelSignature):
        raise InvalidArgumentError(f"signature must be an mlflow.models.ModelSignature, got {type(signature).__name__}.")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidArgumentError(f"metadata must be a dict, got {type(metadata).__name__}.")
    unknown = sorted(set(kwargs) - IGNORED_SAVE_KWARGS)
    if unknown:
        _logger.warning("mlflow_safeflavor.save_model: ignoring unknown arguments %s", unknown)
    target = Path(os.path.abspath(os.fspath(path)))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidArgumentError(f"{target} already exists and is not an empty directory; choose a new path or remove it.")
    return target


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target``, moved into place on success and removed on any error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.safeflavor-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_payload(codec: Codec, model: Any, directory: Path, options: dict[str, Any]) -> tuple[Saved, dict[str, str]]:
    """Store the model with its codec and return what was written with each file's SHA-256.

    A library error becomes UnsupportedModelError; a file that came out as a pickle stream is refused.
    """
    try:
        saved = codec.save(model, directory, options=options)
    except SafeFlavorError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"Cannot store {type(model).__name__} with the {codec.name} codec: "
            f"{type(exc).__name__}: {str(exc)[:300]}. Nothing was written."
        ) from exc
    digests = {}
    for name in saved.files:
        if name in saved.digests:
            with open(directory / name, "rb") as fh:
                head = fh.read(2)
            digest = saved.digests[name]
        else:
            data = (directory / name).read_bytes()
            head, digest = data[:2], integrity.file_digest(data)
        if looks_like_pickle(head):
            raise UnsupportedModelError(f"{name} came out as a pickle stream; refusing to write it.")
        digests[name] = digest
    return saved, digests


def add_export(codec: Codec, saved: Saved, directory: Path, input_example: Any, *, mode: str, target: Path,
               digests: dict[str, str], requirements: list[str]) -> dict[str, Any] | None:
    """Add the agreement-checked ONNX export (``mode`` "auto"/"on"); return its MLmodel record or None."""
    from mlflow_safeflavor import export

    if mode == "off":
        return None
    checkpoint = {"codec": codec.name, "model_class": saved.model_class, "files": list(saved.files),
                  "trusted_types": list(saved.trusted_types), **saved.extra}
    made = export.export(directory, checkpoint, input_example, mode=mode, target=target)
    if made is None:
        return None
    digests[export.FILE] = integrity.file_digest(made["data"])
    requirements += made["requirements"]
    return made["record"]


def flavor_record(codec: Codec, saved: Saved, digests: dict[str, str], *, predict_method: str,
                  onnx_record: dict[str, Any] | None, target: Path) -> dict[str, Any]:
    """The ``safeflavor`` section of MLmodel; checked with the loader's own parser when it has an export."""
    record = {
        "format_version": format_for(digests),
        "codec": codec.name,
        "model_class": saved.model_class,
        "library_versions": saved.library_versions,
        "files": digests,
        "trusted_types": list(saved.trusted_types),
        "predict_method": predict_method,
        "safeflavor_version": __version__,
        **saved.extra,
    }
    if onnx_record is not None:
        record["onnx"] = onnx_record
        # Never write a record our own loader would refuse.
        parse_record({"flavors": {FLAVOR_NAME: record}}, root=target)
    return record
