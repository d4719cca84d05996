"""Environment files (requirements.txt, python_env.yaml, conda.yaml) written once, for every codec.

A codec knows exactly what its model needs, so MLflow's requirement inference (a subprocess that
loads the model, 4–10 s) never runs on this path.
"""

from __future__ import annotations

from typing import Any, Iterable

from mlflow_safeflavor._version import __version__
from mlflow_safeflavor.errors import InvalidArgumentError

PACKAGE_REQUIREMENT = f"mlflow-safeflavor=={__version__}"


def default_requirements(codec_requirements: Iterable[str]) -> list[str]:
    """Pinned requirements for a model: mlflow, this package, numpy and the codec's libraries."""
    import mlflow
    import numpy

    reqs = [f"mlflow=={mlflow.__version__}", PACKAGE_REQUIREMENT, f"numpy=={numpy.__version__}"]
    for req in codec_requirements:
        if req not in reqs:
            reqs.append(req)
    return reqs


def write(
    path: str,
    codec_requirements: Iterable[str],
    *,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    conda_env: Any = None,
) -> None:
    """Write MLflow's environment files into ``path``; user-given requirements win as in MLflow."""
    from mlflow_safeflavor._mlflow_compat import validate_env_arguments, write_environment_files

    try:
        validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    except Exception as exc:
        raise InvalidArgumentError(str(getattr(exc, "message", exc))) from None
    write_environment_files(path, default_requirements(codec_requirements), pip_requirements=pip_requirements,
                            extra_pip_requirements=extra_pip_requirements, conda_env=conda_env)
