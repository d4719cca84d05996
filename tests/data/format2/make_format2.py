"""How the format-2 models in this directory were made: by the release before format 3 (run once).

They were saved by commit 7856d4d (format 2: trees as columns in ``trees.safetensors``, every
digest ``sha256:``), with the same models and inputs as ``tests/data/format1`` (its
``models()``), so that a later change to the format is tested against files an earlier release
really wrote::

    git worktree add /tmp/wt2 7856d4d
    PYTHONPATH=/tmp/wt2 .venv/bin/python tests/data/format2/make_format2.py

``expected.json`` holds, per model, the input rows and the predictions the model gave when it was
saved; ``tests/test_columnar.py`` loads every model through each loader and compares.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    from mlflow_safeflavor.record import FORMAT_VERSION

    if FORMAT_VERSION != 2:
        sys.exit("this script records format-2 models; run it with the release before format 3 (see the docstring)")
    spec = importlib.util.spec_from_file_location("make_format1", HERE.parent / "format1" / "make_format1.py")
    make_format1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_format1)
    make_format1.write(HERE)


if __name__ == "__main__":
    main()
