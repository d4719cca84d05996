"""Structural validation of CatBoost ``.cbm`` files, run on the raw bytes before CatBoost sees them.

A ``.cbm`` file is ``CBM1``, a ui32 core size, the model core (a ``TModelCore`` FlatBuffer), then
the model parts the core announces in ``ModelPartIds`` (CatBoost 1.2: model.cpp ``TFullModel::Load``).
CatBoost verifies the core's FlatBuffer framing but trusts the indices inside it, and does not
verify the CTR tables at all; a crafted file kills the process that loads or first uses it. This
package reads the same bytes in Python and NumPy and refuses anything CatBoost would follow out of
range:

* flatbuf.py — a FlatBuffers reader in which every offset is checked before it is followed;
* schema.py — the model core decoded by CatBoost's schema, strings strictly UTF-8;
* trees.py — trees, leaves, features, borders and the references between them;
* ctr.py — the CTR value tables after the core;
* info.py — the option strings CatBoost parses lazily at first use.

Models with text or embedding features are refused: their processing collections are a format of
their own that this package does not validate. It never imports CatBoost.
"""

from __future__ import annotations

import struct

from mlflow_safeflavor.errors import MalformedArtifactError
from mlflow_safeflavor.validate.catboost import ctr, info, trees
from mlflow_safeflavor.validate.catboost.flatbuf import MAX_BUFFER, Bad, File, Unsupported
from mlflow_safeflavor.validate.catboost.schema import decode_bases, read_core

__all__ = ["validate"]

MAGIC = b"CBM1"


def validate(data: bytes, *, path: str) -> None:
    """Raise MalformedArtifactError unless ``data`` is a CatBoost model CatBoost can load safely.

    Never raises anything else, for any input bytes.
    """
    try:
        _validate(File(data))
    except Unsupported as exc:
        raise MalformedArtifactError(
            f"{path}: model.cbm {exc}. The safe loader validates CatBoost models with numerical and categorical "
            "features only and cannot vouch for text or embedding processing data, so it does not load this "
            "file; re-save the model without text or embedding features.",
            path=path,
        ) from None
    except Bad as exc:
        raise _fail(path, str(exc)) from None
    except MemoryError:
        raise _fail(path, "is too large to validate in memory") from None
    except MalformedArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: only MalformedArtifactError escapes
        raise _fail(path, f"could not be validated ({type(exc).__name__}: {str(exc)[:200]})") from None


def _validate(file: File) -> None:
    if file.size < 8 or file.data[:4] != MAGIC:
        raise Bad("does not start with CatBoost's CBM1 header; it is not a CatBoost model or was truncated")
    (size,) = struct.unpack_from("<I", file.data, 4)
    if size > MAX_BUFFER or size > file.size - 8:
        raise Bad(f"declares a {size}-byte model core but holds {file.size - 8} bytes after its header "
                  "(truncated, padded or crafted; CatBoost would read past the buffer)")
    core = read_core(file, 8, 8 + size)
    parts = ctr.read_parts(file, 8 + size, core.part_ids)
    table_keys = decode_bases(core.features, parts.bases)
    trees.check(core)
    info.check(core.info, core.trees["dim"])
    ctr.check(core.features, parts, table_keys)
    file.check_disjoint()


def _fail(path: str, what: str) -> MalformedArtifactError:
    return MalformedArtifactError(
        f"{path}: model.cbm {what}. CatBoost does not check this and can crash the process that loads "
        "it; the file is corrupt or was crafted — do not load it, re-save the model.",
        path=path,
    )
