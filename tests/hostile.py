"""Builders of hostile artifacts for refusal tests: every byte is the attacker's, digests included."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import yaml

from mlflow_safeflavor.integrity import sha256_digest


def skops_calling(module: str, name: str) -> bytes:
    """A skops file holding ``FunctionTransformer(func=<module>.<name>, kw_args={"mode": "w"})``.

    With ``builtins.open`` (or ``io.open``), ``model.transform(path)`` creates ``path``: a live
    payload, so a test can show that loading it would have run code.
    """
    import builtins

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    data = sio.dumps(FunctionTransformer(func=builtins.open, kw_args={"mode": "w"}, validate=False))
    return _rewrite_schema(data, lambda s: _retarget(s, module, name))


def _retarget(schema: dict, module: str, name: str) -> dict:
    func = schema["content"]["content"]["func"]
    func["__module__"], func["__class__"] = module, name
    return schema


def _rewrite_schema(data: bytes, edit: Callable[[dict], dict]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "schema.json":
                content = json.dumps(edit(json.loads(content))).encode()
            dst.writestr(info.filename, content)
    return out.getvalue()


def read_section(model_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((Path(model_dir) / "MLmodel").read_text())


def edit_mlmodel(model_dir: Path, edit: Callable[[dict], None]) -> None:
    """Apply ``edit`` to the parsed MLmodel's ``safeflavor`` section and write it back."""
    path = Path(model_dir) / "MLmodel"
    doc = yaml.safe_load(path.read_text())
    edit(doc["flavors"]["safeflavor"])
    path.write_text(yaml.safe_dump(doc))


def replace_payload(model_dir: Path, name: str, data: bytes, *, fix_digest: bool = True) -> None:
    """Overwrite a payload file; with ``fix_digest`` also rewrite its digest in MLmodel."""
    (Path(model_dir) / name).write_bytes(data)
    if fix_digest:
        edit_mlmodel(model_dir, lambda s: s["files"].__setitem__(name, sha256_digest(data)))


def pickle_that_touches(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker`` (via os.system)."""
    import pickle

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Boom(), protocol=4)
