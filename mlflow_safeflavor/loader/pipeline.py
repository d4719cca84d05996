"""Run the decision steps: raising for the loaders, recording for verify, inspect and the gate.

Modelled on skops, where ``load``, ``loads`` and ``get_untrusted_types`` share ``get_tree`` and differ
only at the end: here every caller runs :data:`.steps.STEPS` through :func:`run`, and only what
happens on a failure (raise, or record and go on where later steps do not depend on it) and
where to stop (``until``) differ.
"""

from __future__ import annotations

import os
from typing import Callable

from mlflow_safeflavor import integrity
from mlflow_safeflavor.errors import SafeFlavorError
from mlflow_safeflavor.loader import steps
from mlflow_safeflavor.loader.steps import Options, Progress

Recorder = Callable[[str, bool, str], None]
STEP_NAMES = tuple(name for name, _ in steps.STEPS)
# A failed step whose result later steps need ends the run, except that these, which need no
# earlier result but MLmodel's, still run so a report shows every problem at once.
_INDEPENDENT = frozenset({"signature", "pyfunc"})


def run(
    local_path: str | os.PathLike,
    opts: Options | None = None,
    *,
    until: str = "validation",
    record: Recorder | None = None,
) -> Progress:
    """Run the steps on a local model directory up to and including ``until``.

    Without ``record`` the first failure raises its SafeFlavorError (the loaders). With ``record``,
    each outcome is passed to ``record(step, ok, detail)`` instead; a failed step that later steps
    depend on ends the run, an independent one (signature, pyfunc configuration) does not. The
    ``pyfunc`` step is recorded as its four checks: loader_module, other_flavors, code, pickle.
    """
    if until not in STEP_NAMES:
        raise ValueError(f"until={until!r} is not one of {STEP_NAMES}")
    opts = opts or Options()
    root = steps.model_root(local_path)
    progress = Progress(root=root, files=integrity.ModelFiles(root))
    failed: set[str] = set()
    for name, step in steps.STEPS:
        if failed and (name not in _INDEPENDENT or failed & {"files", "mlmodel"}):
            pass  # an earlier failure this step depends on: nothing to report
        elif record is not None and name == "pyfunc":
            for check, problem, detail in steps.pyfunc_conf(progress, opts):
                record(check, problem is None, detail if problem is None else problem)
        elif record is None:
            step(progress, opts)
        else:
            try:
                detail = step(progress, opts)
            except SafeFlavorError as exc:
                record(name, False, exc.message)
                if name not in _INDEPENDENT:
                    failed.add(name)
            else:
                record(name, True, detail)
        if name == until:
            break
    return progress


def load_local(local_path: str | os.PathLike, opts: Options | None = None) -> Progress:
    """Every step, raising at the first failure; ``.model`` is the built model."""
    return run(local_path, opts)


def check_local(local_path: str | os.PathLike, opts: Options | None = None) -> Progress:
    """Every step up to the trust decision (enforced), raising at the first failure; builds nothing."""
    return run(local_path, opts, until="trust")
