"""The child side of the smoke test: ``<bootstrap> mlflow_safeflavor.registry.smoke_child DIR [--trusted-types a,b]``.

Started by :func:`mlflow_safeflavor.registry.smoke.run_limited` with its resource limits already
set. Loads the local model directory with :func:`mlflow_safeflavor.load_pyfunc` (every check of the
loader runs again here, on the same bytes) and predicts on the input example MLflow saved with it.
Exit codes: 0 predicted, 1 refused by a check, 2 no input example, 3 any other failure.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the smoke test on one directory and print the verdict line; return the exit code."""
    from mlflow_safeflavor.registry.smoke import report

    parser = argparse.ArgumentParser(prog="smoke_child")
    parser.add_argument("root")
    parser.add_argument("--trusted-types", default=None)
    args = parser.parse_args(argv)
    try:
        return _run(args.root, args.trusted_types)
    except MemoryError:
        report(False, "the smoke test ran out of its memory limit (RLIMIT_AS) while loading or "
                      "predicting; raise MLFLOW_SAFEFLAVOR_SMOKE_MEMORY_MB if the model is "
                      "legitimately that large")
        return 3


def _run(root: str, trusted_types: str | None) -> int:
    from mlflow.models import Model

    from mlflow_safeflavor.errors import SafeFlavorError
    from mlflow_safeflavor.flavor import load_pyfunc
    from mlflow_safeflavor.registry.smoke import report

    try:
        model = load_pyfunc(root, trusted_types=trusted_types)
    except SafeFlavorError as exc:
        report(False, f"the model was refused while loading: {type(exc).__name__}: {exc.message}")
        return 1
    try:
        example = Model.load(root).load_input_example(root)
    except Exception as exc:  # MLflow raises several types for a malformed example
        report(False, f"the saved input example cannot be read ({type(exc).__name__}: {str(exc)[:300]})")
        return 3
    if example is None:
        report(False, "the model has no saved input example, so the gate cannot smoke-test it; log it "
                      "with input_example=... and register the new version")
        return 2
    try:
        output = model.predict(example)
    except Exception as exc:  # the point is to survive whatever predict raises
        report(False, f"predict on the saved input example failed: {type(exc).__name__}: {str(exc)[:300]}")
        return 3
    rows = len(output) if hasattr(output, "__len__") else 1
    report(True, f"loaded in a child process and predicted {rows} rows on the saved input example")
    return 0


if __name__ == "__main__":
    sys.exit(main())
